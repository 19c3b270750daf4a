"""Quantization grids: what one quantizer maps a tensor onto, and its straight-through forms.

A :class:`Grid` is an affine integer grid — ``x ≈ scale · (q − zero_point)`` with ``q`` in
``[qmin, qmax]`` — per tensor (``axis`` None) or per channel along ``axis``. Every quantizer
slimc trains or exports ends on one: QAT's affine/symmetric ranges, DoReFa's ``(2k − n)/n``
(odd integers over ``n = 2^bits − 1``: symmetric, zero point 0), BNN's ``sign`` (±1, scale 1).
The grid is also what the ONNX file holds: int8/uint8 values with QuantizeLinear /
DequantizeLinear of the same scale and zero point, so onnxruntime computes what torch does.

Straight-through estimators (STE): rounding passes the gradient through unchanged inside
the range (``torch.fake_quantize_*`` do this), BNN's sign passes it where ``|x| ≤ 1``.
"""
from __future__ import annotations

from dataclasses import dataclass

import torch

#: the smallest scale a grid takes (an all-zero tensor — a pruned channel — still has a grid)
MIN_SCALE = 1e-8


@dataclass(frozen=True)
class Grid:
    scale: torch.Tensor  # 0-d (per tensor) or 1-d (per channel along ``axis``)
    zero_point: torch.Tensor  # int32, same shape as scale
    qmin: int
    qmax: int
    axis: int | None = None

    @property
    def signed(self) -> bool:
        return self.qmin < 0

    def fake(self, x: torch.Tensor) -> torch.Tensor:
        """``x`` on the grid (float), with the straight-through gradient of torch's own ops."""
        s, z = self.scale.detach().float(), self.zero_point.detach().int()
        if self.axis is None:
            return torch.fake_quantize_per_tensor_affine(x, s.reshape(()), z.reshape(()), self.qmin, self.qmax)
        return torch.fake_quantize_per_channel_affine(x, s, z, self.axis, self.qmin, self.qmax)

    def integers(self, x: torch.Tensor) -> torch.Tensor:
        """The grid's integers for ``x`` (int32), as QuantizeLinear computes them."""
        s, z = self._view(self.scale.float(), x), self._view(self.zero_point.float(), x)
        return torch.clamp(torch.round(x / s) + z, self.qmin, self.qmax).to(torch.int32)

    def values(self, q: torch.Tensor) -> torch.Tensor:
        s, z = self._view(self.scale.float(), q), self._view(self.zero_point.float(), q)
        return (q.float() - z) * s

    def _view(self, t: torch.Tensor, like: torch.Tensor) -> torch.Tensor:
        if self.axis is None:
            return t.reshape(())
        shape = [1] * like.dim()
        shape[self.axis] = -1
        return t.reshape(shape)

    def scaled(self, factor: torch.Tensor, axis: int = 0) -> "Grid":
        """The same integers under ``scale · factor`` (per channel along ``axis``): the grid of a
        weight after a BatchNorm is folded into it."""
        base = self.scale.float().reshape(-1) if self.axis is not None else self.scale.float().reshape(()).expand_as(factor)
        zp = self.zero_point.int().reshape(-1) if self.axis is not None else \
            self.zero_point.int().reshape(()).expand_as(factor)
        return Grid((base * factor.float()).clamp_min(MIN_SCALE), zp.clone(), self.qmin, self.qmax, axis)

    def to_dict(self) -> dict:
        per = "per_tensor" if self.axis is None else f"per_channel(axis={self.axis})"
        return {"qmin": self.qmin, "qmax": self.qmax, "granularity": per,
                "scale": _summary(self.scale), "zero_point": _summary(self.zero_point.float())}


def _summary(t: torch.Tensor) -> float | dict:
    t = t.detach().float().reshape(-1)
    if t.numel() == 1:
        return float(t[0])
    return {"min": float(t.min()), "max": float(t.max()), "channels": t.numel()}


def int_range(bits: int, signed: bool, restricted: bool = False) -> tuple[int, int]:
    """``[qmin, qmax]`` of a ``bits``-bit integer (restricted: symmetric, −127..127 at 8 bit)."""
    if signed:
        hi = 2 ** (bits - 1) - 1
        return (-hi if restricted else -hi - 1), hi
    return 0, 2 ** bits - 1


def affine_grid(lo: torch.Tensor, hi: torch.Tensor, bits: int, *, symmetric: bool, signed: bool,
                axis: int | None = None) -> Grid:
    """The grid covering ``[lo, hi]`` (tensors: per tensor 0-d, per channel 1-d; 0 always inside).
    Symmetric: zero point 0 (the middle of an unsigned range), scale ``max(|lo|, |hi|) / qmax``."""
    lo = torch.minimum(lo.detach().float(), torch.zeros_like(lo, dtype=torch.float))
    hi = torch.maximum(hi.detach().float(), torch.zeros_like(hi, dtype=torch.float))
    if symmetric:
        qmin, qmax = int_range(bits, signed, restricted=signed)
        bound = torch.maximum(-lo, hi)
        half = (qmax - qmin) / 2
        scale = (bound / half).clamp_min(MIN_SCALE)
        zp = torch.full_like(scale, 0 if signed else (qmin + qmax + 1) // 2, dtype=torch.int32)
        return Grid(scale, zp, qmin, qmax, axis)
    qmin, qmax = int_range(bits, signed)
    scale = ((hi - lo) / (qmax - qmin)).clamp_min(MIN_SCALE)
    zp = torch.clamp(qmin - torch.round(lo / scale), qmin, qmax).to(torch.int32)
    return Grid(scale, zp, qmin, qmax, axis)


def weight_grid(w: torch.Tensor, bits: int, *, per_channel: bool, symmetric: bool = True) -> Grid:
    """The grid of a weight from its own range: per output channel (dim 0) or per tensor."""
    if per_channel:
        flat = w.detach().reshape(w.shape[0], -1)
        return affine_grid(flat.amin(1), flat.amax(1), bits, symmetric=symmetric, signed=True, axis=0)
    return affine_grid(w.detach().amin(), w.detach().amax(), bits, symmetric=symmetric, signed=True)


class _RoundSTE(torch.autograd.Function):
    @staticmethod
    def forward(ctx, x: torch.Tensor) -> torch.Tensor:  # noqa: D401 - autograd signature
        return torch.round(x)

    @staticmethod
    def backward(ctx, g: torch.Tensor) -> torch.Tensor:
        return g


class _SignSTE(torch.autograd.Function):
    """BNN's sign: the gradient passes where ``|x| ≤ 1`` and is cut outside (Courbariaux et al.)."""

    @staticmethod
    def forward(ctx, x: torch.Tensor) -> torch.Tensor:
        ctx.save_for_backward(x)
        return torch.sign(x)

    @staticmethod
    def backward(ctx, g: torch.Tensor) -> torch.Tensor:
        (x,) = ctx.saved_tensors
        return g * (x.abs() <= 1).to(g.dtype)


def sign_ste(x: torch.Tensor) -> torch.Tensor:
    return _SignSTE.apply(x)


def dorefa_levels(bits: int) -> int:
    return 2 ** bits - 1


def dorefa_weight(w: torch.Tensor, bits: int) -> torch.Tensor:
    """DoReFa-Net's k-bit weights (Zhou et al. 2016): ``2·quantize_k(tanh(w) / (2·max|tanh w|) + ½) − 1``,
    rounding straight-through; values ``(2k − n)/n`` for ``k`` in ``0..n``, ``n = 2^bits − 1``."""
    n = dorefa_levels(bits)
    t = torch.tanh(w)
    t = t / (2 * t.detach().abs().max().clamp_min(MIN_SCALE)) + 0.5
    return 2 * _RoundSTE.apply(t * n) / n - 1


def dorefa_grid(bits: int) -> Grid:
    """DoReFa's weights as integers: ``2k − n`` in ``[−n, n]``, scale ``1/n``."""
    n = dorefa_levels(bits)
    return Grid(torch.tensor(1.0 / n), torch.tensor(0, dtype=torch.int32), -n, n)


def sign_grid() -> Grid:
    """BNN's ±1 (0 stays 0: a pruned weight stays pruned) with scale 1."""
    return Grid(torch.tensor(1.0), torch.tensor(0, dtype=torch.int32), -1, 1)
