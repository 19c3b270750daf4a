"""Compile report: params/FLOPs before and after, per-layer widths, kept-and-why, checks,
stage times. A plain dict (JSON-ready) plus a rich table for humans."""
from __future__ import annotations

import time
from collections import Counter
from typing import Any

import torch
from torch import fx, nn
from torch.utils.flop_counter import FlopCounterMode
from slimc.modes import eval_mode
from slimc.shape_rules import op_key, op_name, whole_module


class StageClock:
    """Stage times that add up to the wall time: a lap charges the time since the last lap
    to the stage it names (a stage may come back: its laps add up)."""

    def __init__(self) -> None:
        self.start = self.last = time.perf_counter()
        self.times: dict[str, float] = {}

    def lap(self, stage: str) -> None:
        now = time.perf_counter()
        self.times[stage] = self.times.get(stage, 0.0) + now - self.last
        self.last = now

    def total(self) -> float:
        self.times["total"] = time.perf_counter() - self.start
        return self.times["total"]


def count_params(m: nn.Module) -> int:
    return sum(p.numel() for p in m.parameters())


def count_flops(m: nn.Module, inputs: tuple) -> int | None:
    """FLOPs of one forward of ``m`` at ``inputs``, counted by running it (``compile`` reads
    them off the graph's shapes instead: :mod:`slimc.flops`)."""
    try:
        with eval_mode(m), torch.no_grad(), FlopCounterMode(display=False) as fc:
            m(*inputs)
        return int(fc.get_total_flops())
    except Exception:
        return None


def graph_ops(gm: fx.GraphModule) -> Counter:
    """Op name → how many nodes of a traced graph call it (modules by class)."""
    return Counter(op_name(op_key(n, gm)) for n in gm.graph.nodes
                   if n.op in ("call_function", "call_method", "call_module"))


def added_ops(before: Counter, slim: fx.GraphModule) -> dict[str, int]:
    """Ops the slim graph calls more often than the original did (a gather of kept slices, an
    exact-LayerNorm's extra nodes): the runtimes' fast paths were made for the original's ops."""
    return {k: n - before.get(k, 0) for k, n in sorted(graph_ops(slim).items()) if n > before.get(k, 0)}


def layer_widths(before: nn.Module, after: nn.Module) -> list[dict[str, Any]]:
    """Leaf modules with a weight: shape before → after (only those that changed first); a
    module traced whole (MoE experts) by its first parameter (the stacked up projection)."""
    after_mods = dict(after.named_modules())
    rows = []
    for name, m in before.named_modules():
        whole = whole_module(type(m)) is not None
        attr = next((n for n, _ in m.named_parameters(recurse=False)), "") if whole else "weight"
        w = getattr(m, attr, None)
        if not name or not isinstance(w, torch.Tensor) or name not in after_mods:
            continue
        w2 = getattr(after_mods[name], attr, None)
        if not isinstance(w2, torch.Tensor):
            continue
        rows.append({
            "layer": name,
            "type": type(m).__name__,
            "before": list(w.shape),
            "after": list(w2.shape),
            "changed": tuple(w.shape) != tuple(w2.shape),
        })
    return rows


def rows_table(title: str, rows: list[dict], keys: list[str]):
    """A rich table of ``rows`` (dicts), one column per key."""
    from rich.table import Table

    from rich.markup import escape

    t = Table(title=title)
    for k in keys:
        t.add_column(k)
    for r in rows:  # (user code in the cells: `split([self.num_heads, 1, 1])` is not markup)
        t.add_row(*(escape(str(r.get(k, ""))) for k in keys))
    return t


def by_layer_pattern(lines: list[str]) -> list[str]:
    """"path: old → new" lines of repeated layers as one line each, the layer numbers as '#':
    'encoder.block.0.attn.n_heads: 4 → 3' and 'encoder.block.1…' → 'encoder.block.#.attn.n_heads:
    4 → 3 (×2)' (a change that differs between the layers stays apart)."""
    import re

    counts: dict[str, int] = {}
    for line in lines:
        path, sep, change = line.partition(": ")
        key = re.sub(r"\.\d+(?=\.)", ".#", path) + sep + change
        counts[key] = counts.get(key, 0) + 1
    return [k + (f" (×{n})" if n > 1 else "") for k, n in counts.items()]


def render(report: dict[str, Any], console=None, max_layers: int = 40) -> None:
    from rich.console import Console
    from rich.markup import escape
    from rich.table import Table

    console = console or Console()
    p, f = report["params"], report["flops"]
    t = Table(title=f"slimc compile — {report.get('model', 'model')}", show_header=True)
    t.add_column("")
    t.add_column("before", justify="right")
    t.add_column("after", justify="right")
    t.add_column("ratio", justify="right")
    t.add_row("params", f"{p['before']:,}", f"{p['after']:,}", f"{p['before'] / max(p['after'], 1):.2f}×")
    if f.get("before") and f.get("after"):
        t.add_row("FLOPs", f"{f['before']:,}", f"{f['after']:,}", f"{f['before'] / max(f['after'], 1):.2f}×")
    console.print(t)
    layers = [r for r in report["layers"] if r["changed"]]
    if layers:
        lt = Table(title=f"layers changed ({len(layers)} of {len(report['layers'])})")
        lt.add_column("layer")
        lt.add_column("type")
        lt.add_column("weight before → after")
        for r in layers[:max_layers]:
            lt.add_row(r["layer"], r["type"], f"{tuple(r['before'])} → {tuple(r['after'])}")
        if len(layers) > max_layers:
            lt.add_row(f"… {len(layers) - max_layers} more (report.json)", "", "")
        console.print(lt)
    if report.get("kept"):
        kt = Table(title="masked channels kept, and why")
        kt.add_column("groups", justify="right")
        kt.add_column("reason")
        for r in report["kept"][:15]:
            kt.add_row(str(r["groups"]), escape(r["reason"]))
        console.print(kt)
    holding = [r for r in report.get("barriers", []) if r.get("holds_channels", True)]
    if holding:
        console.print(rows_table("unsupported ops (barriers)", holding[:15], ["node", "reason", "source"]))
    if len(holding) < len(report.get("barriers", [])):
        n = len(report["barriers"]) - len(holding)
        console.print(f"{n} op(s) without a rule touch no channel of a layer (positions, masks computed from the "
                      f"input): nothing to prune there (report.json's barriers; slimc inspect)")
    if report.get("probed"):
        console.print(rows_table("ops without a rule, probed (treated channel-wise where no mixing was found)",
                                 report["probed"][:15], ["node", "found", "source"]))
    zeros = report.get("unstructured_zeros") or {}
    if zeros:
        n = sum(zeros.values())
        console.print(f"unstructured sparsity kept: {n:,} zeros in {len(zeros)} params "
                      f"({n / max(p['after'], 1):.1%} of the slim model's params; only whole channels are removed)")
    v = report.get("verify")
    if v:
        status = "[green]OK[/green]" if v["ok"] else "[red]FAILED[/red]"
        line = f"check slim vs masked (final masks): max abs diff {v['max_abs_diff']:.3g} (≤ {v['tolerance']:.3g}) {status}"
        if v.get("vs_user_masked") is not None:
            line += f"; vs your masks as given: {v['vs_user_masked']:.3g}"
        console.print(line)
        if v.get("shapes"):
            why = "" if v.get("example", True) else "; random float inputs stand for the example's values"
            console.print(f"checked at input shapes {' and '.join(v['shapes'])} ({v.get('varied', '')}{why})")
    u = report.get("user_model")
    if u:
        if u["built"]:
            hf = u.get("hf")
            how = ""
            if hf:
                how = (" — hf/ reloads with from_pretrained" if hf["expressible"]
                       else f" — reload with slimc.load (the config cannot express it: {escape(hf['why_not'])})")
            console.print(f"your class {u['class'].rsplit('.', 1)[-1]}: slim model built (res.model, slimc.load){how}")
            if hf and hf.get("config_changes"):
                console.print("config: " + ", ".join(hf["config_changes"]))
            if u.get("patched"):
                console.print("sizes set: " + "; ".join(by_layer_pattern(u["patched"])[:12]))
        else:
            console.print(f"your class {str(u['class']).rsplit('.', 1)[-1]}: [yellow]no slim model of it[/yellow] "
                          f"({escape(u['reason'])}); the graph slim.pt is exact")
    o = report.get("onnx")
    if o and "error" not in o:  # a failed export is the command's own line
        where = (" at input shapes " + " and ".join(", ".join(str(tuple(x)) for x in xs) for xs in o["input_shapes"])
                 if o.get("input_shapes") else f" at batch {o['batch_sizes']}")
        dyn = f", dynamic dims {o['dynamic_dims']}" if o.get("dynamic_dims") else ""
        console.print(f"onnx ({o['exporter']}, opset {o['opset']}{dyn}): onnxruntime max abs diff {o['max_abs_diff']:.3g}"
                      f"{where}, {o['initializer_bytes']:,} initializer bytes")
    times = report.get("times_s", {})
    if times:
        console.print("time: " + ", ".join(f"{k} {v * 1000:.0f} ms" for k, v in times.items()))
    for n in report.get("notes", [])[:10]:
        console.print(f"note: {escape(n)}")
