"""From a (slim) model to a checked :class:`~slimc.quantize.result.QuantResult`: the two routes.

* :func:`export_qat` — the torch quantizers (QAT, DoReFa, BNN, Naive): their grids as they
  stand → :mod:`slimc.quantize.deploy` → the contract against the fake-quant model;
* :func:`export_ptq` — onnxruntime's quantizer (static, dynamic) on the float file of the graph.

Both also compare the int8 file with the float file of the same graph (SQNR, cosine, per layer),
say which nodes run in int8, and measure the sizes.
"""
from __future__ import annotations

import os
import tempfile
import time
from typing import Any

import torch
from torch import nn

from slimc.errors import ConfigError, DataError
from slimc.inputs import random_like
from slimc.prune.data import UserData
from slimc.quantize import check as chk
from slimc.quantize.nodes import node_plan
from slimc.quantize.result import QuantResult


def user_batches(user: UserData | None, inputs: tuple, what: str, limit: int | None,
                 dynamic_dims: dict | None = None) -> list[tuple] | None:
    """Up to ``limit`` input tuples of the user's calibration data (None: there is none), each
    checked against the example inputs (:func:`check_batch`)."""
    if user is None or user.data is None:
        return None
    cal = user.calibration(len(inputs), what, max_batches=limit)
    out = [b.inputs for b in cal.batches(what)]
    for k, b in enumerate(out):
        check_batch(b, inputs, k, user.where, dynamic_dims)
    return out


def check_batch(batch: tuple, inputs: tuple, k: int, where: str, dynamic_dims: dict | None = None) -> None:
    """A batch takes the example's place: as many inputs, the same dtypes, the same sizes except
    the batch (and the dims the graph leaves dynamic). A wrong one is one line naming it."""
    if len(batch) != len(inputs):
        raise DataError(f"{where}: batch {k} gives {len(batch)} input(s) but the model takes {len(inputs)}")
    for j, (x, ex) in enumerate(zip(batch, inputs)):
        if not isinstance(ex, torch.Tensor):
            continue
        if not isinstance(x, torch.Tensor):
            raise DataError(f"{where}: batch {k}, input {j} is a {type(x).__name__}, not a tensor")
        if x.dtype != ex.dtype:
            raise DataError(f"{where}: batch {k}, input {j} is {x.dtype} but the model takes {ex.dtype}: "
                            "yield tensors like example_inputs")
        free = {0, *((dynamic_dims or {}).get(j) or ())}
        if x.dim() != ex.dim() or any(a != b for d, (a, b) in enumerate(zip(x.shape, ex.shape)) if d not in free):
            want = "(" + ", ".join("N" if d == 0 else "*" if d in free else str(s) for d, s in enumerate(ex.shape)) + ")"
            raise DataError(f"{where}: batch {k}, input {j} has shape {tuple(x.shape)} but the model takes {want}: "
                            "yield batches shaped like example_inputs")


def random_batches(inputs: tuple, n: int = 2) -> list[tuple]:
    """Seeded inputs like the example (the check's inputs where the user gives no data)."""
    return [random_like(inputs, 4242 + k) for k in range(n)]


def with_batch(dynamic_dims: dict | None, inputs: tuple) -> dict | None:
    """The dims a compile found free, and the batch always (an int8 file is run at any batch)."""
    if not dynamic_dims:
        return None
    out = {i: list(ds) for i, ds in dynamic_dims.items()}
    for i, t in enumerate(inputs):
        if isinstance(t, torch.Tensor) and t.dim():
            out[i] = sorted({0, *out.get(i, ())})
    return out


def float_file(module: nn.Module, inputs: tuple, dynamic_dims: dict | None,
               notes: list[str] | None = None) -> tuple[Any, dict, dict | None]:
    """The float ONNX of ``module`` (exported and checked against it by :func:`slimc.onnx.export_onnx`),
    its export record, and the dims it leaves dynamic: those asked for, else — where the export
    or its check fails with them, as ``CompileResult.save`` does — the batch only (said in ``notes``)."""
    import onnx

    from slimc.errors import SlimcError
    from slimc.onnx import export_onnx
    from slimc.quantize.onnx_passes import strip_metadata

    with tempfile.TemporaryDirectory(prefix=".slimc-qf-") as d:
        path = os.path.join(d, "float.onnx")
        try:
            info = export_onnx(module, inputs, path, dynamic_dims=dynamic_dims or None)
        except SlimcError as e:
            if not dynamic_dims:
                raise
            info = export_onnx(module, inputs, path)
            if notes is not None:
                notes.append(f"ONNX files with a dynamic batch only: with the dims {dynamic_dims} dynamic the "
                             f"export failed ({e})")
            dynamic_dims = None
        model = onnx.load(path)
    strip_metadata(model)
    return model, info.to_dict(), dynamic_dims


def sizes(float_model: Any, int8_model: Any) -> dict:
    f, q = float_model.ByteSize(), int8_model.ByteSize()
    return {"float_bytes": f, "int8_bytes": q, "ratio": q / f if f else None}


def accuracy(evaluate: Any, float_module: nn.Module, int8_model: Any, higher_is_better: bool = True) -> dict | None:
    """``evaluate`` of the float model and of the int8 file in onnxruntime (a module)."""
    if evaluate is None:
        return None
    from slimc.prune.data import failed

    try:
        f = float(evaluate(float_module))
        q = float(evaluate(chk.OrtModule(chk.session(int8_model))))
    except Exception as e:
        raise failed("evaluate(model)", e, "it is given the float model, then the int8 file as a module") from e
    return {"float": f, "int8": q, "drop": (f - q) if higher_is_better else (q - f)}


def _section(method: Any, **kw: Any) -> dict:
    from slimc.quantize.host import default_types, int8_isa

    return {"method": method.name, "label": method.label, **kw, "isa": int8_isa(), "host_types": default_types()}


# --------------------------------------------------------------------------- torch quantizers


def export_qat(q: Any, *, data: Any = None, evaluate: Any = None, check_batches: int = 4, front_end: str = "auto",
               user: UserData | None = None, float_module: nn.Module | None = None,
               batches: list[tuple] | None = None) -> QuantResult:
    from slimc.quantize.deploy import deploy_module, describe_points, export_deploy

    clock: dict[str, float] = {}
    t = time.perf_counter()
    user = (user or UserData()).with_api(data=data)
    if batches is None:
        batches = user_batches(user, q.inputs, f"checking the {q.method.label} export", check_batches)
    notes = list(q.notes)
    if q.unobserved():
        q.calibrate(batches or random_batches(q.inputs))
        notes.append(f"{len(q.unobserved()) or 'every'} activation range(s) had seen no data: calibrated on "
                     + ("the calibration batches" if batches else "random inputs like the example inputs"))
    saved_step = q.clock.step
    q.clock.step = max(saved_step, q.start_step, *(lq.start_step for lq in q.layers.values()))
    try:
        stem, plan, src, dyn = "model", None, q.model, None
        if q.masks is not None:
            import slimc

            res = slimc.compile(q.model, q.masks, q.inputs, front_end=front_end, user_model=False)
            stem, plan, src, dyn = "slim", res.plan, res.module, with_batch(res.dynamic_dims, q.inputs)
            notes.append(f"compiled with the masks first: {res.report['params']['before']:,} → "
                         f"{res.report['params']['after']:,} params")
        points = q.points(plan, set(dict(src.named_modules())) if plan is not None else None)
        clock["prepare"] = time.perf_counter() - t
        dep = deploy_module(src, points, q.inputs)
        float_model, float_info, dyn = float_file(q.float_weights(src, plan), q.inputs, dyn, notes)
        with tempfile.TemporaryDirectory(prefix=".slimc-q-") as d:
            import onnx

            export_deploy(dep, q.inputs, os.path.join(d, "int8.onnx"), dynamic_dims=dyn)
            int8 = onnx.load(os.path.join(d, "int8.onnx"))
        clock["export"] = time.perf_counter() - t - clock["prepare"]
        reference = q.model if q.masks is None else q.reference(src)
        checked = batches or random_batches(q.inputs)
        contract = chk.check_against(reference, int8, checked)
        vs_float = chk.against_float(float_model, int8, checked, by_module=True)
        clock["check"] = time.perf_counter() - t - clock["prepare"] - clock["export"]
        report = _section(q.method, bits=q.bits, graph="slim graph" if plan is not None else "model",
                          activation_type="int8" if q.signed else "uint8", steps_trained=saved_step,
                          check=contract, vs_float=vs_float, size=sizes(float_model, int8),
                          nodes=node_plan(float_model, int8, otherwise="not a layer the config list quantizes"),
                          runtime_ops=chk.runtime_ops(int8),
                          grids=describe_points(points), float_export=float_info,
                          calibration={"data": "calibration batches" if batches else "random inputs",
                                       "batches": len(checked)},
                          notes=notes)
        if not report["nodes"]["int8"]:
            report["notes"].append("weights only (int8 storage, float compute): a size and accuracy mode, not a "
                                   "latency mode — onnxruntime dequantizes the weights at every run unless the session "
                                   "sets session.disable_quant_qdq=1 (then once, at load: float speed)")
        if evaluate is not None or user.evaluate is not None:
            report["accuracy"] = accuracy(evaluate or user.evaluate, float_module or reference, int8,
                                          user.higher_is_better)
    finally:
        q.clock.step = saved_step
    clock["total"] = time.perf_counter() - t
    report["times_s"] = clock
    return QuantResult(int8, float_model, report, stem)


# --------------------------------------------------------------------------- onnxruntime's quantizer


def export_ptq(module: nn.Module, inputs: tuple, method: Any, *, user: UserData, config: Any = None,
               per_channel: bool = True, calibrate: str = "minmax", all_ops: bool = False,
               dynamic_dims: dict | None = None, stem: str = "model", max_batches: int | None = None,
               check_batches: int = 4, evaluate: Any = None) -> QuantResult:
    from slimc.quantize import ptq
    from slimc.quantize.host import default_types

    clock: dict[str, float] = {}
    t = time.perf_counter()
    types = default_types()
    dynamic_dims = with_batch(dynamic_dims, inputs)
    if method.name == "static":  # the data first: a wrong batch is reported before any export
        batches = user_batches(user, inputs, "static quantization (calibration)", max_batches, dynamic_dims)
        if batches is None:
            raise DataError("static quantization needs calibration data: define `calibration_batches()` in model.py "
                            "(yielding input tuples or (inputs, target) pairs), or pass data= to the API; "
                            "or use --method dynamic / weight, which need none")
    else:
        batches = user_batches(user, inputs, "checking the dynamic quantization", check_batches, dynamic_dims)
    notes: list[str] = []
    float_model, float_info, dynamic_dims = float_file(module, inputs, dynamic_dims, notes)
    clock["export"] = time.perf_counter() - t
    nodes, excluded = select_nodes(float_model, module, config, per_channel)
    calibration = None
    if method.name == "static":
        feeds = ptq.to_feeds(float_model, batches, user.where)
        op_types, why = ptq.op_types_for(float_model, all_ops)
        int8 = ptq.static(float_model, feeds, per_channel=per_channel, calibrate=calibrate,
                          activation=types["activation"], weight=types["weight"], op_types=op_types, nodes=nodes,
                          exclude=excluded, reduce_range=types["reduce_range"])
        calibration = {"method": calibrate, "batches": len(batches),
                       "samples": sum(int(b[0].shape[0]) if isinstance(b[0], torch.Tensor) and b[0].dim() else 1
                                      for b in batches)}
        checked = batches[:check_batches]
        reasons = {} if op_types is None else {op: why for op in ("Add", "Mul", "Softmax", "LayerNormalization", "Erf",
                                                                  "Div", "Sub", "Pow", "Sqrt", "ReduceMean", "Tanh",
                                                                  "Gelu", "Relu", "Sigmoid")}
    else:
        int8 = ptq.dynamic(float_model, per_channel=per_channel, weight=types["weight"], nodes=nodes, exclude=excluded,
                           reduce_range=types["reduce_range"])
        checked = batches or random_batches(inputs)
        ptq.to_feeds(float_model, checked, user.where)
        reasons = {op: "dynamic quantization makes MatMul/Gemm (and embedding tables) int8 only"
                   for op in ("Conv", "Add", "Mul", "Softmax", "LayerNormalization")}
    clock["quantize"] = time.perf_counter() - t - clock["export"]
    nodes_plan = node_plan(float_model, int8, float_reasons=reasons, excluded=set(excluded))
    if not nodes_plan["int8"] and not nodes_plan["int8_weights_float_compute"]:
        raise ConfigError(f"{type(module).__name__} has no layer {method.label} quantizes (it makes Conv, MatMul and "
                          "Gemm int8" + (" — dynamic: MatMul, Gemm and embeddings only" if method.name == "dynamic" else "")
                          + "): nothing to quantize")
    vs_float = chk.against_float(float_model, int8, checked)
    clock["check"] = time.perf_counter() - t - clock["export"] - clock["quantize"]
    report = _section(method, bits=8, graph="slim graph" if stem == "slim" else "model", per_channel=per_channel,
                      activation_type=types["activation"] if method.name == "static" else "uint8 (at run time)",
                      weight_type=types["weight"] + (" (7-bit range)" if types["reduce_range"] else ""),
                      calibration=calibration, check=vs_float,
                      size=sizes(float_model, int8), runtime_ops=chk.runtime_ops(int8),
                      nodes=nodes_plan,
                      float_export=float_info, notes=notes)
    if evaluate is not None or user.evaluate is not None:
        report["accuracy"] = accuracy(evaluate or user.evaluate, module, int8, user.higher_is_better)
    clock["total"] = time.perf_counter() - t
    report["times_s"] = clock
    return QuantResult(int8, float_model, report, stem)


def select_nodes(float_model: Any, module: nn.Module, config: Any, per_channel: bool) -> tuple[list[str], list[str]]:
    """A config list → (nodes to quantize — empty: all —, nodes to exclude), by the module each
    node of the file comes from."""
    if config is None:
        return [], []
    from slimc.quantize.check import module_of

    layers = config.resolve(module)
    for lq in layers.values():
        if any(b != 8 for b in lq.bits.values()):
            raise ConfigError(f"config entry {lq.entry}: onnxruntime's static/dynamic quantizers do 8 bit; "
                              "for other bits use --method weight, qat or dorefa")
    chosen, rest = [], []
    inits = {i.name for i in float_model.graph.initializer}
    for n in float_model.graph.node:
        mod = module_of(n, inits)
        if mod is None:
            continue
        (chosen if any(mod == name or mod.startswith(name + ".") for name in layers) else rest).append(n.name)
    if not chosen:
        raise ConfigError("the config list selects no layer of the exported file: check its op_types / op_names")
    return chosen, rest
