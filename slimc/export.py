"""ONNX export stage of slimc.

Exports a (sliced) ``torch.nn.Module`` to a single self-contained ``.onnx`` file
with the maintained ``torch.export``-based exporter (``dynamo=True``), falls back
to the TorchScript exporter only when the dynamo export itself raises, and
verifies the result with ``onnx.checker`` and onnxruntime against the torch
module on random inputs at several batch sizes.

Public API::

    export_onnx(module, example_inputs, path, ...) -> OnnxCheck
    check_onnx(path, module, example_inputs, ...)  -> OnnxCheck
    onnx_stats(path)                               -> dict
    ExportError                                       (one-line message)

Everything the exporters print (stdout/stderr, torch loggers, Python warnings)
is captured so that a CLI stays clean; relevant warnings are returned in
``OnnxCheck.warnings``.
"""

from __future__ import annotations

import contextlib
import dataclasses
import math
import os
import re
import shutil
import tempfile
import time
from dataclasses import dataclass, field
from typing import Any, Iterator, Sequence

import numpy as np
import torch

from slimc.quiet import _ANSI_RE, _one_line, _Quiet

__all__ = [
    "ExportError",
    "OnnxCheck",
    "export_onnx",
    "check_onnx",
    "onnx_stats",
    "SELECTION_OP_TYPES",
]

#: ONNX op types that select/scatter elements (a sliced model should not need
#: any of them for a plain conv net; "Index" is not an ONNX op but is kept as a
#: key for callers that look it up).
SELECTION_OP_TYPES: tuple[str, ...] = (
    "Gather",
    "GatherElements",
    "GatherND",
    "Slice",
    "ScatterND",
    "ScatterElements",
    "Index",
)

#: Metadata key written into the ONNX model recording which exporter made it.
_EXPORTER_METADATA_KEY = "slimc.exporter"

#: Models whose initializers exceed this size must use external data (protobuf limit).
_TWO_GB = 2 * 1024**3





try:  # share the CLI's error base class (exit code 2) when available
    from .errors import SlimcError as _ErrorBase
except Exception:  # pragma: no cover - loaded outside the package
    _ErrorBase = Exception


class ExportError(_ErrorBase):
    """Raised when exporting or checking an ONNX model fails.

    The message is always a single line that says what failed and what to do.
    """

    def __init__(self, message: str):
        super().__init__(_one_line(message, limit=1000))


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

    def to_dict(self) -> dict:
        d = dataclasses.asdict(self)
        # keep the dict JSON-friendly (no NaN/inf floats)
        for k in ("max_abs_diff", "output_scale", "tolerance"):
            v = d[k]
            if isinstance(v, float) and not math.isfinite(v):
                d[k] = None
        return d


# --------------------------------------------------------------------------- helpers


def _first_line(text: str, limit: int = 240) -> str:
    text = _ANSI_RE.sub("", str(text))
    for line in text.splitlines():
        line = re.sub(r"\s+", " ", line).strip()
        if line:
            return line if len(line) <= limit else line[: limit - 3].rstrip() + "..."
    return ""


def _describe_exception(exc: BaseException, limit: int = 240) -> str:
    """``Type: first line`` of the innermost cause (exporter wrappers are verbose)."""
    root = exc
    seen = {id(root)}
    while root.__cause__ is not None and id(root.__cause__) not in seen:
        root = root.__cause__
        seen.add(id(root))
    line = _first_line(str(root), limit)
    if not line and root is not exc:
        line = _first_line(str(exc), limit)
    name = type(root).__name__
    return f"{name}: {line}" if line else name










@contextlib.contextmanager
def _eval_mode(module: torch.nn.Module) -> Iterator[None]:
    """Put every submodule in eval mode; restore each one's own flag afterwards."""
    flags = [(m, m.training) for m in module.modules()]
    module.eval()
    try:
        yield
    finally:
        for m, flag in flags:
            m.training = flag


def _normalize_inputs(example_inputs: Any) -> tuple[torch.Tensor, ...]:
    if isinstance(example_inputs, torch.Tensor):
        example_inputs = (example_inputs,)
    if not isinstance(example_inputs, (tuple, list)) or len(example_inputs) == 0:
        raise ExportError(
            "example_inputs must be a non-empty tuple of tensors; "
            f"got {type(example_inputs).__name__}"
        )
    for i, t in enumerate(example_inputs):
        if not isinstance(t, torch.Tensor):
            raise ExportError(
                f"example_inputs[{i}] is of type {type(t).__name__}, not a tensor; "
                "bake non-tensor arguments into the module (e.g. functools.partial or a wrapper module)"
            )
    return tuple(example_inputs)


def _tensor_leaves(out: Any) -> list[torch.Tensor]:
    from torch.utils import _pytree as pytree

    return [x for x in pytree.tree_leaves(out) if isinstance(x, torch.Tensor)]


def _default_input_names(n: int) -> list[str]:
    return ["input"] if n == 1 else [f"input_{i}" for i in range(n)]


def _default_output_names(n: int) -> list[str]:
    return ["output"] if n == 1 else [f"output_{i}" for i in range(n)]


def _validate_names(kind: str, names: Sequence[str] | None, n: int, default) -> list[str]:
    if names is None:
        return default(n)
    names = [str(x) for x in names]
    if len(names) != n:
        raise ExportError(f"{kind}_names has {len(names)} names but the model has {n} {kind}s; pass exactly {n}")
    if len(set(names)) != len(names):
        raise ExportError(f"{kind}_names contains duplicates: {names}; use unique names")
    return names


def _model_module_name(module: torch.nn.Module) -> str:
    return type(module).__name__


def _opset_of(model) -> int:
    for imp in model.opset_import:
        if imp.domain in ("", "ai.onnx"):
            return int(imp.version)
    return 0


def _itemsize(data_type: int) -> int:
    import onnx

    try:
        return int(np.dtype(onnx.helper.tensor_dtype_to_np_dtype(data_type)).itemsize)
    except Exception:
        # bfloat16 / float8 / int4 etc. map to custom numpy dtypes in some versions
        name = onnx.TensorProto.DataType.Name(data_type).upper()
        if "FLOAT8" in name or name in ("UINT8", "INT8", "BOOL"):
            return 1
        if "4" in name and "INT" in name:
            return 1  # packed, approximate
        if name in ("BFLOAT16", "FLOAT16"):
            return 2
        return 0


def _iter_graphs(graph) -> Iterator[Any]:
    """The graph and all subgraphs (If/Loop/Scan bodies), depth-first."""
    import onnx

    yield graph
    for node in graph.node:
        for attr in node.attribute:
            if attr.type == onnx.AttributeProto.GRAPH:
                yield from _iter_graphs(attr.g)
            elif attr.type == onnx.AttributeProto.GRAPHS:
                for g in attr.graphs:
                    yield from _iter_graphs(g)


def _count_ops(model) -> dict[str, int]:
    """Histogram of op types, expanding calls to model-local functions."""
    import onnx

    functions = {(f.domain, f.name): f for f in model.functions}
    counts: dict[str, int] = {}

    def visit_nodes(nodes, depth: int) -> None:
        for node in nodes:
            fn = functions.get((node.domain, node.op_type))
            if fn is not None and depth < 32:
                visit_nodes(fn.node, depth + 1)
            else:
                counts[node.op_type] = counts.get(node.op_type, 0) + 1
            for attr in node.attribute:
                if attr.type == onnx.AttributeProto.GRAPH:
                    visit_nodes(attr.g.node, depth + 1)
                elif attr.type == onnx.AttributeProto.GRAPHS:
                    for g in attr.graphs:
                        visit_nodes(g.node, depth + 1)

    visit_nodes(model.graph.node, 0)
    return dict(sorted(counts.items()))


def _graph_input_names(model) -> list[str]:
    inits = {i.name for i in model.graph.initializer}
    return [i.name for i in model.graph.input if i.name not in inits]


def _dim0_is_dynamic(value_info) -> bool | None:
    """True: symbolic batch dim; False: fixed; None: rank 0 (no batch dim)."""
    tt = value_info.type.tensor_type
    if not tt.HasField("shape"):
        return True
    if len(tt.shape.dim) == 0:
        return None
    d0 = tt.shape.dim[0]
    return not d0.HasField("dim_value")


# --------------------------------------------------------------------------- stats


def onnx_stats(path: str | os.PathLike) -> dict:
    """Size and op statistics of an ONNX file (external data is not loaded).

    Returns a dict with ``initializer_bytes``, ``initializer_params`` (sum of
    nbytes / numel over all initializers, subgraphs included),
    ``float_initializer_params`` (floating-point initializers only, i.e. weights
    without shape constants), ``num_initializers``, ``op_types`` (histogram),
    ``num_nodes``, ``selection_ops``, ``opset``, ``input_names``,
    ``output_names``, ``file_bytes`` (the .onnx plus external data files) and
    ``exporter`` (from slimc metadata, "" if absent).
    """
    import onnx

    path = os.fspath(path)
    if not os.path.isfile(path):
        raise ExportError(f"ONNX file not found: {path}")
    try:
        model = onnx.load(path, load_external_data=False)
    except Exception as e:
        raise ExportError(f"cannot read ONNX file {path}: {_describe_exception(e)}") from e

    float_types = {
        onnx.TensorProto.FLOAT,
        onnx.TensorProto.DOUBLE,
        onnx.TensorProto.FLOAT16,
        onnx.TensorProto.BFLOAT16,
    }
    n_bytes = n_params = n_float = n_inits = 0
    external_files: set[str] = set()
    for g in _iter_graphs(model.graph):
        for init in g.initializer:
            numel = int(np.prod(init.dims, dtype=np.int64)) if len(init.dims) else 1
            n_inits += 1
            n_params += numel
            if init.data_type in float_types:
                n_float += numel
            if init.data_type == onnx.TensorProto.STRING:
                n_bytes += sum(len(s) for s in init.string_data)
            else:
                n_bytes += numel * _itemsize(init.data_type)
            if init.data_location == onnx.TensorProto.EXTERNAL:
                for kv in init.external_data:
                    if kv.key == "location":
                        external_files.add(kv.value)

    file_bytes = os.path.getsize(path)
    base = os.path.dirname(os.path.abspath(path))
    for loc in external_files:
        p = os.path.join(base, loc)
        if os.path.isfile(p):
            file_bytes += os.path.getsize(p)

    op_types = _count_ops(model)
    meta = {p.key: p.value for p in model.metadata_props}
    return {
        "initializer_bytes": int(n_bytes),
        "initializer_params": int(n_params),
        "float_initializer_params": int(n_float),
        "num_initializers": int(n_inits),
        "op_types": op_types,
        "num_nodes": int(sum(op_types.values())),
        "selection_ops": {k: int(op_types.get(k, 0)) for k in SELECTION_OP_TYPES},
        "opset": _opset_of(model),
        "input_names": _graph_input_names(model),
        "output_names": [o.name for o in model.graph.output],
        "file_bytes": int(file_bytes),
        "external_data_files": sorted(external_files),
        "exporter": meta.get(_EXPORTER_METADATA_KEY, ""),
    }


# --------------------------------------------------------------------------- checking


def _default_providers() -> list[str]:
    import onnxruntime as ort

    available = ort.get_available_providers()
    providers = []
    if "CUDAExecutionProvider" in available:
        providers.append("CUDAExecutionProvider")
    providers.append("CPUExecutionProvider")
    return providers


def _random_like(example: torch.Tensor, batch: int | None, seed: int) -> torch.Tensor:
    """Seeded random tensor like ``example`` with dim 0 replaced by ``batch``."""
    gen = torch.Generator(device="cpu").manual_seed(seed)
    shape = list(example.shape)
    if batch is not None and shape:
        shape[0] = batch
    dtype = example.dtype
    if dtype.is_floating_point or dtype.is_complex:
        t = torch.randn(shape, generator=gen, dtype=torch.float32)
        t = t.to(dtype)
    else:
        # integer / bool inputs (indices, masks): sample values seen in the example
        flat = example.detach().reshape(-1).cpu()
        if flat.numel() == 0:
            t = torch.zeros(shape, dtype=dtype)
        else:
            idx = torch.randint(0, flat.numel(), shape, generator=gen)
            t = flat[idx]
    return t.to(example.device)


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


def _check(
    path: str,
    module: torch.nn.Module,
    example_inputs: tuple[torch.Tensor, ...],
    *,
    batch_sizes: Sequence[int],
    rtol_scale: float,
    providers: Sequence[str] | None,
    display_path: str,
    notes: list[str],
) -> dict:
    import onnx
    import onnxruntime as ort

    # 1. structural check
    try:
        onnx.checker.check_model(path, full_check=True)
    except Exception as e:
        raise ExportError(
            f"ONNX checker rejected {display_path}: {_describe_exception(e)}; "
            "the exporter produced an invalid graph - try another opset or simplify the model"
        ) from e

    model = onnx.load(path, load_external_data=False)
    input_infos = [i for i in model.graph.input if i.name not in {x.name for x in model.graph.initializer}]
    input_names = [i.name for i in input_infos]
    output_names = [o.name for o in model.graph.output]
    if len(input_names) > len(example_inputs):
        raise ExportError(
            f"{display_path} has {len(input_names)} inputs but {len(example_inputs)} example inputs were given; "
            "pass one example tensor per model input"
        )
    dyn = [_dim0_is_dynamic(i) for i in input_infos]

    # 2. which batch sizes can be run
    example_batch = next((int(t.shape[0]) for t in example_inputs if t.dim() > 0), None)
    batch_sizes = [int(b) for b in batch_sizes] if batch_sizes else []
    if not any(d is True for d in dyn):
        if example_batch is not None and any(b != example_batch for b in batch_sizes):
            notes.append(
                f"{os.path.basename(display_path)} has a fixed batch size; checked only batch {example_batch}"
            )
        batch_sizes = [example_batch] if example_batch is not None else [1]
    if not batch_sizes:
        batch_sizes = [example_batch or 1]
    for b in batch_sizes:
        if b < 1:
            raise ExportError(f"invalid batch size {b} in batch_sizes; use positive integers")

    # 3. onnxruntime session
    if providers is None:
        providers = _default_providers()
    so = ort.SessionOptions()
    so.log_severity_level = 3
    try:
        with _Quiet() as q:
            sess = ort.InferenceSession(path, sess_options=so, providers=list(providers))
        notes.extend(q.warnings)
    except Exception as e:
        raise ExportError(
            f"onnxruntime cannot load {display_path}: {_describe_exception(e)}; "
            "the model uses an op/opset onnxruntime does not support - try a different opset"
        ) from e
    used_providers = list(sess.get_providers())
    sess_inputs = {i.name for i in sess.get_inputs()}

    # 4. compare against torch
    results = []  # (batch, out_name, diff)
    scale = 0.0
    with _eval_mode(module), torch.no_grad():
        for b in batch_sizes:
            inputs = []
            for k, ex in enumerate(example_inputs):
                d = dyn[k] if k < len(dyn) else True
                inputs.append(_random_like(ex, b if d else None, seed=1234 + 7919 * b + k))
            try:
                ref_out = module(*inputs)
            except Exception as e:
                raise ExportError(
                    f"torch module failed on random inputs at batch {b}: {_describe_exception(e)}; "
                    "check example_inputs (dtype/shape) or use dynamic_batch=False"
                ) from e
            refs = _tensor_leaves(ref_out)
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
                got = sess.run(None, feed)
            except Exception as e:
                raise ExportError(
                    f"onnxruntime failed to run {os.path.basename(display_path)} at batch {b}: "
                    f"{_describe_exception(e)}; the export is probably specialised to the example batch "
                    "size (e.g. a hard-coded view/reshape) - make it batch-agnostic or use dynamic_batch=False"
                ) from e
            if len(got) != len(refs):
                raise ExportError(
                    f"{display_path} has {len(got)} outputs but the torch module returns {len(refs)} tensors; "
                    "return a flat tuple of distinct tensors from forward()"
                )
            for name, r, g in zip(output_names, refs, got):
                rn = _to_numpy(r)
                gn = np.asarray(g)
                if tuple(rn.shape) != tuple(gn.shape):
                    raise ExportError(
                        f"output '{name}' at batch {b} has shape {tuple(gn.shape)} in onnxruntime "
                        f"but {tuple(rn.shape)} in torch: the ONNX exporter baked the example's batch size "
                        "into the graph; pass --static-batch (ONNX for that batch size only)"
                    )
                scale = max(scale, _max_abs(rn))
                results.append((b, name, _max_abs_diff(rn, gn)))

    max_diff = max((d for _, _, d in results), default=0.0)
    tol = rtol_scale * max(1.0, scale)
    for b, name, d in results:
        if not (d <= tol):
            raise ExportError(
                f"onnxruntime output '{name}' diverges from torch at batch {b}: "
                f"max |diff| = {d:.3g} > tolerance {tol:.3g} (output scale {scale:.3g}); "
                "the exported graph is not equivalent - inspect the model or raise rtol_scale"
            )
    return {
        "input_names": input_names,
        "output_names": output_names,
        "opset": _opset_of(model),
        "batch_sizes": batch_sizes,
        "max_abs_diff": max_diff,
        "output_scale": scale,
        "tolerance": tol,
        "providers": used_providers,
        "exporter": {p.key: p.value for p in model.metadata_props}.get(_EXPORTER_METADATA_KEY, ""),
    }


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

    Inputs are seeded ``randn`` tensors shaped like ``example_inputs`` with dim 0
    replaced by each batch size (only for inputs whose ONNX dim 0 is symbolic; a
    fully static model is checked at the example batch size only).  Raises
    :class:`ExportError` if any output differs by more than
    ``rtol_scale * max(1, output_scale)``.
    """
    path = os.fspath(path)
    if not os.path.isfile(path):
        raise ExportError(f"ONNX file not found: {path}; export it first")
    example_inputs = _normalize_inputs(example_inputs)
    notes: list[str] = []
    t0 = time.perf_counter()
    res = _check(
        path,
        module,
        example_inputs,
        batch_sizes=batch_sizes,
        rtol_scale=rtol_scale,
        providers=providers,
        display_path=path,
        notes=notes,
    )
    dt = time.perf_counter() - t0
    stats = onnx_stats(path)
    return OnnxCheck(
        path=os.path.abspath(path),
        exporter=res["exporter"],
        fallback_reason=None,
        opset=res["opset"],
        input_names=res["input_names"],
        output_names=res["output_names"],
        initializer_bytes=stats["initializer_bytes"],
        initializer_params=stats["initializer_params"],
        batch_sizes=res["batch_sizes"],
        max_abs_diff=res["max_abs_diff"],
        output_scale=res["output_scale"],
        providers=res["providers"],
        selection_ops=stats["selection_ops"],
        warnings=notes,
        checked=True,
        tolerance=res["tolerance"],
        check_seconds=dt,
    )


# --------------------------------------------------------------------------- export


def _export_dynamo(
    module: torch.nn.Module,
    example_inputs: tuple[torch.Tensor, ...],
    dest: str,
    *,
    opset: int | None,
    dynamic_batch: bool,
    input_names: list[str],
    output_names: list[str],
) -> None:
    dynamic_shapes = None
    if dynamic_batch:
        batch = torch.export.Dim("batch")
        dynamic_shapes = tuple({0: batch} if t.dim() > 0 else None for t in example_inputs)
    program = torch.onnx.export(
        module,
        example_inputs,
        None,
        dynamo=True,
        dynamic_shapes=dynamic_shapes,
        input_names=input_names,
        output_names=output_names,
        opset_version=opset,
        verbose=False,
        optimize=True,
        report=False,
        verify=False,
        external_data=False,
    )
    if program is None:  # pragma: no cover - defensive
        raise RuntimeError("torch.onnx.export(dynamo=True) returned no program")
    try:
        program.model.metadata_props[_EXPORTER_METADATA_KEY] = "dynamo"
    except Exception:  # pragma: no cover - IR API drift
        pass
    program.save(dest, external_data=False)


def _export_torchscript(
    module: torch.nn.Module,
    example_inputs: tuple[torch.Tensor, ...],
    dest: str,
    *,
    opset: int | None,
    dynamic_batch: bool,
    input_names: list[str],
    output_names: list[str],
    outputs: list[torch.Tensor],
) -> None:
    dynamic_axes = None
    if dynamic_batch:
        dynamic_axes = {n: {0: "batch"} for n, t in zip(input_names, example_inputs) if t.dim() > 0}
        batch = next((int(t.shape[0]) for t in example_inputs if t.dim() > 0), None)
        for n, t in zip(output_names, outputs):
            if t.dim() > 0 and int(t.shape[0]) == batch:
                dynamic_axes[n] = {0: "batch"}
    with torch.no_grad():
        torch.onnx.export(
            module,
            example_inputs,
            dest,
            dynamo=False,
            input_names=input_names,
            output_names=output_names,
            dynamic_axes=dynamic_axes,
            opset_version=opset,
            verbose=False,
        )


def _finalize_file(dest: str) -> None:
    """Add slimc metadata if missing and make the file self-contained (< 2 GB)."""
    import onnx

    model = onnx.load(dest, load_external_data=False)
    has_external = any(
        init.data_location == onnx.TensorProto.EXTERNAL for g in _iter_graphs(model.graph) for init in g.initializer
    )
    meta = {p.key: p.value for p in model.metadata_props}
    if not has_external and _EXPORTER_METADATA_KEY in meta:
        return
    if has_external:
        onnx.load_external_data_for_model(model, os.path.dirname(dest) or ".")
    if _EXPORTER_METADATA_KEY not in meta:
        onnx.helper.set_model_props(model, {**meta, _EXPORTER_METADATA_KEY: "torchscript"})
    size = sum(
        init.ByteSize() for g in _iter_graphs(model.graph) for init in g.initializer
    )
    # remove stale external data files before re-saving
    if has_external:
        for f in os.listdir(os.path.dirname(dest) or "."):
            full = os.path.join(os.path.dirname(dest) or ".", f)
            if full != dest and os.path.isfile(full):
                os.remove(full)
    if size < _TWO_GB - (64 << 20):
        onnx.save(model, dest, save_as_external_data=False)
    else:
        onnx.save(
            model,
            dest,
            save_as_external_data=True,
            all_tensors_to_one_file=True,
            location=os.path.basename(dest) + ".data",
        )


def export_onnx(
    module: torch.nn.Module,
    example_inputs: tuple[torch.Tensor, ...],
    path: str | os.PathLike,
    *,
    opset: int | None = None,
    dynamic_batch: bool = True,
    input_names: list[str] | None = None,
    output_names: list[str] | None = None,
    check: bool = True,
    batch_sizes: tuple[int, ...] = (1, 3),
    rtol_scale: float = 1e-4,
) -> OnnxCheck:
    """Export ``module`` to a self-contained ONNX file at ``path`` and verify it.

    Uses ``torch.onnx.export(..., dynamo=True)`` with dim 0 of every input
    dynamic (one shared ``batch`` Dim) when ``dynamic_batch``; falls back to the
    TorchScript exporter only if the dynamo export raises.  The module is
    exported and checked in eval mode; each submodule's training flag is
    restored afterwards and parameters are never modified.  The file is written
    atomically: nothing appears at ``path`` unless export and check succeed.
    """
    if not isinstance(module, torch.nn.Module):
        raise ExportError(f"export_onnx expects a torch.nn.Module, got {type(module).__name__}")
    example_inputs = _normalize_inputs(example_inputs)
    final = os.path.abspath(os.fspath(path))
    if os.path.isdir(final):
        raise ExportError(f"output path {final} is a directory; pass a file path like model.onnx")
    parent = os.path.dirname(final)
    name = _model_module_name(module)
    notes: list[str] = []

    # forward once: output count/names and sanity of example inputs
    with _eval_mode(module), torch.no_grad():
        try:
            with _Quiet():
                outputs = _tensor_leaves(module(*example_inputs))
        except Exception as e:
            raise ExportError(
                f"{name} failed on example_inputs before export: {_describe_exception(e)}; fix the inputs or the model"
            ) from e
    if not outputs:
        raise ExportError(f"{name} returns no tensors; forward() must return a tensor or a tuple of tensors")
    in_names = _validate_names("input", input_names, len(example_inputs), _default_input_names)
    out_names = _validate_names("output", output_names, len(outputs), _default_output_names)

    created_dirs: list[str] = []
    d = parent
    while d and not os.path.isdir(d):
        created_dirs.append(d)
        d = os.path.dirname(d)
    try:
        os.makedirs(parent, exist_ok=True)
    except OSError as e:
        raise ExportError(f"cannot create output directory {parent}: {e.strerror or e}") from e

    tmpdir = tempfile.mkdtemp(prefix=".slimc-export-", dir=parent)
    success = False
    try:
        tmp_path = os.path.join(tmpdir, os.path.basename(final))
        t0 = time.perf_counter()
        common = dict(opset=opset, dynamic_batch=dynamic_batch, input_names=in_names, output_names=out_names)
        attempts = [
            ("dynamo", lambda: _export_dynamo(module, example_inputs, tmp_path, **common)),
            ("torchscript", lambda: _export_torchscript(module, example_inputs, tmp_path, outputs=outputs, **common)),
        ]
        failures: list[str] = []
        with _eval_mode(module):
            for exporter, attempt in attempts:
                q = _Quiet()
                try:
                    with q:
                        attempt()
                except Exception as e:  # the failed attempt's log spam is dropped; its cause is kept
                    failures.append(f"{exporter}: {_describe_exception(e)}")
                    _clear_dir(tmpdir)
                    continue
                notes.extend(q.warnings)
                break
            else:
                raise ExportError(
                    f"ONNX export of {name} failed with both exporters - " + " | ".join(failures)
                    + " | make forward() traceable by torch.export (no data-dependent Python control flow,"
                    " no custom ops without an ONNX translation) and retry"
                )
        fallback_reason = failures[0].split(": ", 1)[1] if failures else None
        if fallback_reason:
            notes.insert(0, f"dynamo exporter failed, used TorchScript fallback: {fallback_reason}")
        if not os.path.isfile(tmp_path):
            raise ExportError(f"exporter produced no file for {name}; report this as a slimc bug")
        try:
            _finalize_file(tmp_path)
        except Exception as e:
            raise ExportError(f"cannot re-save exported ONNX for {name}: {_describe_exception(e)}") from e
        export_seconds = time.perf_counter() - t0

        stats = onnx_stats(tmp_path)
        if opset is not None and stats["opset"] != opset:
            # the dynamo exporter implements opset >= 18 only; a lower request is
            # "version converted", and kept at 18 (with just a log line) when that fails
            notes.insert(
                0,
                f"requested opset {opset} but the {exporter} exporter produced opset {stats['opset']}; "
                "check that your runtime supports it",
            )
        if dynamic_batch:
            import onnx

            m = onnx.load(tmp_path, load_external_data=False)
            infos = [i for i in m.graph.input if i.name not in {x.name for x in m.graph.initializer}]
            if infos and not any(_dim0_is_dynamic(i) for i in infos):
                raise ExportError(
                    f"the {exporter} exporter fixed the batch dimension of {name}; "
                    "use dynamic_batch=False or remove batch-size-dependent code"
                )

        result = OnnxCheck(
            path=final,
            exporter=exporter,
            fallback_reason=fallback_reason,
            opset=stats["opset"],
            input_names=stats["input_names"],
            output_names=stats["output_names"],
            initializer_bytes=stats["initializer_bytes"],
            initializer_params=stats["initializer_params"],
            batch_sizes=[],
            max_abs_diff=float("nan"),
            output_scale=float("nan"),
            providers=[],
            selection_ops=stats["selection_ops"],
            warnings=notes,
            checked=False,
            tolerance=float("nan"),
            export_seconds=export_seconds,
        )

        if check:
            t1 = time.perf_counter()
            if dynamic_batch:
                bs = tuple(batch_sizes)
            else:
                eb = next((int(t.shape[0]) for t in example_inputs if t.dim() > 0), 1)
                bs = (eb,)
            res = _check(
                tmp_path,
                module,
                example_inputs,
                batch_sizes=bs,
                rtol_scale=rtol_scale,
                providers=None,
                display_path=final,
                notes=notes,
            )
            result.batch_sizes = res["batch_sizes"]
            result.max_abs_diff = res["max_abs_diff"]
            result.output_scale = res["output_scale"]
            result.tolerance = res["tolerance"]
            result.providers = res["providers"]
            result.checked = True
            result.check_seconds = time.perf_counter() - t1

        # publish: external data files first (only for >2GB models), then the .onnx
        for f in os.listdir(tmpdir):
            if f != os.path.basename(final):
                os.replace(os.path.join(tmpdir, f), os.path.join(parent, f))
        os.replace(tmp_path, final)
        success = True
        return result
    except ExportError:
        raise
    except Exception as e:  # unexpected internal failure: still one line
        raise ExportError(f"ONNX export of {name} failed: {_describe_exception(e)}") from e
    finally:
        shutil.rmtree(tmpdir, ignore_errors=True)
        if not success:
            for d in created_dirs:  # deepest first
                try:
                    os.rmdir(d)
                except OSError:
                    break


def _clear_dir(d: str) -> None:
    for f in os.listdir(d):
        p = os.path.join(d, f)
        if os.path.isdir(p):
            shutil.rmtree(p, ignore_errors=True)
        else:
            try:
                os.remove(p)
            except OSError:
                pass
