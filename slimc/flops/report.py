"""``slimc flops``: parameters and FLOPs, in total and per layer, before and after masks.

"After" is the model ``slimc compile`` builds from the masks (not verified here: compile
does that), counted the same way as "before": FLOPs with torch's FlopCounterMode on the
example inputs (a multiply-add is 2 FLOPs), parameters of each leaf module.
"""
from __future__ import annotations

from typing import Any

import torch
from torch import nn
from torch.utils.flop_counter import FlopCounterMode

from slimc.inputs import bind
from slimc.prune.space import leaf_modules
from slimc.modes import eval_mode


def layer_costs(model: nn.Module, inputs: tuple) -> dict[str, dict[str, Any]]:
    """Per leaf module with parameters or FLOPs: its type, parameter count and FLOPs."""
    with eval_mode(model), torch.no_grad(), FlopCounterMode(display=False) as fc:
        model(*inputs)
    counts = fc.get_flop_counts()
    root = type(model).__name__
    flops = {k[len(root) + 1:]: sum(v.values()) for k, v in counts.items() if k.startswith(root + ".")}
    out: dict[str, dict[str, Any]] = {}
    leaves = leaf_modules(model)
    for name, m in model.named_modules():
        if name not in leaves:
            continue
        p = sum(t.numel() for t in m.parameters(recurse=False))
        if p or flops.get(name):
            out[name] = {"type": type(m).__name__, "params": p, "flops": int(flops.get(name, 0))}
    return out


def _total_flops(model: nn.Module, inputs: tuple) -> int:
    from slimc.report import count_flops

    return int(count_flops(model, inputs) or 0)


def flops_report(model: nn.Module, example_inputs: Any, masks: Any = None, *, front_end: str = "auto") -> dict:
    """Totals and a per-layer table; with ``masks``, the compiled slim model beside them."""
    inputs = bind(model, example_inputs)
    before = layer_costs(model, inputs)
    report: dict[str, Any] = {
        "params": {"before": sum(p.numel() for p in model.parameters())},
        "flops": {"before": _total_flops(model, inputs)},
    }
    after: dict[str, dict[str, Any]] = {}
    if masks is not None:
        import slimc

        res = slimc.compile(model, masks, inputs, verify=False, front_end=front_end)
        slim = res.module
        after = layer_costs(slim, inputs)
        report["params"]["after"] = res.report["params"]["after"]
        report["flops"]["after"] = _total_flops(slim, inputs)
        report["unstructured_zeros"] = sum(res.report["unstructured_zeros"].values())
    rows = []
    for name, b in before.items():
        row = {"layer": name, "type": b["type"], "params_before": b["params"], "flops_before": b["flops"]}
        if masks is not None:
            a = after.get(name, {"params": None, "flops": None})
            row.update(params_after=a["params"], flops_after=a["flops"])
        rows.append(row)
    report["layers"] = rows
    return report


def render_flops(report: dict, console=None, max_layers: int = 60) -> None:
    from rich.console import Console
    from rich.table import Table

    from slimc.bench.report import fmt_si as _fmt

    console = console or Console()
    after = "after" in report["params"]
    t = Table(title="params and FLOPs" + (" (after: the slim model compile builds)" if after else ""))
    for c in ("", "before", *(("after", "ratio") if after else ())):
        t.add_column(c, justify="right" if c else "left")
    for key in ("params", "flops"):
        b = report[key]["before"]
        cells = [_fmt(b)]
        if after:
            a = report[key]["after"]
            cells += [_fmt(a), f"{b / max(a, 1):.2f}×"]
        t.add_row("FLOPs" if key == "flops" else "params", *cells)
    console.print(t)
    rows = sorted(report["layers"], key=lambda r: -r["flops_before"])[:max_layers]
    lt = Table(title=f"layers by FLOPs (top {len(rows)} of {len(report['layers'])})")
    for c in ("layer", "type", "params", "FLOPs", *(("params after", "FLOPs after") if after else ())):
        lt.add_column(c, justify="left" if c in ("layer", "type") else "right")
    for r in rows:
        cells = [r["layer"], r["type"], _fmt(r["params_before"]), _fmt(r["flops_before"])]
        if after:
            cells += [_fmt(r["params_after"]), _fmt(r["flops_after"])]
        lt.add_row(*cells)
    console.print(lt)
    if report.get("unstructured_zeros"):
        console.print(f"unstructured zeros kept in the slim model: {report['unstructured_zeros']:,} "
                      "(not counted as removed)")
