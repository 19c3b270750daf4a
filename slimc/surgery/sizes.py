"""Size attributes of the user's modules, made to match the slim tensors.

Two sources:

1. **Size events** from the rewrite (a view's literal size, split sizes): where the user's
   line reads the size from ``self.<attr>``, that attribute is set; a size written as a
   literal is a *blocker* (the class cannot follow it; the line is reported); a size from
   a local or a shape read is left to the code (the built-in check decides).
2. **Known size attributes**, for what forward() does not read but users and libraries do
   (``num_heads``, ``head_dim``, ``all_head_size``, ``num_key_value_groups``,
   ``intermediate_size``, ``embed_dim``): set from the head splits the graph shows in that
   module (a view of C channels as (H, D)) and from its children's new widths — only where
   the attribute holds the old value of exactly that size.
"""
from __future__ import annotations

import ast
import itertools

from dataclasses import dataclass, field
from typing import Any

import torch
from torch import fx, nn

from slimc.surgery.provenance import (Attribute, Literal, attributes_in, classify, line_of, literal_slice, other_reads,
                                      size_argument)

HEADS = ("num_heads", "num_attention_heads", "n_head", "n_heads", "heads", "num_head", "nhead")
KV_HEADS = ("num_key_value_heads", "num_kv_heads", "n_kv_heads", "n_kv_head", "num_kv")
HEAD_DIM = ("head_dim", "attention_head_size", "head_size", "d_head", "dim_head", "key_value_proj_dim", "d_kv")
INNER = ("all_head_size", "attn_dim", "inner_dim", "split_size", "inner_attn_dim")
GROUPS = ("num_key_value_groups", "n_rep", "num_queries_per_kv")
HIDDEN = ("embed_dim", "hidden_size", "d_model", "n_embd", "dim", "num_features", "width")
HIDDEN_ATTRS = (*HIDDEN, "hidden_dim")  # module attributes (a MoE block's); a config's hidden_dim may be its FFN
FFN = ("intermediate_size", "ffn_dim", "d_ff", "mlp_dim", "hidden_features", "n_inner")


@dataclass
class SizeFixes:
    patched: list[str] = field(default_factory=list)  # "path.attr: old → new"
    blockers: list[str] = field(default_factory=list)  # why the user's class cannot be slim
    unresolved: list[str] = field(default_factory=list)  # lines whose sizes the code computes itself
    done: set = field(default_factory=set)  # (id(owner), attr) set here
    followed: dict = field(default_factory=dict)  # (id(owner), attr) → (owner, attr, old, {(file, line) it is set for})

    def follow(self, owner: Any, path: str, attr: str, new: Any, source: str) -> None:
        """:meth:`set`, for the size argument on the user's line ``source``."""
        entry = self.followed.setdefault((id(owner), attr), (owner, attr, getattr(owner, attr), set()))
        if (line := line_of(source)) is not None:
            entry[3].add(line)
        self.set(owner, path, attr, new)

    def read_elsewhere(self, ran: set[tuple[str, int]]) -> None:
        """An attribute set for the size arguments of forward that forward also reads for
        something else (a scale from the head dim) blocks the class: that value would change.
        ``ran``: (file, line) of the lines the graph's nodes come from (not a branch not taken)."""
        for owner, attr, old, lines in self.followed.values():
            new = getattr(owner, attr)
            for where in other_reads(owner, attr, lines, ran)[:1] if new != old else ():
                self.blockers.append(f"{where}: reads self.{attr}, which the slim class changes ({old} → {new}) "
                                     "for its sizes; compute this value in __init__, or keep these channels")

    def set(self, owner: Any, path: str, attr: str, new: Any) -> None:
        key = (id(owner), attr)
        old = getattr(owner, attr)
        if key in self.done:
            if old != new:
                self.blockers.append(f"{path}.{attr} would need two values ({old} and {new})")
            return
        self.done.add(key)
        if old != new:
            setattr(owner, attr, new)
            self.patched.append(f"{path + '.' if path else ''}{attr}: {old} → {new}")


def _owner(root: nn.Module, module: str, attr_path: tuple[str, ...]) -> tuple[Any, str, str] | None:
    try:
        obj: Any = root.get_submodule(module) if module else root
        for a in attr_path[:-1]:
            obj = getattr(obj, a)
    except AttributeError:
        return None
    if not hasattr(obj, attr_path[-1]):
        return None
    return obj, ".".join(filter(None, [module, *attr_path[:-1]])), attr_path[-1]


def _split_value(ev) -> tuple[Any, str | None]:
    """The new value of a split's size argument, or why the user's call cannot give the sizes."""
    sizes, given = list(ev.new), ev.old
    if ev.detail.get("chunk"):
        return given, None if len(set(sizes)) == 1 else f"chunk into {given} equal pieces cannot give {sizes}"
    if ev.detail.get("indices"):  # tensor_split at split points: where each piece but the first starts
        points = list(itertools.accumulate(sizes[:-1]))
        return type(given)(points) if isinstance(given, (list, tuple)) else points, None
    if isinstance(given, int):
        return (sizes[0], None) if len(set(sizes[:-1])) == 1 and sizes[-1] <= sizes[0] else \
            (None, f"split into pieces of {given} cannot give {sizes}")
    return type(given)(sizes) if isinstance(given, (list, tuple)) else sizes, None


def follow_events(slim: nn.Module, events: list, fixes: SizeFixes) -> None:
    for ev in events:
        where = f"{ev.source or ev.node}"
        if ev.kind in ("mean", "layernorm"):
            continue  # normalizations: slimc.surgery.norms
        if ev.kind == "slice":
            text = literal_slice(ev.source)
            if text is not None:
                fixes.blockers.append(f"{where}: the slice {text} is written in the code; the kept channels moved")
            else:
                fixes.unresolved.append(where)
            continue
        if ev.kind == "sdpa_scale":
            fixes.blockers.append(f"{where}: scaled_dot_product_attention takes its scale from the head dim "
                                  f"({ev.old} → {ev.new}); prune whole heads, or pass scale= in the code")
            continue
        if ev.kind == "split":
            new, why = _split_value(ev)
            if why:
                fixes.blockers.append(f"{where}: {why}")
                continue
            if ev.detail.get("chunk"):
                continue  # equal pieces: the chunk count stays
        n = ev.detail.get("n", 0)
        expr = size_argument(ev.source, ev.op, ev.position, n, keyword="groups" if ev.position == "groups" else None)
        found = classify(expr) if expr is not None else None
        if ev.kind == "scaled":
            attrs = attributes_in(expr) if expr is not None else []
            owned = [o for a in attrs if (o := _owner(slim, ev.module, a)) is not None
                     and isinstance(getattr(o[0], o[2]), int) and getattr(o[0], o[2]) * ev.new % ev.old == 0]
            if len(owned) == 1:
                obj, path, attr = owned[0]
                fixes.follow(obj, path, attr, getattr(obj, attr) * ev.new // ev.old, ev.source)
            else:
                fixes.unresolved.append(where)
            continue
        if ev.kind != "split":
            new = ev.new
        pieces = _spelled_pieces(ev, expr, new)
        if pieces is not None:  # split([self.num_heads, 1, 1]): each size that changed, on its own
            for e, old_i, new_i in pieces:
                _follow(slim, ev, where, classify(e), old_i, new_i, fixes)
            continue
        _follow(slim, ev, where, found, ev.old, new, fixes)


def _spelled_pieces(ev, expr, new) -> list | None:
    """(expression, old, new) of each piece size that changed, where a split's sizes are a
    list written out in the call (``split([self.num_heads, 1, 1], dim=-2)``); else None."""
    if ev.kind != "split" or not isinstance(expr, (ast.List, ast.Tuple)) or not isinstance(ev.old, (list, tuple)):
        return None
    if ev.detail.get("indices") or not (len(expr.elts) == len(ev.old) == len(new)):
        return None
    return [(e, o, n) for e, o, n in zip(expr.elts, ev.old, new) if o != n]


def _follow(slim: nn.Module, ev, where: str, found, old: Any, new: Any, fixes: SizeFixes) -> None:
    """The size the user's code spells as ``found`` goes from ``old`` to ``new``: an attribute
    is set, a literal blocks the class, anything else is left to the code."""
    if isinstance(found, Literal):
        fixes.blockers.append(f"{where}: the size {found.text} is written in the code ({old} → {new}); "
                              "read it from an attribute or the input's shape for the class to follow")
        return
    owner = _owner(slim, ev.module, found.path) if isinstance(found, Attribute) else None
    if owner is None:
        fixes.unresolved.append(where)
        return
    obj, path, attr = owner
    cur = getattr(obj, attr)
    if (id(obj), attr) in fixes.done or (isinstance(cur, (int, list, tuple)) and cur == old):
        fixes.follow(obj, path, attr, new, ev.source)
    elif not (isinstance(cur, (int, list, tuple)) and cur == new):  # (else set with its module's tensors)
        fixes.unresolved.append(where)


def head_splits(gm: fx.GraphModule, shapes) -> dict[str, list[tuple[int, int, int, int]]]:
    """Module path → (H, D, H', D') of every view in its forward that splits the last dim
    of its input into (…, H, D) (queries, keys, values of an attention)."""
    from slimc.passes.patch_constants import RESHAPES

    out: dict[str, list] = {}
    for node in gm.graph.nodes:
        if node.target not in RESHAPES or node.op not in ("call_method", "call_function"):
            continue
        x = node.args[0] if node.args else None
        if shapes.traced_name(node) is None or not isinstance(x, fx.Node) or shapes.traced_name(x) is None:
            continue  # (a node a rewrite pass made: no head split of the user's code)
        old, xin = shapes.tensor(node), shapes.tensor(x)
        if old is None or xin is None or len(old) < len(xin) + 1 or len(xin) < 1:
            continue
        k = len(xin) - 1
        trail = old[k:]
        if old[:k] != xin[:k] or len(trail) < 2 or trail[-2] * trail[-1] * _prod(trail[:-2]) != xin[-1]:
            continue
        stack = node.meta.get("nn_module_stack") or {}
        path = list(stack.values())[-1][0] if stack else ""
        nd = len(old)
        out.setdefault(path, []).append((old[-2], old[-1], shapes.new_size(node, nd - 2),
                                         shapes.new_size(node, nd - 1)))
    return out


def _prod(xs) -> int:
    p = 1
    for x in xs:
        p *= x
    return p


def _one(values: set) -> Any:
    return next(iter(values)) if len(values) == 1 else None


def sync_attention(slim: nn.Module, splits: dict[str, list], fixes: SizeFixes) -> None:
    for path, sp in splits.items():
        try:
            m = slim.get_submodule(path) if path else slim
        except AttributeError:
            continue
        h_q = max(s[0] for s in sp)
        h_kv = min(s[0] for s in sp)
        new_for = {
            HEAD_DIM: {s[1]: {x[3] for x in sp if x[1] == s[1]} for s in sp},
            HEADS: {s[0]: {x[2] for x in sp if x[0] == s[0]} for s in sp},
            KV_HEADS: {s[0]: {x[2] for x in sp if x[0] == s[0]} for s in sp},
            INNER: {s[0] * s[1]: {x[2] * x[3] for x in sp if x[0] * x[1] == s[0] * s[1]} for s in sp},
        }
        hq1 = _one({s[2] for s in sp if s[0] == h_q})
        hkv1 = _one({s[2] for s in sp if s[0] == h_kv})
        if hq1 and hkv1 and h_q % h_kv == 0 and hq1 % hkv1 == 0:
            new_for[GROUPS] = {h_q // h_kv: {hq1 // hkv1}}
        for names, table in new_for.items():
            for attr in names:
                v = getattr(m, attr, None)
                if isinstance(v, int) and not isinstance(v, bool) and (id(m), attr) not in fixes.done:
                    new = _one(table.get(v, set()))
                    if new is not None:
                        fixes.set(m, path, attr, new)


def attention_counts(plan) -> dict[str, dict[tuple, set[int]]]:
    """Module path → {names: {old: new}} of what the graph shows in that module's forward:
    query heads (the head axis of its attention, HEADS) and key/value copies per query group
    (the count ``repeat_kv``'s expand writes, GROUPS, see shape_rules.Copies)."""
    from slimc.shape_rules import Copies, HeadAxis

    out: dict[str, dict[tuple, dict[int, set[int]]]] = {}
    dg = plan.dg
    for f in dg.facts:
        for c in f.coupling.constraints:
            names = HEADS if isinstance(c, HeadAxis) and c.unit == "heads" and c.slot[2] >= 1 else GROUPS if isinstance(c, Copies) else None
            if names is None or c.slot not in dg.offset:
                continue
            stack = f.node.meta.get("nn_module_stack") or {}
            path = list(stack.values())[-1][0] if stack else ""
            table = out.setdefault(path, {}).setdefault(names, {})
            table.setdefault(dg.size[c.slot], set()).add(plan.new_size(c.slot))
    return out


def sync_heads(slim: nn.Module, plan, fixes: SizeFixes) -> None:
    """Head counts the module's forward does not write (``self.num_heads`` kept for users, or
    ``self.num_key_value_groups`` read by a library's ``repeat_kv``): set from the head axis of
    its attention and the copies of its key/value heads, where the attribute held the old count
    (Falcon's multi-query attention: 4 → 3 query heads, n_rep 4 → 3)."""
    for path, tables in attention_counts(plan).items():
        try:
            m = slim.get_submodule(path) if path else slim
        except AttributeError:
            continue
        for names, table in tables.items():
            for attr in names:
                v = getattr(m, attr, None)
                if _is_size(v) and (id(m), attr) not in fixes.done:
                    new = _one(table.get(v, set()))
                    if new is not None:
                        fixes.set(m, path, attr, new)


def input_embedding_width(original: nn.Module, slim: nn.Module) -> tuple[int, int] | None:
    """(old, new) width of the token embedding (``get_input_embeddings()``): the hidden size."""
    try:
        e0, e1 = original.get_input_embeddings(), slim.get_input_embeddings()
    except (AttributeError, NotImplementedError):
        return None
    w0, w1 = getattr(e0, "weight", None), getattr(e1, "weight", None)
    if isinstance(w0, torch.Tensor) and isinstance(w1, torch.Tensor) and w0.dim() == 2:
        return w0.shape[1], w1.shape[1]
    return None


def _is_size(v: Any) -> bool:
    """A plain int (a size attribute's value; not a bool)."""
    return isinstance(v, int) and not isinstance(v, bool)


def _params_below(original: nn.Module, slim: nn.Module) -> dict[str, list[tuple[torch.Tensor, torch.Tensor]]]:
    """For each module path, the (original, slim) pairs of the parameters below it (by name)."""
    slim_params = dict(slim.named_parameters(remove_duplicate=False))
    below: dict[str, list[tuple[torch.Tensor, torch.Tensor]]] = {}
    for name, t0 in original.named_parameters(remove_duplicate=False):
        t = slim_params.get(name)
        if t is None:
            continue
        parts = name.split(".")
        for i in range(len(parts)):
            below.setdefault(".".join(parts[:i]), []).append((t0, t))
    return below


def sync_widths(slim: nn.Module, original: nn.Module, fixes: SizeFixes) -> None:
    """``hidden_size``/``intermediate_size``-like attributes: the hidden size where the model
    has a token embedding, else the new size of every tensor dim below the module that had
    the attribute's value, where they all agree and all changed."""
    hidden = input_embedding_width(original, slim)
    orig = dict(original.named_modules())
    below: dict[str, list[tuple[torch.Tensor, torch.Tensor]]] | None = None  # path → (original, slim) params
    class_attrs: dict[type, dict[str, Any]] = {}
    for path, m in slim.named_modules():
        m0 = orig.get(path)
        if m0 is None:
            continue
        cls = type(m)
        if cls not in class_attrs:  # (read once per class in this call)
            class_attrs[cls] = {a: getattr(cls, a, None) for a in (*HIDDEN_ATTRS, *FFN)}
        d, ca = m.__dict__, class_attrs[cls]
        attrs = [a for a in (*HIDDEN_ATTRS, *FFN) if _is_size(d.get(a, ca[a])) and (id(m), a) not in fixes.done]
        if not attrs:
            continue
        if below is None:  # every module's params, both models walked once
            below = _params_below(original, slim)
        dims: dict[int, set[int]] = {}
        for t0, t in below.get(path, ()):
            for o, n in zip(t0.shape, t.shape):
                dims.setdefault(o, set()).add(n)
        for a in attrs:
            v = getattr(m, a)
            if hidden is not None and a in HIDDEN_ATTRS and v == hidden[0]:
                fixes.set(m, path, a, hidden[1])
                continue
            news = dims.get(v, set())
            if len(news) == 1 and v not in news:
                fixes.set(m, path, a, next(iter(news)))


__all__ = ["SizeFixes", "follow_events", "head_splits", "sync_attention", "sync_heads", "sync_widths"]
