"""One point of the quantizer comparison: a trained network (dense, or pruned 50 % and fine-tuned,
compiled), quantized by one quantizer, in onnxruntime → one JSON record, in the pruner
comparison's layout (:mod:`slimc.compare.grid`) with a ``quantizer`` field::

    {"model", "quantizer", "pruner", "target", "seed",
     "performance": {"original", "float", "quantized"},   # test accuracy: dense float, this graph in float, int8
     "params": {"original", "slim"}, "flops": {"original", "slim"},
     "size_bytes": {"float", "int8", "ratio"},              # the ONNX files
     "latency_ms": {"float", "int8", "ratio", "batch", "device", "threads"},   # onnxruntime, fastest of ≥ 20 calls
     "check": {...}}                                          # the quantize contract, as the report has it

``target``: ``dense`` or ``slim=0.5`` (every coupled group of channels pruned 50 % by L1, then
fine-tuned with the masks held). The pruned network is made once per (model, seed) and cached
under ``<out>/slim/``, as the dense one under ``<out>/dense/``.
"""
from __future__ import annotations

import copy
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from slimc.atomic import atomic_path
from slimc.compare.grid import Settings, dense_path, train_dense, trainer, write_record

#: record name → (slimc method, options, label)
QUANTIZERS: dict[str, tuple[str | None, dict, str]] = {
    "float": (None, {}, "float"),
    "naive8": ("weight", {"bits": 8}, "Naive 8"),
    "static8_pt": ("static", {"per_channel": False}, "static 8 per-tensor"),
    "static8_pc": ("static", {"per_channel": True}, "static 8 per-channel"),
    "qat8": ("qat", {"bits": 8}, "QAT 8"),
    "dorefa4": ("dorefa", {"bits": 4}, "DoReFa 4"),
    "bnn": ("bnn", {"bits": 1}, "BNN"),
}
TARGETS = ("dense", "slim=0.5")
BNN_STEPS = 4  # BNN trains this many times the QAT family's steps, at the dense training's rate


@dataclass(frozen=True)
class QPoint:
    model: str
    quantizer: str
    target: str
    seed: int

    @property
    def stem(self) -> str:
        return f"{self.model}__{self.quantizer}__{self.target.replace('=', '-')}__s{self.seed}"


def slim_path(s: Settings, model: str, seed: int) -> Path:
    return Path(s.out) / "slim" / f"{model}__s{seed}.pt"


def network(s: Settings, p: QPoint) -> tuple[torch.nn.Module, dict]:
    """The float network of the point: dense (trained), or slim (pruned 50 %, fine-tuned, compiled;
    cached) — and what the record says about it."""
    import slimc
    from slimc.compare.nets import build
    from slimc.prune import group_masks
    from slimc.prune.callbacks import masks_held

    torch.set_num_threads(s.threads)
    train_dense(s, p.model, p.seed)
    net = build(p.model, p.seed)
    net.load_state_dict(torch.load(dense_path(s, p.model, p.seed), weights_only=True))
    net.eval()
    t = trainer(s, p.seed)
    x = t.data.test.x[:2]
    info: dict[str, Any] = {"original": t.test(net)}
    if p.target == "dense":
        res = slimc.compile(net, None, (x,), user_model=False, verify=False)
        info["pruned"] = info["original"]
        return net, {**info, "params": res.report["params"], "flops": res.report["flops"]}
    ratio = float(p.target.split("=")[1])
    masks = group_masks(net, (x,), ratio)
    path = slim_path(s, p.model, p.seed)
    if path.exists():
        net.load_state_dict(torch.load(path, weights_only=True))
    else:
        with masks_held(net, masks):
            t.finetune(net, s.finetune_steps)
        path.parent.mkdir(parents=True, exist_ok=True)
        with atomic_path(path) as tmp:
            torch.save(net.state_dict(), tmp)
    net.eval()
    res = slimc.compile(net, masks, (x,), user_model=False)  # verified: slim == masked
    info["pruned"] = t.test(res.module)
    return res.module, {**info, "params": res.report["params"], "flops": res.report["flops"]}


#: how a weights-only int8 file runs at float speed: onnxruntime dequantizes its weights once, at load
WEIGHTS_ONLY_SESSION = {"session.disable_quant_qdq": "1"}


def _latency(path: Path, x: torch.Tensor, threads: int, session_config: dict | None = None) -> float:
    from slimc.bench.ort_timer import time_ort

    return time_ort(str(path), (x,), threads=threads, repeats=20, warmup=3, session_config=session_config).min_ms


def rep_int8_compute(report: dict) -> bool:
    """Does the file compute in int8 (not only store int8 weights)?"""
    return bool(report["nodes"]["int8"])


def run_quant_point(p: QPoint, s: Settings, qat_steps: int | None = None) -> dict:
    """Quantize, check, measure: the point's record (written to ``<out>/records/``)."""
    import tempfile

    from slimc.compare.train import accuracy
    from slimc.quantize import quantize
    from slimc.quantize.check import OrtModule, session

    start = time.perf_counter()
    module, info = network(s, p)
    t = trainer(s, p.seed)
    x = t.data.test.x[:2]
    cal = [(xb,) for xb, _ in t.calibration(8)]
    lat_x = t.data.test.x[:s.latency_batch]
    method, kw, _ = QUANTIZERS[p.quantizer]
    run = method or "weight"  # the float point: the float file the Naive run writes beside its int8 file
    steps = qat_steps if qat_steps is not None else s.finetune_steps
    finetune = t.finetune
    if method == "bnn":  # binarized weights and activations need longer training at the full rate
        steps *= BNN_STEPS

        def finetune(m: torch.nn.Module, n: int) -> None:
            t.fit(m, n, lr=s.lr, seed=p.seed + 2000)
    work = copy.deepcopy(module)
    q = quantize(work, (x,), run, data=cal, steps=steps, finetune=finetune, **kw)
    with tempfile.TemporaryDirectory(prefix="slimc-cq-") as d:
        q.save(d)
        fpath, qpath = Path(d) / f"{q.stem}.onnx", Path(d) / f"{q.stem}.int8.onnx"
        float_acc = accuracy(OrtModule(session(str(fpath))), t.data.test)
        int8_acc = accuracy(q.module, t.data.test) if method else float_acc
        f_ms = _latency(fpath, lat_x, 1)
        q_ms = _latency(qpath, lat_x, 1) if method else f_ms
        weights_only = bool(method) and not rep_int8_compute(q.report)
        q_ms_load = _latency(qpath, lat_x, 1, WEIGHTS_ONLY_SESSION) if weights_only else None
        f_bytes, q_bytes = fpath.stat().st_size, (qpath.stat().st_size if method else fpath.stat().st_size)
    rep = q.report
    record = {
        "model": p.model, "quantizer": p.quantizer, "pruner": "none" if p.target == "dense" else "l1",
        "target": p.target, "seed": p.seed, "method": method, "bits": rep.get("bits"),
        "performance": {"original": info["original"], "pruned": info["pruned"], "float": float_acc,
                        "quantized": int8_acc},
        "params": {"original": info["params"]["before"], "slim": info["params"]["after"]},
        "flops": {"original": info["flops"]["before"], "slim": info["flops"]["after"]},
        "size_bytes": {"float": f_bytes, "int8": q_bytes, "ratio": q_bytes / f_bytes},
        "latency_ms": {"float": f_ms, "int8": q_ms, "ratio": q_ms / f_ms, "batch": s.latency_batch,
                       "device": "cpu", "threads": 1,
                       # weights only: with the weights dequantized once at load (WEIGHTS_ONLY_SESSION)
                       "int8_dequantized_at_load": q_ms_load,
                       "ratio_dequantized_at_load": None if q_ms_load is None else q_ms_load / f_ms},
        "check": None if not method else {"against": rep["check"]["against"],
                                          "outputs": rep["check"]["outputs"]},
        "steps": steps if method in ("qat", "dorefa", "bnn") else 0,
        "runtime_int8_ops": rep["runtime_ops"]["int8"] if method else {},
    }
    write_record(s, p, record, time.perf_counter() - start)
    return record
