"""Recurrent layers: ``nn.LSTM`` / ``nn.GRU`` / ``nn.RNN`` (multi-layer, bidirectional,
``batch_first``, LSTM ``proj_size``) and ``nn.LSTMCell`` / ``nn.GRUCell`` / ``nn.RNNCell``,
as modules (fx) and as their ATen ops (export: ``aten.lstm.input``, ``aten.lstm_cell``…).

A hidden unit is one channel of a *unit* slot (virtual: no tensor holds it alone) per
layer and direction: its gate rows of ``weight_ih`` and ``weight_hh`` create it (one term
per gate, so it is dead only when every gate row is masked), the biases follow, and it
is read by its column of the recurrent ``weight_hh`` (of ``weight_hr`` with ``proj_size``,
whose rows create the projected state), of the next layer's ``weight_ih``, and by the
output. With every gate row and bias of a unit zero, its state stays zero from a zero
initial state (LSTM: g = tanh(0) = 0, so c = h = 0; GRU: n = 0, so h = h/2 = 0), so
removing it is exact. One ``hidden_size`` serves all layers and directions: they lose as
many units each (:class:`EqualCount`), not necessarily the same ones.
"""
from __future__ import annotations

import operator
from dataclasses import dataclass
from typing import Any, Callable

from torch import fx, nn

from slimc.shape_rules import (Coupling, EqualCount, KeepMore, OpView, SlotKey, Unsupported, aten, arange, resizer,
                               shape_rule)
from slimc.shape_rules.structural import ZEROS

GATES = {"LSTM": 4, "GRU": 3, "RNN_TANH": 1, "RNN_RELU": 1}
CELL_GATES = {nn.LSTMCell: 4, nn.GRUCell: 3, nn.RNNCell: 1}
TIME = "a recurrent layer mixes time steps"
STATE_TERM = 100  # the term of an initial state flowing into a unit (after the gate terms)
Weights = Callable[[str, int], SlotKey]  # ("weight_ih_l0", dim) → its slot


@dataclass
class Recurrent:
    """What a recurrent layer is, from its module or its ATen op."""

    gates: int
    hidden: int
    proj: int  # 0: none
    layers: int
    dirs: int
    batch_first: bool
    bias: bool
    hx: list  # initial states given (h0, c0), None where absent
    items: dict  # "out", "h", "c" → tuple path of that result


def _gate_links(c: Coupling, w: Weights, sfx: str, unit: SlotKey, gates: int, hidden: int, bias: bool) -> None:
    """Gate rows g·H + u of both weights create unit u (a term per gate); the biases follow."""
    rows = arange(gates * hidden)
    for g in range(gates):
        r = rows[rows // hidden == g]
        c.param("source", w(f"weight_ih{sfx}", 0), unit, r, r % hidden, term=g)
        c.param("source", w(f"weight_hh{sfx}", 0), unit, r, r % hidden, term=gates + g)
        if bias:
            c.param("follower", w(f"bias_ih{sfx}", 0), unit, r, r % hidden, term=2 * gates + g)
            c.param("follower", w(f"bias_hh{sfx}", 0), unit, r, r % hidden, term=3 * gates + g)


def _read(node: fx.Node, path: tuple) -> bool:
    """Is item ``path`` of a tuple-valued node read (through getitem chains)?"""
    if not path:
        return bool(node.users)
    for u in node.users:
        if u.target is not operator.getitem or _read(u, path[1:]) and u.args[1] == path[0]:
            return True
    return False


def _item_shape(op: OpView, path: tuple) -> tuple:
    shp = op.out_shape
    for i in path:
        shp = shp[i]
    return shp


def _layers(op: OpView, r: Recurrent, x: fx.Node, w: Weights) -> Coupling:
    c = Coupling()
    xs = op.shape(x)
    t_dim, b_dim = ((1, 0) if r.batch_first else (0, 1)) if len(xs) == 3 else (0, None)
    proj = r.proj or r.hidden
    out = r.items["out"]
    c.barrier(op.slot(x, t_dim), TIME).barrier(op.out(t_dim, item=out), TIME)
    if b_dim is not None:
        c.flow(op.slot(x, b_dim), op.out(b_dim, item=out))
    units: list[SlotKey] = []
    states: list[SlotKey] = []
    for layer in range(r.layers):
        for d in range(r.dirs):
            sfx = f"_l{layer}" + ("_reverse" if d else "")
            unit = ("v", f"{op.node.name}#unit{layer}.{d}", 0)
            c.virtual[unit] = r.hidden
            _gate_links(c, w, sfx, unit, r.gates, r.hidden, r.bias)
            state = unit
            if r.proj:  # h = W_hr · (o * tanh(c)): units are read by W_hr, whose rows create the state
                state = ("v", f"{op.node.name}#proj{layer}.{d}", 0)
                c.virtual[state] = proj
                c.param("sink", w(f"weight_hr{sfx}", 1), unit)
                c.param("source", w(f"weight_hr{sfx}", 0), state)
            c.param("sink", w(f"weight_hh{sfx}", 1), state)
            if layer == 0:
                c.param("sink", w(f"weight_ih{sfx}", 1), op.slot(x, -1))
            else:  # the previous layer's output: both directions, side by side
                for d0 in range(r.dirs):
                    prev = states[(layer - 1) * r.dirs + d0]
                    c.param("sink", w(f"weight_ih{sfx}", 1), prev, arange(proj) + d0 * proj, None)
            units.append(unit)
            states.append(state)
    for d, state in enumerate(states[-r.dirs:]):
        c.flow(state, op.out(-1, item=out), None, arange(proj) + d * proj)
    for key, slots, h0 in (("h", states, r.hx[0]), ("c", units, r.hx[1])):
        if key in r.items:
            _final_state(c, op, r.items[key], slots, x, b_dim)
        if isinstance(h0, fx.Node):
            # a zero initial state (torch.zeros) is the same whichever units it keeps: it only
            # needs the right size, which every layer shares
            _initial_state(c, op, h0, slots[:1] if h0.target in ZEROS else slots, out, b_dim)
    c.constraints.append(EqualCount(units, f"'{op.node.name}' has one hidden_size for all layers and directions"))
    if r.proj:
        c.constraints.append(EqualCount(states, f"'{op.node.name}' has one proj_size for all layers and directions"))
        c.constraints.append(KeepMore(units, states, f"'{op.node.name}': proj_size must stay below hidden_size"))
    return c


def _final_state(c: Coupling, op: OpView, path: tuple, slots: list, x: fx.Node, b_dim: int | None) -> None:
    """h_n / c_n (layers·directions, batch, size): where read, its last dim is every layer's
    and direction's state at once (so they lose the same units); otherwise it is unused."""
    shp = _item_shape(op, path)
    read = _read(op.node, path)
    for d in range(len(shp)):
        slot = op.out(d, item=path)
        if not read:
            c.cover(slot)
        elif d == len(shp) - 1:
            for s in slots:
                c.flow(s, slot)
        elif d == 0:
            c.barrier(slot, "layer and direction of a recurrent layer's final state")
        else:
            c.flow(op.slot(x, b_dim), slot)


def _initial_state(c: Coupling, op: OpView, h0: fx.Node, slots: list, out: tuple, b_dim: int | None) -> None:
    """h_0 / c_0 given: its last dim starts every layer's and direction's state."""
    s0 = op.shape(h0)
    for d in range(len(s0)):
        if d == len(s0) - 1:
            for s in slots:
                c.flow(op.slot(h0, d), s, term=STATE_TERM)
        elif d == 0:
            c.barrier(op.slot(h0, d), "layer and direction of a recurrent layer's initial state")
        else:
            c.flow(op.slot(h0, d), op.out(b_dim, item=out))


@shape_rule(nn.LSTM, nn.GRU, nn.RNN)
def rnn(op: OpView) -> Coupling | Unsupported:
    """LSTM / GRU / RNN: a unit's 4/3/1 gate rows (both weights, both biases) go together,
    with its column of the recurrent weight (or of ``weight_hr``), of the next layer's
    input weight and its output channel; all layers and directions keep one hidden size."""
    m = op.module
    x, hx = op.arg(0, "input"), op.arg(1, "hx")
    if op.shape(x) is None or not isinstance(op.out_shape, list) or m.mode not in GATES:
        return Unsupported("recurrent layer on a packed sequence")
    hx = list(hx) if isinstance(hx, (list, tuple)) else [hx, None]
    items = {"out": (0,), "h": (1,)} if m.mode != "LSTM" else {"out": (0,), "h": (1, 0), "c": (1, 1)}
    r = Recurrent(GATES[m.mode], m.hidden_size, m.proj_size, m.num_layers, 2 if m.bidirectional else 1,
                  m.batch_first, m.bias, hx, items)
    return _layers(op, r, x, lambda name, d: op.p(name, d))


ATEN_RNNS = {op: mode for mode, name in (("LSTM", "lstm.input"), ("GRU", "gru.input"), ("RNN_TANH", "rnn_tanh.input"),
                                          ("RNN_RELU", "rnn_relu.input")) for op in aten(name)}


@shape_rule(*ATEN_RNNS)
def rnn_aten(op: OpView) -> Coupling | Unsupported:
    """ATen lstm / gru / rnn (the export front end): the module's coupling, its flat
    parameter list named as the module names them."""
    mode = ATEN_RNNS[op.node.target]
    x, hx, params = op.arg(0), op.arg(1), op.arg(2)
    bias, layers, _, _, bidir, batch_first = (op.arg(i) for i in range(3, 9))
    hx = [hx] if isinstance(hx, fx.Node) else hx  # gru / rnn: one state tensor; lstm: [h, c]
    if not isinstance(hx, (list, tuple)) or not isinstance(params, (list, tuple)) or \
            not all(op.is_param(p) for p in params):
        return Unsupported("recurrent op with computed weights")
    h_size = op.shape(hx[0])[-1]
    hidden = op.shape(hx[1])[-1] if mode == "LSTM" else h_size
    proj = h_size if h_size != hidden else 0
    names = ["weight_ih", "weight_hh", *(["bias_ih", "bias_hh"] if bias else []), *(["weight_hr"] if proj else [])]
    dirs = 2 if bidir else 1
    keyed = {f"{n}_l{k // dirs}{'_reverse' if k % dirs else ''}": params[k * len(names) + i]
             for k in range(layers * dirs) for i, n in enumerate(names)}
    items = {"out": (0,), "h": (1,)} | ({"c": (2,)} if mode == "LSTM" else {})
    r = Recurrent(GATES[mode], hidden, proj, layers, dirs, batch_first, bias,
                  [hx[0], hx[1] if mode == "LSTM" else None], items)
    return _layers(op, r, x, lambda name, d: op.slot(keyed[name], d))


def _cell(op: OpView, gates: int, hidden: int, x, h, cx, w: Weights, bias: bool, gru: bool) -> Coupling | Unsupported:
    xs, out = op.shape(x), op.out_shape
    if xs is None:
        return Unsupported("recurrent cell on a non-tensor")
    c = Coupling()
    unit = ("v", f"{op.node.name}#unit", 0)
    c.virtual[unit] = hidden
    _gate_links(c, w, "", unit, gates, hidden, bias)
    c.param("sink", w("weight_ih", 1), op.slot(x, -1))
    c.param("sink", w("weight_hh", 1), unit)  # h_{t-1} is read by the recurrent weight's columns
    items = [(0,), (1,)] if isinstance(out, list) else [None]
    for item in items:
        c.flow(unit, op.out(-1, item=item))
        if len(xs) == 2:
            c.flow(op.slot(x, 0), op.out(0, item=item))
    for state in (h, cx):
        if not isinstance(state, fx.Node):
            continue
        if len(op.shape(state)) == 2:
            for item in items:
                c.flow(op.slot(state, 0), op.out(0, item=item))
        if state is h:
            c.param("sink", w("weight_hh", 1), op.slot(state, -1))
        if state is cx or gru:  # c' = f·c + i·g;  GRU: h' = (1-z)·n + z·h
            c.flow(op.slot(state, -1), unit, term=STATE_TERM)
    return c


def _cell_gates(m: nn.Module) -> int:
    return next(CELL_GATES[b] for b in type(m).__mro__ if b in CELL_GATES)


@shape_rule(nn.LSTMCell, nn.GRUCell, nn.RNNCell)
def cell(op: OpView) -> Coupling | Unsupported:
    """LSTMCell / GRUCell / RNNCell (one time step, e.g. in a loop): a unit's gate rows go
    together with its column of ``weight_hh`` and its channel of h' (and c'), h (and c)."""
    m = op.module
    hx = op.arg(1, "hx")
    h, cx = (hx[0], hx[1]) if isinstance(hx, (list, tuple)) else (hx, None)
    return _cell(op, _cell_gates(m), m.hidden_size, op.arg(0, "input"), h, cx, lambda name, d: op.p(name, d),
                 m.bias, isinstance(m, nn.GRUCell))


ATEN_CELLS = {op: g for g, name in ((4, "lstm_cell.default"), (3, "gru_cell.default"), (1, "rnn_tanh_cell.default"),
                                    (1, "rnn_relu_cell.default")) for op in aten(name)}


@shape_rule(*ATEN_CELLS)
def cell_aten(op: OpView) -> Coupling | Unsupported:
    """ATen lstm_cell / gru_cell / rnn_*_cell (the export front end): the module's coupling."""
    gates = ATEN_CELLS[op.node.target]
    x, hx, w_ih, w_hh, b_ih, b_hh = (op.arg(i) for i in range(6))
    named: dict[str, Any] = {"weight_ih": w_ih, "weight_hh": w_hh, "bias_ih": b_ih, "bias_hh": b_hh}
    if not all(op.is_param(p) for p in named.values() if p is not None) or not op.is_param(w_ih):
        return Unsupported("recurrent cell with computed weights")
    h, cx = (hx[0], hx[1]) if isinstance(hx, (list, tuple)) and len(hx) > 1 else (
        hx[0] if isinstance(hx, (list, tuple)) else hx, None)
    return _cell(op, gates, op.shape(w_hh)[1], x, h, cx, lambda name, d: op.slot(named[name], d),
                 b_ih is not None, gates == 3)


@resizer(nn.LSTM, nn.GRU, nn.RNN)
def _resize_rnn(m: nn.Module, new: dict) -> None:
    """hidden_size, input_size and proj_size from the sliced weights; flat weights rebuilt."""
    m.hidden_size = new["weight_ih_l0"][0] // GATES[m.mode]
    m.input_size = new["weight_ih_l0"][1]
    if m.proj_size:
        m.proj_size = new["weight_hr_l0"][0]
    m._init_flat_weights()


@resizer(nn.LSTMCell, nn.GRUCell, nn.RNNCell)
def _resize_cell(m: nn.Module, new: dict) -> None:
    m.hidden_size = new["weight_ih"][0] // _cell_gates(m)
    m.input_size = new["weight_ih"][1]
