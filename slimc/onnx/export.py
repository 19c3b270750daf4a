"""Export a (slim) ``torch.nn.Module`` to one self-contained ``.onnx`` file, then check it.

The maintained ``torch.export``-based exporter (``dynamo=True``) is used; the TorchScript
exporter is a fallback only when the dynamo export itself raises. Everything the
exporters print (stdout/stderr, torch loggers, Python warnings) is captured so that a CLI
stays clean; relevant warnings are returned in ``OnnxCheck.warnings``. The steps:
probe the outputs, stage in a temp folder beside the target (:mod:`slimc.onnx.staging`),
run the exporters (dynamo: ``torch.export`` with a batch of 1 traced as 2, the program
freed of stride decisions, :mod:`slimc.onnx.strides`), require the dynamic axes asked for,
check with onnxruntime (:mod:`slimc.onnx.check`), publish.

    export_onnx(module, example_inputs, path, dynamic_dims={0: [0, 1]}) -> OnnxCheck
"""
from __future__ import annotations

import os
import time
from dataclasses import dataclass, field
from typing import Callable, Sequence

import torch

from slimc.errors import ExportError, SlimcError, describe
from slimc.inputs import batch_of_two
from slimc.onnx.check import OnnxCheck, compare_with_torch, eval_mode, tensor_leaves
from slimc.onnx.quiet import Quiet
from slimc.onnx.staging import Stage, staging_dir
from slimc.onnx.shapes import DynamicDims, example_batch, normalize_inputs, resolve_dynamic_dims, without_absent
from slimc.onnx.identities import drop_ones
from slimc.onnx.strides import stride_free
from slimc.onnx.stats import EXPORTER_METADATA_KEY, dynamic_axes, graph_inputs, iter_graphs, load_graph

__all__ = ["export_onnx"]

#: Models whose initializers exceed this size must use external data (protobuf limit).
_TWO_GB = 2 * 1024**3


@dataclass
class _Request:
    """What to export: names, opset and the dynamic dims per input index."""

    input_names: list[str]
    output_names: list[str]
    opset: int | None
    dims: dict[int, tuple[int, ...]]

    @property
    def batch_is_dynamic(self) -> bool:
        return any(0 in d for d in self.dims.values())


@dataclass
class _Exported:
    """Which exporter wrote the staged file, why the first one failed, what they warned."""

    exporter: str
    fallback_reason: str | None
    warnings: list[str] = field(default_factory=list)


# --------------------------------------------------------------------------- names and outputs


def _names(kind: str, names: Sequence[str] | None, n: int) -> list[str]:
    if names is None:
        return [kind] if n == 1 else [f"{kind}_{i}" for i in range(n)]
    names = [str(x) for x in names]
    if len(names) != n:
        raise ExportError(f"{kind}_names has {len(names)} names but the model has {n} {kind}s; pass exactly {n}")
    if len(set(names)) != len(names):
        raise ExportError(f"{kind}_names contains duplicates: {names}; use unique names")
    return names


def _probe_outputs(module: torch.nn.Module, example_inputs: tuple[torch.Tensor, ...], name: str) -> list[torch.Tensor]:
    """One forward pass: the output tensors (their count names the outputs), and a clear
    error when the example inputs do not run."""
    with eval_mode(module), torch.no_grad():
        try:
            with Quiet():
                outputs = tensor_leaves(module(*example_inputs))
        except Exception as e:
            raise ExportError(
                f"{name} failed on example_inputs before export: {describe(e, 240, innermost=True)}; "
                "fix the inputs or the model"
            ) from e
    if not outputs:
        raise ExportError(f"{name} returns no tensors; forward() must return a tensor or a tuple of tensors")
    return outputs


# --------------------------------------------------------------------------- the exporters


def _batch_as_symbol(example_inputs: tuple[torch.Tensor, ...], req: _Request) -> tuple[torch.Tensor, ...]:
    """A dynamic batch of 1 is exported at 2 (:func:`slimc.inputs.batch_of_two`): torch.export
    specializes sizes 0 and 1, and a batch it specialized is no symbol in the file."""
    wide = batch_of_two(example_inputs) if req.batch_is_dynamic else None
    if wide is None:
        return example_inputs
    return tuple(w if 0 in req.dims.get(i, ()) else x for i, (w, x) in enumerate(zip(wide, example_inputs)))


def _program(module: torch.nn.Module, example_inputs: tuple[torch.Tensor, ...],
             req: _Request) -> tuple[torch.nn.Module | torch.export.ExportedProgram, tuple | None]:
    """What the dynamo exporter is given: the exported program, freed of stride decisions
    (:mod:`slimc.onnx.strides`) and of eval-mode drop-paths (:mod:`slimc.onnx.identities`); where torch.export fails, the module and its dynamic shapes
    (torch.onnx.export then tries its own ways of capturing it)."""
    dynamic_shapes = None
    if req.dims:
        batch = torch.export.Dim("batch")  # one batch dim shared by every input
        dynamic_shapes = tuple(
            {a: batch if a == 0 else torch.export.Dim.DYNAMIC for a in req.dims[i]} if i in req.dims else None
            for i in range(len(example_inputs))
        )
    try:
        program = torch.export.export(module, example_inputs, dynamic_shapes=dynamic_shapes, strict=False)
    except Exception:
        return module, dynamic_shapes
    stride_free(program.graph_module)
    drop_ones(program.graph_module)
    return program, None


def _export_dynamo(module: torch.nn.Module, example_inputs: tuple[torch.Tensor, ...], dest: str,
                   req: _Request, outputs: list[torch.Tensor]) -> None:
    example_inputs = _batch_as_symbol(example_inputs, req)
    model, dynamic_shapes = _program(module, example_inputs, req)
    program = torch.onnx.export(
        model,
        example_inputs,
        None,
        dynamo=True,
        dynamic_shapes=dynamic_shapes,
        input_names=req.input_names,
        output_names=req.output_names,
        opset_version=req.opset,
        verbose=False,
        optimize=True,
        report=False,
        verify=False,
        external_data=False,
    )
    if program is None:  # pragma: no cover - defensive
        raise RuntimeError("torch.onnx.export(dynamo=True) returned no program")
    try:
        program.model.metadata_props[EXPORTER_METADATA_KEY] = "dynamo"
        if req.batch_is_dynamic:  # the file names the batch "batch", as for a module given Dim("batch")
            program._rename_dynamic_axes(tuple({0: "batch"} if 0 in req.dims.get(i, ()) else None
                                               for i in range(len(example_inputs))))
    except Exception:  # pragma: no cover - IR API drift
        pass
    program.save(dest, external_data=False)


def _export_torchscript(module: torch.nn.Module, example_inputs: tuple[torch.Tensor, ...], dest: str,
                        req: _Request, outputs: list[torch.Tensor]) -> None:
    dynamic_axes_by_name = None
    if req.dims:
        dynamic_axes_by_name = {
            n: {a: "batch" if a == 0 else f"{n}_dim{a}" for a in req.dims[i]}
            for i, n in enumerate(req.input_names) if i in req.dims
        }
        if req.batch_is_dynamic:
            batch = example_batch(example_inputs)
            for n, t in zip(req.output_names, outputs):
                if t.dim() > 0 and int(t.shape[0]) == batch:
                    dynamic_axes_by_name[n] = {0: "batch"}
    with torch.no_grad():
        torch.onnx.export(
            module,
            example_inputs,
            dest,
            dynamo=False,
            input_names=req.input_names,
            output_names=req.output_names,
            dynamic_axes=dynamic_axes_by_name,
            opset_version=req.opset,
            verbose=False,
        )


_EXPORTERS: tuple[tuple[str, Callable[..., None]], ...] = (("dynamo", _export_dynamo), ("torchscript", _export_torchscript))


def _run_exporters(module: torch.nn.Module, example_inputs: tuple[torch.Tensor, ...], stage: Stage,
                   req: _Request, outputs: list[torch.Tensor], name: str) -> _Exported:
    """Dynamo first, TorchScript only where it raises; the failed attempt's log spam is
    dropped, its cause kept."""
    failures: list[str] = []
    with eval_mode(module):
        for exporter, export in _EXPORTERS:
            q = Quiet()
            try:
                with q:
                    export(module, example_inputs, stage.path, req, outputs)
            except Exception as e:
                failures.append(f"{exporter}: {describe(e, 240, innermost=True)}")
                stage.clear()
                continue
            break
        else:
            raise ExportError(
                f"ONNX export of {name} failed with both exporters - " + " | ".join(failures)
                + " | make forward() traceable by torch.export (no data-dependent Python control flow,"
                " no custom ops without an ONNX translation) and retry"
            )
    fallback_reason = failures[0].split(": ", 1)[1] if failures else None
    notes = list(q.warnings)
    if fallback_reason:
        notes.insert(0, f"dynamo exporter failed, used TorchScript fallback: {fallback_reason}")
    if not os.path.isfile(stage.path):
        raise ExportError(f"exporter produced no file for {name}; report this as a slimc bug")
    return _Exported(exporter, fallback_reason, notes)


def _finalize_file(dest: str) -> None:
    """Add slimc metadata if missing and make the file self-contained (< 2 GB)."""
    import onnx

    model = onnx.load(dest, load_external_data=False)
    has_external = any(
        init.data_location == onnx.TensorProto.EXTERNAL for g in iter_graphs(model.graph) for init in g.initializer
    )
    meta = {p.key: p.value for p in model.metadata_props}
    if not has_external and EXPORTER_METADATA_KEY in meta:
        return
    if has_external:
        onnx.load_external_data_for_model(model, os.path.dirname(dest) or ".")
    if EXPORTER_METADATA_KEY not in meta:
        onnx.helper.set_model_props(model, {**meta, EXPORTER_METADATA_KEY: "torchscript"})
    size = sum(init.ByteSize() for g in iter_graphs(model.graph) for init in g.initializer)
    # remove stale external data files before re-saving
    if has_external:
        for f in os.listdir(os.path.dirname(dest) or "."):
            full = os.path.join(os.path.dirname(dest) or ".", f)
            if full != dest and os.path.isfile(full):
                os.remove(full)
    if size < _TWO_GB - (64 << 20):
        onnx.save(model, dest, save_as_external_data=False)
    else:
        onnx.save(model, dest, save_as_external_data=True, all_tensors_to_one_file=True,
                  location=os.path.basename(dest) + ".data")


def _require_dynamic_axes(path: str, req: _Request, exporter: str, name: str,
                          example_inputs: tuple[torch.Tensor, ...]) -> None:
    """The file must leave dynamic what was asked: the batch of at least one input, and
    every other dim named in ``dynamic_dims``."""
    if not req.dims:
        return
    declared = {info.name: dynamic_axes(info) for info in graph_inputs(load_graph(path))}
    if req.batch_is_dynamic and declared and not any(d is None or 0 in d for d in declared.values()):
        raise ExportError(
            f"the {exporter} exporter fixed the batch dimension of {name}; "
            "use dynamic_batch=False or remove batch-size-dependent code"
        )
    for i, dims in req.dims.items():
        got = declared.get(req.input_names[i], None)
        fixed = [a for a in dims if a > 0 and got is not None and a not in got]
        if fixed:
            a = fixed[0]
            raise ExportError(
                f"the {exporter} exporter fixed dim {a} of input '{req.input_names[i]}' of {name} "
                f"(size {int(example_inputs[i].shape[a])}); leave it out of dynamic_dims or remove code "
                "that depends on that size"
            )


# --------------------------------------------------------------------------- the export


def export_onnx(
    module: torch.nn.Module,
    example_inputs: tuple[torch.Tensor, ...],
    path: str | os.PathLike,
    *,
    opset: int | None = None,
    dynamic_batch: bool = True,
    dynamic_dims: DynamicDims | None = None,
    input_names: list[str] | None = None,
    output_names: list[str] | None = None,
    check: bool = True,
    batch_sizes: tuple[int, ...] = (1, 3),
    rtol_scale: float = 1e-4,
) -> OnnxCheck:
    """Export ``module`` to a self-contained ONNX file at ``path`` and verify it.

    ``dynamic_dims`` maps an input index to the dims of that input that stay dynamic, e.g.
    ``{0: [0, 1]}`` for token ids of any batch and sequence length; default: dim 0 of
    every input that has one (a dynamic batch, one ``batch`` Dim shared by all inputs).
    ``dynamic_batch=False`` makes every dim static. Inputs given as None (optional arguments
    traced as absent) are not inputs of the file: it takes the tensors alone, in order. The check (``check=True``) runs
    onnxruntime at ``batch_sizes`` (the example batch when the batch is static), other
    dynamic dims at the example size and then grown (see :mod:`slimc.onnx.shapes`).

    The module is exported and checked in eval mode; each submodule's training flag is
    restored afterwards and parameters are never modified. The file is written
    atomically: nothing appears at ``path`` unless export and check succeed.
    """
    if not isinstance(module, torch.nn.Module):
        raise ExportError(f"export_onnx expects a torch.nn.Module, got {type(module).__name__}")
    name = type(module).__name__
    module, example_inputs, dynamic_dims = without_absent(module, example_inputs, dynamic_dims)
    example_inputs = normalize_inputs(example_inputs)
    final = os.path.abspath(os.fspath(path))
    if os.path.isdir(final):
        raise ExportError(f"output path {final} is a directory; pass a file path like model.onnx")
    dims = resolve_dynamic_dims(example_inputs, dynamic_dims, dynamic_batch)
    outputs = _probe_outputs(module, example_inputs, name)
    req = _Request(_names("input", input_names, len(example_inputs)), _names("output", output_names, len(outputs)),
                   opset, dims)

    with staging_dir(final) as stage:
        try:
            t0 = time.perf_counter()
            made = _run_exporters(module, example_inputs, stage, req, outputs, name)
            try:
                _finalize_file(stage.path)
            except Exception as e:
                raise ExportError(f"cannot re-save exported ONNX for {name}: {describe(e, 240, innermost=True)}") from e
            result = OnnxCheck.of_file(stage.path, exporter=made.exporter, fallback_reason=made.fallback_reason,
                                       warnings=made.warnings, export_seconds=time.perf_counter() - t0)
            result.path = final
            if opset is not None and result.opset != opset:
                # the dynamo exporter implements opset >= 18 only; a lower request is
                # "version converted", and kept at 18 (with just a log line) when that fails
                result.warnings.insert(0, f"requested opset {opset} but the {made.exporter} exporter produced "
                                          f"opset {result.opset}; check that your runtime supports it")
            _require_dynamic_axes(stage.path, req, made.exporter, name, example_inputs)
            if check:
                t1 = time.perf_counter()
                eb = example_batch(example_inputs) or 1
                try:
                    cmp = compare_with_torch(stage.path, module, example_inputs,
                                             batch_sizes=tuple(batch_sizes) if req.batch_is_dynamic else (eb,),
                                             rtol_scale=rtol_scale, providers=None, display_path=final,
                                             notes=result.warnings)
                except ExportError as e:
                    if made.fallback_reason is None:
                        raise
                    raise ExportError(f"{e} (written by the TorchScript fallback, which records sizes as the "
                                      f"example's; the dynamo exporter failed: {made.fallback_reason})") from e
                result.record(cmp, time.perf_counter() - t1)
            stage.publish()
            return result
        except SlimcError:  # said in one line already (an output that cannot be written: WriteError)
            raise
        except Exception as e:  # unexpected internal failure: still one line
            raise ExportError(f"ONNX export of {name} failed: {describe(e, 240, innermost=True)}") from e
