"""``nn.MultiheadAttention`` in the slim model: its sizes from the kept heads.

torch's module takes its head size from ``embed_dim // num_heads`` and projects queries,
keys and values to ``embed_dim`` channels, the width of its query input and of its output.
So the standard module holds a slim attention only where the kept heads, of their
original size, fill the kept hidden channels exactly (heads and hidden size pruned
together, ``H′·D = E′``); then ``embed_dim``, ``num_heads``, ``head_dim``, ``kdim`` and
``vdim`` are set and torch's own forward (its fused fast path included) runs it. Any other
pruning — heads with the hidden size kept, the hidden size alone, the same channels of
every head — makes it a :class:`~slimc.surgery.modules.SlimMultiheadAttention` (still an
``nn.MultiheadAttention``), which computes heads of any size with the original scale.

Which heads and channels of a head stay is read from the plan's kept rows of the packed
``in_proj_weight`` (or ``q/k/v_proj_weight``): whole heads, or the same channels of every
head (the rectangle the plan keeps); anything else is reported, not guessed.

``nn.TransformerEncoderLayer`` has a fused path of its own (eval, no grad) that reads its
attention's and norms' tensors and sizes, not their forward: where one of them became a
slimc class (an exact LayerNorm, a ``SlimMultiheadAttention``), the layer's
``activation_relu_or_gelu`` flag — which only that path reads — is cleared, so its modules run.
"""
from __future__ import annotations

import numpy as np
from torch import nn

from slimc.surgery.leaves import module_pairs
from slimc.surgery.modules import SlimMultiheadAttention, original_scale


def _kept(plan, name: str, n: int) -> np.ndarray:
    k = plan.kept_idx(("p", name, 0))
    return np.arange(n) if k is None else np.asarray(k)


def _heads(rows: np.ndarray, head_dim: int) -> tuple[tuple[int, ...], int] | None:
    """(kept heads, channels kept per head) of projection rows laid out head after head;
    None where the heads do not keep the same channels."""
    heads, offsets = rows // head_dim, rows % head_dim
    kept = tuple(sorted(set(heads.tolist())))
    per = [tuple(sorted(offsets[heads == h].tolist())) for h in kept]
    if any(p != per[0] for p in per):
        return None
    return kept, len(per[0]) if per else 0


def _rows(m0: nn.MultiheadAttention, plan, prefix: str) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    e = m0.embed_dim
    if m0._qkv_same_embed_dim:
        r = _kept(plan, prefix + "in_proj_weight", 3 * e)
        return r[r < e], r[(r >= e) & (r < 2 * e)] - e, r[r >= 2 * e] - 2 * e
    return tuple(_kept(plan, prefix + f"{w}_proj_weight", e) for w in "qkv")  # type: ignore[return-value]


def _widths(m: nn.MultiheadAttention) -> tuple[int, int, int, int]:
    """(query width, key width, value width, output width) of the slim module's tensors."""
    if m._qkv_same_embed_dim:
        eq = ek = ev = m.in_proj_weight.shape[1]
    else:
        eq, ek, ev = (m.q_proj_weight.shape[1], m.k_proj_weight.shape[1], m.v_proj_weight.shape[1])
    return eq, ek, ev, m.out_proj.weight.shape[0]


def fix_multihead_attention(slim: nn.Module, original: nn.Module, plan) -> tuple[list[str], list[str], list[str]]:
    """Returns (patched "path.attr: old → new", notes, blockers)."""
    patched, notes, blockers = [], [], []
    for path, m0, m in module_pairs(original, slim):
        if not isinstance(m0, nn.MultiheadAttention):
            continue
        d = m0.head_dim
        q, k, v = (_heads(r, d) for r in _rows(m0, plan, f"{path}." if path else ""))
        if q is None or k is None or v is None or not (q[0] == k[0] == v[0]) or q[1] != k[1]:
            blockers.append(f"{path}: nn.MultiheadAttention keeps different heads or channels in q, k and v")
            continue
        heads, dq, dv = len(q[0]), q[1], v[1]
        if heads == 0:
            blockers.append(f"{path}: nn.MultiheadAttention with every head removed")
            continue
        eq, ek, ev, eo = _widths(m)
        standard = dq == dv == d and heads * d == eq == eo
        new = {"embed_dim": eq, "num_heads": heads, "head_dim": dq, "kdim": ek, "vdim": ev}
        for attr, value in new.items():
            setattr(m, attr, value)
            if getattr(m0, attr) != value:
                patched.append(f"{path}.{attr}: {getattr(m0, attr)} → {value}")
        if not standard:
            m.__class__ = SlimMultiheadAttention
            m.slimc_v_head_dim, m.slimc_scale = dv, original_scale(d)
            notes.append(f"{path}: SlimMultiheadAttention, {heads} heads of {dq} (values {dv}) in {eq} channels: "
                         f"nn.MultiheadAttention's heads are embed_dim // num_heads wide")
    _unfuse_encoder_layers(slim, original, patched)
    return patched, notes, blockers


def _unfuse_encoder_layers(slim: nn.Module, original: nn.Module, patched: list[str]) -> None:
    for path, m0, m in module_pairs(original, slim):
        if not isinstance(m, nn.TransformerEncoderLayer) or not m.activation_relu_or_gelu:
            continue
        if any(type(getattr(m, a)) is not type(getattr(m0, a)) for a in ("self_attn", "norm1", "norm2")):
            patched.append(f"{path}.activation_relu_or_gelu: {m.activation_relu_or_gelu} → 0 (its fused path off)")
            m.activation_relu_or_gelu = 0


__all__ = ["fix_multihead_attention"]
