"""The quantization contract, measured on every quantize.

* training-time quantizers (QAT, DoReFa, BNN, and Naive's torch model): onnxruntime runs the
  int8 file and must compute what the fake-quant torch model computes — top-1 agreement
  ≥ 99.5 % (outputs with a class dim; near-ties, where the reference's top two are within 8
  output steps — twice the difference allowed — are counted apart: rounding may flip them) and every output within a few
  *output steps* (``(max − min) / 255`` of the reference output: one 8-bit step of its range);
* every method: the int8 file against the float file of the same graph — SQNR (dB) and cosine
  per output — and a per-layer table (each layer's output, quantized against float) that
  names the worst layers;
* which ops onnxruntime really runs in int8 once it has fused the QDQ groups.
"""
from __future__ import annotations

import os
import tempfile
from typing import Any, Sequence

import numpy as np
import torch
from torch import nn

from slimc.errors import VerifyError

#: the contract of a training-time quantizer's export
MIN_TOP1 = 0.995
MAX_STEPS = 4.0  # 99.9th percentile of |int8 − fake-quant| in output steps
#: a top-1 whose lead over the second is within this many output steps is a near-tie: the
#: allowed difference (MAX_STEPS on each of the two) may flip it; the agreement is required of
#: the others (the raw agreement is reported too)
NEAR_TIE = 2 * MAX_STEPS
#: ops whose outputs the per-layer table leaves out (constants and shape arithmetic)
SKIP_OPS = ("Constant", "Shape", "ConstantOfShape", "Range", "Gather", "Unsqueeze", "Squeeze", "Concat", "Cast",
            "Equal", "Where", "Expand", "Slice")
INT8_OPS = ("QLinear", "Integer", "QGemm", "DynamicQuantize", "QAttention", "QOrdered", "MatMulNBits", "QEmbed")


def session(model: Any, threads: int | None = None) -> Any:
    """An onnxruntime CPU session on a path, bytes or ModelProto."""
    import onnxruntime as ort

    so = ort.SessionOptions()
    so.log_severity_level = 3
    if threads:
        so.intra_op_num_threads = threads
    src = model.SerializeToString() if hasattr(model, "SerializeToString") else model
    return ort.InferenceSession(src if isinstance(src, bytes) else os.fspath(src), sess_options=so,
                                providers=["CPUExecutionProvider"])


def feeds(sess: Any, inputs: Sequence[Any]) -> dict[str, np.ndarray]:
    metas = sess.get_inputs()
    arrays = [x.detach().cpu().numpy() if isinstance(x, torch.Tensor) else np.asarray(x) for x in inputs]
    return {m.name: a for m, a in zip(metas, arrays)}


class OrtModule(nn.Module):
    """An onnxruntime session as a module: torch tensors in, torch tensors out (one output: a
    tensor). What ``evaluate(model)`` is handed for the quantized model."""

    def __init__(self, sess: Any):
        super().__init__()
        self.session = sess
        self.n_outputs = len(sess.get_outputs())

    def forward(self, *inputs: Any) -> Any:
        outs = [torch.from_numpy(np.asarray(o)) for o in self.session.run(None, feeds(self.session, inputs))]
        return outs[0] if self.n_outputs == 1 else tuple(outs)


def sqnr_db(ref: np.ndarray, got: np.ndarray) -> float:
    ref, got = ref.astype(np.float64).ravel(), got.astype(np.float64).ravel()
    noise = float(np.sum((ref - got) ** 2))
    signal = float(np.sum(ref ** 2))
    if noise == 0:
        return float("inf")
    return 10 * np.log10(max(signal, 1e-30) / noise)


def cosine(ref: np.ndarray, got: np.ndarray) -> float:
    a, b = ref.astype(np.float64).ravel(), got.astype(np.float64).ravel()
    na, nb = np.linalg.norm(a), np.linalg.norm(b)
    if na == 0 or nb == 0:
        return 1.0 if na == nb else 0.0
    return float(a @ b / (na * nb))


def compare(refs: list[list[np.ndarray]], gots: list[list[np.ndarray]], names: list[str]) -> list[dict]:
    """Per output, over all check batches: SQNR, cosine, top-1 agreement, |Δ| in output steps."""
    rows = []
    for k, name in enumerate(names):
        r = np.concatenate([b[k].reshape(b[k].shape[0] if b[k].ndim else 1, -1) for b in refs]).astype(np.float64)
        g = np.concatenate([b[k].reshape(b[k].shape[0] if b[k].ndim else 1, -1) for b in gots]).astype(np.float64)
        step = (r.max() - r.min()) / 255 if r.size else 0.0
        d = np.abs(r - g)
        row: dict[str, Any] = {"output": name, "sqnr_db": _finite(sqnr_db(r, g)), "cosine": cosine(r, g),
                               "max_abs_diff": float(d.max()) if d.size else 0.0, "output_step": float(step)}
        if step > 0:
            row["steps_p999"] = float(np.quantile(d, 0.999) / step)
            row["steps_max"] = float(d.max() / step)
        last = [b[k] for b in refs]
        if all(x.ndim >= 2 and x.shape[-1] > 1 for x in last):
            rl = np.concatenate([x.reshape(-1, x.shape[-1]) for x in last]).astype(np.float64)
            gl = np.concatenate([b[k].reshape(-1, b[k].shape[-1]) for b in gots]).astype(np.float64)
            same = rl.argmax(-1) == gl.argmax(-1)
            top2 = np.sort(rl, axis=-1)[:, -2:]
            clear = (top2[:, 1] - top2[:, 0]) > NEAR_TIE * step  # near-ties flip on any rounding
            row["top1_agreement"] = float(same.mean())
            row["top1_agreement_clear"] = float(same[clear].mean()) if clear.any() else 1.0
            row["near_ties"] = int((~clear).sum())
        rows.append(row)
    return rows


def _finite(x: float) -> float | None:
    return None if not np.isfinite(x) else float(x)


def contract(rows: list[dict]) -> tuple[bool, str]:
    """Does the int8 file compute what the fake-quant model computes? (ok, the first failure)"""
    for r in rows:
        if r.get("top1_agreement_clear", 1.0) < MIN_TOP1:
            return False, (f"output '{r['output']}': top-1 agreement {r['top1_agreement_clear']:.2%} < {MIN_TOP1:.1%} "
                           f"(leaving out {r['near_ties']} near-ties)")
        if r.get("steps_p999", 0.0) > MAX_STEPS:
            return False, (f"output '{r['output']}': |int8 − fake-quant| reaches {r['steps_p999']:.2f} output steps "
                           f"(99.9th percentile) > {MAX_STEPS:g}")
    return True, ""


def run_all(sess: Any, batches: list[tuple]) -> list[list[np.ndarray]]:
    return [[np.asarray(o) for o in sess.run(None, feeds(sess, b))] for b in batches]


def run_torch(model: nn.Module, batches: list[tuple]) -> list[list[np.ndarray]]:
    from slimc.modes import eval_mode
    from slimc.verify import flat_outputs

    with eval_mode(model), torch.no_grad():
        return [[o.detach().float().numpy() for o in flat_outputs(model(*b))] for b in batches]


def check_against(reference: nn.Module, int8: Any, batches: list[tuple], *, enforce: bool = True) -> dict:
    """The training-time contract: onnxruntime on ``int8`` (a ModelProto) vs ``reference``."""
    sess = session(int8)
    rows = compare(run_torch(reference, batches), run_all(sess, batches), [o.name for o in sess.get_outputs()])
    ok, why = contract(rows)
    if enforce and not ok:
        raise VerifyError(f"the int8 file does not compute what the fake-quant model computes: {why}; "
                          "please report this model (--debug for details)")
    return {"against": "fake-quant torch model", "outputs": rows, "ok": ok,
            "thresholds": {"top1_agreement": MIN_TOP1, "steps_p999": MAX_STEPS}, "batches": len(batches)}


# --------------------------------------------------------------------------- int8 vs float


def module_of(node: Any, initializers: set[str] | frozenset = frozenset()) -> str | None:
    """The torch module an exported ONNX node comes from: the owner of a ``<module>.weight``
    initializer it reads (a conv the exporter folded a BatchNorm into keeps its weight's
    name), else the exporter's ``namespace`` record of the module it ran in."""
    for i in node.input:
        if i in initializers and i.endswith(".weight"):
            return i[: -len(".weight")]
    meta = {p.key: p.value for p in node.metadata_props}
    path = meta.get("namespace")
    if not path:
        return None
    parts = [p.split(": ", 1) for p in path.split("/")][:-1]  # the last entry is the node's own op
    mods = [p[0].strip() for p in parts if len(p) == 2 and p[0].strip()]
    return mods[-1].split(".parametrizations", 1)[0] if mods else None  # a parametrization: its module


def _with_outputs(model: Any, names: list[str]) -> bytes:
    import onnx
    from onnx import helper

    m = onnx.ModelProto()
    m.CopyFrom(model)
    have = {o.name for o in m.graph.output}
    for n in names:
        if n not in have:
            m.graph.output.append(helper.make_tensor_value_info(n, onnx.TensorProto.FLOAT, None))
    return m.SerializeToString()


def _float_tensors(model: Any) -> set[str]:
    """Names of the float32 tensors of ``model`` (by ONNX shape inference)."""
    import onnx

    try:
        inferred = onnx.shape_inference.infer_shapes(model)
    except Exception:  # noqa: BLE001 - no types known: nothing is compared
        return set()
    vis = [*inferred.graph.value_info, *inferred.graph.output, *inferred.graph.input]
    return {v.name for v in vis if v.type.tensor_type.elem_type == onnx.TensorProto.FLOAT}


def _last_output_by_module(model: Any) -> dict[str, tuple[str, str]]:
    """module → (the output of the last node that ran in it, that node's op)."""
    inits = {i.name for i in model.graph.initializer}
    out: dict[str, tuple[str, str]] = {}
    for n in model.graph.node:
        mod = module_of(n, inits)
        if mod and n.output and n.op_type not in SKIP_OPS:
            out[mod] = (n.output[0], n.op_type)
    return out


def layer_pairs(float_model: Any, int8_model: Any, by_module: bool) -> list[dict]:
    """Which float tensor to compare with which int8 one. ``by_module``: two exports of one
    model (names differ: matched by the module each output comes from); else one file and its
    quantized self (onnxruntime keeps names: a tensor, or its ``_DequantizeLinear_Output``)."""
    floats_f, floats_q = _float_tensors(float_model), _float_tensors(int8_model)
    graph_out = {o.name for o in float_model.graph.output}
    rows = []
    if by_module:
        f_out, q_out = _last_output_by_module(float_model), _last_output_by_module(int8_model)
        for mod, (t, op) in f_out.items():
            if mod in q_out and t not in graph_out:
                rows.append({"module": mod, "op": op, "tensor": t, "int8_tensor": q_out[mod][0]})
    else:
        produced = {o for n in int8_model.graph.node for o in n.output}
        inits = {i.name for i in float_model.graph.initializer}
        for n in float_model.graph.node:
            if n.op_type in SKIP_OPS or not n.output or n.output[0] in graph_out:
                continue
            t = n.output[0]
            q = t + "_DequantizeLinear_Output" if t + "_DequantizeLinear_Output" in produced else t
            if q in produced:
                rows.append({"module": module_of(n, inits), "op": n.op_type, "tensor": t, "int8_tensor": q})
    return [r for r in rows if r["tensor"] in floats_f and r["int8_tensor"] in floats_q]


def layer_table(float_model: Any, int8_model: Any, batch: tuple, worst: int = 8, by_module: bool = False) -> dict:
    """Each layer's output, float against int8, on one batch: SQNR and cosine, worst first."""
    rows = layer_pairs(float_model, int8_model, by_module)
    if not rows:
        return {"layers": [], "worst": []}
    fs = session(_with_outputs(float_model, [r["tensor"] for r in rows]))
    qs = session(_with_outputs(int8_model, [r["int8_tensor"] for r in rows]))
    fo = dict(zip([o.name for o in fs.get_outputs()], fs.run(None, feeds(fs, batch))))
    qo = dict(zip([o.name for o in qs.get_outputs()], qs.run(None, feeds(qs, batch))))
    kept = []
    for row in rows:
        ref, got = np.asarray(fo[row["tensor"]]), np.asarray(qo[row["int8_tensor"]])
        if ref.shape != got.shape:
            continue
        row.update(sqnr_db=_finite(sqnr_db(ref, got)), cosine=cosine(ref, got))
        kept.append(row)
    order = sorted(kept, key=lambda r: float("inf") if r["sqnr_db"] is None else r["sqnr_db"])
    return {"layers": kept, "worst": order[:worst]}


def against_float(float_model: Any, int8_model: Any, batches: list[tuple], by_module: bool = False) -> dict:
    """Post-training contract: SQNR / cosine per output and the per-layer table."""
    fs, qs = session(float_model), session(int8_model)
    rows = compare(run_all(fs, batches), run_all(qs, batches), [o.name for o in fs.get_outputs()])
    small = tuple(x[:2] if isinstance(x, torch.Tensor) and x.dim() else x for x in batches[0])
    return {"against": "float file of the same graph", "outputs": rows, "batches": len(batches),
            **layer_table(float_model, int8_model, small, by_module=by_module)}


# --------------------------------------------------------------------------- what runs in int8


def runtime_ops(model: Any) -> dict:
    """The ops onnxruntime runs after its graph optimizations, int8 and float (by op type)."""
    import onnx
    import onnxruntime as ort

    with tempfile.TemporaryDirectory(prefix=".slimc-ort-") as d:
        path = os.path.join(d, "opt.onnx")
        so = ort.SessionOptions()
        so.log_severity_level = 3
        so.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_EXTENDED
        so.optimized_model_filepath = path
        src = model.SerializeToString() if hasattr(model, "SerializeToString") else os.fspath(model)
        ort.InferenceSession(src, sess_options=so, providers=["CPUExecutionProvider"])
        opt = onnx.load(path, load_external_data=False)
    counts: dict[str, dict[str, int]] = {"int8": {}, "float": {}, "convert": {}}
    for n in opt.graph.node:
        kind = ("convert" if n.op_type in ("QuantizeLinear", "DequantizeLinear", "DynamicQuantizeLinear")
                else "int8" if any(k in n.op_type for k in INT8_OPS) else "float")
        counts[kind][n.op_type] = counts[kind].get(n.op_type, 0) + 1
    return {k: dict(sorted(v.items(), key=lambda kv: -kv[1])) for k, v in counts.items()}
