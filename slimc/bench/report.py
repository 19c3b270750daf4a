"""The bench report: markdown tables (:func:`to_markdown`), the machine in one paragraph,
and the files — ``<stem>.json``, ``<stem>.md`` and ``<stem>.png`` (:func:`write_outputs`,
atomic writes). Without matplotlib the PNG is skipped with a one-line note."""
from __future__ import annotations

import datetime as _dt
import json
import os
import warnings
from pathlib import Path
from typing import Callable, Sequence

from slimc.atomic import make_dirs, write_text
from slimc.bench.layers import layers_markdown
from slimc.bench.machine import machine_info
from slimc.bench.run import NOISY_RATIO
from slimc.bench.timing import LAUNCH_BOUND_RATIO

__all__ = ["to_markdown", "machine_markdown", "write_outputs"]




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


def fmt_si(x: float | None) -> str:
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
    int8 = [(r, e) for r in res for e in r.get("int8", [])]
    if int8:
        lines += ["", "| model | int8 file | batch | slim float ms | int8 ms | int8 / slim float | "
                  "original float / int8 |", "|---|---|---:|---:|---:|---:|---:|"]
        for r, e in int8:
            o = e.get("original_over_int8")
            lines.append(f"| {r['model']} | {e['variant']} | {e['batch']} | {_fmt_ms(e['slim_ms'])} | "
                         f"{_fmt_ms(e['int8_ms'])} | {e['int8_over_slim']:.2f}× | {'–' if o is None else f'{o:.2f}×'} |")
    for r in res:
        for rt, cmp in (r.get("layers") or {}).items():
            lines += ["", f"Layers of {r['model']} that lose the most time against a slim layer as fast as its "
                      f"FLOPs cut ({rt}, batch {r['config']['batches'][0]}; flagged rows name why):", "",
                      layers_markdown(cmp)]
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
            f"{'–' if pr is None else f'{pr:.2f}×'} | {fmt_si(f.get('original'))} | {fmt_si(f.get('slim'))} | "
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
    """One paragraph describing the machine (from :func:`slimc.bench.machine.machine_info`)."""
    parts = [
        f"CPU: {m.get('cpu_model')} ({m.get('physical_cores_available')} physical cores available, "
        f"{m.get('logical_cpus')} logical CPUs, cgroup quota {m.get('cgroup_cpu_quota')})",
        f"load average (1 min) at start: {m.get('loadavg_1m')}",
        f"{m.get('os')} {m.get('arch')}, Python {m.get('python')}, torch {m.get('torch')}, "
        f"onnxruntime {m.get('onnxruntime')}, numpy {m.get('numpy')}",
    ]
    if m.get("int8_isa") is not None:
        parts.append(f"int8 instruction sets: {', '.join(m['int8_isa']) or 'none found'}")
    cuda = m.get("cuda")
    if cuda:
        parts.append(f"GPU: {cuda.get('device_name')} (CUDA {cuda.get('torch_cuda')}, cuDNN {cuda.get('cudnn')}, "
                     f"driver {cuda.get('driver')})")
    return "; ".join(parts) + "."


def _method(cfg: dict) -> str:
    count = (f"{cfg.get('warmup')} warm-up calls, then {cfg.get('repeats')} timed calls" if cfg.get("repeats") else
             f"{cfg.get('warmup')} warm-up calls, then ≥ {cfg.get('min_repeats')} timed calls "
             f"covering ≥ {cfg.get('min_time_s')} s (at most {cfg.get('max_repeats')})")
    return (f"Method: {cfg.get('threads')} threads, {cfg.get('dtype')}"
            f"{', channels-last' if cfg.get('channels_last') else ''}, torch.inference_mode(), {count}"
            "; median per batch (spread below). "
            "Speedup = masked median / slim median; FLOPs ratio = dense FLOPs / slim FLOPs.")


def _plot(rows: list[dict], path: str, title: str, say: Callable[[str], None]) -> bool:
    """The PNG, or a one-line note when matplotlib is not installed."""
    try:
        import matplotlib  # noqa: F401
    except ImportError:
        say(f"note: {os.path.basename(path)} skipped: matplotlib is not installed (pip install matplotlib)")
        return False
    from slimc.bench.plots import plot_latency

    plot_latency(rows, path, title=title)
    return True


def write_outputs(results: dict | Sequence[dict], out_dir: str | os.PathLike, stem: str, *,
                  title: str | None = None, extra_md: str = "",
                  log: Callable[[str], None] | None = None) -> dict[str, str]:
    """Write ``<stem>.json``, ``<stem>.md`` and ``<stem>.png`` under ``out_dir`` atomically;
    returns the paths written (no ``png`` without rows to plot or without matplotlib, which
    ``log`` is told in one line)."""
    res = _results_list(results)
    if not res:
        raise ValueError("write_outputs: no results")
    out = make_dirs(out_dir)
    machine = res[0].get("machine") or machine_info()
    doc = {"schema": "slimc-bench/1", "written": _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds"),
           "machine": machine, "results": res}
    paths = {"json": str(out / f"{stem}.json"), "md": str(out / f"{stem}.md"), "png": str(out / f"{stem}.png")}
    write_text(paths["json"], json.dumps(doc, indent=1, default=str) + "\n")
    ttl = title or f"slimc latency: {stem}"
    md = [f"# {ttl}", "", f"Machine: {machine_markdown(machine)}", "", _method(res[0].get("config", {})), "",
          to_markdown(res, detail=True)]
    if extra_md:
        md += ["", extra_md.rstrip(), ""]
    write_text(paths["md"], "\n".join(md))
    rows = [row for r in res for row in r.get("rows", [])]
    if not rows or not _plot(rows, paths["png"], ttl, log or (lambda m: warnings.warn(m, stacklevel=3))):
        paths.pop("png")
    return paths
