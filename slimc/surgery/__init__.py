"""The user's own model, physically slim (``res.model``).

From the removal plan, the same as the graph output's: a copy of the user's object whose
tensors are the slim ones (:mod:`.weights`) and whose derived tensors are made again from
them (:mod:`.derived`), its leaf modules resized as the same classes (:mod:`.leaves`), its
size attributes set where its code reads them (:mod:`.sizes`), normalizations over pruned
channels kept exact (:mod:`.norms`), ``nn.MultiheadAttention`` sized by its kept heads
(:mod:`.mha`), expert counts where whole experts went (:mod:`.experts`), an HF config that follows (:mod:`.hf`), and the layout that rebuilds it in a
fresh process (:mod:`.layout`).
Where the user's code holds a size that slimming changes as a literal, there is no slim
model of the user's class: ``model`` is None and ``reason`` names the line.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Callable

from torch import fx, nn

from slimc.graph import source_line
from slimc.passes.context import TracedShapes
from slimc.surgery import hf, layout as layout_mod
from slimc.surgery.derived import follow_derived, refresh_derived
from slimc.surgery.experts import sync_expert_counts
from slimc.surgery.leaves import resize_leaves
from slimc.surgery.mha import fix_multihead_attention
from slimc.surgery.provenance import line_of
from slimc.surgery.norms import fix_norms
from slimc.surgery.sizes import SizeFixes, follow_events, head_splits, sync_attention, sync_heads, sync_widths
from slimc.surgery.weights import slim_copy


@dataclass
class UserModel:
    model: nn.Module | None
    reason: str | None
    _layout: dict[str, Any] | Callable[[], dict[str, Any]]  # made when first read (saving needs it)
    patched: list[str] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)
    unresolved: list[str] = field(default_factory=list)  # lines whose sizes the user's code computes itself
    hf: dict[str, Any] | None = None

    @property
    def layout(self) -> dict[str, Any]:
        """What the slim model changes against the original architecture (:mod:`.layout`)."""
        if callable(self._layout):
            self._layout = self._layout()
        return self._layout

    def report(self) -> dict[str, Any]:
        cls = layout_mod.qualname(type(self.model)) if self.model is not None else self.layout.get("class")
        return {"class": cls, "built": self.model is not None, "reason": self.reason,
                "patched": self.patched, "notes": self.notes, **({"hf": self.hf} if self.hf else {})}


def _module_of(node: fx.Node) -> str | None:
    """Path of the innermost module whose forward made ``node`` (None: the root's own code, an input)."""
    if node.op == "call_module":
        return node.target
    stack = node.meta.get("nn_module_stack") or {}
    return list(stack.values())[-1][0] if stack else None


def _inside(node: fx.Node, path: str) -> bool:
    p = _module_of(node)
    return p is not None and (p == path or p.startswith(path + "."))


def module_inputs(gm: fx.GraphModule, shapes: TracedShapes) -> dict[str, tuple[tuple, tuple]]:
    """Module path → (old, new) shape of its input: the first tensor its forward reads from
    outside the module (not a parameter or buffer)."""
    out: dict[str, tuple[tuple, tuple]] = {}
    for node in gm.graph.nodes:
        path = _module_of(node)
        if path is None or path in out:
            continue
        x = next((a for a in node.all_input_nodes if a.op != "get_attr" and shapes.traced_name(a) is not None
                  and shapes.tensor(a) is not None and (node.op == "call_module" or not _inside(a, path))), None)
        if x is None:
            continue
        out[path] = (shapes.tensor(x), shapes.new(x))
    return out


def build(original: nn.Module, plan, gm: fx.GraphModule, events: list, *, renorm: bool = False,
          shapes: TracedShapes | None = None) -> UserModel:
    """The slim model of the user's class (not yet verified: the compiler checks it like the graph).
    ``shapes``: the rewrite's view of ``gm``'s nodes (:attr:`RewriteContext.shapes`: the nodes
    the passes made read the traced ones they stand for)."""
    shapes = TracedShapes(plan) if shapes is None else shapes
    graph_tensors = dict([*gm.named_parameters(remove_duplicate=False), *gm.named_buffers(remove_duplicate=False)])
    slim = slim_copy(original, plan, graph_tensors)  # the graph's slim tensors, cloned
    derived_notes = follow_derived(slim, original, plan, graph_tensors)
    inputs = module_inputs(gm, shapes)
    resize_leaves(slim, original, {path: new for path, (old, new) in inputs.items() if new != old})
    fixes = SizeFixes()
    follow_events(slim, events, fixes)
    fixes.read_elsewhere({line for n in gm.graph.nodes if (line := line_of(source_line(n))) is not None})
    norm_notes, norm_blockers, transforms = fix_norms(slim, original, plan.final_masks, events, renorm,
                                                      {path: old for path, (old, _) in inputs.items()})
    splits = head_splits(gm, shapes)
    sync_attention(slim, splits, fixes)
    sync_heads(slim, plan, fixes)
    sync_widths(slim, original, fixes)
    sync_expert_counts(slim, plan, fixes)
    mha_patched, mha_notes, mha_blockers = fix_multihead_attention(slim, original, plan)
    hf_info = None
    if hf.is_hf(original):
        hf_info = hf.follow_config(slim, original, splits)
    refresh_derived(slim)
    on_meta = bool(transforms) and any(t.is_meta for t in slim.parameters())

    def lay() -> dict[str, Any]:
        out = layout_mod.diff(original, slim)
        if on_meta:
            out["weight_transforms"] = transforms  # a plan from shapes: applied when the sliced weights load
        return out

    blockers = list(dict.fromkeys([*fixes.blockers, *norm_blockers, *mha_blockers]))
    return UserModel(None if blockers else slim, _summary(blockers), lay, fixes.patched + mha_patched,
                     derived_notes + norm_notes + mha_notes,
                     list(dict.fromkeys(fixes.unresolved)), hf_info)


def _summary(blockers: list[str], n: int = 3) -> str | None:
    if not blockers:
        return None
    more = f" (and {len(blockers) - n} more)" if len(blockers) > n else ""
    return "; ".join(blockers[:n]) + more


__all__ = ["UserModel", "build"]
