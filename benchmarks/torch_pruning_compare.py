#!/usr/bin/env python
"""slimc vs Torch-Pruning (optional ``torch_pruning`` package) on the same masks.

Torch-Pruning's MagnitudePruner (L1, 50 % of every group, classifier output kept)
chooses the channels and removes them physically.  We record its choice as masks on
the original model, then:

* check Torch-Pruning's model against the masked model (it does not check itself);
* compile the *same* masks with ``slimc.compile`` (verified) and compare params, FLOPs,
  the time to build the dependency graph and prune, and torch-eager latency of the
  masked model, Torch-Pruning's model and slimc's model.

Without torch_pruning installed it prints one line and exits 0.

    pip install torch-pruning
    python benchmarks/torch_pruning_compare.py [--models resnet18,vgg16] [--batch 64]

Writes <out>/torch_pruning_compare_cpu.json and .md.
"""
from __future__ import annotations

import argparse
import copy
import datetime as _dt
import json
import sys
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent

try:
    import torch_pruning as tp
except ImportError:
    print("skip: torch_pruning is not installed (pip install torch-pruning); nothing to compare")
    sys.exit(0)

import torch  # noqa: E402
from torch import nn  # noqa: E402

import slimc  # noqa: E402
from slimc import zoo  # noqa: E402
from slimc.atomic import write_text  # noqa: E402
from slimc.bench import batched_inputs, machine_info, machine_markdown, wait_for_quiet_cpu  # noqa: E402
from slimc.bench.timing import time_torch  # noqa: E402
from slimc.errors import describe  # noqa: E402
from slimc.report import count_flops, count_params  # noqa: E402
from slimc.verify import masked_copy  # noqa: E402

DEFAULT_MODELS = "vgg16,resnet18,resnet50,mobilenetv2,densenet_small,shufflenetv2_small"


def _csv(s: str) -> list[str]:
    return [x.strip() for x in s.split(",") if x.strip()]


def _plain(idxs) -> list[int]:
    return [int(getattr(i, "idx", i)) for i in idxs]


def _max_diff(a: nn.Module, b: nn.Module, x: tuple) -> float:
    with torch.inference_mode():
        ya, yb = a.eval()(*x), b.eval()(*x)
    return float((ya - yb).abs().max())


def tp_prune(model: nn.Module, x: tuple, ratio: float) -> tuple[nn.Module, dict, dict]:
    """Torch-Pruning on a copy of ``model``: (pruned model, masks it chose, timings)."""
    m = copy.deepcopy(model).eval()
    names = {mod: n for n, mod in m.named_modules()}
    shapes = {n: p.shape for n, p in m.named_parameters()}
    last_linear = [mod for mod in m.modules() if isinstance(mod, nn.Linear)][-1:]
    times = {}
    t0 = time.perf_counter()
    tp.DependencyGraph().build_dependency(copy.deepcopy(m), example_inputs=x[0])
    times["graph_first_s"] = time.perf_counter() - t0
    t0 = time.perf_counter()
    tp.DependencyGraph().build_dependency(copy.deepcopy(m), example_inputs=x[0])
    times["graph_warm_s"] = time.perf_counter() - t0

    t0 = time.perf_counter()
    kw = dict(importance=tp.importance.MagnitudeImportance(p=1), ignored_layers=last_linear)
    try:
        pruner = tp.pruner.MagnitudePruner(m, x[0], pruning_ratio=ratio, **kw)
    except TypeError:  # torch-pruning < 1.3
        pruner = tp.pruner.MagnitudePruner(m, x[0], ch_sparsity=ratio, **kw)
    masks: dict[str, torch.Tensor] = {}
    for group in pruner.step(interactive=True):
        for dep, idxs in group:
            if not pruner.DG.is_out_channel_pruning_fn(dep.handler):
                continue
            mod = dep.target.module
            name = names.get(mod)
            if name is None:
                continue
            idx = torch.tensor(_plain(idxs), dtype=torch.long)
            for pname in ("weight", "bias"):
                fqn = f"{name}.{pname}" if name else pname
                if fqn in shapes and isinstance(getattr(mod, pname, None), torch.Tensor):
                    mk = masks.setdefault(fqn, torch.ones(shapes[fqn]))
                    mk.index_fill_(0, idx, 0.0)
        group.prune()
    times["prune_s"] = time.perf_counter() - t0
    return m, masks, times


def latency(module: nn.Module, x: tuple, min_time_s: float, min_repeats: int) -> dict:
    t = time_torch(module, x, warmup=2, min_time_s=min_time_s, min_repeats=min_repeats, max_repeats=200)
    return {"min_ms": t.min_ms, "median_ms": t.median_ms, "p90_ms": t.p90_ms, "repeats": t.repeats,
            "threads": t.threads}


def compare(name: str, a: argparse.Namespace) -> dict:
    model = zoo.build(name)
    x = zoo.example_inputs(name, 2)
    row: dict = {"model": name, "errors": []}
    row["params_dense"] = count_params(model)
    row["flops_dense"] = count_flops(model, batched_inputs(x, 1))
    try:
        tpm, masks, t_tp = tp_prune(model, x, a.ratio)
    except Exception as e:  # noqa: BLE001 - a Torch-Pruning failure is a result
        row["errors"].append(f"torch_pruning: {describe(e)}")
        print(f"[{name}] torch_pruning failed: {describe(e)}")
        return row
    row["tp_times_s"] = t_tp
    row["params_tp"] = count_params(tpm)
    row["flops_tp"] = count_flops(tpm, batched_inputs(x, 1))
    masked = masked_copy(model, masks)
    try:
        row["tp_vs_masked_max_abs_diff"] = _max_diff(tpm, masked, batched_inputs(x, 4, seed=1))
    except Exception as e:  # noqa: BLE001
        row["errors"].append(f"torch_pruning model failed to run: {describe(e)}")
    t0 = time.perf_counter()
    try:
        res = slimc.compile(model, masks, x, name=name)
    except Exception as e:  # noqa: BLE001 - report, don't fix slimc here
        row["errors"].append(f"slimc: {describe(e)}")
        print(f"[{name}] slimc.compile failed on Torch-Pruning's masks: {describe(e)}")
        res = None
    if res is not None:
        row["slimc_compile_s"] = time.perf_counter() - t0
        row["slimc_times_s"] = {k: float(v) for k, v in res.report["times_s"].items()}
        row["params_slimc"] = count_params(res.module)
        row["flops_slimc"] = count_flops(res.module, batched_inputs(x, 1))
        x4 = batched_inputs(x, 4, seed=1)
        row["slimc_vs_masked_max_abs_diff"] = _max_diff(res.module, masked, x4)
        # slimc's own check is against its final masks (⊇ the given masks)
        row["slimc_vs_final_masked_max_abs_diff"] = _max_diff(res.module, masked_copy(model, res.masks), x4)
        try:
            row["tp_vs_slimc_max_abs_diff"] = _max_diff(tpm, res.module, x4)
        except Exception as e:  # noqa: BLE001
            row["errors"].append(f"comparing TP and slimc outputs: {describe(e)}")
    if a.batch:
        if a.wait_idle > 0:
            wait_for_quiet_cpu(a.wait_idle, log=print)
        xb = batched_inputs(x, a.batch)
        row["latency_batch"] = a.batch
        row["latency"] = {"masked": latency(masked, xb, a.min_time, a.min_repeats),
                          "torch_pruning": latency(tpm, xb, a.min_time, a.min_repeats)}
        if res is not None:
            row["latency"]["slimc"] = latency(res.module, xb, a.min_time, a.min_repeats)
    print(f"[{name}] " + json.dumps({k: v for k, v in row.items() if k != "latency"}, default=str))
    return row


def to_markdown(doc: dict) -> str:
    def n(v):
        return "–" if v is None else f"{v / 1e6:.3g} M"

    def ms(r, k):
        v = (r.get("latency") or {}).get(k)
        return "–" if v is None else f"{v['median_ms']:.1f}"

    L = ["# slimc vs Torch-Pruning on the same masks", "",
         f"Machine: {machine_markdown(doc['machine'])}", "",
         f"torch_pruning {doc['torch_pruning']}; MagnitudePruner L1, pruning ratio {doc['config']['ratio']}, "
         f"classifier output kept. Latency: torch eager, batch {doc['config']['batch']}, median ms. "
         "Max diffs: max |Δ output| on a seeded randn batch of 4 against the original model with "
         "Torch-Pruning's chosen channels masked (conv/linear/BN weight and bias rows of each group); "
         "slimc may extend the masks (e.g. a BN after a concat) and verifies against those final masks.", "",
         "| model | params dense | params TP | params slimc | FLOPs TP | FLOPs slimc | TP vs masked max diff "
         "| slimc vs masked (vs its final masks) | TP vs slimc | TP graph (warm) + prune s | slimc compile s "
         "| masked ms | TP ms | slimc ms | errors |",
         "|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---|"]
    for r in doc["rows"]:
        tt = r.get("tp_times_s") or {}
        tps = "–" if not tt else f"{tt['graph_warm_s']:.2f} + {tt['prune_s']:.2f}"
        d1, d2 = r.get("tp_vs_masked_max_abs_diff"), r.get("slimc_vs_masked_max_abs_diff")
        d3, d4 = r.get("slimc_vs_final_masked_max_abs_diff"), r.get("tp_vs_slimc_max_abs_diff")
        L.append(f"| {r['model']} | {n(r.get('params_dense'))} | {n(r.get('params_tp'))} | {n(r.get('params_slimc'))} | "
                 f"{n(r.get('flops_tp'))} | {n(r.get('flops_slimc'))} | "
                 f"{'–' if d1 is None else f'{d1:.2g}'} | {'–' if d2 is None else f'{d2:.2g}'} "
                 f"({'–' if d3 is None else f'{d3:.2g}'}) | {'–' if d4 is None else f'{d4:.2g}'} | {tps} | "
                 f"{'–' if r.get('slimc_compile_s') is None else format(r['slimc_compile_s'], '.2f')} | "
                 f"{ms(r, 'masked')} | {ms(r, 'torch_pruning')} | "
                 f"{ms(r, 'slimc')} | {'; '.join(r['errors'])} |")
    return "\n".join(L) + "\n"


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--models", default=DEFAULT_MODELS)
    ap.add_argument("--ratio", type=float, default=0.5)
    ap.add_argument("--batch", type=int, default=64, help="latency batch size (0: no latency)")
    ap.add_argument("--min-time", type=float, default=0.5)
    ap.add_argument("--min-repeats", type=int, default=3)
    ap.add_argument("--wait-idle", type=float, default=60.0)
    ap.add_argument("--out", default=str(HERE / "results"))
    ap.add_argument("--stem", default="torch_pruning_compare_cpu")
    a = ap.parse_args(argv)
    rows = [compare(name, a) for name in _csv(a.models)]
    doc = {"schema": "slimc-tp-compare/1",
           "written": _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds"),
           "machine": machine_info(), "torch_pruning": getattr(tp, "__version__", "?"),
           "config": {"models": _csv(a.models), "ratio": a.ratio, "batch": a.batch, "min_time_s": a.min_time},
           "rows": rows}
    out = Path(a.out)
    write_text(out / f"{a.stem}.json", json.dumps(doc, indent=1, default=str) + "\n")
    write_text(out / f"{a.stem}.md", to_markdown(doc))
    print(to_markdown(doc))
    return 0


if __name__ == "__main__":
    sys.exit(main())
