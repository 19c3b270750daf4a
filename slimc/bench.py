"""Latency benchmark: original vs masked vs physically slim model.

    from slimc.bench import bench, to_markdown, write_outputs
    r = bench(model, masks, example_inputs, batches=(1, 64), name="vgg16", pruner="L1 50%")
    print(to_markdown(r))
    write_outputs([r], "benchmarks/results", "latency_cpu")

Each (variant, runtime, batch) is timed with :mod:`slimc.timing` (deep copy in eval
mode, warm-up, ``torch.inference_mode()``, CUDA synchronize, fixed thread count,
per-call samples → min / median / p90).  The number of timed calls is chosen from a
pilot call: enough calls to cover ``min_time_s``, at least ``min_repeats``, at most
``max_repeats`` (or exactly ``repeats`` when given).

Runtimes: ``torch`` (eager; on CUDA also replayed from a captured CUDA graph, because
eager GPU time at small inputs is kernel-launch bound — see
:func:`slimc.timing.launch_bound`) and ``ort`` (onnxruntime on an ONNX export with a
dynamic batch dimension, fp32 only).  Besides latency the result records params,
FLOPs (per sample), file sizes (state dict and ONNX) and, per (runtime, batch), the
masked → slim speedup next to the FLOPs ratio.
"""
from __future__ import annotations

import contextlib
import datetime as _dt
import json
import math
import os
import tempfile
import time
from pathlib import Path
from typing import Any, Callable, Iterable, Sequence

import torch
from torch import nn

from slimc.timing import (
    LAUNCH_BOUND_RATIO,
    Timing,
    launch_bound,
    machine_info,
    physical_cores_available,
    time_ort,
    time_torch,
)

__all__ = [
    "bench",
    "bench_spec",
    "batched_inputs",
    "to_markdown",
    "write_outputs",
    "cpu_busy_fraction",
    "wait_for_quiet_cpu",
    "ContentionMeter",
    "VARIANTS",
    "RUNTIMES",
    "DTYPES",
]

VARIANTS = ("original", "masked", "slim")
RUNTIMES = ("torch", "ort")
DTYPES = {"fp32": torch.float32, "bf16": torch.bfloat16, "fp16": torch.float16}
#: p90 above this multiple of the median marks a measurement as noisy.
NOISY_RATIO = 1.25
#: other processes using more than this fraction of all CPUs during a CPU timing.
CONTENDED_BUSY = 0.10


# --------------------------------------------------------------------------- inputs


def batched_inputs(example_inputs: Any, batch: int, seed: int = 0) -> tuple:
    """Example inputs with dim 0 replaced by ``batch``.

    Floating tensors become seeded ``randn`` of the new shape (same dtype); other
    tensors (token ids, masks) are tiled along dim 0 from the example values;
    0-d tensors and non-tensors pass through unchanged.
    """
    if batch < 1:
        raise ValueError(f"batch must be >= 1, got {batch}")
    if isinstance(example_inputs, torch.Tensor):
        example_inputs = (example_inputs,)
    gen = torch.Generator().manual_seed(seed)
    out: list[Any] = []
    for t in example_inputs:
        if not isinstance(t, torch.Tensor) or t.dim() == 0:
            out.append(t)
            continue
        shape = (batch, *t.shape[1:])
        if t.is_floating_point():
            x = torch.randn(shape, generator=gen, dtype=torch.float32).to(t.dtype)
        else:
            if t.shape[0] == 0:
                raise ValueError("cannot tile an input with an empty batch dimension")
            idx = torch.arange(batch) % t.shape[0]
            x = t.detach().cpu()[idx].clone()
        out.append(x.to(t.device))
    return tuple(out)


# --------------------------------------------------------------------------- helpers


def _as_tuple(x: Any) -> tuple:
    if isinstance(x, torch.Tensor):
        return (x,)
    if isinstance(x, (list, tuple)):
        return tuple(x)
    raise TypeError(f"example_inputs is a {type(x).__name__}: give a tensor or a tuple of tensors")


def _state_dict_bytes(module: nn.Module, path: Path) -> int:
    torch.save(module.state_dict(), path)
    return path.stat().st_size


def _nonzero_params(module: nn.Module) -> int:
    return sum(int(torch.count_nonzero(p.detach())) for p in module.parameters())


def _flops_per_sample(module: nn.Module, inputs: tuple) -> int | None:
    from slimc.report import count_flops

    return count_flops(module, batched_inputs(inputs, 1))


def _ratio(a: float | None, b: float | None) -> float | None:
    if a is None or b is None or b <= 0:
        return None
    return float(a) / float(b)


def _check_choice(kind: str, got: Iterable[str], allowed: Sequence[str]) -> tuple[str, ...]:
    got = tuple(got)
    bad = [g for g in got if g not in allowed]
    if bad or not got:
        raise ValueError(f"{kind} must be a non-empty subset of {', '.join(allowed)}; got {list(got)}")
    return got


def _row(t: Timing, *, model: str, pruner: str, variant: str, keep_samples: bool) -> dict:
    d = t.to_dict()
    if keep_samples:
        d["samples_ms"] = [round(float(x), 5) for x in d["samples_ms"]]
    else:
        d.pop("samples_ms", None)
    return {"model": model, "pruner": pruner, "variant": variant, **d}


def _measure(fn: Callable[..., Timing], *, warmup: int, repeats: int | None, min_time_s: float,
             min_repeats: int, max_repeats: int) -> tuple[Timing, float | None]:
    """Run ``fn(warmup=, repeats=)``; with ``repeats=None`` pick the count from a pilot call.

    Returns the timing and the pilot call's time in ms (None without a pilot).
    """
    if repeats is not None:
        return fn(warmup=warmup, repeats=int(repeats)), None
    pilot = fn(warmup=warmup, repeats=1)
    per_call_s = max(pilot.median_ms / 1e3, 1e-7)
    n = int(math.ceil(min_time_s / per_call_s))
    n = max(int(min_repeats), min(int(max_repeats), n))
    # the pilot (and its warm-up) already warmed caches/allocator/oneDNN primitives
    return fn(warmup=1, repeats=n), pilot.median_ms


# --------------------------------------------------------------------------- bench


def bench(
    original: nn.Module,
    masks: Any,
    example_inputs: Any,
    *,
    batches: Sequence[int] = (1, 8, 64),
    device: str = "cpu",
    runtimes: Sequence[str] = RUNTIMES,
    variants: Sequence[str] = VARIANTS,
    threads: int | None = None,
    dtype: str = "fp32",
    channels_last: bool = False,
    cuda_graphs: bool | None = None,
    min_time_s: float = 1.0,
    warmup: int = 3,
    repeats: int | None = None,
    min_repeats: int = 5,
    max_repeats: int = 1000,
    workdir: str | os.PathLike | None = None,
    name: str = "model",
    pruner: str = "masks",
    slim: Any = None,
    onnx_check: bool = True,
    keep_samples: bool = True,
    seed: int = 0,
    retries: int = 0,
    wait_idle_s: float = 60.0,
    log: Callable[[str], None] | None = None,
) -> dict:
    """Measure original / masked / slim latency; see the module docstring.

    ``masks``: any mask format :func:`slimc.masks.normalize` accepts (the *masked*
    variant is ``masked_copy(original, masks)``); may be None when ``slim`` is a
    CompileResult (its final masks are used).  ``slim``: a precomputed
    ``CompileResult`` or a slim ``nn.Module``; None compiles here.
    ``cuda_graphs``: also time torch with CUDA-graph replay (default: on for CUDA).
    Failures of a single measurement (an export, a runtime) are recorded in
    ``result["errors"]`` and the rest goes on; a failing compile raises.
    ``retries``: on CPU, a configuration during which other processes used more
    than ``CONTENDED_BUSY`` of the CPUs is measured again (after waiting up to
    ``wait_idle_s`` for a quiet CPU) up to this many times; the least contended
    measurement is kept and its ``other_cpu_busy`` recorded.
    """
    from slimc.masks import normalize
    from slimc.report import count_params
    from slimc.verify import masked_copy

    say = log or (lambda _m: None)
    variants = _check_choice("variants", variants, VARIANTS)
    runtimes = _check_choice("runtimes", runtimes, RUNTIMES)
    if dtype not in DTYPES:
        raise ValueError(f"dtype must be one of {', '.join(DTYPES)}; got {dtype!r}")
    dev = torch.device(device)
    if dev.type not in ("cpu", "cuda"):
        raise ValueError(f"device must be 'cpu' or 'cuda', got {device!r}")
    if dev.type == "cuda" and not torch.cuda.is_available():
        raise RuntimeError(f"device={device!r} requested but CUDA is not available")
    if cuda_graphs is None:
        cuda_graphs = dev.type == "cuda"
    if cuda_graphs and dev.type != "cuda":
        raise ValueError("cuda_graphs=True needs device='cuda'")
    batches = [int(b) for b in batches]
    if not batches or min(batches) < 1:
        raise ValueError(f"batches must be positive integers, got {batches}")
    n_threads = physical_cores_available() if threads is None else int(threads)
    if n_threads < 1:
        raise ValueError(f"threads must be >= 1, got {threads}")
    inputs = _as_tuple(example_inputs)
    torch_dtype = DTYPES[dtype]

    result: dict[str, Any] = {
        "model": name,
        "pruner": pruner,
        "machine": machine_info(),
        "started": _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds"),
        "config": {
            "batches": batches, "device": dev.type, "runtimes": list(runtimes), "variants": list(variants),
            "threads": n_threads, "dtype": dtype, "channels_last": bool(channels_last),
            "cuda_graphs": bool(cuda_graphs), "min_time_s": min_time_s, "warmup": warmup,
            "repeats": repeats, "min_repeats": min_repeats, "max_repeats": max_repeats, "seed": seed,
            "retries": retries,
            "input_shapes": [list(t.shape) if isinstance(t, torch.Tensor) else None for t in inputs],
        },
        "notes": [],
        "errors": [],
    }

    # ---- the three models
    compile_s = None
    slim_module: nn.Module
    final_masks = None
    if slim is None:
        import slimc

        say(f"[{name}] compiling")
        t0 = time.perf_counter()
        slim = slimc.compile(original, masks, inputs, name=name)
        compile_s = time.perf_counter() - t0
    if isinstance(slim, nn.Module):
        slim_module = slim
    elif hasattr(slim, "module") and isinstance(slim.module, nn.Module):
        slim_module = slim.module
        final_masks = getattr(slim, "masks", None)
        rep = getattr(slim, "report", None) or {}
        if rep.get("times_s"):
            result["compile_times_s"] = {k: float(v) for k, v in rep["times_s"].items()}
        if rep.get("verify"):
            result["verify"] = rep["verify"]
    else:
        raise TypeError(f"slim must be a CompileResult or an nn.Module, got {type(slim).__name__}")
    if compile_s is not None:
        result["compile_s"] = compile_s
    if masks is None:
        if final_masks is None:
            raise ValueError("masks are needed (or a CompileResult as slim) to build the masked model")
        masks = final_masks
    mask_set = normalize(masks, original)

    models: dict[str, nn.Module] = {
        "original": original,
        "masked": masked_copy(original, mask_set),
        "slim": slim_module,
    }
    result["params"] = {v: count_params(m) for v, m in models.items()}
    result["params_nonzero"] = {v: _nonzero_params(m) for v, m in models.items()}
    f_orig = _flops_per_sample(original, inputs)
    f_slim = _flops_per_sample(slim_module, inputs)
    # a masked model runs the dense computation: its FLOPs are the original's
    result["flops"] = {"original": f_orig, "masked": f_orig, "slim": f_slim}
    result["flops_per"] = "sample (batch 1)"
    result["flops_ratio"] = _ratio(f_orig, f_slim)
    result["params_ratio"] = _ratio(result["params"]["original"], result["params"]["slim"])

    # ---- files: state dicts and ONNX exports (temp dir unless workdir)
    use_ort = "ort" in runtimes
    if use_ort and dtype != "fp32":
        result["notes"].append(f"onnxruntime rows skipped: only fp32 is exported (dtype={dtype})")
        use_ort = False
    if use_ort and dev.type == "cuda":
        import onnxruntime as ort

        if "CUDAExecutionProvider" not in ort.get_available_providers():
            result["notes"].append(
                "onnxruntime rows skipped on cuda: this onnxruntime has no CUDAExecutionProvider "
                "(install onnxruntime-gpu)"
            )
            use_ort = False

    file_bytes: dict[str, dict[str, int | None]] = {}
    onnx_paths: dict[str, str] = {}
    with contextlib.ExitStack() as stack:
        if workdir is None:
            wd = Path(stack.enter_context(tempfile.TemporaryDirectory(prefix="slimc-bench-")))
        else:
            wd = Path(workdir)
            wd.mkdir(parents=True, exist_ok=True)
        stem = "".join(c if c.isalnum() or c in "-_." else "_" for c in name) or "model"
        export_variants = variants if use_ort else ()
        for v, m in models.items():
            file_bytes[v] = {"pt": _state_dict_bytes(m, wd / f"{stem}.{v}.pt"), "onnx": None}
        for v in export_variants:
            from slimc.onnx import export_onnx

            path = wd / f"{stem}.{v}.onnx"
            say(f"[{name}] exporting {v} to ONNX")
            try:
                info = export_onnx(models[v], inputs, path, dynamic_batch=True, check=onnx_check)
            except Exception as e:  # noqa: BLE001 - recorded, the torch rows still run
                msg = f"{type(e).__name__}: {e}".splitlines()[0][:300]
                result["errors"].append({"variant": v, "runtime": "ort", "stage": "export", "error": msg})
                say(f"[{name}] export of {v} failed: {msg}")
                continue
            onnx_paths[v] = str(path)
            file_bytes[v]["onnx"] = path.stat().st_size
            file_bytes[v]["onnx_initializer_bytes"] = int(info.initializer_bytes)
        result["file_bytes"] = file_bytes

        # ---- timings
        rows: list[dict] = []
        timings: dict[tuple, Timing] = {}
        common = dict(warmup=warmup, repeats=repeats, min_time_s=min_time_s,
                      min_repeats=min_repeats, max_repeats=max_repeats)

        def record(v: str, runtime_label: str, b: int, fn: Callable[..., Timing]) -> None:
            best: tuple[float, Timing, float | None, float | None] | None = None
            for attempt in range(1 + max(0, int(retries))):
                if attempt:
                    say(f"[{name}] {v} {runtime_label} b={b}: other processes used {best[0]:.0%} of the "
                        "CPUs; measuring again")
                    wait_for_quiet_cpu(wait_idle_s, log=say)
                try:
                    with ContentionMeter() as cm:
                        t, pilot_ms = _measure(fn, **common)
                except Exception as e:  # noqa: BLE001 - recorded in the result
                    msg = f"{type(e).__name__}: {e}".splitlines()[0][:300]
                    result["errors"].append({"variant": v, "runtime": runtime_label, "batch": b, "error": msg})
                    say(f"[{name}] {v} {runtime_label} b={b} failed: {msg}")
                    return
                load = cm.other_busy or 0.0
                if best is None or load < best[0]:
                    best = (load, t, pilot_ms, cm.other_busy)
                if dev.type != "cpu" or load <= CONTENDED_BUSY:
                    break
            _load, t, pilot_ms, other = best
            row = _row(t, model=name, pruner=pruner, variant=v, keep_samples=keep_samples)
            row["pilot_ms"] = pilot_ms
            row["other_cpu_busy"] = other
            row["attempts"] = attempt + 1
            rows.append(row)
            timings[(v, t.runtime, b)] = t
            say(f"[{name}] {v:8s} {t.summary()}")

        for b in batches:
            x = batched_inputs(inputs, b, seed=seed)
            for v in variants:
                m = models[v]
                if "torch" in runtimes:
                    record(v, "torch-eager", b, lambda m=m, x=x, **kw: time_torch(
                        m, x, device=dev, threads=n_threads, dtype=torch_dtype,
                        channels_last=channels_last, min_time_s=min_time_s, **kw))
                    if cuda_graphs:
                        record(v, "torch-cudagraph", b, lambda m=m, x=x, **kw: time_torch(
                            m, x, device=dev, threads=n_threads, dtype=torch_dtype,
                            channels_last=channels_last, cuda_graph=True, min_time_s=min_time_s, **kw))
                if use_ort and v in onnx_paths:
                    record(v, f"ort-{dev.type}", b, lambda p=onnx_paths[v], x=x, **kw: time_ort(
                        p, x, device=str(dev), threads=n_threads, min_time_s=min_time_s, **kw))
    result["rows"] = rows
    busy = {(r["variant"], r["runtime"], r["batch"]): r.get("other_cpu_busy") for r in rows}
    result["speedup"] = _speedups(timings, result["flops_ratio"], busy)
    result["finished"] = _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds")
    result["loadavg_1m_end"] = round(os.getloadavg()[0], 2) if hasattr(os, "getloadavg") else None
    return result


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
            lb = [launch_bound(e, g) for e, g in ((m, gm), (s, gs)) if g is not None]
            entry["launch_bound"] = any(lb)
            if gm is not None:
                entry["eager_over_graph_masked"] = m.median_ms / gm.median_ms
            if gs is not None:
                entry["eager_over_graph_slim"] = s.median_ms / gs.median_ms
        out.append(entry)
    return out


# --------------------------------------------------------------------------- compile-dir / spec entry


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
        if not (d / "slim.pt").is_file():
            raise FileNotFoundError(f"{d} has no slim.pt: pass the folder `slimc compile` wrote")
        slim = load_slim(d)
        if any(p.is_meta for p in model.parameters()):  # planned on meta: the original's checkpoint
            weights = (json.loads((d / "report.json").read_text()).get("source") or {}).get("weights")
            if not weights:
                raise FileNotFoundError(f"{model_spec} builds its weights on the meta device and {d} names no checkpoint")
            fill_weights(model, weights)
        mask_src = masks if masks is not None else d / "masks.pth"
        return bench(model, load_masks(mask_src), example_inputs, slim=slim, **kw)
    if masks is None:
        raise ValueError("give masks or compiled_dir")
    return bench(model, load_masks(masks), example_inputs, **kw)


# --------------------------------------------------------------------------- machine quietness


def _cpu_times() -> tuple[int, int] | None:
    try:
        with open("/proc/stat", encoding="ascii") as f:
            vals = [int(v) for v in f.readline().split()[1:]]
    except (OSError, ValueError):
        return None
    idle = vals[3] + (vals[4] if len(vals) > 4 else 0)  # idle + iowait
    return sum(vals), idle


def cpu_busy_fraction(interval_s: float = 1.0) -> float | None:
    """Fraction of all CPUs busy over ``interval_s`` (from /proc/stat; None if unknown).

    Call it while this process is idle: on a 2-core machine, 0.5 means another
    process keeps one core busy, which makes multi-threaded CPU timings worthless.
    """
    a = _cpu_times()
    time.sleep(interval_s)
    b = _cpu_times()
    if a is None or b is None or b[0] <= a[0]:
        return None
    return 1.0 - (b[1] - a[1]) / (b[0] - a[0])


class ContentionMeter:
    """CPU time used by *other* processes while a measurement runs.

    ``other_busy`` = (busy jiffies of all CPUs − this process's CPU time) / all
    jiffies over the window, from /proc/stat and ``os.times()``; None where
    /proc/stat is unreadable.  0.5 on a 2-core machine: another process held a
    whole core, and a 2-thread timing of this process is not trustworthy.
    """

    def __init__(self) -> None:
        self.other_busy: float | None = None

    def __enter__(self) -> "ContentionMeter":
        self._a = _cpu_times()
        t = os.times()
        self._own = t.user + t.system
        return self

    def __exit__(self, *exc: Any) -> None:
        b = _cpu_times()
        t = os.times()
        own_s = t.user + t.system - self._own
        if self._a is None or b is None or b[0] <= self._a[0]:
            return
        hz = os.sysconf("SC_CLK_TCK") if hasattr(os, "sysconf") else 100
        total = b[0] - self._a[0]
        busy = total - (b[1] - self._a[1])
        other = (busy - own_s * hz) / total
        self.other_busy = round(min(1.0, max(0.0, other)), 3)


def wait_for_quiet_cpu(max_wait_s: float = 120.0, busy_below: float = 0.15, interval_s: float = 2.0,
                       log: Callable[[str], None] | None = None) -> float | None:
    """Wait (up to ``max_wait_s``) until other processes leave the CPUs idle.

    Returns the last busy fraction measured (None when /proc/stat is unreadable).
    """
    deadline = time.monotonic() + max_wait_s
    busy = cpu_busy_fraction(interval_s)
    while busy is not None and busy >= busy_below and time.monotonic() < deadline:
        if log:
            log(f"waiting for a quiet CPU: {busy:.0%} busy by other processes")
        busy = cpu_busy_fraction(interval_s)
    return busy


# --------------------------------------------------------------------------- output


def _fmt_ms(x: float | None) -> str:
    if x is None:
        return "–"
    if x >= 100:
        return f"{x:.1f}"
    if x >= 1:
        return f"{x:.2f}"
    return f"{x:.3f}"


def _fmt_pct(x: float | None) -> str:
    return "–" if x is None else f"{x:.0%}"


def _fmt_int(x: int | None) -> str:
    return "–" if x is None else f"{x:,}"


def _fmt_si(x: float | None) -> str:
    if x is None:
        return "–"
    for unit, f in (("G", 1e9), ("M", 1e6), ("k", 1e3)):
        if abs(x) >= f:
            return f"{x / f:.3g} {unit}"
    return f"{x:.3g}"


def _results_list(results: dict | Sequence[dict]) -> list[dict]:
    if isinstance(results, dict):
        return [results]
    return list(results)


def _note(e: dict) -> str:
    notes = []
    if e.get("launch_bound"):
        notes.append("launch-bound in eager (CUDA graphs ≥ "
                     f"{1 / LAUNCH_BOUND_RATIO:.2g}× faster): see the torch-cudagraph row")
    if e.get("contended"):
        notes.append(f"CONTENDED: other processes used {e['other_cpu_busy']:.0%} of the CPUs")
    if e.get("noisy"):
        notes.append(f"noisy (p90 > {NOISY_RATIO}× median)")
    if e["speedup"] < 1.0 and not e.get("launch_bound"):
        notes.append("slim slower")
    if e.get("dtype") not in (None, "float32"):
        notes.append(str(e["dtype"]))
    if e.get("channels_last"):
        notes.append("channels-last")
    return "; ".join(notes)


def to_markdown(results: dict | Sequence[dict], *, detail: bool = False) -> str:
    """Markdown table of masked vs slim median latency per model, pruner, runtime and batch.

    With ``detail``: also sizes (params, FLOPs, files) and every timed row with its
    spread (min / median / p90, samples).
    """
    res = _results_list(results)
    lines = [
        "| model | pruner | runtime | batch | masked ms | slim ms | speedup | FLOPs ratio | note |",
        "|---|---|---|---:|---:|---:|---:|---:|---|",
    ]
    for r in res:
        for e in r.get("speedup", []):
            fr = e.get("flops_ratio")
            lines.append(
                f"| {r['model']} | {r.get('pruner', '')} | {e['runtime']} | {e['batch']} | "
                f"{_fmt_ms(e['masked_ms'])} | {_fmt_ms(e['slim_ms'])} | {e['speedup']:.2f}× | "
                f"{'–' if fr is None else f'{fr:.2f}×'} | {_note(e)} |"
            )
    out = "\n".join(lines) + "\n"
    if not detail:
        return out

    size = [
        "",
        "Sizes (FLOPs per sample; the masked model stores and computes the dense weights):",
        "",
        "| model | params original | params slim | params ratio | FLOPs original | FLOPs slim | FLOPs ratio "
        "| state dict masked → slim | ONNX masked → slim |",
        "|---|---:|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for r in res:
        p, f, fb = r.get("params", {}), r.get("flops", {}), r.get("file_bytes", {})
        pr, fr = r.get("params_ratio"), r.get("flops_ratio")

        def fb_of(v: str, k: str) -> str:
            val = (fb.get(v) or {}).get(k)
            return "–" if val is None else f"{val / 2**20:.2f} MiB"

        size.append(
            f"| {r['model']} | {_fmt_int(p.get('original'))} | {_fmt_int(p.get('slim'))} | "
            f"{'–' if pr is None else f'{pr:.2f}×'} | {_fmt_si(f.get('original'))} | {_fmt_si(f.get('slim'))} | "
            f"{'–' if fr is None else f'{fr:.2f}×'} | {fb_of('masked', 'pt')} → {fb_of('slim', 'pt')} | "
            f"{fb_of('masked', 'onnx')} → {fb_of('slim', 'onnx')} |"
        )
    spread = [
        "",
        "Every timed configuration (ms per batch):",
        "",
        "| model | variant | runtime | batch | threads | min | median | p90 | n | other CPU load |",
        "|---|---|---|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for r in res:
        for row in r.get("rows", []):
            spread.append(
                f"| {row['model']} | {row['variant']} | {row['runtime']} | {row['batch']} | {row['threads']} | "
                f"{_fmt_ms(row['min_ms'])} | {_fmt_ms(row['median_ms'])} | {_fmt_ms(row['p90_ms'])} | "
                f"{row['repeats']} | {_fmt_pct(row.get('other_cpu_busy'))} |"
            )
    errs = [(r["model"], e) for r in res for e in r.get("errors", [])]
    notes = [(r["model"], n) for r in res for n in r.get("notes", [])]
    tail: list[str] = []
    if errs or notes:
        tail += ["", "Notes and errors:", ""]
        tail += [f"- {m}: {n}" for m, n in notes]
        tail += [f"- {m}: {e.get('variant', '')} {e.get('runtime', '')} "
                 f"{('b=' + str(e['batch'])) if 'batch' in e else e.get('stage', '')}: {e['error']}"
                 for m, e in errs]
    return out + "\n".join(size + spread + tail) + "\n"


def machine_markdown(m: dict) -> str:
    """One paragraph describing the machine (from :func:`slimc.timing.machine_info`)."""
    parts = [
        f"CPU: {m.get('cpu_model')} ({m.get('physical_cores_available')} physical cores available, "
        f"{m.get('logical_cpus')} logical CPUs, cgroup quota {m.get('cgroup_cpu_quota')})",
        f"load average (1 min) at start: {m.get('loadavg_1m')}",
        f"{m.get('os')} {m.get('arch')}, Python {m.get('python')}, torch {m.get('torch')}, "
        f"onnxruntime {m.get('onnxruntime')}, numpy {m.get('numpy')}",
    ]
    cuda = m.get("cuda")
    if cuda:
        parts.append(f"GPU: {cuda.get('device_name')} (CUDA {cuda.get('torch_cuda')}, cuDNN {cuda.get('cudnn')}, "
                     f"driver {cuda.get('driver')})")
    return "; ".join(parts) + "."


def write_outputs(results: dict | Sequence[dict], out_dir: str | os.PathLike, stem: str, *,
                  title: str | None = None, extra_md: str = "") -> dict[str, str]:
    """Write ``<stem>.json``, ``<stem>.md`` and ``<stem>.png`` under ``out_dir`` atomically."""
    from slimc.atomic import write_text
    from slimc.plots import plot_latency

    res = _results_list(results)
    if not res:
        raise ValueError("write_outputs: no results")
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    machine = res[0].get("machine") or machine_info()
    doc = {
        "schema": "slimc-bench/1",
        "written": _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds"),
        "machine": machine,
        "results": res,
    }
    paths = {"json": str(out / f"{stem}.json"), "md": str(out / f"{stem}.md"), "png": str(out / f"{stem}.png")}
    write_text(paths["json"], json.dumps(doc, indent=1, default=str) + "\n")
    ttl = title or f"slimc latency: {stem}"
    cfg = res[0].get("config", {})
    md = [
        f"# {ttl}",
        "",
        f"Machine: {machine_markdown(machine)}",
        "",
        f"Method: {cfg.get('threads')} threads, {cfg.get('dtype')}"
        f"{', channels-last' if cfg.get('channels_last') else ''}, torch.inference_mode(), "
        + (f"{cfg.get('warmup')} warm-up calls, then {cfg.get('repeats')} timed calls"
           if cfg.get("repeats") else
           f"{cfg.get('warmup')} warm-up calls + 1 pilot call, then ≥ {cfg.get('min_repeats')} timed calls "
           f"covering ≥ {cfg.get('min_time_s')} s")
        + "; median per batch (spread below). "
        "Speedup = masked median / slim median; FLOPs ratio = dense FLOPs / slim FLOPs.",
        "",
        to_markdown(res, detail=True),
    ]
    if extra_md:
        md += ["", extra_md.rstrip(), ""]
    write_text(paths["md"], "\n".join(md))
    rows = [row for r in res for row in r.get("rows", [])]
    if rows:
        plot_latency(rows, paths["png"], title=ttl)
    else:
        paths.pop("png")
    return paths
