"""Plots for the latency benchmark (matplotlib, Agg canvas, no pyplot state)."""

from __future__ import annotations

import math
import os
from typing import Any, Sequence

from slimc.atomic import atomic_path

__all__ = ["plot_latency", "VARIANT_ORDER", "VARIANT_COLORS"]

VARIANT_ORDER = ("original", "masked", "slim")
VARIANT_COLORS = {"original": "#7f7f7f", "masked": "#ff7f0e", "slim": "#2ca02c"}


def _ordered_unique(values: Sequence[Any]) -> list[Any]:
    seen: dict[Any, None] = {}
    for v in values:
        seen.setdefault(v, None)
    return list(seen)


def _batch_key(b: Any) -> tuple[int, Any]:
    try:
        return (0, int(b))
    except (TypeError, ValueError):
        return (1, str(b))


def plot_latency(rows: list[dict], path: str | os.PathLike, *, title: str | None = None) -> str:
    """Grouped bar chart of median latency (p90 as upper error bar, min as a tick).

    One subplot per (runtime, batch) present in ``rows``; within each subplot
    one group of bars per model, one bar per variant (original / masked / slim).
    Each row needs keys model, variant, runtime, batch, median_ms, p90_ms,
    min_ms.  The PNG is written atomically (temp file + os.replace).
    Returns the path written.
    """
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    rows = list(rows)
    if not rows:
        raise ValueError("plot_latency: no rows to plot")
    required = ("model", "variant", "runtime", "batch", "median_ms", "p90_ms", "min_ms")
    for i, r in enumerate(rows):
        missing = [k for k in required if k not in r]
        if missing:
            raise ValueError(f"plot_latency: row {i} lacks keys {missing}")

    panels = sorted(
        _ordered_unique([(str(r["runtime"]), r["batch"]) for r in rows]),
        key=lambda rb: (rb[0], _batch_key(rb[1])),
    )
    models = _ordered_unique([str(r["model"]) for r in rows])
    present = _ordered_unique([str(r["variant"]) for r in rows])
    variants = [v for v in VARIANT_ORDER if v in present] + [v for v in present if v not in VARIANT_ORDER]

    # last row wins if a (runtime, batch, model, variant) appears twice
    table = {(str(r["runtime"]), r["batch"], str(r["model"]), str(r["variant"])): r for r in rows}

    n = len(panels)
    ncols = min(n, 2)
    nrows = math.ceil(n / ncols)
    width = max(6.0, 0.9 * len(models) * max(1, len(variants)) + 2.0)
    fig = Figure(figsize=(width * ncols, 4.2 * nrows), layout="constrained")
    FigureCanvasAgg(fig)
    axes = fig.subplots(nrows, ncols, squeeze=False)

    bar_w = 0.8 / max(1, len(variants))
    legend: dict[str, Any] = {}
    extra_colors = ["#1f77b4", "#d62728", "#9467bd", "#8c564b", "#e377c2"]
    for k, (runtime, batch) in enumerate(panels):
        ax = axes[k // ncols][k % ncols]
        ymax = 0.0
        for j, variant in enumerate(variants):
            xs, med, err_hi, mins = [], [], [], []
            for i, model in enumerate(models):
                r = table.get((runtime, batch, model, variant))
                if r is None:
                    continue
                m = float(r["median_ms"])
                xs.append(i + (j - (len(variants) - 1) / 2) * bar_w)
                med.append(m)
                err_hi.append(max(0.0, float(r["p90_ms"]) - m))
                mins.append(float(r["min_ms"]))
            if not xs:
                continue
            color = VARIANT_COLORS.get(variant, extra_colors[j % len(extra_colors)])
            ax.bar(
                xs, med, bar_w, label=variant, color=color, edgecolor="black", linewidth=0.5,
                yerr=[[0.0] * len(err_hi), err_hi], capsize=3,
                error_kw={"elinewidth": 0.8, "ecolor": "black"},
            )
            ax.scatter(xs, mins, marker="_", s=60, color="black", zorder=3,
                       label="min" if j == 0 else None)
            for x, m, e in zip(xs, med, err_hi):  # median value, above the p90 whisker
                top = m + e
                ymax = max(ymax, top)
                ax.annotate(f"{m:.3g}", (x, top), textcoords="offset points", xytext=(0, 5),
                            ha="center", va="bottom", fontsize=7, rotation=90)
        ax.set_title(f"{runtime}, batch={batch}")
        ax.set_xticks(range(len(models)))
        ax.set_xticklabels(models, rotation=20, ha="right")
        ax.set_ylabel("latency [ms] (median, bar to p90)")
        ax.set_ylim(0, ymax * 1.3 if ymax > 0 else 1.0)  # room for the labels
        ax.grid(axis="y", alpha=0.3)
        for h, lab in zip(*ax.get_legend_handles_labels()):
            legend.setdefault(lab, h)
    for k in range(n, nrows * ncols):
        axes[k // ncols][k % ncols].set_visible(False)
    if legend:  # one legend for all panels, below them
        labels = [v for v in variants if v in legend] + (["min"] if "min" in legend else [])
        fig.legend([legend[lab] for lab in labels], labels, loc="outside lower center",
                   ncol=len(labels), fontsize=9, frameon=False)
    if title:
        fig.suptitle(title)

    path = os.fspath(path)
    with atomic_path(path) as tmp:
        with open(tmp, "wb") as f:
            fig.savefig(f, format="png", dpi=120)
    return path
