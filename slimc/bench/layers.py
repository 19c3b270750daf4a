"""Where the time goes, layer by layer: dense against slim, in onnxruntime and torch eager.

A model whose FLOPs fell ÷4 but whose latency fell ÷2.5 loses the difference somewhere;
this module finds where. For each runtime it times every layer of both models (onnxruntime:
its own profiler, one event per kernel after graph optimization, so a fused Conv+BN+ReLU is
one row; torch eager: forward hooks on leaf modules), pairs the rows by name (the slim
model keeps the original's names), and gives each row its FLOPs and bytes moved. A row whose
speedup falls far short of its FLOPs cut is *flagged*, with the reasons that can be read off
its shapes and kernel:

* ``channels C not a multiple of B``: blocked CPU kernels (onnxruntime's NCHWc convolutions,
  oneDNN's) work on blocks of B channels (16 with AVX-512, else 8); a remainder is padded
  or takes a slower path;
* ``groups of width w (dense w0)``: a grouped conv kept its group count and narrowed each
  group, which the kernels handle worse than fewer groups of the original width;
* ``off the NCHWc path``: onnxruntime ran the dense layer as a blocked (NCHWc) kernel and
  the slim one as a plain one;
* ``memory-bound``: the layer does few FLOPs per byte it moves, so its time follows the
  bytes (which fall less than the FLOPs when both channel sides shrink);
* ``op the dense graph lacks``: the slim graph holds an op type the dense one does not.
"""
from __future__ import annotations

import json
import os
import statistics
import tempfile
from collections import Counter, defaultdict
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Callable

import torch
from torch import nn

__all__ = ["Layer", "LayerTimes", "compare_layers", "ort_layers", "simd_block", "torch_layers", "layers_markdown"]

FLAG_EFFICIENCY = 0.7  # a row is flagged when speedup < this × its FLOPs cut
MIN_SHARE = 0.01  # ... and it holds at least this share of the dense model's time
MEMORY_BOUND = 8.0  # FLOPs per byte below which a layer's time follows its bytes


def simd_block() -> int:
    """Channels per SIMD block of the CPU's blocked conv kernels: 16 with AVX-512, else 8."""
    from slimc.bench.machine import cpu_flags

    return 16 if "avx512f" in cpu_flags() else 8


@dataclass
class Layer:
    name: str  # onnxruntime: the kernel's node name (``_nchwc`` stripped); torch: the module's
    op: str
    ms: float
    flops: int = 0
    bytes: int = 0
    cin: int | None = None
    cout: int | None = None
    groups: int | None = None
    nchwc: bool = False
    module: str | None = None  # onnxruntime: the module the kernel's main op came from, where known


@dataclass
class LayerTimes:
    runtime: str
    total_ms: float
    layers: dict[str, Layer]
    op_types: Counter = field(default_factory=Counter)


# -- onnxruntime ---------------------------------------------------------------------------

def _prod(xs) -> int:
    out = 1
    for x in xs:
        out *= int(x)
    return out


def _shapes(arg: list) -> list[list[int]]:
    return [next(iter(d.values())) for d in arg or []]


def _ort_layer(name: str, args: dict, ms: float) -> Layer:
    op = args.get("op_name", "?")
    ins, outs = _shapes(args.get("input_type_shape")), _shapes(args.get("output_type_shape"))
    nbytes = sum(int(args.get(k, 0)) for k in ("activation_size", "parameter_size", "output_size"))
    lay = Layer(name.removesuffix("_nchwc"), op, ms, bytes=nbytes, nchwc=name.endswith("_nchwc"))
    out = outs[0] if outs else []
    if op in ("Conv", "FusedConv") and len(ins) >= 2 and len(out) >= 3:
        w = ins[1]
        lay.flops = 2 * out[0] * _prod(out[2:]) * _prod(w)
        lay.cin, lay.cout = ins[0][1], out[1]
        if len(w) == len(out):  # a logical (O, I/g, k…) weight, not a blocked one
            lay.groups = max(1, ins[0][1] // max(1, w[1]))
    elif op in ("Gemm", "MatMul", "FusedMatMul", "FusedGemm") and len(ins) >= 2 and out:
        lay.flops = 2 * _prod(out) * (ins[0][-1] if ins[0] else 1)
        lay.cin, lay.cout = (ins[0][-1] if ins[0] else None), out[-1]
    return lay


def ort_layers(onnx_path: str | os.PathLike, inputs: tuple, *, threads: int | None = None,
               rounds: int = 30, warmup: int = 5) -> LayerTimes:
    """Per kernel of ``onnx_path`` in onnxruntime (CPU, ``ORT_ENABLE_ALL``): the median of
    ``rounds`` runs after ``warmup``."""
    import onnx
    import onnxruntime as ort

    from slimc.bench.ort_timer import _to_numpy, session_options
    from slimc.bench.timing import resolve_threads

    with tempfile.TemporaryDirectory(prefix="slimc-layers-") as td:
        so = session_options(resolve_threads(threads))
        so.enable_profiling = True
        so.profile_file_prefix = os.path.join(td, "prof")
        sess = ort.InferenceSession(os.fspath(onnx_path), sess_options=so, providers=["CPUExecutionProvider"])
        feeds = {m.name: _to_numpy(x) for m, x in zip(sess.get_inputs(), [x for x in inputs if x is not None])}
        for _ in range(warmup + rounds):
            sess.run(None, feeds)
        events = json.loads(Path(sess.end_profiling()).read_text())
    runs = [e["dur"] / 1e3 for e in events if e.get("cat") == "Session" and e.get("name") == "model_run"]
    per: dict[str, list[float]] = defaultdict(list)
    last: dict[str, dict] = {}
    for e in events:
        if e.get("cat") == "Node" and e.get("name", "").endswith("_kernel_time"):
            key = e["name"][: -len("_kernel_time")]
            per[key].append(e["dur"] / 1e3)
            last[key] = e.get("args", {})
    layers: dict[str, Layer] = {}
    for key, durs in per.items():
        lay = _ort_layer(key, last[key], statistics.median(durs[warmup:] or durs))
        if lay.name in layers:  # two kernels of one name (rare): add them
            layers[lay.name].ms += lay.ms
        else:
            layers[lay.name] = lay
    graph = onnx.load(os.fspath(onnx_path), load_external_data=False).graph
    index = ({n.name: n for n in graph.node}, {o: n for n in graph.node for o in n.output})
    for lay in layers.values():
        lay.module = _module_of(index, lay.name, lay.op)
    return LayerTimes("ort-cpu", statistics.median(runs[warmup:] or runs), layers, Counter(n.op_type for n in graph.node))


def _module_of(index: tuple[dict, dict], key: str, op: str) -> str | None:
    """The module FQN of the exported node a kernel ran (the torch exporter records each node's
    module scopes): a fused kernel is named after its last node's output, so walk back to the
    node of the kernel's own op type (a FusedConv's Conv)."""
    import ast

    by_name, producer = index  # node name → node, output name → node
    node = by_name.get(key) or by_name.get("node_" + key) or producer.get(key) or by_name.get(key.split(" ")[-1])
    want = op.removeprefix("Fused")
    for _ in range(4):
        if node is None or node.op_type == want:
            break
        node = producer.get(node.input[0]) if node.input else None
    if node is None:
        return None
    if len(node.input) > 1 and node.input[1].endswith(".weight"):  # the module's own weight (BN folded in)
        return node.input[1].removesuffix(".weight")
    meta = {p.key: p.value for p in node.metadata_props}
    try:
        scopes = [s for s in ast.literal_eval(meta.get("pkg.torch.onnx.name_scopes", "[]")) if s]
    except (ValueError, SyntaxError):
        return None
    return scopes[-2] if len(scopes) >= 2 else (scopes[0] if scopes else None)


# -- torch eager ---------------------------------------------------------------------------

def _nbytes(xs) -> int:
    if isinstance(xs, torch.Tensor):
        return xs.numel() * xs.element_size()
    if isinstance(xs, (tuple, list)):
        return sum(_nbytes(x) for x in xs)
    return 0


def torch_layers(model: nn.Module, inputs: tuple, *, threads: int | None = None, rounds: int = 30,
                 warmup: int = 5) -> LayerTimes:
    """Per leaf module in torch eager (CPU, no grad, eval): the median of ``rounds`` forwards
    after ``warmup``; FLOPs with torch's FlopCounterMode."""
    import time

    from slimc.bench.timing import resolve_threads
    from slimc.flops.report import layer_costs
    from slimc.prune.space import leaf_modules

    names = leaf_modules(model)
    leaves = {n: m for n, m in model.named_modules() if n in names}
    costs = layer_costs(model, inputs)
    times: dict[str, list[float]] = defaultdict(list)
    info: dict[str, Layer] = {}
    start: dict[str, float] = {}
    handles = []

    def pre(name: str) -> Callable:
        def hook(_m, _args):
            start[name] = time.perf_counter()
        return hook

    def post(name: str, m: nn.Module) -> Callable:
        def hook(_m, args, out):
            times[name].append((time.perf_counter() - start[name]) * 1e3)
            if name not in info:
                pb = sum(p.numel() * p.element_size() for p in m.parameters(recurse=False))
                lay = Layer(name, type(m).__name__, 0.0, int(costs.get(name, {}).get("flops", 0)),
                            _nbytes(args) + _nbytes(out) + pb)
                if isinstance(m, nn.modules.conv._ConvNd):
                    lay.cin, lay.cout, lay.groups = m.in_channels, m.out_channels, m.groups
                elif isinstance(m, nn.Linear):
                    lay.cin, lay.cout = m.in_features, m.out_features
                info[name] = lay
        return hook

    prev = torch.get_num_threads()
    torch.set_num_threads(resolve_threads(threads))
    was_training = model.training
    model.eval()
    try:
        for name, m in leaves.items():
            handles += [m.register_forward_pre_hook(pre(name)), m.register_forward_hook(post(name, m))]
        totals = []
        with torch.inference_mode():
            for i in range(warmup + rounds):
                if i == warmup:
                    times.clear()
                t = time.perf_counter()
                model(*inputs)
                totals.append((time.perf_counter() - t) * 1e3)
    finally:
        for h in handles:
            h.remove()
        torch.set_num_threads(prev)
        model.train(was_training)
    for name, lay in info.items():
        lay.ms = statistics.median(times[name]) if times[name] else 0.0
    ops = Counter(lay.op for lay in info.values())
    return LayerTimes("torch-cpu", statistics.median(totals[warmup:]), info, ops)


# -- the comparison ------------------------------------------------------------------------

def _ratio(a: float, b: float) -> float | None:
    return a / b if b else None


def _reasons(d: Layer, s: Layer, block: int, extra_ops: set[str]) -> list[str]:
    why = []
    for side, n0, n in (("in", d.cin, s.cin), ("out", d.cout, s.cout)):
        if n is not None and n0 is not None and n != n0 and n % block and n0 % block == 0:
            why.append(f"{side} channels {n} not a multiple of {block}")
    if s.groups and d.groups and s.groups > 1 and s.cin and d.cin and not (s.groups == s.cin):
        w, w0 = s.cin // s.groups, d.cin // d.groups
        if w != w0:
            why.append(f"groups of width {w} (dense {w0}), {s.groups} groups")
    if d.nchwc and not s.nchwc:
        why.append("off the NCHWc path")
    if s.bytes and s.flops and s.flops / s.bytes < MEMORY_BOUND:
        why.append(f"memory-bound ({s.flops / s.bytes:.1f} FLOP/byte: bytes ÷{d.bytes / s.bytes:.2f}, "
                   f"FLOPs ÷{d.flops / s.flops:.2f})")
    if s.op in extra_ops:
        why.append(f"{s.op}: an op the dense graph lacks")
    return why


def compare_layers(dense: LayerTimes, slim: LayerTimes, block: int | None = None) -> dict[str, Any]:
    """Rows of (dense, slim) layers paired by name with speedup, FLOPs cut, efficiency,
    the time lost against an ideal FLOPs-proportional slim layer, and reasons where flagged."""
    block = block or simd_block()
    extra_ops = {op for op in slim.op_types if op not in dense.op_types}
    rows = []
    for name, d in dense.layers.items():
        s = slim.layers.get(name)
        if s is None:
            continue
        cut = _ratio(d.flops, s.flops) if d.flops and s.flops else None
        speed = _ratio(d.ms, s.ms)
        eff = speed / cut if (speed and cut) else None
        ideal = d.ms / cut if cut else d.ms
        row = {"layer": s.module or name, "op": s.op, "dense_ms": d.ms, "slim_ms": s.ms, "speedup": speed,
               "flops_cut": cut, "efficiency": eff, "lost_ms": s.ms - ideal,
               "dense_flops": d.flops, "slim_flops": s.flops, "dense_bytes": d.bytes, "slim_bytes": s.bytes,
               "cin": [d.cin, s.cin], "cout": [d.cout, s.cout], "groups": [d.groups, s.groups],
               "nchwc": [d.nchwc, s.nchwc]}
        flagged = eff is not None and eff < FLAG_EFFICIENCY and d.ms >= MIN_SHARE * dense.total_ms
        row["flag"] = flagged
        row["why"] = _reasons(d, s, block, extra_ops) if flagged else []
        rows.append(row)
    only_slim = [n for n in slim.layers if n not in dense.layers]
    rows.sort(key=lambda r: -r["lost_ms"])
    return {"runtime": dense.runtime, "block": block, "dense_ms": dense.total_ms, "slim_ms": slim.total_ms,
            "rows": rows, "only_in_slim": [asdict(slim.layers[n]) for n in only_slim],
            "only_in_dense": [n for n in dense.layers if n not in slim.layers],
            "extra_op_types": sorted(extra_ops),
            "op_types": {"dense": dict(dense.op_types), "slim": dict(slim.op_types)}}


def _f(x: float | None, spec: str = ".2f") -> str:
    return "–" if x is None else format(x, spec)


def layers_markdown(cmp: dict[str, Any], top: int = 15) -> str:
    """The rows that lose the most time against a FLOPs-proportional slim layer."""
    lines = [f"**{cmp['runtime']}**: dense {cmp['dense_ms']:.2f} ms, slim {cmp['slim_ms']:.2f} ms "
             f"(channel block {cmp['block']})", "",
             "| layer | op | dense ms | slim ms | speedup | FLOPs cut | efficiency | lost ms | channels in/out | why |",
             "|---|---|---|---|---|---|---|---|---|---|"]
    for r in cmp["rows"][:top]:
        ch = f"{r['cin'][0]}→{r['cin'][1]} / {r['cout'][0]}→{r['cout'][1]}" if r["cin"][0] is not None else ""
        lines.append(f"| {r['layer']} | {r['op']} | {r['dense_ms']:.3f} | {r['slim_ms']:.3f} | {_f(r['speedup'])} | "
                     f"{_f(r['flops_cut'])} | {_f(r['efficiency'])} | {r['lost_ms']:.3f} | {ch} | "
                     f"{'; '.join(r['why'])} |")
    if cmp["only_in_slim"]:
        ms = sum(x["ms"] for x in cmp["only_in_slim"])
        ops = Counter(x["op"] for x in cmp["only_in_slim"])
        lines += ["", f"Kernels only in the slim run: {dict(ops)}, {ms:.3f} ms in all."]
    if cmp["extra_op_types"]:
        lines += ["", f"Op types in the slim graph that the dense one lacks: {', '.join(cmp['extra_op_types'])}."]
    return "\n".join(lines)
