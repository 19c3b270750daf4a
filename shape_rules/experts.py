"""Mixture-of-experts experts modules, described whole: transformers' classes decorated
with ``@use_experts_implementation`` (Mixtral, Qwen2-MoE, Qwen3-MoE, OLMoE, PhiMoE,
GraniteMoE …), keyed by the decorator's ``forward`` (one key for every class it decorates).

The module's contract: ``(x (T, H), top_k_index (T, k), top_k_weights (T, k)) → (T, H)``,
``out[t] = Σ_j w[t, j] · down[e] · (act(gate[e] · x[t]) ⊙ up[e] · x[t])`` with ``e =
top_k_index[t, j]``. Its experts are stacked: ``gate_up_proj`` (E, 2I, H) (gate rows, then
up rows), ``down_proj`` (E, H, I); transposed layouts store (E, H, 2I) and (E, I, H); biases
(E, 2I) and (E, H) where the class has them. How the tokens reach their experts (a sort,
``histc``, grouped matrix products, or gathered weights) is the module's business: the
rule states the contract, so the dispatch never meets a per-op rule.

* Hidden channels: the input's are read by the up projection's H dim (a sink); the output's
  are created by the down projection's H dim (a source), its bias follows.
* FFN channels: channel i of expert e is a unit of its own — gate row i and up row I + i of
  expert e create it (one term, two factors: ``act(gate)·up`` is zero when either is), and
  column i of expert e's down projection reads it. These are *part dims* of the stacked
  parameters (dim 1 of ``gate_up_proj[e]``: slot ``("p", fqn, (1, 0, e))``), so each expert
  loses its own channels. One ``intermediate_size`` serves every expert (a rectangle): the
  experts lose as many channels each (:class:`EqualCount`), an expert that would lose more
  keeps its last extra ones, masked.
* Whole experts: the router's softmax and top-k over the expert dim are barriers (a masked
  router row gives logit 0, not −∞: the masked model still routes tokens to that expert).
  The rule follows the top-k indices back to the router (:func:`router_route`) and joins
  each expert's slices — index e of every stacked parameter, sinks of the router's logit e
  — to the router's row e: one group per expert, held by those barriers
  (:class:`~slimc.shape_rules.ExpertRoute`). Where the masks zero every weight of an expert
  *and* its router row, the expert does not exist (logit −∞), and the plan lifts those
  barriers at its index (:mod:`slimc.propagate.experts`).
"""
from __future__ import annotations

import operator

import torch
import torch.nn.functional as F
from torch import fx, nn

from slimc.shape_rules import (WHOLE_MODULES, ByName, Coupling, EqualCount, ExpertRoute, Multiple, OpView, SlotKey,
                               Unsupported, WholeModule, aten, arange, code_name, find_rule, resizer, shape_rule, tie)
from slimc.shape_rules.attention import softmax as softmax_rule
from slimc.shape_rules.norm import CASTS

EXPERTS = ByName("transformers.integrations.moe.use_experts_implementation.<locals>.wrapper.<locals>.forward")
DEFAULT_GATE = "transformers.integrations.moe._default_apply_gate"  # act(gate) * up, gate rows first
TOP_K = "the router's top-k choices of experts"
#: the implementation the slim graph runs: gathered weights and batched products (no sort,
#: histc or grouped products), which torch.export and the ONNX exporters trace
GRAPH_IMPLEMENTATION = "batched_mm"
TOPK = (torch.topk, "topk", *aten("topk.default"))
LINEAR = (F.linear, *aten("linear.default"))
#: the user's class runs its default implementation, grouped matrix products, whose kernels
#: need 16-byte aligned strides: the hidden and FFN widths stay multiples of 16 bytes
ALIGN_BYTES = 16


def _layout(m: nn.Module) -> dict[str, str | int] | str:
    """Names and dims of the stacked parameters, or why the rule does not describe ``m``."""
    if getattr(m, "has_post_expert_norm", False):
        return "experts with a norm after each expert (has_post_expert_norm)"
    has_gate = getattr(m, "has_gate", True)
    if has_gate and code_name(getattr(type(m), "_apply_gate", None)) != DEFAULT_GATE:
        return f"experts with their own gate function ({type(m).__name__}._apply_gate): which rows pair is not known"
    t = bool(getattr(m, "is_transposed", False))
    up = "gate_up_proj" if has_gate else "up_proj"
    return {"up": up, "down": "down_proj", "up_bias": f"{up}_bias", "down_bias": "down_proj_bias",
            "rows": 2 if t else 1, "h_in": 1 if t else 2, "cols": 1 if t else 2, "h_out": 2 if t else 1,
            "gated": int(has_gate), "bias": int(bool(getattr(m, "has_bias", False)))}


def part(op: OpView, name: str, dim: int, expert: int) -> SlotKey:
    """Slot of dim ``dim`` of ``param[expert]`` (a part dim: each expert's own channels)."""
    return ("p", f"{op.node.target}.{name}", (dim, 0, expert))


def gate_up_rows(inter: int, gated: bool) -> list:
    """The up projection's rows that make FFN channel i: gate row i and up row I + i (the
    default gate's ``chunk(2)``); without a gate, row i."""
    rows = arange(inter)
    return [rows, rows + inter] if gated else [rows]


@shape_rule(EXPERTS)
def experts(op: OpView) -> Coupling | Unsupported:
    """Stacked MoE experts (transformers): each expert's FFN channel i — its gate row i, up row
    I + i, down column i — is a unit; every expert keeps as many; the hidden dim is read by
    the up projection and made by the down projection; the top-k dim is fixed. Expert e (its
    stacked slices, the router's row e) is one group, held by the router's softmax and top-k:
    it goes where the masks zero all of it and its router row (the expert does not exist)."""
    m = op.module
    lay = _layout(m)
    if isinstance(lay, str):
        return Unsupported(lay)
    x, idx, w = (op.arg(i) for i in range(3))
    if not all(isinstance(a, fx.Node) for a in (x, idx, w)) or len(op.shape(x) or ()) != 2 \
            or len(op.shape(idx) or ()) != 2 or op.out_shape != op.shape(x):
        return Unsupported("experts called with other than (tokens × hidden, top-k indices, top-k weights)")
    up, down = getattr(m, lay["up"]), getattr(m, lay["down"])
    n_experts, inter = down.shape[0], down.shape[lay["cols"]]
    c = Coupling()
    c.flow(op.slot(x, 0), op.out(0))
    for r in (idx, w):
        c.links.append(tie(op.slot(r, 0), op.out(0)))
        c.barrier(op.slot(r, 1), TOP_K)
    c.param("sink", op.p(lay["up"], lay["h_in"]), op.slot(x, 1))
    c.param("source", op.p(lay["down"], lay["h_out"]), op.out(1))
    if lay["bias"]:
        c.param("follower", op.p(lay["down_bias"], 1), op.out(1), term=1)
        c.feed(op.p(lay["down_bias"], 1), op.out(0), term=1)
    units, own = [], []
    rows = arange(inter)
    makers = gate_up_rows(inter, bool(lay["gated"]))
    for e in range(n_experts):
        unit = ("v", f"{op.node.name}#expert{e}", 0)
        c.virtual[unit] = inter
        for slot, size in ((part(op, lay["up"], lay["rows"], e), up.shape[lay["rows"]]),
                           (part(op, lay["down"], lay["cols"], e), inter)):
            c.virtual[slot] = size
        for half, made_by in enumerate(makers):  # gate rows, then up rows: factors of one term
            c.param("source", part(op, lay["up"], lay["rows"], e), unit, made_by, rows)
            if lay["bias"]:
                c.virtual[part(op, lay["up_bias"], 1, e)] = up.shape[lay["rows"]]
                c.param("follower", part(op, lay["up_bias"], 1, e), unit, made_by, rows, term=1 + half)
        c.param("sink", part(op, lay["down"], lay["cols"], e), unit)
        units.append(unit)
        own.append((unit, part(op, lay["up"], lay["rows"], e), part(op, lay["down"], lay["cols"], e),
                    *([part(op, lay["up_bias"], 1, e)] if lay["bias"] else [])))
    c.constraints.append(EqualCount(units, f"'{op.node.target}' holds its experts' FFN channels in one tensor: "
                                           "every expert keeps as many"))
    n = ALIGN_BYTES // down.element_size()
    c.constraints.append(Multiple([*units, op.slot(x, 1), op.out(1)], n,
                                  f"'{op.node.target}': transformers' grouped matrix products need {ALIGN_BYTES}-byte "
                                  f"strides (widths that are multiples of {n})"))
    stacked = [lay["up"], lay["down"], *([lay["up_bias"], lay["down_bias"]] if lay["bias"] else [])]
    c.constraints.append(_join_experts(op, c, idx, stacked, own))
    return c


def _join_experts(op: OpView, c: Coupling, idx: fx.Node, stacked: list[str], own: list) -> ExpertRoute:
    """Each expert's slices (index e of every stacked parameter) read the router's logit e:
    sinks of it, joined to the router's row e and held by the softmax and top-k barriers."""
    route = router_route(op, idx)
    if isinstance(route, str):
        return ExpertRoute(str(op.node.target), stacked=tuple(f"{op.node.target}.{n}" for n in stacked), why_not=route)
    logits, chain, lift, router, k = route
    for s in chain:
        c.links.append(tie(s, logits))
    for name in stacked:
        c.param("sink", op.p(name, 0), logits)
    return ExpertRoute(str(op.node.target), logits, router, tuple(f"{op.node.target}.{n}" for n in stacked),
                       lift, tuple(own), k)


def _casts_back(n):
    """``n`` and the casts it was made by, back to the first value that is not a cast."""
    chain = [n]
    while isinstance(n, fx.Node) and n.target in CASTS and n.args and isinstance(n.args[0], fx.Node):
        n = n.args[0]
        chain.append(n)
    return n, chain


def _arg(node: fx.Node, i: int, name: str, default=None):
    return node.args[i] if len(node.args) > i else node.kwargs.get(name, default)


def _last(op: OpView, x: fx.Node, dim) -> bool:
    shape = op.shape(x)
    return isinstance(dim, int) and shape is not None and dim % len(shape) == len(shape) - 1


def router_route(op: OpView, idx: fx.Node):
    """The router behind the top-k indices ``idx``: ``topk(softmax(linear(x, W, b)), k)[1]``
    over the last dim (casts between, the softmax optional: GraniteMoE takes the top-k of
    the logits). Returns (the logits' expert slot, the expert slots from the logits to the
    top-k input, the barriers to lift, the router's weight and bias names, k), or why not."""
    n, _ = _casts_back(idx)
    is_indices = isinstance(n, fx.Node) and ((n.target is operator.getitem and n.args[1] == 1)
                                             or (n.target is getattr and n.args[1] == "indices"))
    topk = n.args[0] if is_indices else None
    if not isinstance(topk, fx.Node) or topk.target not in TOPK:
        return "the top-k indices are not made by topk"
    x, k = topk.args[0], _arg(topk, 1, "k")
    if not _last(op, x, _arg(topk, 2, "dim", -1)) or not _arg(topk, 3, "largest", True) or not isinstance(k, int):
        return "the router's topk is not the k largest over the last dim"
    lift = [(topk.name, op.slot(x, -1))]
    x, chain = _casts_back(x)
    if isinstance(x, fx.Node) and x.op.startswith("call_") and find_rule(x, op.gm) is softmax_rule:
        dim = op.gm.get_submodule(x.target).dim if x.op == "call_module" else _arg(x, 1, "dim")
        if not _last(op, x.args[0], dim):
            return "the router's softmax is not over the experts"
        lift += [(x.name, op.slot(x, -1)), (x.name, op.slot(x.args[0], -1))]
        x, more = _casts_back(x.args[0])
        chain += more
    router = _linear_params(op, x)
    if router is None:
        return "the router's logits are not made by a linear layer"
    return op.slot(x, -1), [op.slot(s, -1) for s in chain], tuple(lift), router, k


def _linear_params(op: OpView, x) -> tuple[str, ...] | None:
    """The weight (and bias) names of the linear layer that made ``x``, or None."""
    if not isinstance(x, fx.Node):
        return None
    if x.op == "call_module" and isinstance(op.gm.get_submodule(x.target), nn.Linear):
        m = op.gm.get_submodule(x.target)
        return (f"{x.target}.weight", *([f"{x.target}.bias"] if m.bias is not None else []))
    if x.target not in LINEAR:
        return None
    views = [op.param_view(a) for a in (_arg(x, 1, "weight"), _arg(x, 2, "bias"))]
    if views[0] is None or views[0][1] != [0, 1] or (_arg(x, 2, "bias") is not None and views[1] is None):
        return None
    return tuple(v[0] for v in views if v is not None)


@resizer(EXPERTS)
def _resize_experts(m: nn.Module, new: dict) -> None:
    """The FFN width (``intermediate_dim``, GPT-OSS's ``intermediate_size``) and the hidden
    size from the down projection's new shape."""
    lay = _layout(m)
    if isinstance(lay, str):
        return
    shape = new[lay["down"]]
    for attr, size in (("intermediate_dim", shape[lay["cols"]]), ("intermediate_size", shape[lay["cols"]]),
                       ("hidden_dim", shape[lay["h_out"]]), ("hidden_size", shape[lay["h_out"]]),
                       ("num_experts", shape[0])):
        if isinstance(getattr(m, attr, None), int):
            setattr(m, attr, size)


def _graph_implementation(m: nn.Module) -> None:
    cfg = getattr(m, "config", None)
    if cfg is not None and hasattr(cfg, "_experts_implementation"):
        cfg._experts_implementation = GRAPH_IMPLEMENTATION


WHOLE_MODULES[EXPERTS] = WholeModule(out_like=0, for_graph=_graph_implementation, indices=(1,))
