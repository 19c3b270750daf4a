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
* The expert dim is not pruned: the router's softmax and top-k over it are barriers, and a
  masked router row still takes its share of the routing (see the README: an expert whose
  FFN is all masked is still chosen, its output being zero, so removing it with its router
  row is not the masked model).
"""
from __future__ import annotations

from torch import fx, nn

from slimc.shape_rules import (WHOLE_MODULES, ByName, Coupling, EqualCount, Multiple, OpView, SlotKey, Unsupported,
                               WholeModule, arange, code_name, resizer, shape_rule, tie)

EXPERTS = ByName("transformers.integrations.moe.use_experts_implementation.<locals>.wrapper.<locals>.forward")
DEFAULT_GATE = "transformers.integrations.moe._default_apply_gate"  # act(gate) * up, gate rows first
TOP_K = "the router's top-k choices of experts"
#: the implementation the slim graph runs: gathered weights and batched products (no sort,
#: histc or grouped products), which torch.export and the ONNX exporters trace
GRAPH_IMPLEMENTATION = "batched_mm"
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
    the up projection and made by the down projection; the top-k dim is fixed."""
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
    units = []
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
    c.constraints.append(EqualCount(units, f"'{op.node.target}' holds its experts' FFN channels in one tensor: "
                                           "every expert keeps as many"))
    n = ALIGN_BYTES // down.element_size()
    c.constraints.append(Multiple([*units, op.slot(x, 1), op.out(1)], n,
                                  f"'{op.node.target}': transformers' grouped matrix products need {ALIGN_BYTES}-byte "
                                  f"strides (widths that are multiples of {n})"))
    return c


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
