"""Check an ONNX file: ``onnx.checker`` (full check), then onnxruntime against the torch
module on seeded random inputs at the example shape and at a second shape that changes
every dynamic dim (see :mod:`slimc.onnx.shapes`).

    check_onnx(path, module, example_inputs) -> OnnxCheck
"""
from __future__ import annotations

import dataclasses
import math
import os
import time
from dataclasses import dataclass, field
from typing import Any, Sequence

import numpy as np
import torch

from slimc.errors import ExportError, describe
from slimc.onnx.quiet import Quiet
from slimc.onnx.shapes import CheckRun, check_runs, example_batch, normalize_inputs, random_like, without_absent
from slimc.onnx.stats import dynamic_axes, exporter_of, graph_inputs, load_graph, onnx_stats
from slimc.modes import eval_mode

__all__ = ["OnnxCheck", "OrtComparison", "check_onnx", "compare_with_torch", "eval_mode", "tensor_leaves"]


@dataclass
class OnnxCheck:
    """Result of :func:`export_onnx` / :func:`check_onnx`."""

    path: str
    exporter: str  # "dynamo" or "torchscript" ("" when unknown, e.g. check_onnx on a foreign file)
    fallback_reason: str | None
    opset: int
    input_names: list[str]
    output_names: list[str]
    initializer_bytes: int
    initializer_params: int
    batch_sizes: list[int]  # batch sizes checked with onnxruntime (empty: not checked)
    max_abs_diff: float
    output_scale: float
    providers: list[str]
    selection_ops: dict[str, int]
    warnings: list[str] = field(default_factory=list)
    checked: bool = False
    tolerance: float = 0.0  # the bound max_abs_diff was compared against
    export_seconds: float = 0.0
    check_seconds: float = 0.0
    dynamic_dims: dict[str, list[int]] = field(default_factory=dict)  # input name → dims the file leaves dynamic
    input_shapes: list[list[list[int]]] = field(default_factory=list)  # per onnxruntime run, every input's shape

    @classmethod
    def of_file(cls, path: str, *, exporter: str, fallback_reason: str | None = None,
                warnings: list[str] | None = None, export_seconds: float = 0.0) -> "OnnxCheck":
        """The file's statistics, not yet checked (see :meth:`record`)."""
        stats = onnx_stats(path)
        return cls(
            path=path, exporter=exporter, fallback_reason=fallback_reason, opset=stats["opset"],
            input_names=stats["input_names"], output_names=stats["output_names"],
            initializer_bytes=stats["initializer_bytes"], initializer_params=stats["initializer_params"],
            batch_sizes=[], max_abs_diff=float("nan"), output_scale=float("nan"), providers=[],
            selection_ops=stats["selection_ops"], warnings=warnings if warnings is not None else [],
            checked=False, tolerance=float("nan"), export_seconds=export_seconds,
        )

    def record(self, cmp: "OrtComparison", seconds: float) -> None:
        """Fill in what the onnxruntime comparison measured."""
        self.batch_sizes = cmp.batch_sizes
        self.input_shapes = cmp.input_shapes
        self.dynamic_dims = cmp.dynamic_dims
        self.max_abs_diff = cmp.max_abs_diff
        self.output_scale = cmp.output_scale
        self.tolerance = cmp.tolerance
        self.providers = cmp.providers
        self.checked = True
        self.check_seconds = seconds

    def to_dict(self) -> dict:
        d = dataclasses.asdict(self)
        # keep the dict JSON-friendly (no NaN/inf floats)
        for k in ("max_abs_diff", "output_scale", "tolerance"):
            v = d[k]
            if isinstance(v, float) and not math.isfinite(v):
                d[k] = None
        return d


@dataclass
class OrtComparison:
    """What onnxruntime computed against the torch module."""

    exporter: str
    batch_sizes: list[int]
    input_shapes: list[list[list[int]]]
    dynamic_dims: dict[str, list[int]]
    max_abs_diff: float
    output_scale: float
    tolerance: float
    providers: list[str]


# --------------------------------------------------------------------------- torch-side helpers


def tensor_leaves(out: Any) -> list[torch.Tensor]:
    from torch.utils import _pytree as pytree

    return [x for x in pytree.tree_leaves(out) if isinstance(x, torch.Tensor)]


def _to_numpy(t: torch.Tensor) -> np.ndarray:
    t = t.detach().cpu()
    if t.dtype == torch.bfloat16:
        t = t.float()
    return t.numpy()


def _max_abs_diff(ref: np.ndarray, got: np.ndarray) -> float:
    if ref.size == 0:
        return 0.0
    a = ref.astype(np.float64) if ref.dtype != np.bool_ else ref.astype(np.int64).astype(np.float64)
    b = got.astype(np.float64) if got.dtype != np.bool_ else got.astype(np.int64).astype(np.float64)
    with np.errstate(invalid="ignore", over="ignore"):
        same = (a == b) | (np.isnan(a) & np.isnan(b))
        diff = np.where(same, 0.0, np.abs(a - b))
    diff = np.where(np.isnan(diff), np.inf, diff)
    return float(diff.max())


def _max_abs(ref: np.ndarray) -> float:
    if ref.size == 0:
        return 0.0
    a = np.abs(ref.astype(np.float64))
    a = a[np.isfinite(a)]
    return float(a.max()) if a.size else 0.0


# --------------------------------------------------------------------------- the steps


def _run_checker(path: str, display_path: str) -> None:
    import onnx

    try:
        onnx.checker.check_model(path, full_check=True)
    except Exception as e:
        raise ExportError(
            f"ONNX checker rejected {display_path}: {describe(e, 240, innermost=True)}; "
            "the exporter produced an invalid graph - try another opset or simplify the model"
        ) from e


def _runs_to_check(infos: list[Any], example_inputs: tuple[torch.Tensor, ...], batch_sizes: Sequence[int],
                   display_path: str, notes: list[str]) -> tuple[list[CheckRun], list[int], dict[str, list[int]]]:
    """The onnxruntime runs (input shapes), the batch sizes they use, and the dynamic dims
    the file declares per input name (``infos``: the file's real inputs)."""
    if len(infos) > len(example_inputs):
        raise ExportError(
            f"{display_path} has {len(infos)} inputs but {len(example_inputs)} example inputs were given; "
            "pass one example tensor per model input"
        )
    declared = {k: dynamic_axes(info) for k, info in enumerate(infos)}
    dims = {k: declared.get(k) for k in range(len(example_inputs))}  # None: no shape recorded
    batch = example_batch(example_inputs)
    batch_sizes = [int(b) for b in batch_sizes] if batch_sizes else []
    dynamic_batch = any(d is None or 0 in d for d in dims.values())
    if not dynamic_batch:
        if batch is not None and any(b != batch for b in batch_sizes):
            notes.append(f"{os.path.basename(display_path)} has a fixed batch size; checked only batch {batch}")
        batch_sizes = [batch] if batch is not None else [1]
    if not batch_sizes:
        batch_sizes = [batch or 1]
    for b in batch_sizes:
        if b < 1:
            raise ExportError(f"invalid batch size {b} in batch_sizes; use positive integers")
    named = {info.name: list(d) for info, d in zip(infos, declared.values()) if d}
    return check_runs(example_inputs, dims, batch_sizes), batch_sizes, named


def _default_providers() -> list[str]:
    import onnxruntime as ort

    available = ort.get_available_providers()
    return (["CUDAExecutionProvider"] if "CUDAExecutionProvider" in available else []) + ["CPUExecutionProvider"]


def _session(path: str, providers: Sequence[str] | None, display_path: str, notes: list[str]) -> Any:
    import onnxruntime as ort

    so = ort.SessionOptions()
    so.log_severity_level = 4  # failures raise; nothing is logged to the console
    try:
        with Quiet() as q:
            sess = ort.InferenceSession(path, sess_options=so, providers=list(providers or _default_providers()))
        notes.extend(q.warnings)
    except Exception as e:
        raise ExportError(
            f"onnxruntime cannot load {display_path}: {describe(e, 240, innermost=True)}; "
            "the model uses an op/opset onnxruntime does not support - try a different opset"
        ) from e
    return sess


def _compare_outputs(sess: Any, module: torch.nn.Module, example_inputs: tuple[torch.Tensor, ...],
                     runs: list[CheckRun], input_names: list[str], output_names: list[str],
                     display_path: str) -> tuple[list[tuple[str, str, float]], float]:
    """(run label, output name, max |diff|) per run and output, and the largest |output|."""
    import onnxruntime as ort

    sess_inputs = {i.name for i in sess.get_inputs()}
    quiet = ort.RunOptions()
    quiet.log_severity_level = 4  # a run that fails raises; its error is not logged to the console too
    results: list[tuple[str, str, float]] = []
    scale = 0.0
    with eval_mode(module), torch.no_grad():
        for run in runs:
            inputs = [random_like(ex, shape, seed=1234 + 7919 * run.batch + k + 65537 * run.grown)
                      for k, (ex, shape) in enumerate(zip(example_inputs, run.shapes))]
            where = run.label()
            try:
                refs = tensor_leaves(module(*inputs))
            except Exception as e:
                raise ExportError(
                    f"torch module failed on random inputs at {where}: {describe(e, 240, innermost=True)}; "
                    + ("check example_inputs (dtype/shape) or use dynamic_batch=False" if not run.grown else
                       "the model does not run at that shape - leave that dim out of dynamic_dims")
                ) from e
            feed = {}
            for name, t in zip(input_names, inputs):
                if name in sess_inputs:
                    if t.dtype == torch.bfloat16:
                        raise ExportError(
                            "bfloat16 inputs cannot be fed to onnxruntime from numpy; "
                            "export with float32/float16 inputs or pass check=False"
                        )
                    feed[name] = _to_numpy(t)
            try:
                got = sess.run(None, feed, quiet)
            except Exception as e:
                what = "batch size" if not run.grown else "shape"
                raise ExportError(
                    f"onnxruntime failed to run {os.path.basename(display_path)} at {where}: "
                    f"{describe(e, 240, innermost=True)}; the export is probably specialised to the example {what} "
                    "(e.g. a hard-coded view/reshape) - make it "
                    + ("batch-agnostic or use dynamic_batch=False" if not run.grown else
                       "shape-agnostic or leave that dim out of dynamic_dims")
                ) from e
            if len(got) != len(refs):
                raise ExportError(
                    f"{display_path} has {len(got)} outputs but the torch module returns {len(refs)} tensors; "
                    "return a flat tuple of distinct tensors from forward()"
                )
            for name, r, g in zip(output_names, refs, got):
                rn, gn = _to_numpy(r), np.asarray(g)
                if tuple(rn.shape) != tuple(gn.shape):
                    raise ExportError(
                        f"output '{name}' at {where} has shape {tuple(gn.shape)} in onnxruntime "
                        f"but {tuple(rn.shape)} in torch: the ONNX exporter baked the example's "
                        + ("batch size into the graph; pass --static-batch (ONNX for that batch size only)"
                           if not run.grown else "shape into the graph; leave that dim out of dynamic_dims")
                    )
                scale = max(scale, _max_abs(rn))
                results.append((where, name, _max_abs_diff(rn, gn)))
    return results, scale


def compare_with_torch(path: str, module: torch.nn.Module, example_inputs: tuple[torch.Tensor, ...], *,
                       batch_sizes: Sequence[int], rtol_scale: float, providers: Sequence[str] | None,
                       display_path: str, notes: list[str]) -> OrtComparison:
    """Run the checker, then onnxruntime at every check run; raise unless every output is
    within ``rtol_scale * max(1, output scale)`` of the torch module's."""
    _run_checker(path, display_path)
    model = load_graph(path)
    infos = graph_inputs(model)
    runs, batches, declared = _runs_to_check(infos, example_inputs, batch_sizes, display_path, notes)
    sess = _session(path, providers, display_path, notes)
    input_names = [i.name for i in infos]
    output_names = [o.name for o in model.graph.output]
    diffs, scale = _compare_outputs(sess, module, example_inputs, runs, input_names, output_names, display_path)
    tol = rtol_scale * max(1.0, scale)
    for where, name, d in diffs:
        if not (d <= tol):
            raise ExportError(
                f"onnxruntime output '{name}' diverges from torch at {where}: "
                f"max |diff| = {d:.3g} > tolerance {tol:.3g} (output scale {scale:.3g}); "
                "the exported graph is not equivalent - inspect the model or raise rtol_scale"
            )
    return OrtComparison(
        exporter=exporter_of(model),
        batch_sizes=batches,
        input_shapes=[[list(s) for s in r.shapes] for r in runs],
        dynamic_dims=declared,
        max_abs_diff=max((d for _, _, d in diffs), default=0.0),
        output_scale=scale,
        tolerance=tol,
        providers=list(sess.get_providers()),
    )


def check_onnx(
    path: str | os.PathLike,
    module: torch.nn.Module,
    example_inputs: tuple[torch.Tensor, ...],
    *,
    batch_sizes: Sequence[int] = (1, 3),
    rtol_scale: float = 1e-4,
    providers: Sequence[str] | None = None,
) -> OnnxCheck:
    """Check an existing ONNX file against ``module`` with onnx.checker and onnxruntime.

    Inputs are seeded random tensors shaped like ``example_inputs``: dim 0 replaced by
    each batch size where the file's dim 0 is symbolic (a fully static model is checked
    at the example batch size only), and any other symbolic dim grown in the second run.
    Raises :class:`ExportError` if any output differs by more than
    ``rtol_scale * max(1, output_scale)``.
    """
    path = os.fspath(path)
    if not os.path.isfile(path):
        raise ExportError(f"ONNX file not found: {path}; export it first")
    module, example_inputs, _ = without_absent(module, example_inputs)
    example_inputs = normalize_inputs(example_inputs)
    notes: list[str] = []
    t0 = time.perf_counter()
    cmp = compare_with_torch(path, module, example_inputs, batch_sizes=batch_sizes, rtol_scale=rtol_scale,
                             providers=providers, display_path=path, notes=notes)
    seconds = time.perf_counter() - t0
    result = OnnxCheck.of_file(path, exporter=cmp.exporter, warnings=notes)
    result.path = os.path.abspath(path)
    result.record(cmp, seconds)
    return result
