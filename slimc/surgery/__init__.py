"""The user's own model, physically slim (``res.model``).

From the removal plan, the same as the graph output's: a copy of the user's object whose
tensors are the slim ones (:mod:`.weights`), its leaf modules resized as the same classes
(:mod:`.leaves`), its size attributes set where its code reads them (:mod:`.sizes`),
normalizations over pruned channels kept exact (:mod:`.norms`), an HF config that
follows (:mod:`.hf`), and the layout that rebuilds it in a fresh process (:mod:`.layout`).
Where the user's code holds a size that slimming changes as a literal, there is no slim
model of the user's class: ``model`` is None and ``reason`` names the line.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Callable

from torch import fx, nn

from slimc.passes.context import TracedShapes
from slimc.surgery import hf, layout as layout_mod
from slimc.surgery.leaves import resize_leaves
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


def module_inputs(gm: fx.GraphModule, shapes: TracedShapes) -> dict[str, tuple]:
    """Module path → the new shape of its input, for modules whose input changed."""
    out, seen = {}, set()
    for node in gm.graph.nodes:
        if node.op == "call_module":
            path = node.target
        else:
            stack = node.meta.get("nn_module_stack") or {}
            if not stack:
                continue
            path = list(stack.values())[-1][0]
        if path in seen:
            continue
        seen.add(path)
        x = next((a for a in node.all_input_nodes if a.op != "get_attr" and shapes.traced_name(a) is not None
                  and shapes.tensor(a) is not None), None)
        if x is None:
            continue
        old, new = shapes.tensor(x), shapes.new(x)
        if new != old:
            out[path] = new
    return out


def build(original: nn.Module, plan, gm: fx.GraphModule, events: list, *, renorm: bool = False,
          shapes: TracedShapes | None = None) -> UserModel:
    """The slim model of the user's class (not yet verified: the compiler checks it like the graph).
    ``shapes``: the rewrite's view of ``gm``'s nodes (:attr:`RewriteContext.shapes`: the nodes
    the passes made read the traced ones they stand for)."""
    shapes = TracedShapes(plan) if shapes is None else shapes
    graph_tensors = dict([*gm.named_parameters(remove_duplicate=False), *gm.named_buffers(remove_duplicate=False)])
    slim = slim_copy(original, plan, graph_tensors)  # the graph's slim tensors, cloned
    resize_leaves(slim, original, module_inputs(gm, shapes))
    fixes = SizeFixes()
    follow_events(slim, events, fixes)
    norm_notes, norm_blockers, transforms = fix_norms(slim, original, plan.final_masks, events, renorm)
    splits = head_splits(gm, shapes)
    sync_attention(slim, splits, fixes)
    sync_heads(slim, plan, fixes)
    sync_widths(slim, original, fixes)
    hf_info = None
    if hf.is_hf(original):
        hf_info = hf.follow_config(slim, original, splits)
    on_meta = bool(transforms) and any(t.is_meta for t in slim.parameters())

    def lay() -> dict[str, Any]:
        out = layout_mod.diff(original, slim)
        if on_meta:
            out["weight_transforms"] = transforms  # a plan from shapes: applied when the sliced weights load
        return out

    blockers = list(dict.fromkeys([*fixes.blockers, *norm_blockers]))
    return UserModel(None if blockers else slim, _summary(blockers), lay, fixes.patched, norm_notes,
                     list(dict.fromkeys(fixes.unresolved)), hf_info)


def _summary(blockers: list[str], n: int = 3) -> str | None:
    if not blockers:
        return None
    more = f" (and {len(blockers) - n} more)" if len(blockers) > n else ""
    return "; ".join(blockers[:n]) + more


__all__ = ["UserModel", "build"]
