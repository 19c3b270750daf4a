#!/usr/bin/env python
"""Time of each slimc stage per zoo model, and how compile time scales with graph size.

Part 1 — zoo models: masks = 50 % of every filter group by L1 (``group_masks``, timed
separately as "masks"), then ``slimc.compile`` (stages trace, graph, propagate,
rewrite, verify, flops from ``res.report["times_s"]``) and ``res.save`` (adds export:
ONNX export + onnxruntime check).  One untimed warm-up compile+export of a tiny net
runs first so that one-off import / exporter start-up costs are not charged to the
first model.

Part 2 — scaling: synthetic chains of N conv-bn-relu blocks (``plain``) and of N
residual basic blocks (``residual``) at tiny width and spatial size, N in
10, 30, 100, 300, 1000; ``slimc.compile(verify=False)``; the exponent k of
time ≈ c · nodes^k is fitted by least squares on log-log (expected ≈ 1: linear).

    python benchmarks/compile_time.py                 # quick (~3 min on 2 idle cores)
    python benchmarks/compile_time.py --sizes 10,100,1000 --kinds plain --repeats 3

Writes <out>/compile_time_<device>.json, .md and .png.
"""
from __future__ import annotations

import argparse
import datetime as _dt
import gc
import json
import os
import sys
import tempfile
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent

import numpy as np
import torch
from torch import nn

import slimc
from slimc import zoo
from slimc.atomic import atomic_path, write_text
from slimc.bench import machine_info, machine_markdown, measure_quietly, wait_for_quiet_cpu
from slimc.errors import describe
from slimc.prune import group_masks

DEFAULT_MODELS = "vgg16,resnet18,resnet50,mobilenetv2,densenet_small,shufflenetv2_small"
STAGES = ("trace", "graph", "propagate", "rewrite", "verify", "export")
SCALING_STAGES = ("trace", "graph", "propagate", "rewrite")
STAGE_COLORS = {"masks": "#bcbd22", "trace": "#1f77b4", "graph": "#ff7f0e", "propagate": "#2ca02c",
                "rewrite": "#d62728", "verify": "#9467bd", "flops": "#8c564b", "export": "#e377c2"}


def _csv(s: str) -> list[str]:
    return [x.strip() for x in s.split(",") if x.strip()]


# --------------------------------------------------------------------------- synthetic nets


class PlainChain(nn.Module):
    """stem conv, then N × (conv3x3 - BN - ReLU), global pool, linear."""

    def __init__(self, n: int, width: int = 8):
        super().__init__()
        self.stem = nn.Conv2d(3, width, 3, padding=1, bias=False)
        self.blocks = nn.Sequential(*[
            nn.Sequential(nn.Conv2d(width, width, 3, padding=1, bias=False), nn.BatchNorm2d(width), nn.ReLU())
            for _ in range(n)
        ])
        self.head = nn.Sequential(nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(width, 10))

    def forward(self, x):
        return self.head(self.blocks(self.stem(x)))


class BasicBlock(nn.Module):
    def __init__(self, width: int):
        super().__init__()
        self.conv1 = nn.Conv2d(width, width, 3, padding=1, bias=False)
        self.bn1 = nn.BatchNorm2d(width)
        self.conv2 = nn.Conv2d(width, width, 3, padding=1, bias=False)
        self.bn2 = nn.BatchNorm2d(width)

    def forward(self, x):
        y = torch.relu(self.bn1(self.conv1(x)))
        return torch.relu(self.bn2(self.conv2(y)) + x)


class ResidualChain(nn.Module):
    """stem conv-BN, then N residual basic blocks sharing one residual stream."""

    def __init__(self, n: int, width: int = 8):
        super().__init__()
        self.stem = nn.Sequential(nn.Conv2d(3, width, 3, padding=1, bias=False), nn.BatchNorm2d(width))
        self.blocks = nn.Sequential(*[BasicBlock(width) for _ in range(n)])
        self.head = nn.Sequential(nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(width, 10))

    def forward(self, x):
        return self.head(self.blocks(self.stem(x)))


SYNTHETIC = {"plain": PlainChain, "residual": ResidualChain}


def synthetic(kind: str, n: int, width: int, size: int) -> tuple[nn.Module, tuple]:
    torch.manual_seed(0)
    m = SYNTHETIC[kind](n, width)
    zoo.randomize_bn(m)
    m.eval()
    x = (torch.randn(1, 3, size, size, generator=torch.Generator().manual_seed(0)),)
    return m, x


# --------------------------------------------------------------------------- measurements


def fit_exponent(nodes: list[int], times: list[float]) -> dict | None:
    """Least-squares fit of log(time) = k·log(nodes) + c; k, c and R²."""
    pts = [(n, t) for n, t in zip(nodes, times) if n > 0 and t and t > 0]
    if len(pts) < 2:
        return None
    lx = np.log([p[0] for p in pts])
    ly = np.log([p[1] for p in pts])
    k, c = np.polyfit(lx, ly, 1)
    pred = k * lx + c
    ss_res = float(((ly - pred) ** 2).sum())
    ss_tot = float(((ly - ly.mean()) ** 2).sum())
    return {"exponent": float(k), "log_c": float(c), "r2": 1.0 - ss_res / ss_tot if ss_tot > 0 else None,
            "points": len(pts)}


def warm_up() -> None:
    m, x = synthetic("plain", 2, 4, 8)
    res = slimc.compile(m, group_masks(m, x), x)
    with tempfile.TemporaryDirectory(prefix="slimc-ct-") as d:
        res.save(d)


def _best_zoo(runs: list[dict]) -> dict:
    best = {k: min(r[k] for r in runs if k in r) for k in runs[0]}  # min over repeats, per stage
    best["compile_total"] = sum(best.get(k, 0.0) for k in ("trace", "graph", "propagate", "rewrite", "verify"))
    return best


def _best_synthetic(runs: list[dict]) -> dict:
    best = {k: min(r[k] for r in runs if k in r) for k in runs[0]}
    best["stages_total"] = sum(best[k] for k in SCALING_STAGES)
    return best


def time_zoo(name: str, repeats: int) -> dict:
    model = zoo.build(name)
    x = zoo.example_inputs(name, 2)
    runs = []
    for _ in range(repeats):
        gc.collect()
        t0 = time.perf_counter()
        masks = group_masks(model, x, ratio=0.5, criterion="l1")
        t_masks = time.perf_counter() - t0
        res = slimc.compile(model, masks, x, name=name)
        with tempfile.TemporaryDirectory(prefix="slimc-ct-") as d:
            res.save(d)
        times = {"masks": t_masks, **{k: float(v) for k, v in res.report["times_s"].items()}}
        runs.append(times)
    return {
        "model": name, "nodes": len(res.plan.dg.gm.graph.nodes), "times_s": _best_zoo(runs), "runs": runs,
        "params": res.report["params"], "flops": res.report["flops"],
        "onnx_exporter": (res.report.get("onnx") or {}).get("exporter"),
    }


def time_synthetic(kind: str, n: int, width: int, size: int, repeats: int) -> dict:
    model, x = synthetic(kind, n, width, size)
    masks = group_masks(model, x, ratio=0.5, criterion="l1")
    runs = []
    for _ in range(repeats):
        gc.collect()
        t0 = time.perf_counter()
        res = slimc.compile(model, masks, x, verify=False, name=f"{kind}{n}")
        wall = time.perf_counter() - t0
        runs.append({**{k: float(v) for k, v in res.report["times_s"].items()}, "wall": wall})
    return {
        "kind": kind, "blocks": n, "nodes": len(res.plan.dg.gm.graph.nodes),
        "params": res.report["params"], "times_s": _best_synthetic(runs), "runs": runs,
    }


def with_retries(fn, best_of, label: str, retries: int, wait_idle: float) -> dict:
    """``fn()`` again (at most ``retries`` more times, after waiting for a quiet CPU) while
    other processes used > 10 % of the CPUs meanwhile. Stage times are the minimum over
    all runs (contention only adds time)."""
    attempts = measure_quietly(fn, retries=retries, wait_idle_s=wait_idle, label=f"[{label}]", log=print)
    out = attempts[0].result
    for a in attempts[1:]:
        out["runs"] += a.result["runs"]
    out["times_s"] = best_of(out["runs"])
    busy = [a.other_busy for a in attempts]
    out["other_cpu_busy_attempts"] = busy
    out["other_cpu_busy"] = min((b for b in busy if b is not None), default=None)
    return out


# --------------------------------------------------------------------------- outputs


def _pct(x: float | None) -> str:
    return "–" if x is None else f"{x:.0%}"


def to_markdown(doc: dict) -> str:
    L = [f"# slimc compile time, {doc['device']}", "",
         f"Machine: {machine_markdown(doc['machine'])}", "",
         f"Command: `python benchmarks/compile_time.py {doc['argv']}`; total wall time {doc['wall_s']:.0f} s. "
         f"Times are the minimum over repeats of each stage, in seconds; torch threads "
         f"{doc['config']['torch_threads_zoo']} for the zoo models. Other processes used "
         f"{'–' if doc.get('other_cpu_busy_at_start') is None else format(doc['other_cpu_busy_at_start'], '.0%')} "
         "of the CPUs just before the start.", ""]
    if doc["zoo"]:
        cols = ["masks", *STAGES]
        L += ["## Zoo models (50 % L1 filter groups, verified compile + ONNX export)", "",
              "| model | fx nodes | " + " | ".join(cols) + " | compile total | slowest stage | other CPU load (least) |",
              "|---|---:|" + "---:|" * len(cols) + "---:|---|---:|"]
        for z in doc["zoo"]:
            t = z["times_s"]
            slow = max(STAGES, key=lambda k: t.get(k, 0.0))
            L.append(f"| {z['model']} | {z['nodes']} | " + " | ".join(
                f"{t[c]:.3f}" if c in t else "–" for c in cols) + f" | {t['compile_total']:.3f} | {slow} | "
                f"{_pct(z.get('other_cpu_busy'))} |")
        L += ["", "compile total = trace + graph + propagate + rewrite + verify (what `slimc.compile` takes "
              "without the FLOPs count); export is `CompileResult.save` (ONNX export and onnxruntime check); "
              "masks is `group_masks` (not part of compile).", ""]
        if doc.get("zoo_skipped"):
            L += ["Skipped: " + "; ".join(f"{s['model']}: {s['error']}" for s in doc["zoo_skipped"]), ""]
    if doc["scaling"]:
        L += ["## Scaling on synthetic chains (`slimc.compile(verify=False)`)", "",
              f"width {doc['config']['width']}, input 1×3×{doc['config']['size']}×{doc['config']['size']}, "
              f"{doc['config']['torch_threads_scaling']} torch thread(s); "
              f"min over {doc['config']['scaling_repeats']} repeats.", "",
              "| kind | blocks | fx nodes | " + " | ".join(SCALING_STAGES) + " | sum | ms per node | other CPU load (least) |",
              "|---|---:|---:|" + "---:|" * len(SCALING_STAGES) + "---:|---:|---:|"]
        for s in doc["scaling"]:
            t = s["times_s"]
            L.append(f"| {s['kind']} | {s['blocks']} | {s['nodes']} | " + " | ".join(
                f"{t[c]:.3f}" for c in SCALING_STAGES) + f" | {t['stages_total']:.3f} | "
                f"{1e3 * t['stages_total'] / s['nodes']:.3f} | {_pct(s.get('other_cpu_busy'))} |")
        L += ["", "Fitted exponent k of time ≈ c·nodes^k (least squares on log-log; 1 = linear):", "",
              "| kind | points | " + " | ".join(SCALING_STAGES) + " | sum | sum, largest 3 sizes | R² (sum) |",
              "|---|---|" + "---:|" * len(SCALING_STAGES) + "---:|---:|---:|"]
        for kind, f in doc["fits"].items():
            def k(x):
                return "–" if not x else f"{x['exponent']:.2f}"
            tot = f.get("stages_total") or {}
            r2 = tot.get("r2")
            L.append(f"| {kind} | {tot.get('points', '–')} | " + " | ".join(k(f.get(st)) for st in SCALING_STAGES)
                     + f" | {k(f.get('stages_total'))} | {k(f.get('stages_total_top3'))} | "
                     + ("–" if r2 is None else f"{r2:.3f}") + " |")
        L.append("")
    return "\n".join(L) + "\n"


def plot(doc: dict, path: str) -> None:
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    panels = int(bool(doc["zoo"])) + int(bool(doc["scaling"]))
    if not panels:
        return
    fig = Figure(figsize=(7 * panels, 4.8), layout="constrained")
    FigureCanvasAgg(fig)
    axes = list(np.atleast_1d(fig.subplots(1, panels)))
    if doc["zoo"]:
        ax = axes.pop(0)
        names = [z["model"] for z in doc["zoo"]]
        left = np.zeros(len(names))
        for st in ("masks", *STAGES):
            vals = np.array([z["times_s"].get(st, 0.0) for z in doc["zoo"]])
            ax.barh(names, vals, left=left, color=STAGE_COLORS[st], label=st, edgecolor="black", linewidth=0.4)
            left += vals
        ax.invert_yaxis()
        ax.set_xlabel("seconds (stacked stages)")
        ax.set_title("slimc stages per zoo model")
        ax.legend(fontsize=8, loc="lower right")
        ax.grid(axis="x", alpha=0.3)
    if doc["scaling"]:
        ax = axes.pop(0)
        markers = {"plain": "o", "residual": "s"}
        for kind, f in doc["fits"].items():
            pts = [s for s in doc["scaling"] if s["kind"] == kind]
            xs = np.array([s["nodes"] for s in pts], float)
            for st, ls in (("stages_total", "-"),):
                ys = np.array([s["times_s"][st] for s in pts])
                ax.loglog(xs, ys, markers.get(kind, "^"), label=f"{kind}: measured")
                fit = f.get(st)
                if fit:
                    xx = np.geomspace(xs.min(), xs.max(), 50)
                    ax.loglog(xx, np.exp(fit["log_c"]) * xx ** fit["exponent"], ls,
                              label=f"{kind}: fit k = {fit['exponent']:.2f}")
            for st in ("trace", "propagate", "rewrite"):
                ys = np.array([s["times_s"][st] for s in pts])
                ax.loglog(xs, ys, ":", marker=markers.get(kind, "^"), markersize=3, alpha=0.6,
                          color=STAGE_COLORS[st], label=f"{kind}: {st}")
        ax.set_xlabel("fx graph nodes")
        ax.set_ylabel("seconds (trace+graph+propagate+rewrite)")
        ax.set_title("compile time vs graph size")
        ax.grid(True, which="both", alpha=0.3)
        ax.legend(fontsize=7)
    with atomic_path(path) as tmp:
        with open(tmp, "wb") as fh:
            fig.savefig(fh, format="png", dpi=110)
        os.chmod(tmp, 0o644)


# --------------------------------------------------------------------------- main


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--models", default=DEFAULT_MODELS, help="zoo models ('' to skip part 1)")
    ap.add_argument("--repeats", type=int, default=1, help="repeats per zoo model (min per stage is kept)")
    ap.add_argument("--kinds", default="plain,residual", help="synthetic kinds ('' to skip part 2)")
    ap.add_argument("--sizes", default="10,30,100,300,1000", help="blocks per synthetic chain")
    ap.add_argument("--scaling-repeats", type=int, default=2, help="repeats per synthetic size (min is kept)")
    ap.add_argument("--width", type=int, default=8, help="channels of the synthetic chains")
    ap.add_argument("--size", type=int, default=8, help="spatial size of the synthetic input")
    ap.add_argument("--threads", type=int, default=None,
                    help="torch intra-op threads for the zoo models (default: torch's default)")
    ap.add_argument("--scaling-threads", type=int, default=1,
                    help="torch intra-op threads for the synthetic chains (default 1: their tiny "
                         "forward passes gain nothing from threads and a second thread only adds "
                         "sensitivity to other processes)")
    ap.add_argument("--retries", type=int, default=3,
                    help="run a model / size again (up to this many times) when other processes used more "
                         "than 10%% of the CPUs meanwhile; stage times are the minimum over all runs")
    ap.add_argument("--out", default=str(HERE / "results"))
    ap.add_argument("--stem", default="compile_time_cpu")
    ap.add_argument("--wait-idle", type=float, default=120.0,
                    help="wait up to this many seconds for other processes to go quiet first (0: don't)")
    a = ap.parse_args(argv)
    t_start = time.perf_counter()
    if a.threads:
        torch.set_num_threads(a.threads)
    busy = wait_for_quiet_cpu(a.wait_idle, log=print) if a.wait_idle > 0 else None
    machine = machine_info()
    print("warm-up compile + export of a tiny net (not timed)")
    warm_up()

    zoo_rows, zoo_skipped = [], []
    for name in _csv(a.models):
        try:
            z = with_retries(lambda: time_zoo(name, a.repeats), _best_zoo, name, a.retries, a.wait_idle)
        except Exception as e:  # noqa: BLE001 - report the failing model, go on
            msg = describe(e)
            print(f"[{name}] failed, skipped: {msg}")
            zoo_skipped.append({"model": name, "error": msg})
            continue
        zoo_rows.append(z)
        print(f"[{name}] {z['nodes']} nodes: " + ", ".join(f"{k} {v:.3f}s" for k, v in z["times_s"].items()))

    scaling, fits = [], {}
    sizes = [int(s) for s in _csv(a.sizes)]
    zoo_threads = torch.get_num_threads()
    torch.set_num_threads(a.scaling_threads)
    for kind in _csv(a.kinds):
        if kind not in SYNTHETIC:
            print(f"unknown kind {kind!r}: use {', '.join(SYNTHETIC)}", file=sys.stderr)
            return 2
        pts = []
        for n in sizes:
            try:
                s = with_retries(lambda: time_synthetic(kind, n, a.width, a.size, a.scaling_repeats),
                                 _best_synthetic, f"{kind} {n}", a.retries, a.wait_idle)
            except Exception as e:  # noqa: BLE001
                msg = describe(e)
                print(f"[{kind} {n}] failed: {msg}")
                continue
            pts.append(s)
            print(f"[{kind} {n} blocks] {s['nodes']} nodes: "
                  + ", ".join(f"{k} {v:.3f}s" for k, v in s["times_s"].items()))
        scaling += pts
        nodes = [p["nodes"] for p in pts]
        f = {st: fit_exponent(nodes, [p["times_s"][st] for p in pts]) for st in (*SCALING_STAGES, "stages_total")}
        top = sorted(pts, key=lambda p: p["nodes"])[-3:]
        f["stages_total_top3"] = fit_exponent([p["nodes"] for p in top], [p["times_s"]["stages_total"] for p in top])
        fits[kind] = f
        if f["stages_total"]:
            print(f"[{kind}] fitted exponent of compile time vs nodes: {f['stages_total']['exponent']:.2f} "
                  f"(largest 3 sizes: {f['stages_total_top3']['exponent']:.2f})")

    doc = {
        "schema": "slimc-compile-time/1",
        "written": _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds"),
        "device": "cpu",
        "machine": machine,
        "other_cpu_busy_at_start": busy,
        "loadavg_1m_end": round(os.getloadavg()[0], 2),
        "argv": " ".join(sys.argv[1:] if argv is None else argv),
        "config": {"models": _csv(a.models), "repeats": a.repeats, "kinds": _csv(a.kinds), "sizes": sizes,
                   "scaling_repeats": a.scaling_repeats, "width": a.width, "size": a.size, "retries": a.retries,
                   "torch_threads_zoo": zoo_threads, "torch_threads_scaling": a.scaling_threads},
        "zoo": zoo_rows, "zoo_skipped": zoo_skipped, "scaling": scaling, "fits": fits,
        "wall_s": time.perf_counter() - t_start,
    }
    out = Path(a.out)
    out.mkdir(parents=True, exist_ok=True)
    write_text(out / f"{a.stem}.json", json.dumps(doc, indent=1, default=str) + "\n")
    write_text(out / f"{a.stem}.md", to_markdown(doc))
    plot(doc, str(out / f"{a.stem}.png"))
    print(to_markdown(doc))
    print(f"wrote {out / a.stem}.{{json,md,png}} in {time.perf_counter() - t_start:.0f} s")
    return 0


if __name__ == "__main__":
    sys.exit(main())
