"""Leaf classes for what a standard layer cannot compute over the kept channels alone.

``ExactLayerNorm`` is an ``nn.LayerNorm`` over the kept channels of a pruned dim whose
mean and variance are taken as if the removed channels were there as zeros — what the
masked model computes:  μ = Σx / C,  σ² = (Σ(x−μ)² + k·μ²) / C,  with C the original
width and k = C − kept.  A subclass of a user's own layer-norm class (``nn.LayerNorm``'s
forward, or any forward measured as a layer norm: channels-first, without weight, computed
in float32) is made on demand and stays picklable: its name encodes its base. What the
measured form is — the dim it normalizes, the tensors it scales and shifts by — the
instance holds (``slimc_dim``, ``slimc_affine``), so the class keeps its own attributes.
"""
from __future__ import annotations

import importlib
import math

import torch
import torch.nn.functional as F
from torch import nn


class _ExactLayerNormForward:
    """A layer norm over dim ``slimc_dim`` (default the last) with the module's tensors named
    in ``slimc_affine`` (scale, shift; "" for none; default ``weight`` and ``bias``) and ``eps``
    (``slimc_eps`` where the class keeps its eps elsewhere). Half-precision inputs are
    normalized in float32 and cast back, as the libraries' norms compute them."""

    full_features: int

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        dim = getattr(self, "slimc_dim", -1)
        moved = dim not in (-1, x.dim() - 1)
        if moved:
            x = x.movedim(dim, -1)
        dtype = x.dtype
        if dtype in (torch.float16, torch.bfloat16):
            x = x.float()
        c_full, c = self.full_features, x.shape[-1]
        eps = getattr(self, "slimc_eps", None)
        eps = self.eps if eps is None else eps
        mean = x.sum(-1, keepdim=True) / c_full
        d = x - mean
        var = ((d * d).sum(-1, keepdim=True) + (c_full - c) * mean * mean) / c_full
        y = d * torch.rsqrt(var + eps)
        w_name, b_name = getattr(self, "slimc_affine", ("weight", "bias"))
        weight, bias = getattr(self, w_name, None) if w_name else None, getattr(self, b_name, None) if b_name else None
        if weight is not None:
            y = y * weight.to(y.dtype)
        if bias is not None:
            y = y + bias.to(y.dtype)
        y = y.to(dtype)
        return y.movedim(-1, dim) if moved else y

    def extra_repr(self) -> str:
        base = super().extra_repr()  # type: ignore[misc]
        return f"{base}, full_features={self.full_features}" if base else f"full_features={self.full_features}"


class ExactLayerNorm(_ExactLayerNormForward, nn.LayerNorm):
    """nn.LayerNorm over kept channels, statistics as if the removed ones were zeros."""


_PREFIX = "ExactLayerNorm_"


def _encode(cls: type) -> str:
    return _PREFIX + f"{cls.__module__}.{cls.__qualname__}".replace("_", "_u").replace(".", "_d")


def _decode(name: str) -> type:
    path = name[len(_PREFIX):].replace("_d", ".").replace("_u", "_")
    mod, _, qual = path.rpartition(".")
    obj = importlib.import_module(mod)
    for part in qual.split("."):
        obj = getattr(obj, part)
    return obj


def exact_layernorm_class(base: type) -> type:
    """The exact subclass of a class whose forward is a layer norm (of the measured form)."""
    if base is nn.LayerNorm:
        return ExactLayerNorm
    name = _encode(base)
    if name not in globals():
        cls = type(name, (_ExactLayerNormForward, base), {"__module__": __name__, "__qualname__": name,
                                                         "__doc__": ExactLayerNorm.__doc__})
        globals()[name] = cls
    return globals()[name]


class SlimMultiheadAttention(nn.MultiheadAttention):
    """An ``nn.MultiheadAttention`` whose heads no longer fill its width: ``num_heads`` heads
    of ``head_dim`` query/key channels and ``slimc_v_head_dim`` value channels, scores
    scaled by the original ``slimc_scale`` (1/√ the original head size), inputs and output
    of any width. The standard module takes its head size from ``embed_dim // num_heads``
    and projects to ``embed_dim`` channels, so it cannot hold heads pruned while the
    hidden size stays, or the hidden size pruned alone; this computes what the masked
    model does, as ``F.multi_head_attention_forward`` does (masks, ``need_weights``,
    ``bias_k``/``bias_v``, ``add_zero_attn``, ``batch_first``, unbatched inputs)."""

    slimc_v_head_dim: int
    slimc_scale: float

    def forward(self, query, key, value, key_padding_mask=None, need_weights=True, attn_mask=None,
                average_attn_weights=True, is_causal=False):
        is_batched = query.dim() == 3
        if self.batch_first and is_batched:
            query, key, value = (x.transpose(1, 0) for x in (query, key, value))
        if not is_batched:
            query, key, value = query.unsqueeze(1), key.unsqueeze(1), value.unsqueeze(1)
            if key_padding_mask is not None:
                key_padding_mask = key_padding_mask.unsqueeze(0)
        tgt_len, bsz, _ = query.shape
        key_padding_mask = F._canonical_mask(mask=key_padding_mask, mask_name="key_padding_mask",
                                             other_type=F._none_or_dtype(attn_mask), other_name="attn_mask",
                                             target_type=query.dtype)
        if is_causal and attn_mask is None:
            raise RuntimeError("Need attn_mask if specifying the is_causal hint.")
        if is_causal and key_padding_mask is None and not need_weights:
            attn_mask = None
        else:
            attn_mask = F._canonical_mask(mask=attn_mask, mask_name="attn_mask", other_type=None, other_name="",
                                          target_type=query.dtype, check_other=False)
            if key_padding_mask is not None:
                is_causal = False
        h, dq, dv = self.num_heads, self.head_dim, self.slimc_v_head_dim
        if self._qkv_same_embed_dim:
            w_q, w_k, w_v = self.in_proj_weight.split([h * dq, h * dq, h * dv])
        else:
            w_q, w_k, w_v = self.q_proj_weight, self.k_proj_weight, self.v_proj_weight
        b_q = b_k = b_v = None
        if self.in_proj_bias is not None:
            b_q, b_k, b_v = self.in_proj_bias.split([h * dq, h * dq, h * dv])
        q, k, v = F.linear(query, w_q, b_q), F.linear(key, w_k, b_k), F.linear(value, w_v, b_v)
        if attn_mask is not None and attn_mask.dim() == 2:
            attn_mask = attn_mask.unsqueeze(0)
        if self.bias_k is not None and self.bias_v is not None:
            k = torch.cat([k, self.bias_k.repeat(1, bsz, 1)])
            v = torch.cat([v, self.bias_v.repeat(1, bsz, 1)])
            attn_mask = F.pad(attn_mask, (0, 1)) if attn_mask is not None else None
            key_padding_mask = F.pad(key_padding_mask, (0, 1)) if key_padding_mask is not None else None
        q = q.view(tgt_len, bsz * h, dq).transpose(0, 1)
        k = k.view(k.shape[0], bsz * h, dq).transpose(0, 1)
        v = v.view(v.shape[0], bsz * h, dv).transpose(0, 1)
        if self.add_zero_attn:
            k = torch.cat([k, k.new_zeros(bsz * h, 1, dq)], dim=1)
            v = torch.cat([v, v.new_zeros(bsz * h, 1, dv)], dim=1)
            attn_mask = F.pad(attn_mask, (0, 1)) if attn_mask is not None else None
            key_padding_mask = F.pad(key_padding_mask, (0, 1)) if key_padding_mask is not None else None
        src_len = k.size(1)
        if key_padding_mask is not None:
            key_padding_mask = key_padding_mask.view(bsz, 1, 1, src_len).expand(-1, h, -1, -1).reshape(
                bsz * h, 1, src_len)
            attn_mask = key_padding_mask if attn_mask is None else attn_mask + key_padding_mask
        dropout_p = self.dropout if self.training else 0.0
        if need_weights:
            q_scaled = q * self.slimc_scale
            weights = torch.bmm(q_scaled, k.transpose(-2, -1)) if attn_mask is None else \
                torch.baddbmm(attn_mask, q_scaled, k.transpose(-2, -1))
            weights = F.softmax(weights, dim=-1)
            if dropout_p > 0.0:
                weights = F.dropout(weights, p=dropout_p)
            out = torch.bmm(weights, v).transpose(0, 1).reshape(tgt_len * bsz, h * dv)
            weights = weights.view(bsz, h, tgt_len, src_len)
            if average_attn_weights:
                weights = weights.mean(dim=1)
            if not is_batched:
                weights = weights.squeeze(0)
        else:
            if attn_mask is not None:
                attn_mask = attn_mask.unsqueeze(0) if attn_mask.size(0) == 1 else attn_mask.view(bsz, h, -1, src_len)
            out = F.scaled_dot_product_attention(q.view(bsz, h, tgt_len, dq), k.view(bsz, h, src_len, dq),
                                                 v.view(bsz, h, src_len, dv), attn_mask, dropout_p, is_causal,
                                                 scale=self.slimc_scale)
            out = out.permute(2, 0, 1, 3).reshape(bsz * tgt_len, h * dv)
            weights = None
        out = F.linear(out, self.out_proj.weight, self.out_proj.bias).view(tgt_len, bsz, -1)
        if not is_batched:
            out = out.squeeze(1)
        elif self.batch_first:
            out = out.transpose(1, 0)
        return out, weights

    def extra_repr(self) -> str:
        return f"heads={self.num_heads}, head_dim={self.head_dim}, v_head_dim={self.slimc_v_head_dim}, " \
               f"scale={self.slimc_scale:.4g}"


def original_scale(head_dim: int) -> float:
    """The score scale ``F.multi_head_attention_forward`` uses for heads of ``head_dim``."""
    return math.sqrt(1.0 / float(head_dim))


def __getattr__(name: str):  # unpickling an exact subclass of a user's class in a fresh process
    if name.startswith(_PREFIX):
        return exact_layernorm_class(_decode(name))
    raise AttributeError(name)


__all__ = ["ExactLayerNorm", "SlimMultiheadAttention", "exact_layernorm_class", "original_scale"]
