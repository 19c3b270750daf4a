"""``slimc_quant::qdq``: a quantize-dequantize torch op that torch's ONNX exporter turns into
QuantizeLinear → DequantizeLinear with the same scale and zero point (per tensor, or per
channel along an axis).

torch's own fake-quantize ops cannot be exported: ``torch.export`` has no fake-tensor kernel
for ``fake_quantize_per_tensor_affine_cachemask``, and the TorchScript exporter has no
per-channel translation. This op computes what ``torch.fake_quantize_*_affine`` compute (it
calls them), has a shape-only fake kernel, and is translated by :func:`translation` — so the
int8 file holds each quantizer exactly where the trained model applies it, with its scale.
"""
from __future__ import annotations

import torch

_LIB = "slimc_quant"


@torch.library.custom_op(f"{_LIB}::qdq", mutates_args=())
def qdq(x: torch.Tensor, scale: torch.Tensor, zero_point: torch.Tensor, per_channel: bool, axis: int,
        qmin: int, qmax: int) -> torch.Tensor:
    if per_channel:
        return torch.fake_quantize_per_channel_affine(x, scale.float(), zero_point.int(), axis, qmin, qmax)
    return torch.fake_quantize_per_tensor_affine(x, scale.float().reshape(()), zero_point.int().reshape(()), qmin, qmax)


@qdq.register_fake
def _(x, scale, zero_point, per_channel, axis, qmin, qmax):
    return torch.empty_like(x)


def translation() -> dict:
    """The exporter's ``custom_translation_table`` for :func:`qdq`."""
    import onnx
    from onnxscript import opset18 as op

    def qdq_onnx(x, scale, zero_point, per_channel: bool, axis: int, qmin: int, qmax: int):
        zp = op.Cast(zero_point, to=onnx.TensorProto.UINT8 if qmin >= 0 else onnx.TensorProto.INT8)
        if per_channel:  # weights: folded into int8 initializers, always on their grid (no clamp)
            return op.DequantizeLinear(op.QuantizeLinear(x, scale, zp, axis=axis), scale, zp, axis=axis)
        full = (0, 255) if qmin >= 0 else (-128, 127)
        if (qmin, qmax) != full:  # a narrower grid (sub-8-bit) in the 8-bit container: clamp first
            lo = op.Mul(op.Sub(op.CastLike(qmin, scale), op.CastLike(zero_point, scale)), scale)
            hi = op.Mul(op.Sub(op.CastLike(qmax, scale), op.CastLike(zero_point, scale)), scale)
            x = op.Clip(x, op.CastLike(lo, x), op.CastLike(hi, x))
        return op.DequantizeLinear(op.QuantizeLinear(x, scale, zp), scale, zp)

    return {torch.ops.slimc_quant.qdq.default: qdq_onnx}
