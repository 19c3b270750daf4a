#!/usr/bin/env python
"""Does the speedup follow the FLOPs cut? Dense vs slim torchvision CNNs, onnxruntime and eager.

For each model: random weights with randomized BatchNorm, ``slimc.prune.prune(model, x,
ratio=0.5, round_to=R)`` (the default criterion) for every ``--round-to`` R, ``slimc.compile``
(verified: the slim model equals the masked one), FLOPs with torch's FlopCounterMode. Dense
and slim are timed *interleaved* (a few calls of one, then of the other, ``--rounds`` times;
the speedup is the median of the rounds' own ratios, so the VM's slow phases hit both) at
each batch, 224×224, ``--threads`` threads, in onnxruntime (``ORT_ENABLE_ALL``; thread pools
that do not spin, as two sessions alternate) and torch eager. *Efficiency* = speedup ÷ FLOPs cut. The anchor ``mobilenet_v2_w050`` is not pruned:
torchvision's own ``width_mult=0.5`` MobileNetV2 against the full one — what a natively
built model of that size reaches on this machine.

``--layers``: for the two models of lowest onnxruntime efficiency (or ``--layer-models``),
the per-layer view of :mod:`slimc.bench.layers` at batch 8, in both runtimes.

Needs torchvision (not a slimc dependency; see benchmarks/README.md)::

    python benchmarks/latency_vs_flops.py --round-to 1,16 --layers

Writes <out>/latency_vs_flops.{json,md}.
"""
from __future__ import annotations

import argparse
import json
import statistics
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

import slimc
from slimc.atomic import write_text
from slimc.bench import machine_info
from slimc.bench.contention import wait_for_quiet_cpu
from slimc.bench.layers import compare_layers, layers_markdown, ort_layers, torch_layers
from slimc.onnx import export_onnx
from slimc.prune import prune
from slimc.report import count_flops
from slimc.zoo import randomize_bn

HERE = Path(__file__).resolve().parent
MODELS = ("resnet50", "resnext50_32x4d", "regnet_y_400mf", "mobilenet_v2", "efficientnet_b0", "vgg16_bn")
ANCHOR = "mobilenet_v2_w050"
TARGETS = {"resnet50": (0.80, 0.75), "resnext50_32x4d": (0.80, 0.75), "regnet_y_400mf": (0.80, 0.75),
           "vgg16_bn": (0.80, 0.75), "mobilenet_v2": (0.62, 0.70), "efficientnet_b0": (0.62, 0.70)}


def build(name: str, seed: int = 0) -> torch.nn.Module:
    import torchvision

    torch.manual_seed(seed)
    if name == ANCHOR:
        m = torchvision.models.mobilenet_v2(weights=None, width_mult=0.5)
    else:
        m = getattr(torchvision.models, name)(weights=None)
    return randomize_bn(m, seed=seed).eval()


def pair(name: str, round_to: int | str, x: torch.Tensor) -> tuple[torch.nn.Module, torch.nn.Module, dict]:
    """(dense, slim, facts): the anchor's "slim" is the natively half-width model."""
    dense = build("mobilenet_v2" if name == ANCHOR else name)
    if name == ANCHOR:
        return dense, build(ANCHOR), {"max_abs_diff": None}
    t = time.perf_counter()
    masks = prune(dense, (x,), ratio=0.5, round_to=round_to)
    res = slimc.compile(dense, masks, (x,))
    return dense, res.module, {"max_abs_diff": res.report["verify"]["max_abs_diff"],
                               "compile_s": round(time.perf_counter() - t, 2)}


PAUSE_S = 0.05


def _block(call, n: int) -> list[int]:
    """``n`` timed calls (ns), then a pause."""
    out = []
    for _ in range(n):
        t = time.perf_counter_ns()
        call()
        out.append(time.perf_counter_ns() - t)
    time.sleep(PAUSE_S)
    return out


def _interleaved(call_a, call_b, rounds: int, per_round: int) -> dict:
    """Median per-call ms of each, and the median over rounds of the per-round ratio a/b. Between
    the blocks a pause lets the threads of one model's pool stop spinning before the other's run
    (two onnxruntime sessions alternating, each pool spinning after its run: the slim run was 2×
    slower every other round)."""
    for _ in range(3):
        call_a(), call_b()
    ra, rb, ratios = [], [], []
    for _ in range(rounds):
        ta, tb = _block(call_a, per_round), _block(call_b, per_round)
        a, b = statistics.median(ta) / 1e6, statistics.median(tb) / 1e6
        ra.append(a), rb.append(b), ratios.append(a / b)
    return {"dense_ms": statistics.median(ra), "slim_ms": statistics.median(rb), "speedup": statistics.median(ratios),
            "speedup_iqr": [float(np.percentile(ratios, 25)), float(np.percentile(ratios, 75))]}


def _ort_session(path: str, threads: int, spin: bool):
    import onnxruntime as ort

    from slimc.bench.ort_timer import session_options

    so = session_options(threads)
    if not spin:  # (onnxruntime's default: the pool's threads spin a while after a run)
        so.add_session_config_entry("session.intra_op.allow_spinning", "0")
    return ort.InferenceSession(path, sess_options=so, providers=["CPUExecutionProvider"])


def time_pair(dense, slim, paths: dict, batch: int, threads: int, rounds: int, spin: bool = True) -> dict:
    x = torch.randn(batch, 3, 224, 224, generator=torch.Generator().manual_seed(batch))
    per_round = 3 if batch > 1 else 10
    out = {}
    torch.set_num_threads(threads)
    with torch.inference_mode():
        out["eager"] = _interleaved(lambda: dense(x), lambda: slim(x), rounds, per_round)
    sd, ss = (_ort_session(paths[v], threads, spin) for v in ("dense", "slim"))
    feed = {sd.get_inputs()[0].name: x.numpy()}
    out["ort"] = _interleaved(lambda: sd.run(None, feed), lambda: ss.run(None, feed), rounds, per_round)
    return out


def run_model(name: str, round_to: int | str, args, wd: Path) -> dict:
    x1 = torch.randn(1, 3, 224, 224, generator=torch.Generator().manual_seed(0))
    dense, slim, facts = pair(name, round_to, x1)
    fd, fs = count_flops(dense, (x1,)), count_flops(slim, (x1,))
    pd, ps = (sum(p.numel() for p in m.parameters()) for m in (dense, slim))
    paths = {}
    for v, m in (("dense", dense), ("slim", slim)):
        p = wd / f"{name}.r{round_to}.{v}.onnx"
        export_onnx(m, (x1,), p, check=False)
        paths[v] = str(p)
    row = {"model": name, "round_to": round_to, "flops_dense": fd, "flops_slim": fs, "flops_cut": fd / fs,
           "params_dense": pd, "params_slim": ps, **facts, "batches": {}}
    for b in args.batches:
        wait_for_quiet_cpu(args.wait_idle)
        t = time_pair(dense, slim, paths, b, args.threads, args.rounds, spin=not args.no_spin)
        for rt in t.values():
            rt["efficiency"] = rt["speedup"] / row["flops_cut"]
        row["batches"][str(b)] = t
        print(f"{name} round_to={round_to} batch {b}: FLOPs ÷{row['flops_cut']:.2f}, "
              f"ort {t['ort']['speedup']:.2f}× ({t['ort']['efficiency']:.2f}), "
              f"eager {t['eager']['speedup']:.2f}× ({t['eager']['efficiency']:.2f})", flush=True)
    row["_models"] = (dense, slim, paths)
    return row


def layer_view(row: dict, args) -> dict:
    dense, slim, paths = row["_models"]
    x = (torch.randn(8, 3, 224, 224, generator=torch.Generator().manual_seed(8)),)
    wait_for_quiet_cpu(args.wait_idle)
    o = compare_layers(ort_layers(paths["dense"], x, threads=args.threads),
                       ort_layers(paths["slim"], x, threads=args.threads))
    e = compare_layers(torch_layers(dense, x, threads=args.threads), torch_layers(slim, x, threads=args.threads))
    return {"model": row["model"], "round_to": row["round_to"], "ort": o, "eager": e}


def to_markdown(rows: list[dict], layers: list[dict], machine: dict) -> str:
    lines = [f"Machine: {machine.get('cpu_model')}, {machine.get('physical_cores_available')} cores, "
             f"torch {machine.get('torch')}, onnxruntime {machine.get('onnxruntime')}.",
             "", "| model | round to | FLOPs cut | params | batch | ort speedup | ort eff. | eager speedup | eager eff. | "
             "target (ort / eager) |", "|---|---|---|---|---|---|---|---|---|---|"]
    for r in rows:
        for b, t in r["batches"].items():
            tgt = TARGETS.get(r["model"])
            lines.append(f"| {r['model']} | {r['round_to'] if r['model'] != ANCHOR else 'native ×0.5'} | "
                         f"÷{r['flops_cut']:.2f} | {r['params_slim'] / r['params_dense']:.3f} | {b} | "
                         f"{t['ort']['speedup']:.2f}× | {t['ort']['efficiency']:.2f} | {t['eager']['speedup']:.2f}× | "
                         f"{t['eager']['efficiency']:.2f} | {f'{tgt[0]:.2f} / {tgt[1]:.2f}' if tgt else 'anchor'} |")
    for lv in layers:
        for rt in ("ort", "eager"):
            lines += ["", f"### {lv['model']} (round to {lv['round_to']}), batch 8, {rt}", "",
                      layers_markdown(lv[rt], top=12)]
    return "\n".join(lines) + "\n"


def _updated(old: dict, rows: list[dict], layers: list[dict]) -> tuple[list[dict], list[dict]]:
    """The earlier run's rows and per-layer tables with those of this run's models replaced
    in place (the order of the earlier run kept, new models last)."""
    new = {(r["model"], str(r["round_to"])): r for r in rows}
    merged = [new.pop((r["model"], str(r["round_to"])), r) for r in old["rows"]] + list(new.values())
    ran = {r["model"] for r in rows}
    return merged, [lv for lv in old.get("layers", []) if lv["model"] not in ran] + layers


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--models", default=",".join(MODELS + (ANCHOR,)))
    ap.add_argument("--round-to", default="1,auto", help="comma-separated round_to values to compare (default 1,auto)")
    ap.add_argument("--batches", default="1,8")
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--rounds", type=int, default=15)
    ap.add_argument("--layers", action="store_true", help="per-layer tables for the two least efficient models")
    ap.add_argument("--layer-models", default=None, help="models for the per-layer tables (default: worst two)")
    ap.add_argument("--no-spin", action="store_true", help="onnxruntime pools that do not spin after a run")
    ap.add_argument("--wait-idle", type=float, default=60.0)
    ap.add_argument("--out", default=str(HERE / "results"))
    ap.add_argument("--stem", default="latency_vs_flops")
    ap.add_argument("--update", action="store_true",
                    help="replace only the rows (and per-layer tables) of the models run in <stem>.json")
    args = ap.parse_args()
    args.batches = [int(b) for b in args.batches.split(",")]
    rounds_to = [r if r == "auto" else int(r) for r in args.round_to.split(",")]
    rows = []
    with tempfile.TemporaryDirectory(prefix="slimc-lvf-") as td:
        for name in args.models.split(","):
            for r in ([1] if name == ANCHOR else rounds_to):
                rows.append(run_model(name, r, args, Path(td)))
        layers = []
        if args.layers:
            pick = args.layer_models.split(",") if args.layer_models else [
                r["model"] for r in sorted((r for r in rows if r["model"] != ANCHOR),
                                           key=lambda r: r["batches"]["8"]["ort"]["efficiency"])][:2]
            for r in rows:
                if r["model"] in pick and r["round_to"] == rounds_to[-1]:
                    layers.append(layer_view(r, args))
    for r in rows:
        r.pop("_models")
    machine = machine_info()
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    if args.update and (out / f"{args.stem}.json").exists():
        rows, layers = _updated(json.loads((out / f"{args.stem}.json").read_text()), rows, layers)
    write_text(out / f"{args.stem}.json", json.dumps({"machine": machine, "rows": rows, "layers": layers},
                                                     indent=1, default=str))
    md = to_markdown(rows, layers, machine)
    write_text(out / f"{args.stem}.md", md)
    print(md)


if __name__ == "__main__":
    main()
