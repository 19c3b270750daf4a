"""Latency benchmark: original vs masked vs physically slim model.

    from slimc.bench import bench, to_markdown, write_outputs
    r = bench(model, masks, example_inputs, batches=(1, 64), name="vgg16", pruner="L1 50%")
    print(to_markdown(r))
    write_outputs([r], "benchmarks/results", "latency_cpu")

The steps: the three models (compiling the slim one unless given), their sizes (params,
FLOPs per sample), their files (state dicts, ONNX exports for onnxruntime), the timings
of every variant × runtime × batch (:mod:`slimc.bench.timing`, measured again while
other processes interfere: :mod:`slimc.bench.contention`), and the masked → slim
speedups next to the FLOPs ratio. Runtimes: ``torch`` (eager; on CUDA also replayed from
a captured CUDA graph, because eager GPU time at small inputs is kernel-launch bound —
see :func:`slimc.bench.timing.launch_bound`) and ``ort`` (onnxruntime on an ONNX export
with a dynamic batch dimension, fp32 only).
"""
from __future__ import annotations

import contextlib
import datetime as _dt
import json
import os
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable

import torch
from torch import nn

from slimc.bench.config import BenchConfig
from slimc.bench.contention import CONTENDED_BUSY, measure_quietly
from slimc.bench.machine import machine_info
from slimc.bench.ort_timer import time_ort
from slimc.bench.timing import Timing, launch_bound, time_torch
from slimc.errors import describe
from slimc.inputs import as_tuple, random_like

__all__ = ["bench", "bench_spec", "batched_inputs", "NOISY_RATIO"]

#: p90 above this multiple of the median marks a measurement as noisy.
NOISY_RATIO = 1.25

Log = Callable[[str], None]


def batched_inputs(example_inputs: Any, batch: int, seed: int = 0) -> tuple:
    """Example inputs with dim 0 replaced by ``batch``, drawn by :func:`slimc.inputs.random_like`
    (floats ``randn``, token ids redrawn in the example's range, masks ones); 0-d tensors and
    non-tensors pass through unchanged."""
    if batch < 1:
        raise ValueError(f"batch must be >= 1, got {batch}")
    inputs = as_tuple(example_inputs)
    shapes = {i: (batch, *t.shape[1:]) for i, t in enumerate(inputs) if isinstance(t, torch.Tensor) and t.dim()}
    drawn = random_like(tuple(t.detach() if isinstance(t, torch.Tensor) else t for t in inputs), seed, shapes)
    return tuple(d if i in shapes else t for i, (t, d) in enumerate(zip(inputs, drawn)))


def _ratio(a: float | None, b: float | None) -> float | None:
    if a is None or b is None or b <= 0:
        return None
    return float(a) / float(b)


# --------------------------------------------------------------------------- step 1: the three models


@dataclass
class _Models:
    """original / masked / slim, and what a CompileResult said about the slim one."""

    by_variant: dict[str, nn.Module]
    compile_s: float | None = None
    compile_report: dict | None = None
    notes: list[str] = field(default_factory=list)


def _three_models(original: nn.Module, masks: Any, slim: Any, inputs: tuple, name: str, say: Log) -> _Models:
    from slimc.masks import normalize
    from slimc.verify import masked_copy

    compile_s = None
    if slim is None:
        import slimc

        say(f"[{name}] compiling")
        t0 = time.perf_counter()
        slim = slimc.compile(original, masks, inputs, name=name)
        compile_s = time.perf_counter() - t0
    final_masks, report = None, None
    if isinstance(slim, nn.Module):
        slim_module = slim
    elif hasattr(slim, "module") and isinstance(slim.module, nn.Module):
        slim_module, final_masks, report = slim.module, getattr(slim, "masks", None), getattr(slim, "report", None)
    else:
        raise TypeError(f"slim must be a CompileResult or an nn.Module, got {type(slim).__name__}")
    if masks is None:
        if final_masks is None:
            raise ValueError("masks are needed (or a CompileResult as slim) to build the masked model")
        masks = final_masks
    original, notes = _caches_off(original)
    masked = masked_copy(original, normalize(masks, original))
    return _Models({"original": original, "masked": masked, "slim": slim_module}, compile_s, report or {}, notes)


def _caches_off(model: nn.Module) -> tuple[nn.Module, list[str]]:
    """An HF model with its KV cache off (a copy sharing its parameters), as the slim graph
    was traced: the three variants compute the same outputs, and none returns a cache object
    (an encoder–decoder cache is no output an exporter can write)."""
    from slimc.trace import caches_off, tree_copy

    if not any(getattr(getattr(m, "config", None), "use_cache", None) for m in model.modules()):
        return model, []
    model = tree_copy(model)
    caches_off(model)
    return model, ["original and masked run with the KV cache off (config.use_cache=False on a copy), "
                   "as the slim graph was traced"]


def _compile_facts(models: _Models) -> dict:
    out: dict[str, Any] = {}
    rep = models.compile_report or {}
    if rep.get("times_s"):
        out["compile_times_s"] = {k: float(v) for k, v in rep["times_s"].items()}
    if rep.get("verify"):
        out["verify"] = rep["verify"]
    if models.compile_s is not None:
        out["compile_s"] = models.compile_s
    return out


# --------------------------------------------------------------------------- step 2: sizes


def _sizes(models: dict[str, nn.Module], inputs: tuple) -> dict:
    """Params (all and non-zero) per variant, FLOPs per sample and the ratios."""
    from slimc.report import count_flops, count_params

    one = batched_inputs(inputs, 1)
    f_orig, f_slim = count_flops(models["original"], one), count_flops(models["slim"], one)
    params = {v: count_params(m) for v, m in models.items()}
    return {
        "params": params,
        "params_nonzero": {v: sum(int(torch.count_nonzero(p.detach())) for p in m.parameters())
                           for v, m in models.items()},
        # a masked model runs the dense computation: its FLOPs are the original's
        "flops": {"original": f_orig, "masked": f_orig, "slim": f_slim},
        "flops_per": "sample (batch 1)",
        "flops_ratio": _ratio(f_orig, f_slim),
        "params_ratio": _ratio(params["original"], params["slim"]),
    }


# --------------------------------------------------------------------------- step 3: files


def _ort_unusable(cfg: BenchConfig) -> str | None:
    """Why the onnxruntime rows asked for cannot run here (None: they can)."""
    if cfg.dtype != "fp32":
        return f"onnxruntime rows skipped: only fp32 is exported (dtype={cfg.dtype})"
    if cfg.torch_device.type == "cuda":
        import onnxruntime as ort

        if "CUDAExecutionProvider" not in ort.get_available_providers():
            return ("onnxruntime rows skipped on cuda: this onnxruntime has no CUDAExecutionProvider "
                    "(install onnxruntime-gpu)")
    return None


def _write_files(models: dict[str, nn.Module], inputs: tuple, cfg: BenchConfig, wd: Path, name: str,
                 export: bool, result: dict, say: Log) -> dict[str, str]:
    """State dicts of every model and ONNX exports of the timed variants; their sizes go
    into ``result["file_bytes"]``. Returns the ONNX paths that exported."""
    from slimc.onnx import export_onnx

    stem = "".join(c if c.isalnum() or c in "-_." else "_" for c in name) or "model"
    file_bytes: dict[str, dict[str, int | None]] = {}
    for v, m in models.items():
        torch.save(m.state_dict(), wd / f"{stem}.{v}.pt")
        file_bytes[v] = {"pt": (wd / f"{stem}.{v}.pt").stat().st_size, "onnx": None}
    onnx_paths: dict[str, str] = {}
    for v in cfg.variants if export else ():
        path = wd / f"{stem}.{v}.onnx"
        say(f"[{name}] exporting {v} to ONNX")
        try:
            info = export_onnx(models[v], inputs, path, dynamic_batch=True, check=cfg.onnx_check)
        except Exception as e:  # noqa: BLE001 - recorded, the torch rows still run
            msg = describe(e)
            result["errors"].append({"variant": v, "runtime": "ort", "stage": "export", "error": msg})
            say(f"[{name}] export of {v} failed: {msg}")
            continue
        onnx_paths[v] = str(path)
        file_bytes[v]["onnx"] = path.stat().st_size
        file_bytes[v]["onnx_initializer_bytes"] = int(info.initializer_bytes)
    result["file_bytes"] = file_bytes
    return onnx_paths


# --------------------------------------------------------------------------- step 4: timings


def _timers(cfg: BenchConfig, model: nn.Module, onnx_path: str | None, x: tuple) -> list[tuple[str, Callable[[], Timing]]]:
    """(runtime label, timer) for one variant at one batch."""
    dev, kw = cfg.torch_device, dict(warmup=cfg.warmup, threads=cfg.threads, **cfg.policy.kwargs())
    out: list[tuple[str, Callable[[], Timing]]] = []
    if "torch" in cfg.runtimes:
        common = dict(device=dev, dtype=cfg.torch_dtype, channels_last=cfg.channels_last, **kw)
        out.append(("torch-eager", lambda: time_torch(model, x, **common)))
        if cfg.cuda_graphs:
            out.append(("torch-cudagraph", lambda: time_torch(model, x, cuda_graph=True, **common)))
    if onnx_path is not None:
        out.append((f"ort-{dev.type}", lambda: time_ort(onnx_path, x, device=str(dev), **kw)))
    return out


def _row(t: Timing, *, model: str, pruner: str, variant: str, keep_samples: bool) -> dict:
    d = t.to_dict()
    if keep_samples:
        d["samples_ms"] = [round(float(x), 5) for x in d["samples_ms"]]
    else:
        d.pop("samples_ms", None)
    return {"model": model, "pruner": pruner, "variant": variant, **d}


def _time_all(models: dict[str, nn.Module], onnx_paths: dict[str, str], inputs: tuple, cfg: BenchConfig,
              name: str, pruner: str, result: dict, say: Log) -> dict[tuple, Timing]:
    """Every variant × runtime × batch; rows into ``result["rows"]``, failures into
    ``result["errors"]``. On CPU a contended measurement is taken again (the least
    contended is kept)."""
    rows: list[dict] = []
    timings: dict[tuple, Timing] = {}
    retries = cfg.retries if cfg.torch_device.type == "cpu" else 0
    for b in cfg.batches:
        x = batched_inputs(inputs, b, seed=cfg.seed)
        for v in cfg.variants:
            for runtime, timer in _timers(cfg, models[v], onnx_paths.get(v), x):
                label = f"[{name}] {v} {runtime} b={b}"
                try:
                    attempts = measure_quietly(timer, retries=retries, wait_idle_s=cfg.wait_idle_s,
                                               label=label, log=say)
                except Exception as e:  # noqa: BLE001 - recorded in the result
                    msg = describe(e)
                    result["errors"].append({"variant": v, "runtime": runtime, "batch": b, "error": msg})
                    say(f"{label} failed: {msg}")
                    continue
                best = min(attempts, key=lambda a: a.other_busy or 0.0)
                t = best.result
                row = _row(t, model=name, pruner=pruner, variant=v, keep_samples=cfg.keep_samples)
                row["other_cpu_busy"] = best.other_busy
                row["attempts"] = len(attempts)
                rows.append(row)
                timings[(v, t.runtime, b)] = t
                say(f"[{name}] {v:8s} {t.summary()}")
    result["rows"] = rows
    return timings


# --------------------------------------------------------------------------- step 5: speedups


def _layers(models: dict[str, nn.Module], onnx_paths: dict[str, str], inputs: tuple, cfg: BenchConfig,
            say: Log) -> dict[str, Any]:
    """Original against slim, layer by layer, at the first batch (CPU runtimes only)."""
    from slimc.bench.layers import compare_layers, ort_layers, torch_layers

    if cfg.torch_device.type != "cpu":
        return {}
    x = batched_inputs(inputs, cfg.batches[0], seed=cfg.seed)
    out: dict[str, Any] = {}
    if "torch" in cfg.runtimes:
        say(f"per-layer times, torch, batch {cfg.batches[0]}")
        out["torch"] = compare_layers(*(torch_layers(models[v], x, threads=cfg.threads) for v in ("original", "slim")))
    if "original" in onnx_paths and "slim" in onnx_paths:
        say(f"per-layer times, onnxruntime, batch {cfg.batches[0]}")
        out["ort"] = compare_layers(*(ort_layers(onnx_paths[v], x, threads=cfg.threads) for v in ("original", "slim")))
    return out


def _speedups(timings: dict[tuple, Timing], flops_ratio: float | None,
              busy: dict[tuple, float | None] | None = None) -> list[dict]:
    busy = busy or {}
    out: list[dict] = []
    keys = sorted({(rt, b) for (_v, rt, b) in timings}, key=lambda k: (k[0], k[1]))
    for rt, b in keys:
        m, s = timings.get(("masked", rt, b)), timings.get(("slim", rt, b))
        if m is None or s is None:
            continue
        o = timings.get(("original", rt, b))
        entry: dict[str, Any] = {
            "runtime": rt, "device": m.device, "batch": b, "dtype": m.dtype,
            "channels_last": m.channels_last,
            "original_ms": o.median_ms if o else None,
            "masked_ms": m.median_ms, "slim_ms": s.median_ms,
            "masked_p90_ms": m.p90_ms, "slim_p90_ms": s.p90_ms,
            "speedup": m.median_ms / s.median_ms,
            # min-based speedup is less sensitive to interference on a shared machine
            "speedup_min": m.min_ms / s.min_ms,
            "flops_ratio": flops_ratio,
            "launch_bound": False,
            "noisy": any(t.p90_ms > NOISY_RATIO * t.median_ms for t in (m, s)),
            "other_cpu_busy": max((busy.get((v, rt, b)) or 0.0) for v in ("masked", "slim")),
        }
        entry["contended"] = m.device == "cpu" and entry["other_cpu_busy"] > CONTENDED_BUSY
        if rt == "torch-eager" and m.device == "cuda":
            gm, gs = timings.get(("masked", "torch-cudagraph", b)), timings.get(("slim", "torch-cudagraph", b))
            entry["launch_bound"] = any(launch_bound(e, g) for e, g in ((m, gm), (s, gs)) if g is not None)
            if gm is not None:
                entry["eager_over_graph_masked"] = m.median_ms / gm.median_ms
            if gs is not None:
                entry["eager_over_graph_slim"] = s.median_ms / gs.median_ms
        out.append(entry)
    return out


# --------------------------------------------------------------------------- bench


def _now() -> str:
    return _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds")


def _time_int8(int8_onnx: dict[str, str], inputs: tuple, cfg: BenchConfig, name: str, pruner: str, result: dict,
               timings: dict[tuple, Timing], say: Log) -> None:
    """The int8 files (variant name → path) in onnxruntime on the CPU, at every batch, beside the
    float variants; their size, and their time against the slim float file's."""
    retries = cfg.retries
    for v, path in int8_onnx.items():
        result["file_bytes"][v] = {"pt": None, "onnx": Path(path).stat().st_size}
        for b in cfg.batches:
            x = batched_inputs(inputs, b, seed=cfg.seed)
            label = f"[{name}] {v} ort-cpu b={b}"
            try:
                attempts = measure_quietly(lambda: time_ort(path, x, device="cpu", warmup=cfg.warmup,
                                                            threads=cfg.threads, **cfg.policy.kwargs()),
                                           retries=retries, wait_idle_s=cfg.wait_idle_s, label=label, log=say)
            except Exception as e:  # noqa: BLE001 - recorded in the result
                result["errors"].append({"variant": v, "runtime": "ort-cpu", "batch": b, "error": describe(e)})
                continue
            best = min(attempts, key=lambda a: a.other_busy or 0.0)
            row = _row(best.result, model=name, pruner=pruner, variant=v, keep_samples=cfg.keep_samples)
            row.update(other_cpu_busy=best.other_busy, attempts=len(attempts))
            result["rows"].append(row)
            timings[(v, "ort-cpu", b)] = best.result
            say(f"[{name}] {v:8s} {best.result.summary()}")
    result["int8"] = [{"variant": v, "batch": b, "slim_ms": s.median_ms, "int8_ms": q.median_ms,
                       "int8_over_slim": q.median_ms / s.median_ms,
                       "original_over_int8": (timings[("original", "ort-cpu", b)].median_ms / q.median_ms
                                              if ("original", "ort-cpu", b) in timings else None)}
                      for v in int8_onnx for b in cfg.batches
                      if (q := timings.get((v, "ort-cpu", b))) and (s := timings.get(("slim", "ort-cpu", b)))]


def bench(original: nn.Module, masks: Any, example_inputs: Any, *, name: str = "model", pruner: str = "masks",
          slim: Any = None, log: Log | None = None, config: BenchConfig | None = None,
          int8_onnx: dict[str, str] | None = None, **options: Any) -> dict:
    """Measure original / masked / slim latency; see the module docstring.

    ``masks``: any mask format :func:`slimc.masks.normalize` accepts (the *masked*
    variant is ``masked_copy(original, masks)``); may be None when ``slim`` is a
    CompileResult (its final masks are used).  ``slim``: a precomputed
    ``CompileResult`` or a slim ``nn.Module``; None compiles here.  What is measured
    and how: ``config`` or its fields as keywords (:class:`BenchConfig`: ``batches``,
    ``device``, ``runtimes``, ``variants``, ``threads``, ``dtype``, ``channels_last``,
    ``cuda_graphs``, ``min_time_s``, ``warmup``, ``repeats``, ``min_repeats``,
    ``max_repeats``, ``retries``, ``wait_idle_s``, …). ``int8_onnx``: int8 files (variant name
    → path, e.g. a compile output's ``slim.int8.onnx``) timed in onnxruntime on the CPU beside
    the others (``result["int8"]``: against the slim float file). Failures of a single measurement
    (an export, a runtime) are recorded in ``result["errors"]`` and the rest goes on; a
    failing compile raises.
    """
    unknown = set(options) - BenchConfig.names()
    if unknown:
        raise TypeError(f"bench() got unexpected options {sorted(unknown)}")
    cfg = config if config is not None else BenchConfig(**options)
    say = log or (lambda _m: None)
    inputs = as_tuple(example_inputs)
    result: dict[str, Any] = {
        "model": name, "pruner": pruner, "machine": machine_info(), "started": _now(),
        "config": cfg.to_dict([list(t.shape) if isinstance(t, torch.Tensor) else None for t in inputs]),
        "notes": [], "errors": [],
    }
    models = _three_models(original, masks, slim, inputs, name, say)
    result["notes"].extend(models.notes)
    result.update(_compile_facts(models))
    result.update(_sizes(models.by_variant, inputs))
    use_ort = "ort" in cfg.runtimes
    if use_ort and (why := _ort_unusable(cfg)):
        result["notes"].append(why)
        use_ort = False
    with contextlib.ExitStack() as stack:
        if cfg.workdir is None:
            wd = Path(stack.enter_context(tempfile.TemporaryDirectory(prefix="slimc-bench-")))
        else:
            wd = Path(cfg.workdir)
            wd.mkdir(parents=True, exist_ok=True)
        onnx_paths = _write_files(models.by_variant, inputs, cfg, wd, name, use_ort, result, say)
        timings = _time_all(models.by_variant, onnx_paths, inputs, cfg, name, pruner, result, say)
        if int8_onnx and use_ort and cfg.torch_device.type == "cpu":
            _time_int8(int8_onnx, inputs, cfg, name, pruner, result, timings, say)
        if cfg.layers:
            result["layers"] = _layers(models.by_variant, onnx_paths, inputs, cfg, say)
    busy = {(r["variant"], r["runtime"], r["batch"]): r.get("other_cpu_busy") for r in result["rows"]}
    result["speedup"] = _speedups(timings, result["flops_ratio"], busy)
    result["finished"] = _now()
    result["loadavg_1m_end"] = round(os.getloadavg()[0], 2) if hasattr(os, "getloadavg") else None
    return result


def bench_spec(model_spec: str, masks: str | os.PathLike | None = None, *,
               compiled_dir: str | os.PathLike | None = None, **kw: Any) -> dict:
    """Bench a model spec (``model.py``, ``pkg.mod:attr``, ``zoo:NAME``) for the CLI.

    Either ``masks`` (a mask file; compiled here) or ``compiled_dir`` (the output of
    ``slimc compile``/``CompileResult.save``: its ``slim.pt`` and final ``masks.pth``
    are used, nothing is recompiled).
    """
    from slimc.loading import load_model
    from slimc.masks import load_masks
    from slimc.shards import fill_weights, load_slim

    model, example_inputs = load_model(model_spec)
    kw.setdefault("name", Path(model_spec).stem if model_spec.endswith(".py") else model_spec.split(":")[-1])
    if compiled_dir is not None:
        d = Path(compiled_dir)
        slim = load_slim(d)
        if any(p.is_meta for p in model.parameters()):  # planned on meta: the original's checkpoint
            weights = (json.loads((d / "report.json").read_text()).get("source") or {}).get("weights")
            if not weights:
                raise FileNotFoundError(f"{model_spec} builds its weights on the meta device and {d} names no checkpoint")
            fill_weights(model, weights)
        mask_src = masks if masks is not None else d / "masks.pth"
        try:  # `slimc compile --quantize` / `slimc quantize out/ -o out/` wrote an int8 file there
            q = json.loads((d / "report.json").read_text()).get("quantize") or {}
        except (OSError, ValueError):
            q = {}
        if q.get("onnx") and (d / q["onnx"]).is_file():
            kw.setdefault("int8_onnx", {f"slim-{q.get('method', 'int8')}-int8": str(d / q["onnx"])})
        return bench(model, load_masks(mask_src), example_inputs, slim=slim, **kw)
    if masks is None:
        raise ValueError("give masks or compiled_dir")
    return bench(model, load_masks(masks), example_inputs, **kw)
