"""The comparison's records → markdown tables and PNG plots (mean ± std over seeds).

Per model and budget kind: finetuned test accuracy against the slim model's params, FLOPs
and measured latency (one line per pruner, error bars over seeds), and tables: a compact
one (accuracy per pruner × target) and a full one (every measured quantity).
"""
from __future__ import annotations

from collections import defaultdict
from pathlib import Path
from typing import Callable, Iterable

import numpy as np

from slimc.atomic import atomic_path
from slimc.compare.grid import PRUNERS

QUANTITIES: dict[str, Callable[[dict], float]] = {
    "acc_original": lambda r: r["performance"]["original"],
    "acc_pruned": lambda r: r["performance"]["pruned"],
    "acc_finetuned": lambda r: r["performance"]["finetuned"],
    "params": lambda r: r["params"]["slim"] / r["params"]["original"],
    "flops": lambda r: r["flops"]["slim"] / r["flops"]["original"],
    "latency_ms": lambda r: r["latency_ms"]["slim"],
    # slim / dense (masked) latency: timed interleaved; records from before that, separately
    "latency": lambda r: r["latency_ms"].get("ratio", r["latency_ms"]["slim"] / r["latency_ms"]["masked"]),
}


def budget_of(target: str) -> tuple[str, float]:
    kind, _, value = target.partition("=")
    return kind, float(value)


def _order(pruner: str) -> int:
    return list(PRUNERS).index(pruner) if pruner in PRUNERS else len(PRUNERS)


def summarize(records: Iterable[dict]) -> dict[tuple[str, str, str, float], dict[str, tuple[float, float, int]]]:
    """(model, budget kind, pruner, target fraction) → quantity → (mean, std, seeds)."""
    groups: dict[tuple, list[dict]] = defaultdict(list)
    for r in records:
        kind, frac = budget_of(r["target"])
        groups[(r["model"], kind, r["pruner"], frac)].append(r)
    out = {}
    for key in sorted(groups, key=lambda k: (k[0], k[1], _order(k[2]), -k[3])):
        rs = groups[key]
        out[key] = {q: (float(np.mean(v)), float(np.std(v)), len(v)) for q, f in QUANTITIES.items()
                    for v in [[f(r) for r in rs]]}
    return out


def _pm(m: tuple[float, float, int], scale: float = 100.0, digits: int = 1) -> str:
    mean, std, n = m
    return f"{mean * scale:.{digits}f} ± {std * scale:.{digits}f}" if n > 1 else f"{mean * scale:.{digits}f}"


def _ratio(x: float) -> str:
    return f"{1 / x:.1f}×" if x > 0 else "–"


def markdown(records: list[dict], *, full: bool = True) -> str:
    s = summarize(records)
    lines: list[str] = []
    for model, kind in dict.fromkeys((k[0], k[1]) for k in s):
        keys = [k for k in s if k[:2] == (model, kind)]
        fracs = sorted({k[3] for k in keys}, reverse=True)
        pruners = sorted({k[2] for k in keys}, key=_order)
        dense = s[keys[0]]["acc_original"]
        lines += [f"### {model}, budget: {kind} (dense test accuracy {_pm(dense)} %)", "",
                  "Fine-tuned test accuracy (%), mean ± std over seeds, at each compression of the "
                  f"slim model's {kind}:", "",
                  "| pruner | " + " | ".join(f"{1 / f:.0f}×" for f in fracs) + " |",
                  "|---|" + "---:|" * len(fracs)]
        for p in pruners:
            cells = [_pm(s[(model, kind, p, f)]["acc_finetuned"]) if (model, kind, p, f) in s else "–" for f in fracs]
            lines.append(f"| {PRUNERS.get(p, p)} | " + " | ".join(cells) + " |")
        lines.append("")
        if full:
            lines += ["| pruner | target | params | FLOPs | slim latency (ms) | slim / dense latency | "
                      "acc. pruned | acc. fine-tuned | seeds |",
                      "|---|---|---:|---:|---:|---:|---:|---:|---:|"]
            for k in keys:
                q = s[k]
                lines.append(f"| {PRUNERS.get(k[2], k[2])} | {kind}={k[3]:g} | {_ratio(q['params'][0])} | "
                             f"{_ratio(q['flops'][0])} | {_pm(q['latency_ms'], 1, 3)} | {_pm(q['latency'], 1, 3)} | "
                             f"{_pm(q['acc_pruned'])} | {_pm(q['acc_finetuned'])} | {q['params'][2]} |")
            lines.append("")
    return "\n".join(lines)


AXES = (("params", "params of the slim model (fraction of dense)", True),
        ("flops", "FLOPs of the slim model (fraction of dense)", True),
        ("latency_ms", "measured latency of the slim model (ms)", False))


def plot(records: list[dict], out_dir: str | Path) -> list[str]:
    """One PNG per (model, budget kind): accuracy vs params, vs FLOPs, vs measured latency."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    s = summarize(records)
    written = []
    for model, kind in dict.fromkeys((k[0], k[1]) for k in s):
        keys = [k for k in s if k[:2] == (model, kind)]
        fig = Figure(figsize=(15, 4.4))
        FigureCanvasAgg(fig)
        axes = fig.subplots(1, 3, sharey=True)
        for p in sorted({k[2] for k in keys}, key=_order):
            pts = sorted((k for k in keys if k[2] == p), key=lambda k: -k[3])
            y = np.array([s[k]["acc_finetuned"][0] for k in pts]) * 100
            ye = np.array([s[k]["acc_finetuned"][1] for k in pts]) * 100
            for ax, (q, label, log) in zip(axes, AXES):
                x = np.array([s[k][q][0] for k in pts])
                xe = np.array([s[k][q][1] for k in pts])
                ax.errorbar(x, y, yerr=ye, xerr=xe, marker="o", ms=4, capsize=2, label=PRUNERS.get(p, p))
                ax.set_xlabel(label)
                if log:
                    ax.set_xscale("log", base=2)
        dense = s[keys[0]]["acc_original"][0] * 100
        for ax in axes:
            ax.axhline(dense, color="gray", ls=":", lw=1)
            ax.grid(alpha=0.3)
        axes[0].set_ylabel("fine-tuned test accuracy (%)")
        axes[0].legend(fontsize=8)
        fig.suptitle(f"{model}: pruned to a {kind} budget (mean ± std over seeds; dotted: dense)")
        fig.tight_layout()
        path = Path(out_dir) / f"{model}_{kind}.png"
        with atomic_path(path) as tmp:
            fig.savefig(tmp, dpi=110, format="png")
        written.append(str(path))
    return written
