#!/usr/bin/env python
"""int8 in onnxruntime on this CPU: float vs int8, dense vs slim (50 %), and which int8 types
are fast here.

Models (no download, no torchvision): ResNet-50 and MobileNetV2 shaped as torchvision's ImageNet
models (7×7/2 stem + max pool; stride-2 stem, ImageNet strides; 1000 classes) at 224×224,
built from slimc.zoo's blocks; a BERT-base-shaped encoder (transformers' BertModel with its
default config, sequence 128) and a GPT-2-small-shaped decoder (GPT2LMHeadModel, default config,
sequence 128). Slim: every coupled group (heads, FFN, channels) pruned 50 % by L1
(``slimc.prune.group_masks``), compiled and verified. int8: the default method (static QDQ,
per-channel, calibrated on 4 random batches, for the CNNs; dynamic int8 MatMuls for the
transformers) through ``slimc.quantize`` — each file checked as ``slimc quantize`` checks it.

Every timing records how much of the CPUs other processes used meanwhile (``other_cpu_busy``);
the machine, its load and its int8 instruction sets go into the results. On a shared machine
the ratios of medians are indicative only: rerun when it is quiet.

    python benchmarks/quantize_latency.py --types          # u8s8 vs s8s8, ResNet-50 batch 8, 2 threads
    python benchmarks/quantize_latency.py                  # every model, batch 1 and 8
    python benchmarks/quantize_latency.py --models resnet50,mobilenetv2 --batch 8 --repeats 10

Writes benchmarks/results/<stem>.{json,md} (--stem, default quantize_latency; the committed runs:
quantize_latency for the CNNs, quantize_latency_transformers for BERT / GPT-2), or
quantize_types.{json,md} with --types.
"""
from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
import time
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn

HERE = Path(__file__).resolve().parent
MODELS = ("resnet50", "mobilenetv2", "bert_base", "gpt2_small")
IMAGENET_MBV2 = [(1, 16, 1, 1), (6, 24, 2, 2), (6, 32, 3, 2), (6, 64, 4, 2), (6, 96, 3, 1), (6, 160, 3, 2),
                 (6, 320, 1, 1)]


class ImageNetResNet(nn.Module):
    """torchvision's ResNet-50 layout from slimc.zoo's Bottleneck: 7×7/2 stem, 3×3/2 max pool."""

    def __init__(self):
        super().__init__()
        from slimc.zoo.resnet import Bottleneck, ResNet

        base = ResNet(Bottleneck, [3, 4, 6, 3], num_classes=1000)
        self.conv1 = nn.Conv2d(3, 64, 7, 2, 3, bias=False)
        self.bn1, self.maxpool = base.bn1, nn.MaxPool2d(3, 2, 1)
        self.layer1, self.layer2, self.layer3, self.layer4 = base.layer1, base.layer2, base.layer3, base.layer4
        self.fc = base.fc

    def forward(self, x):
        x = self.maxpool(F.relu(self.bn1(self.conv1(x))))
        x = self.layer4(self.layer3(self.layer2(self.layer1(x))))
        return self.fc(torch.flatten(F.adaptive_avg_pool2d(x, 1), 1))


def imagenet_mobilenetv2() -> nn.Module:
    """torchvision's MobileNetV2 layout from slimc.zoo's blocks: stride-2 stem, ImageNet strides."""
    from slimc.zoo.mobilenet import InvertedResidual, MobileNetV2, conv_bn_relu6

    m = MobileNetV2(num_classes=1000)
    layers, cin = [conv_bn_relu6(3, 32, 3, stride=2)], 32
    for t, c, n, s in IMAGENET_MBV2:
        for i in range(n):
            layers.append(InvertedResidual(cin, c, s if i == 0 else 1, t))
            cin = c
    layers.append(conv_bn_relu6(cin, 1280, 1))
    m.features = nn.Sequential(*layers)
    return m


def build(name: str, seq: int = 128):
    """(model in eval mode, example inputs, a random batch maker)."""
    from slimc import zoo

    torch.manual_seed(0)
    if name in ("resnet50", "mobilenetv2"):
        m = ImageNetResNet() if name == "resnet50" else imagenet_mobilenetv2()
        zoo.randomize_bn(m).eval()
        zoo.normalize_scales(m, (torch.randn(2, 3, 224, 224),))
        return m, (torch.randn(1, 3, 224, 224),), lambda b, s: (torch.randn(b, 3, 224, 224,
                                                                              generator=torch.Generator().manual_seed(s)),)
    import transformers as T

    if name == "bert_base":
        m = T.BertModel(T.BertConfig())
    else:
        m = T.GPT2LMHeadModel(T.GPT2Config())
    m.config.use_cache = False
    m.eval()
    vocab = m.config.vocab_size
    # a batch-2 example: torch.export specializes a batch of 1 into the traced transformer
    return m, (torch.randint(0, vocab, (2, seq)),), lambda b, s: (
        torch.randint(0, vocab, (b, seq), generator=torch.Generator().manual_seed(s)),)


def timed(path: str, x: tuple, threads: int, repeats: int) -> dict:
    from slimc.bench.contention import ContentionMeter
    from slimc.bench.ort_timer import time_ort

    with ContentionMeter() as cm:
        t = time_ort(path, x, threads=threads, repeats=repeats, warmup=3)
    return {"median_ms": t.median_ms, "min_ms": t.min_ms, "p90_ms": t.p90_ms, "repeats": t.repeats,
            "other_cpu_busy": cm.other_busy}


def run_model(name: str, batches: list[int], threads: int, repeats: int, say) -> dict:
    import slimc
    from slimc.prune import group_masks
    from slimc.quantize import quantize

    t0 = time.perf_counter()
    model, x, make = build(name)
    calib = [make(8 if name in ("resnet50", "mobilenetv2") else 4, s) for s in range(4)]
    say(f"[{name}] pruning 50 % and compiling")
    masks = group_masks(model, x, 0.5)
    res = slimc.compile(model, masks, x, name=name, user_model=False)
    out: dict = {"model": name, "params": res.report["params"], "flops": res.report["flops"], "rows": [],
                 "files": {}, "checks": {}}
    with tempfile.TemporaryDirectory(prefix="slimc-qbench-") as d:
        for variant, src in (("dense", model), ("slim", res)):
            say(f"[{name}] quantizing the {variant} model")
            q = quantize(src, x, data=calib) if variant == "dense" else quantize(src, data=calib)
            paths = q.save(Path(d) / variant)
            fpath, qpath = Path(d) / variant / f"{q.stem}.onnx", Path(d) / variant / f"{q.stem}.int8.onnx"
            out.setdefault("method", {})[variant] = q.report["method"]
            out["files"][variant] = {"float_bytes": fpath.stat().st_size, "int8_bytes": qpath.stat().st_size}
            out["checks"][variant] = {k: q.report["check"]["outputs"][0].get(k) for k in ("sqnr_db", "cosine")}
            out["checks"][variant]["runtime_int8_ops"] = q.report["runtime_ops"]["int8"]
            for b in batches:
                xb = make(b, 100 + b)
                for precision, path in (("float", fpath), ("int8", qpath)):
                    row = {"variant": variant, "precision": precision, "batch": b,
                           **timed(str(path), xb, threads, repeats)}
                    out["rows"].append(row)
                    say(f"[{name}] {variant} {precision} b={b}: {row['median_ms']:.2f} ms "
                        f"(other processes {row['other_cpu_busy']:.0%})" if row["other_cpu_busy"] is not None else "")
            del paths
    out["wall_s"] = time.perf_counter() - t0
    return out


def ratios(r: dict) -> list[dict]:
    """Per batch: int8 / float (dense), slim int8 speedup over dense float, file ratio."""
    ms = {(x["variant"], x["precision"], x["batch"]): x for x in r["rows"]}
    out = []
    for b in sorted({x["batch"] for x in r["rows"]}):
        df, di, sf, si = (ms.get((v, p, b)) for v, p in (("dense", "float"), ("dense", "int8"), ("slim", "float"),
                                                          ("slim", "int8")))
        if not (df and di and sf and si):
            continue
        out.append({"batch": b, "dense_float_ms": df["median_ms"], "dense_int8_ms": di["median_ms"],
                    "slim_float_ms": sf["median_ms"], "slim_int8_ms": si["median_ms"],
                    "int8_over_float": di["median_ms"] / df["median_ms"],
                    "int8_over_float_min": di["min_ms"] / df["min_ms"],
                    "slim_int8_speedup": df["median_ms"] / si["median_ms"],
                    "other_cpu_busy_max": max((x["other_cpu_busy"] or 0) for x in (df, di, sf, si))})
    return out


def markdown(results: list[dict], machine: dict, command: str) -> str:
    from slimc.bench.report import machine_markdown

    lines = ["# int8 in onnxruntime: float vs int8, dense vs slim (50 %)", "", f"`{command}`", "",
             "| model | method | batch | dense float ms | dense int8 ms | int8 / float | slim float ms | slim int8 ms | "
             "slim int8 speedup over dense float | int8 file / float file (dense) | other CPU load (max) |",
             "|---|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|"]
    for r in results:
        f = r["files"]["dense"]
        for q in ratios(r):
            method = "/".join(dict.fromkeys(r["method"].values()))
            lines.append(f"| {r['model']} | {method} | {q['batch']} | {q['dense_float_ms']:.2f} | "
                         f"{q['dense_int8_ms']:.2f} | {q['int8_over_float']:.2f}× | {q['slim_float_ms']:.2f} | "
                         f"{q['slim_int8_ms']:.2f} | {q['slim_int8_speedup']:.2f}× | "
                         f"{f['int8_bytes'] / f['float_bytes']:.3f} | {q['other_cpu_busy_max']:.0%} |")
    lines += ["", "Checks (int8 vs the float file of the same graph, first output):", ""]
    for r in results:
        for v, c in r["checks"].items():
            lines.append(f"- {r['model']} {v}: SQNR {c['sqnr_db']:.1f} dB, cosine {c['cosine']:.5f}; onnxruntime "
                         f"int8 ops {c['runtime_int8_ops']}")
    lines += ["", "## Machine", "", machine_markdown(machine), ""]
    return "\n".join(lines)


def run_types(threads: int, repeats: int, say) -> dict:
    """u8s8 vs s8s8 static QDQ on ResNet-50 at batch 8 (the measurement behind the defaults)."""
    from slimc.onnx import export_onnx
    from slimc.quantize.host import measure_types

    model, x, make = build("resnet50")
    with tempfile.TemporaryDirectory(prefix="slimc-qtypes-") as d:
        path = os.path.join(d, "float.onnx")
        say("[resnet50] exporting")
        export_onnx(model, x, path)
        calib = [{"input": make(8, s)[0].numpy()} for s in range(4)]
        say("[resnet50] quantizing (u8s8, s8s8) and timing")
        rows = measure_types(path, calib, make(8, 99), threads=threads, repeats=repeats)
    return {"model": "resnet50 (torchvision layout, 224×224)", "batch": 8, "threads": threads, "rows": rows}


def main(argv: list[str] | None = None) -> int:
    from slimc.bench.contention import cpu_busy_fraction
    from slimc.bench.machine import machine_info
    from slimc.progress import plain_lines, say

    plain_lines()
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--models", default=",".join(MODELS), help=f"comma list of {', '.join(MODELS)}")
    ap.add_argument("--batch", default="1,8", help="batch sizes (default 1,8)")
    ap.add_argument("--threads", type=int, default=2, help="onnxruntime intra-op threads (default 2)")
    ap.add_argument("--repeats", type=int, default=10, help="timed calls per measurement (default 10)")
    ap.add_argument("--types", action="store_true", help="only measure u8s8 vs s8s8 (ResNet-50, batch 8)")
    ap.add_argument("--out", default=str(HERE / "results"))
    ap.add_argument("--stem", default="quantize_latency", help="output files <out>/<stem>.json/.md")
    a = ap.parse_args(argv)
    command = "python benchmarks/quantize_latency.py " + " ".join(argv if argv is not None else sys.argv[1:])
    machine = machine_info()
    machine["other_cpu_busy_at_start"] = cpu_busy_fraction(1.0)
    out = Path(a.out)
    out.mkdir(parents=True, exist_ok=True)
    t0 = time.perf_counter()
    if a.types:
        result = {"command": command, "machine": machine, **run_types(a.threads, a.repeats, say)}
        result["wall_s"] = time.perf_counter() - t0
        (out / "quantize_types.json").write_text(json.dumps(result, indent=1) + "\n")
        md = ["# int8 types on this CPU: static QDQ per-channel, ResNet-50 (torchvision layout) at 224, "
              f"batch 8, {a.threads} threads", "", f"`{command}`", "",
              "| activations / weights | median ms | min ms | median / float | min / float | other CPU load |",
              "|---|---:|---:|---:|---:|---:|"]
        md += [f"| {r['types']} | {r['median_ms']:.1f} | {r['min_ms']:.1f} | {r['ratio_to_float']:.2f}× | "
               f"{r['min_ratio_to_float']:.2f}× | {r['other_cpu_busy'] or 0:.0%} |" for r in result["rows"]]
        from slimc.bench.report import machine_markdown

        md += ["", "## Machine", "", machine_markdown(machine), ""]
        (out / "quantize_types.md").write_text("\n".join(md))
        print("\n".join(md))
        return 0
    models = [m.strip() for m in a.models.split(",") if m.strip()]
    bad = [m for m in models if m not in MODELS]
    if bad:
        print(f"error: unknown model '{bad[0]}': use {', '.join(MODELS)}", file=sys.stderr)
        return 2
    batches = [int(b) for b in a.batch.split(",")]
    results = [run_model(m, batches, a.threads, a.repeats, say) for m in models]
    blob = {"command": command, "machine": machine, "threads": a.threads, "repeats": a.repeats,
            "results": results, "ratios": {r["model"]: ratios(r) for r in results},
            "wall_s": time.perf_counter() - t0, "loadavg_1m_end": round(os.getloadavg()[0], 2)}
    (out / f"{a.stem}.json").write_text(json.dumps(blob, indent=1) + "\n")
    md = markdown(results, machine, command)
    (out / f"{a.stem}.md").write_text(md)
    print(md)
    return 0


if __name__ == "__main__":
    sys.exit(main())
