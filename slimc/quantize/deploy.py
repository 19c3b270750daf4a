"""The trained quantizers → an int8 ONNX file that computes what the fake-quant model computes.

The steps, on a copy of the float model whose weights already hold their quantized values
(:func:`slimc.copying.safe_copy` bakes the weight parametrizations):

1. fold every BatchNorm that follows a quantized conv into it (the int8 conv needs its
   weight and bias whole); the weight's grid is scaled per channel with it;
2. check that every quantized weight lies on its grid (a weight changed after training, or a
   grid that does not describe it, is an error here, not a wrong file);
3. put :func:`slimc.quantize.qdq_op.qdq` on every quantized weight (a parametrization) and
   activation (hooks; BNN's sign as ``torch.sign``), and export with torch's exporter: each
   becomes QuantizeLinear → DequantizeLinear;
4. :mod:`slimc.quantize.onnx_passes`: weights stored as int8 initializers, conv/gemm biases
   as int32 at ``s_input · s_weight`` (what onnxruntime's int8 kernels take).
"""
from __future__ import annotations

import os
import tempfile
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import nn
from torch.nn.utils import parametrize

from slimc.errors import ExportError, VerifyError, describe
from slimc.quantize.grid import Grid
from slimc.quantize.qdq_op import qdq, translation
from slimc.quantize.quantizers import bn_factor, conv_bn_pairs


@dataclass
class Points:
    """Where the quantizers are, by module name of the module being deployed."""

    weights: dict[str, Grid] = field(default_factory=dict)  # the grid of the weight *before* step 1
    folded: set[str] = field(default_factory=set)  # weights whose grid already includes their BatchNorm
    inputs: dict[str, Grid | str] = field(default_factory=dict)  # a grid, or "sign"
    outputs: dict[str, Grid | str] = field(default_factory=dict)

    def __bool__(self) -> bool:
        return bool(self.weights or self.inputs or self.outputs)


def _replace(root: nn.Module, name: str, new: nn.Module) -> None:
    parent, _, leaf = name.rpartition(".")
    setattr(root.get_submodule(parent) if parent else root, leaf, new)


@torch.no_grad()
def fold_batchnorms(model: nn.Module, points: Points, inputs: tuple) -> dict[str, str]:
    """Step 1, in place: conv ← conv·s, bias ← (b − μ)·s + β, BatchNorm → Identity, for each
    quantized conv a BatchNorm follows. An output quantizer of the conv moves to the BatchNorm's
    name already (the quantizers put it there). Returns conv → BatchNorm folded."""
    pairs = {c: b for c, b in conv_bn_pairs(model, inputs).items() if c in points.weights}
    for conv_name, bn_name in pairs.items():
        conv, bn = model.get_submodule(conv_name), model.get_submodule(bn_name)
        s = bn_factor(bn).detach()
        w = conv.weight
        conv.weight = nn.Parameter(w * s.reshape(-1, *([1] * (w.dim() - 1))))
        b = conv.bias if conv.bias is not None else torch.zeros_like(s)
        mean = bn.running_mean if bn.running_mean is not None else torch.zeros_like(s)
        beta = bn.bias if bn.bias is not None else torch.zeros_like(s)
        conv.bias = nn.Parameter((b - mean) * s + beta)
        _replace(model, bn_name, nn.Identity())
        if conv_name not in points.folded:
            points.weights[conv_name] = points.weights[conv_name].scaled(s)
            points.folded.add(conv_name)
    return pairs


def check_on_grid(model: nn.Module, points: Points) -> None:
    """Step 2: every quantized weight is its grid's integers times its scale."""
    for name, grid in points.weights.items():
        w = model.get_submodule(name).weight.detach().float()
        back = grid.values(grid.integers(w))
        err = float((back - w).abs().max()) if w.numel() else 0.0
        if err > 1e-4 * max(float(w.abs().max()), 1e-12) + 1e-12:
            raise VerifyError(f"the weight of '{name}' is not on its quantization grid (max |Δ| {err:.3g}): "
                              "was it changed after the quantizers ran? export right after training")


class _QDQWeight(nn.Module):
    def __init__(self, grid: Grid):
        super().__init__()
        self.register_buffer("scale", grid.scale.detach().float().clone())
        self.register_buffer("zero_point", grid.zero_point.detach().int().clone())
        self.per_channel, self.axis = grid.axis is not None, grid.axis or 0
        self.qmin, self.qmax = grid.qmin, grid.qmax

    def forward(self, w: torch.Tensor) -> torch.Tensor:
        return qdq(w, self.scale, self.zero_point, self.per_channel, self.axis, self.qmin, self.qmax)


def _act(point: Grid | str):
    if point == "sign":
        return torch.sign
    g = point
    scale, zp = g.scale.detach().float().reshape(()).clone(), g.zero_point.detach().int().reshape(()).clone()
    return lambda x: qdq(x, scale, zp, False, 0, g.qmin, g.qmax) if isinstance(x, torch.Tensor) \
        and x.is_floating_point() else x


def attach_qdq(model: nn.Module, points: Points) -> None:
    """Step 3's torch side, in place: the qdq op on every weight and activation of ``points``."""
    for name, grid in points.weights.items():
        parametrize.register_parametrization(model.get_submodule(name), "weight", _QDQWeight(grid), unsafe=True)
    for name, point in points.inputs.items():
        f = _act(point)
        model.get_submodule(name).register_forward_pre_hook(lambda _m, a, f=f: (f(a[0]), *a[1:]) if a else None)
    for name, point in points.outputs.items():
        f = _act(point)
        model.get_submodule(name).register_forward_hook(lambda _m, _a, out, f=f: f(out))


def deploy_module(model: nn.Module, points: Points, inputs: tuple, *, quantized: bool = True) -> nn.Module:
    """Steps 1–3 on a copy of ``model`` (float, weights already quantized); ``quantized=False``:
    the same model with its BatchNorms folded and no qdq (the float file it is compared with)."""
    from slimc.copying import safe_copy

    dep = safe_copy(model).eval()
    pts = Points(dict(points.weights), set(points.folded), dict(points.inputs), dict(points.outputs))
    fold_batchnorms(dep, pts, inputs)
    check_on_grid(dep, pts)
    if quantized:
        attach_qdq(dep, pts)
    return dep


def export_deploy(module: nn.Module, inputs: tuple, path: str | os.PathLike, *,
                  dynamic_dims: dict[int, list[int]] | None = None) -> None:
    """Step 3's export and step 4: ``module`` (from :func:`deploy_module`) → ``path``."""
    import onnx

    from slimc.onnx.quiet import Quiet
    from slimc.onnx.shapes import resolve_dynamic_dims
    from slimc.quantize.onnx_passes import finish

    tensors = tuple(x for x in inputs if isinstance(x, torch.Tensor))
    if len(tensors) != len(inputs):
        raise ExportError("the int8 export takes tensor inputs only (no None or Python values in example_inputs)")
    dims = resolve_dynamic_dims(tensors, dynamic_dims, True)
    batch = torch.export.Dim("batch")
    shapes = tuple({a: batch if a == 0 else torch.export.Dim.DYNAMIC for a in dims[i]} if i in dims else None
                   for i in range(len(tensors)))
    names = ["input"] if len(tensors) == 1 else [f"input_{i}" for i in range(len(tensors))]
    from slimc.verify import flat_outputs

    with torch.no_grad():
        n_out = len(flat_outputs(module(*tensors)))
    outputs = ["output"] if n_out == 1 else [f"output_{i}" for i in range(n_out)]
    try:
        with Quiet(), torch.no_grad():
            program = torch.onnx.export(module, tensors, None, dynamo=True, dynamic_shapes=shapes, input_names=names,
                                        output_names=outputs, optimize=True, verbose=False, report=False, verify=False,
                                        custom_translation_table=translation())
    except Exception as e:
        raise ExportError(f"ONNX export of the quantized {type(module).__name__} failed: "
                          f"{describe(e, 240, innermost=True)}") from e
    with tempfile.TemporaryDirectory(prefix=".slimc-q-") as d:
        tmp = os.path.join(d, "q.onnx")
        program.save(tmp, external_data=False)
        model = onnx.load(tmp)
    onnx.save(finish(model), os.fspath(path))


def weight_names(points: Points) -> dict[str, str]:
    """ONNX initializer name of a quantized weight (as the parametrization names it) → module."""
    return {f"{n}.parametrizations.weight.original": n for n in points.weights}


def describe_points(points: Points) -> dict[str, Any]:
    def act(p: Grid | str) -> Any:
        return p if isinstance(p, str) else p.to_dict()

    return {"weights": {n: g.to_dict() for n, g in points.weights.items()},
            "inputs": {n: act(p) for n, p in points.inputs.items()},
            "outputs": {n: act(p) for n, p in points.outputs.items()}}
