"""Sensitivity analysis: how much each family's pruning costs, one family at a time.

For every family and every sparsity, the family alone is pruned (complete masks: the model
evaluated is the one compile would build) and ``evaluate(model)`` — or, without one, the
mean loss over the calibration batches — is compared with the dense model's. The result
(JSON) seeds a config list: per family, the largest sparsity whose drop stays within a
budget (:func:`sensitivity_config`).
"""
from __future__ import annotations

import copy
import math
from typing import Any, Callable, Sequence

import torch
from torch import nn

from slimc.copying import safe_copy
from slimc.errors import ConfigError, DataError
from slimc.inputs import bind
from slimc.masks import MaskSet
from slimc.prune.data import UserData, batch_failed, failed
from slimc.progress import progress
from slimc.prune.pruner import Pruner

DEFAULT_SPARSITIES = (0.25, 0.5, 0.75)


def _mean_loss(user: UserData, n_inputs: int, max_batches: int | None) -> Callable[[nn.Module], float]:
    calib = user.calibration(n_inputs, "sensitivity without evaluate(model)", needs_loss=True, max_batches=max_batches)

    def evaluate(model: nn.Module) -> float:
        total, n = 0.0, 0
        with torch.no_grad():
            for b in calib.batches("sensitivity: loss"):
                try:
                    out = model(*b.inputs)
                except Exception as e:
                    raise batch_failed(e) from e
                total += float(calib.loss(out, b.target))
                n += 1
        return total / max(n, 1)

    return evaluate


def _evaluated(evaluate: Callable[[nn.Module], float], model: nn.Module) -> float:
    try:
        return float(evaluate(model))
    except DataError:
        raise
    except Exception as e:
        raise failed("evaluate(model)", e, "it takes the model and returns a float") from e


def sensitivity(model: nn.Module, example_inputs: Any, evaluate: Callable[[nn.Module], float] | None = None, *,
                criterion: str = "l1", sparsities: Sequence[float] = DEFAULT_SPARSITIES,
                families: Sequence[str] | None = None, higher_is_better: bool = True,
                user_data: UserData | None = None, data: Any = None, loss_fn: Callable | None = None,
                max_batches: int | None = None, **pruner_kw: Any) -> dict:
    """Per family: ``evaluate`` at each sparsity (the family alone pruned by ``criterion``)."""
    bad = [s for s in sparsities if not 0 < s < 1]
    if bad or not sparsities:
        got = f"sparsity {bad[0]} is out of range" if bad else "no sparsity to try"
        raise ConfigError(f"{got}: give sparsities between 0 and 1 (the fraction of each layer pruned), "
                          "e.g. 0.25,0.5,0.75")
    user = (user_data or UserData()).with_api(data, loss_fn)
    evaluate = evaluate or user.evaluate
    metric = "evaluate"
    if evaluate is None:
        if user.data is None:
            raise DataError("sensitivity needs evaluate(model) -> float in model.py (or evaluate= in the API), "
                            "or calibration_batches() and loss_fn(output, target)")
        evaluate = _mean_loss(user, len(bind(model, example_inputs)), max_batches)
        metric, higher_is_better = "loss", False
    elif evaluate is user.evaluate:
        higher_is_better = user.higher_is_better
    pruner_kw.setdefault("expressible", False)  # each family alone, whatever a config can express
    if pruner_kw.get("round_to", "auto") == "auto":  # each family at each sparsity asked for, not rounded
        pruner_kw["round_to"] = 1
    pruner = Pruner(model, example_inputs, criterion, user_data=user, max_batches=max_batches, **pruner_kw)
    fams = [f for f in pruner.families if families is None or f.name in families]
    if families is not None and len(fams) != len(set(families)):
        missing = sorted(set(families) - {f.name for f in fams})
        raise DataError(f"no family '{missing[0]}': see `slimc inspect` or PruneSpace.describe() for the names")
    scores = pruner.scores()
    work = safe_copy(model)  # also a model that earlier runs left cached (non-leaf) tensors in
    dense_state = copy.deepcopy(work.state_dict())
    baseline = _evaluated(evaluate, work)
    rows = []
    trials = [(f, s) for f in fams for s in sparsities]
    values: dict[str, list] = {f.name: [] for f in fams}
    for f, s in progress(trials, f"sensitivity: {len(fams)} families × {len(sparsities)} sparsities"):
        n_pruned = math.floor(len(f) * s + 1e-9)
        if n_pruned == 0 or n_pruned >= len(f):
            values[f.name].append(None)
            continue
        masks = pruner.prune(sparsities={f.name: s}, scores=scores).masks
        work.load_state_dict(dense_state)
        MaskSet(masks).apply(work)
        values[f.name].append(_evaluated(evaluate, work))
    work.load_state_dict(dense_state)
    sign = 1.0 if higher_is_better else -1.0
    leaves = pruner.space.leaf_modules()
    for f in fams:
        vals = values[f.name]
        rows.append({"family": f.name, "kind": f.kind, "units": len(f), "layers": [n for n in f.sources if n in leaves],
                     "values": vals,
                     "drop": [None if v is None else sign * (baseline - v) for v in vals]})
    return {"criterion": pruner.criterion.name, "metric": metric, "higher_is_better": higher_is_better,
            "baseline": baseline, "sparsities": list(sparsities), "families": rows}


def sensitivity_config(result: dict, max_drop: float) -> list[dict]:
    """A config list: per family, the largest sparsity whose drop (and every smaller tested
    sparsity's) is at most ``max_drop``, for the layers that create its channels. Families
    that tolerate none are left out (kept)."""
    out = []
    for row in result["families"]:
        best = 0.0
        for s, d in zip(result["sparsities"], row["drop"]):
            if d is None:
                continue
            if d > max_drop:
                break
            best = max(best, s)
        if best > 0 and row["layers"]:
            out.append({"op_names": row["layers"], "sparsity": best})
    return out


def worst_drop(row: dict) -> float:
    return max((d for d in row["drop"] if d is not None), default=0.0)


def most_sensitive(result: dict, n: int) -> list[dict]:
    return sorted(result["families"], key=lambda r: -worst_drop(r))[:n]


def plot_sensitivity(result: dict, path: str, top: int = 12) -> str:
    """Drop vs sparsity, one line per family (the ``top`` most sensitive labelled)."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    from slimc.atomic import atomic_path

    rows = result["families"]
    worst = most_sensitive(result, top)
    fig = Figure(figsize=(8, 5))
    ax = fig.add_subplot(1, 1, 1)
    for r in rows:
        pts = [(s, d) for s, d in zip(result["sparsities"], r["drop"]) if d is not None]
        if not pts:
            continue
        labelled = r in worst
        style = {"marker": "o", "lw": 1.5, "label": r["family"], "zorder": 2} if labelled else \
            {"lw": 0.7, "color": "#bbbbbb", "zorder": 1}
        ax.plot(*zip(*pts), **style)
    ax.set_xlabel("sparsity of the family (fraction of its channels / heads removed)")
    ax.set_ylabel(f"{result['metric']} drop (worse →)")
    ax.set_title(f"sensitivity ({result['criterion']}; baseline {result['metric']} {result['baseline']:.4g})")
    ax.axhline(0, color="black", lw=0.5)
    if worst:
        ax.legend(fontsize=7, loc="upper left")
    fig.tight_layout()
    with atomic_path(path) as tmp:
        FigureCanvasAgg(fig).print_png(tmp)
    return str(path)
