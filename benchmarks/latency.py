#!/usr/bin/env python
"""Masked vs physically slim latency of the zoo models (torch eager and onnxruntime).

Every coupled filter group is pruned 50 % by L1 norm (``slimc.prune.group_masks``; on
the transformers: half the attention heads and half of every other group), the model is
compiled with ``slimc.compile`` (verified), and the original / masked / slim models are
timed with ``slimc.bench.bench`` at the requested batch sizes.  The CIFAR nets (and the
ViT) use input ``randn(B, 3, 32, 32)``; B = 64 is the input of the published
ModelSpeedup tables (see ../shared/REFERENCES.md). The token models take B × 16 ids.

    python benchmarks/latency.py                      # quick CPU run (minutes of compute on 2 idle cores)
    python benchmarks/latency.py --full               # batch 1,8,64, original too, longer timing
    python benchmarks/latency.py --device cuda        # + CUDA graphs, writes latency_cuda.*
    python benchmarks/latency.py --models vgg16 --batch 64 --out /tmp/x
    python benchmarks/latency.py --models transformers --stem latency_cpu_transformers

Writes <out>/<stem>.json, .md and .png (stem: latency_<device>[_<dtype>][_cl]).
"""
from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent

import torch

import slimc
from slimc import zoo
from slimc.bench import bench, to_markdown, wait_for_quiet_cpu, write_outputs
from slimc.errors import describe
from slimc.prune import group_masks

DEFAULT_MODELS = "vgg16,resnet18,resnet50,mobilenetv2,densenet_small,shufflenetv2_small"
TRANSFORMERS = "vit_small,bert_small,gpt_small,llama_small"  # --models transformers (zoo family "bench")

# Published numbers (shared/REFERENCES.md), shown beside ours.
PUBLISHED = """\
## Published numbers, for comparison

ModelSpeedup docs, VGG-style CIFAR-10 net, one V100, input `randn(64, 3, 32, 32)`,
seconds per batch, **no warm-up and no CUDA synchronize** in their loop (ours has both;
CPU timings were not published there):

| pruner | masked | slim | speedup |
|---|---:|---:|---:|
| Slim (BN γ) | 0.01197 | 0.005107 | 2.34× |
| L1 filter | 0.01026 | 0.003677 | 2.79× |
| APoZ | 0.01389 | 0.004208 | 3.30× |

Torch-Pruning 1.6 physically pruning the same kind of L1 50 % groups, a 2-core CPU,
torch eager, 2 threads (ResNet-50 and MobileNetV2 there are the ImageNet models at
1×3×224×224; ours are the CIFAR variants at 32×32, so only VGG-16 and ResNet-18 are
like for like):

| model | input | masked → slim | speedup | MACs ratio |
|---|---|---|---:|---:|
| VGG-16 (CIFAR) | 64×3×32×32 | 336.5 → 97.8 ms | 3.44× | 3.96× |
| ResNet-18 | 64×3×32×32 | 63.6 → 18.3 ms | 3.47× | 3.74× |
| ResNet-50 | 1×3×224×224 | 96.3 → 37.0 ms | 2.60× | 3.86× |
| MobileNetV2 | 1×3×224×224 | 25.6 → 14.6 ms | 1.75× | 3.45× |

The published ResNet-18 row is hard to square with its VGG-16 row: 64 × 557 M MACs in
63.6 ms is ~0.56 TMAC/s on 2 cores, 9× the rate of the VGG-16 row (64 × 314 M MACs in
336.5 ms). It was most likely measured on the ImageNet-style ResNet-18 (stride-4 stem,
~37 M MACs at 32×32); ours is the CIFAR ResNet-18 (557 M MACs per sample).

Same on an H100 (fp32, cuDNN benchmark, median of 50+): eager at small inputs is
launch-bound (VGG-16 b=64: 1.36 → 1.66 ms eager, 0.58 → 0.36 ms with CUDA graphs).
"""

# (model, batch) -> (published masked ms, slim ms) for the like-for-like CPU rows
PUBLISHED_CPU = {("vgg16", 64): (336.5, 97.8, 3.44), ("resnet18", 64): (63.6, 18.3, 3.47)}


def beside_published(results: list[dict]) -> str:
    """Our torch-eager CPU numbers next to the published 2-core CPU rows."""
    lines = []
    for r in results:
        for e in r.get("speedup", []):
            pub = PUBLISHED_CPU.get((r["model"], e["batch"]))
            if pub is None or e["runtime"] != "torch-eager" or e["device"] != "cpu":
                continue
            lines.append(
                f"| {r['model']} | {e['batch']}×3×32×32 | {pub[0]} → {pub[1]} ms ({pub[2]:.2f}×) | "
                f"{e['masked_ms']:.1f} → {e['slim_ms']:.1f} ms ({e['speedup']:.2f}×) | "
                f"{e['flops_ratio']:.2f}× |")
    if not lines:
        return ""
    return "\n".join([
        "## Ours beside the published CPU rows (torch eager, 2-core CPU)", "",
        "| model | input | published masked → slim | ours masked → slim | our FLOPs ratio |",
        "|---|---|---|---|---:|", *lines, ""])



def _csv(s: str) -> list[str]:
    return [x.strip() for x in s.split(",") if x.strip()]


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--models", default=DEFAULT_MODELS,
                    help=f"zoo models (default {DEFAULT_MODELS}; \"transformers\": {TRANSFORMERS})")
    ap.add_argument("--batch", default=None, help="batch sizes, e.g. 1,8,64 (default 1,64; --full 1,8,64)")
    ap.add_argument("--device", default="cpu", choices=["cpu", "cuda"])
    ap.add_argument("--runtimes", default="torch,ort", help="torch,ort")
    ap.add_argument("--variants", default=None,
                    help="original,masked,slim (default masked,slim; --full all three)")
    ap.add_argument("--ratio", type=float, default=0.5, help="fraction of every filter group masked")
    ap.add_argument("--criterion", default="l1", choices=["l1", "l2", "fpgm", "slim", "random"])
    ap.add_argument("--threads", type=int, default=None, help="intra-op threads (default: physical cores)")
    ap.add_argument("--dtype", default="fp32", choices=["fp32", "bf16", "fp16"])
    ap.add_argument("--channels-last", action="store_true")
    ap.add_argument("--no-cuda-graphs", action="store_true", help="on cuda: eager only")
    ap.add_argument("--min-time", type=float, default=None,
                    help="seconds of timed calls per configuration (default 0.5; --full 2)")
    ap.add_argument("--warmup", type=int, default=None, help="warm-up calls (default 1; --full 3)")
    ap.add_argument("--min-repeats", type=int, default=None, help="at least this many timed calls (default 3; --full 10)")
    ap.add_argument("--repeats", type=int, default=None, help="exactly this many timed calls (default: adaptive)")
    ap.add_argument("--full", action="store_true", help="the slower, more thorough configuration")
    ap.add_argument("--out", default=str(HERE / "results"), help="output folder (default benchmarks/results)")
    ap.add_argument("--stem", default=None, help="output file stem (default latency_<device>[...])")
    ap.add_argument("--wait-idle", type=float, default=120.0,
                    help="CPU: wait up to this many seconds for other processes to go quiet (0: don't)")
    ap.add_argument("--retries", type=int, default=2,
                    help="CPU: re-measure a configuration up to this many times when other processes "
                         "used more than 10%% of the CPUs during it (the least contended one is kept)")
    ap.add_argument("--from-json", default=None,
                    help="measure nothing: re-render the .md/.png (and .json) from a results JSON")
    ap.add_argument("--no-onnx-check", action="store_true", help="skip the onnxruntime check of each export")
    a = ap.parse_args(argv)
    a.batch = [int(b) for b in _csv(a.batch or ("1,8,64" if a.full else "1,64"))]
    a.variants = _csv(a.variants or ("original,masked,slim" if a.full else "masked,slim"))
    a.min_time = a.min_time if a.min_time is not None else (2.0 if a.full else 0.5)
    a.warmup = a.warmup if a.warmup is not None else (3 if a.full else 1)
    a.min_repeats = a.min_repeats if a.min_repeats is not None else (10 if a.full else 3)
    if a.stem is None:
        a.stem = f"latency_{a.device}" + ("" if a.dtype == "fp32" else f"_{a.dtype}") + ("_cl" if a.channels_last else "")
    return a


def render(results: list[dict], a: argparse.Namespace) -> dict[str, str]:
    """Write <out>/<stem>.{json,md,png} from bench() results (also used by --from-json)."""
    run = results[0].get("run") or {}
    skipped = results[0].get("skipped_models") or []
    extra = []
    if run:
        extra.append(f"Total wall time of this run: {run.get('wall_s', 0):.0f} s, including waits for a quiet "
                     f"CPU (`python benchmarks/latency.py {run.get('argv', '')}`).\n")
    if skipped:
        extra.append("## Skipped\n\n" + "\n".join(f"- {s['model']}: {s['error']}" for s in skipped) + "\n")
    extra += [beside_published(results), PUBLISHED]
    device = results[0].get("config", {}).get("device", a.device)
    return write_outputs(results, a.out, a.stem, title=f"slimc latency, {device}: masked vs slim",
                         extra_md="\n".join(x for x in extra if x), log=print)


def main(argv: list[str] | None = None) -> int:
    a = parse_args(argv)
    if a.from_json:
        doc = json.loads(Path(a.from_json).read_text())
        paths = render(doc["results"], a)
        print(f"re-rendered {', '.join(paths.values())} from {a.from_json}")
        return 0
    if a.device == "cuda" and not torch.cuda.is_available():
        print("skip: --device cuda but CUDA is not available")
        return 0
    t_start = time.perf_counter()
    results, skipped = [], []
    pruner = f"{a.criterion.upper()} filter {a.ratio:.0%}"
    for name in _csv(a.models.replace("transformers", TRANSFORMERS)):
        if name not in zoo.ZOO:
            print(f"unknown zoo model {name!r}; available: {', '.join(zoo.names())}", file=sys.stderr)
            return 2
        model = zoo.build(name)
        x = zoo.example_inputs(name, 2)
        busy = None
        if a.device == "cpu" and a.wait_idle > 0:
            busy = wait_for_quiet_cpu(a.wait_idle, log=print)
        t0 = time.perf_counter()
        try:
            masks = group_masks(model, x, ratio=a.ratio, criterion=a.criterion)
            res = slimc.compile(model, masks, x, name=name)
        except Exception as e:  # noqa: BLE001 - report and go on with the other models
            msg = describe(e)
            print(f"[{name}] slimc.compile failed, skipped: {msg}")
            skipped.append({"model": name, "error": msg})
            continue
        print(f"[{name}] masks + compile {time.perf_counter() - t0:.1f} s; params "
              f"{res.report['params']['before']:,} → {res.report['params']['after']:,}")
        r = bench(
            model, masks, x, slim=res, name=name, pruner=pruner,
            batches=a.batch, device=a.device, runtimes=_csv(a.runtimes), variants=a.variants,
            threads=a.threads, dtype=a.dtype, channels_last=a.channels_last,
            cuda_graphs=False if a.no_cuda_graphs else None,
            min_time_s=a.min_time, warmup=a.warmup, repeats=a.repeats, min_repeats=a.min_repeats,
            onnx_check=not a.no_onnx_check, retries=a.retries if a.device == "cpu" else 0,
            wait_idle_s=a.wait_idle, log=print,
        )
        r["other_cpu_busy_at_start"] = busy
        results.append(r)
        print(to_markdown(r))
        # after every model, so that an interrupted run leaves the models done so far
        write_outputs(results, a.out, a.stem, title=f"slimc latency, {a.device}: masked vs slim (partial run)",
                      extra_md=PUBLISHED, log=print)
    if not results:
        print("no model could be benchmarked")
        return 1
    run = {"argv": " ".join(sys.argv[1:] if argv is None else argv), "wall_s": round(time.perf_counter() - t_start)}
    for r in results:
        r["skipped_models"] = skipped
        r["run"] = run
    paths = render(results, a)
    print(f"wrote {', '.join(paths.values())} in {time.perf_counter() - t_start:.0f} s")
    return 0


if __name__ == "__main__":
    sys.exit(main())
