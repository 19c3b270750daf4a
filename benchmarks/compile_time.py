#!/usr/bin/env python
"""How long ``slimc.compile`` takes, where the time goes, and against Torch-Pruning.

Part 1 — models (``compile_models.py``): ResNet-50, MobileNetV2, DenseNet-121, VGG-16-BN
from torchvision (the zoo's models without it), masks from Torch-Pruning's L1 pruner when
``torch_pruning`` is installed; median wall time of ``slimc.compile`` without and with its
built-in check and of Torch-Pruning's dependency graph + prune, in one process, one
thread; slimc's stage times (``report["times_s"]``) beside them.

Part 2 — LLM-size plan (``compile_llm.py``): a LLaMA-7B-shaped model on the meta device with
compact head and FFN masks, 1, 4, 16, 32 layers, one process each: compile time, peak
RSS, and the fitted exponent of time vs layers.

Part 3 — synthetic chains (``compile_chains.py``): 10 … 1000 conv blocks, plain and
residual; the fitted exponent of time vs graph nodes.

    python benchmarks/compile_time.py            # in an env with torchvision, torch-pruning, transformers
    python benchmarks/compile_time.py --models resnet50 --llm-layers '' --kinds ''

Writes <out>/<stem>.json, .md and .png (default compile_time_cpu).
"""
from __future__ import annotations

import argparse
import datetime as _dt
import json
import os
import sys
import time
from pathlib import Path

import numpy as np
import torch

import compile_chains  # siblings: a script's own folder is on sys.path
import compile_llm
import compile_models
from slimc.atomic import atomic_path, write_text
from slimc.bench import machine_info, machine_markdown, wait_for_quiet_cpu
from slimc.errors import describe

HERE = Path(__file__).resolve().parent

DEFAULT_MODELS = "resnet50,mobilenet_v2,densenet121,vgg16_bn"
STAGE_COLORS = {"masks": "#bcbd22", "copy": "#7f7f7f", "trace": "#1f77b4", "graph": "#ff7f0e", "flops": "#8c564b",
                "propagate": "#2ca02c", "rewrite": "#d62728", "report": "#c7c7c7", "verify": "#9467bd",
                "model": "#e377c2"}


def _csv(s: str) -> list[str]:
    return [x.strip() for x in s.split(",") if x.strip()]


def to_markdown(doc: dict) -> str:
    L = [f"# slimc compile time, {doc['device']}", "", f"Machine: {machine_markdown(doc['machine'])}", "",
         f"Command: `python benchmarks/compile_time.py {doc['argv']}`; total wall time {doc['wall_s']:.0f} s; "
         f"torch {torch.__version__}, {doc['config']['threads']} thread(s); load average (1 min) "
         f"{doc['load_1m'][0]:.2f} at the start, {doc['load_1m'][1]:.2f} at the end "
         f"({os.cpu_count()} CPUs).", ""]
    if doc["models"]:
        L += ["## Models: slimc vs Torch-Pruning", "", *compile_models.markdown(doc["models"])]
    if doc.get("models_skipped"):
        L += ["Skipped: " + "; ".join(f"{s['model']}: {s['error']}" for s in doc["models_skipped"]), ""]
    if doc["llm"]:
        L += ["## LLM-size plan (meta device)", "", *compile_llm.markdown(doc["llm"], doc["fits"].get("llm"))]
    if doc["scaling"]:
        L += ["## Scaling on synthetic chains (`slimc.compile(verify=False)`)", "", *_chains_markdown(doc)]
    return "\n".join(L) + "\n"


def _chains_markdown(doc: dict) -> list[str]:
    st = compile_chains.SCALING_STAGES
    L = [f"width {doc['config']['width']}, input 1×3×{doc['config']['size']}×{doc['config']['size']}; "
         f"min over {doc['config']['scaling_repeats']} repeats.", "",
         "| kind | blocks | fx nodes | " + " | ".join(st) + " | sum | ms per node |",
         "|---|---:|---:|" + "---:|" * len(st) + "---:|---:|"]
    for s in doc["scaling"]:
        t = s["times_s"]
        L.append(f"| {s['kind']} | {s['blocks']} | {s['nodes']} | " + " | ".join(f"{t[c]:.3f}" for c in st)
                 + f" | {t['stages_total']:.3f} | {1e3 * t['stages_total'] / s['nodes']:.3f} |")
    L += ["", "Fitted exponent k of time ≈ c·nodes^k (least squares on log-log; 1 = linear):", "",
          "| kind | points | sum | R² |", "|---|---:|---:|---:|"]
    for kind, f in doc["fits"].items():
        if kind != "llm" and f:
            L.append(f"| {kind} | {f['points']} | {f['exponent']:.2f} | {f['r2']:.3f} |")
    return L + [""]


def plot(doc: dict, path: str) -> None:
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    panels = [p for p in ("models", "llm", "scaling") if doc[p]]
    if not panels:
        return
    fig = Figure(figsize=(6.5 * len(panels), 4.8), layout="constrained")
    FigureCanvasAgg(fig)
    axes = dict(zip(panels, np.atleast_1d(fig.subplots(1, len(panels)))))
    if "models" in axes:
        ax, rows = axes["models"], doc["models"]
        names = [r["model"] for r in rows]
        y = np.arange(len(rows))
        left = np.zeros(len(rows))
        for s in STAGE_COLORS:
            vals = np.array([r["stages_s"]["slimc_verified"].get(s, 0.0) for r in rows])
            if vals.any():
                ax.barh(y - 0.2, vals, 0.4, left=left, color=STAGE_COLORS[s], label=s, edgecolor="black", linewidth=0.3)
                left += vals
        if "tp" in rows[0]["wall_s"]:
            ax.barh(y + 0.2, [r["wall_s"]["tp"] for r in rows], 0.4, color="#444444", label="Torch-Pruning")
        ax.set_yticks(y, names)
        ax.invert_yaxis()
        ax.set_xlabel("seconds (slimc verified, by stage; Torch-Pruning build + prune)")
        ax.legend(fontsize=7, loc="lower right")
        ax.grid(axis="x", alpha=0.3)
    if "llm" in axes:
        ax, pts = axes["llm"], doc["llm"]
        xs = np.array([p["layers"] for p in pts], float)
        ax.loglog(xs, [p["wall_s"] for p in pts], "o-", label="compile (meta plan)")
        ax2 = ax.twinx()
        ax2.plot(xs, [p["peak_rss_bytes"] / 2**30 for p in pts], "s:", color="#d62728", label="peak RSS")
        ax2.set_ylabel("peak RSS (GiB)")
        ax.set_xlabel("decoder layers (LLaMA-7B shape)")
        ax.set_ylabel("seconds")
        f = doc["fits"].get("llm")
        ax.set_title(f"LLM plan: time ∝ layers^{f['exponent']:.2f}" if f else "LLM plan")
        ax.grid(True, which="both", alpha=0.3)
    if "scaling" in axes:
        ax = axes["scaling"]
        for kind in {s["kind"] for s in doc["scaling"]}:
            pts = [s for s in doc["scaling"] if s["kind"] == kind]
            ax.loglog([s["nodes"] for s in pts], [s["times_s"]["stages_total"] for s in pts], "o-", label=kind)
        ax.set_xlabel("fx graph nodes")
        ax.set_ylabel("seconds (trace+graph+propagate+rewrite)")
        ax.grid(True, which="both", alpha=0.3)
        ax.legend(fontsize=7)
    with atomic_path(path) as tmp:
        with open(tmp, "wb") as fh:
            fig.savefig(fh, format="png", dpi=110)
        os.chmod(tmp, 0o644)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--models", default=DEFAULT_MODELS, help="torchvision (or zoo) model names ('' to skip part 1)")
    ap.add_argument("--repeats", type=int, default=3, help="timed runs per model after a warm-up (median)")
    ap.add_argument("--llm-layers", default="1,4,16,32", help="LLaMA-7B-shaped layer counts ('' to skip part 2)")
    ap.add_argument("--kinds", default="", help="synthetic chain kinds, e.g. plain,residual ('' skips part 3)")
    ap.add_argument("--sizes", default="10,30,100,300,1000", help="blocks per synthetic chain")
    ap.add_argument("--scaling-repeats", type=int, default=2)
    ap.add_argument("--width", type=int, default=8)
    ap.add_argument("--size", type=int, default=8)
    ap.add_argument("--threads", type=int, default=1, help="torch intra-op threads (1: the comparison's setting)")
    ap.add_argument("--wait-idle", type=float, default=0.0, help="wait up to this many s for a quiet CPU first")
    ap.add_argument("--out", default=str(HERE / "results"))
    ap.add_argument("--stem", default="compile_time_cpu")
    a = ap.parse_args(argv)
    t_start = time.perf_counter()
    torch.set_num_threads(a.threads)
    if a.wait_idle > 0:
        wait_for_quiet_cpu(a.wait_idle, log=print)
    load0 = os.getloadavg()[0]
    models, skipped = [], []
    for name in _csv(a.models):
        try:
            models.append(compile_models.time_model(name, a.repeats))
        except Exception as e:  # noqa: BLE001 - report the failing model, go on
            print(f"[{name}] failed, skipped: {describe(e)}")
            skipped.append({"model": name, "error": describe(e)})
    llm = compile_llm.scaling([int(n) for n in _csv(a.llm_layers)])
    fits = {}
    if len(llm) >= 2:
        fits["llm"] = compile_chains.fit_exponent([p["layers"] for p in llm], [p["wall_s"] for p in llm])
    scaling = []
    for kind in _csv(a.kinds):
        pts = [compile_chains.time_synthetic(kind, int(n), a.width, a.size, a.scaling_repeats) for n in _csv(a.sizes)]
        scaling += pts
        fits[kind] = compile_chains.fit_exponent([p["nodes"] for p in pts], [p["times_s"]["stages_total"] for p in pts])
    doc = {"schema": "slimc-compile-time/2", "device": "cpu",
           "written": _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds"),
           "machine": machine_info(), "argv": " ".join(sys.argv[1:] if argv is None else argv),
           "load_1m": [load0, os.getloadavg()[0]],
           "config": {"models": _csv(a.models), "repeats": a.repeats, "threads": a.threads, "llm_layers": a.llm_layers,
                      "kinds": _csv(a.kinds), "width": a.width, "size": a.size, "scaling_repeats": a.scaling_repeats},
           "models": models, "models_skipped": skipped, "llm": llm, "scaling": scaling, "fits": fits,
           "wall_s": time.perf_counter() - t_start}
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
