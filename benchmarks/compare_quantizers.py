"""Compare quantizers — float, Naive 8, static 8 per-tensor and per-channel, QAT 8, DoReFa 4, BNN —
on real data (scikit-learn's digits), on the dense and the slim (50 %) network, in onnxruntime:
test accuracy, file size, measured latency.

    python benchmarks/compare_quantizers.py                    # digits_vgg, digits_resnet; 1 seed
    python benchmarks/compare_quantizers.py --seeds 2 --quantizers float,static8_pc,qat8

Writes ``<out>/records/<model>__<quantizer>__<target>__s<seed>.json`` (the pruner comparison's
layout with a ``quantizer`` field: :mod:`slimc.compare.quant`), ``<out>/compare_quantizers.md``
(tables, machine, command) and ``<out>/run.json``. Points whose record exists are skipped
(``--fresh`` to rerun); dense and pruned networks are cached in ``<out>/dense/``, ``<out>/slim/``.
"""
from __future__ import annotations

import argparse
import json
import shlex
import shutil
import sys
import time
from collections import defaultdict
from pathlib import Path

HERE = Path(__file__).resolve().parent


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    from slimc.compare.quant import QUANTIZERS, TARGETS

    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--models", default="digits_vgg,digits_resnet")
    ap.add_argument("--quantizers", default=",".join(QUANTIZERS), help=f"default {','.join(QUANTIZERS)}")
    ap.add_argument("--targets", default=",".join(TARGETS), help="dense, slim=0.5 (default both)")
    ap.add_argument("--seeds", type=int, default=1)
    ap.add_argument("--train-steps", type=int, default=400, help="SGD steps of dense training (default 400)")
    ap.add_argument("--finetune-steps", type=int, default=100,
                    help="fine-tuning after pruning, and the QAT-family's training steps (default 100)")
    ap.add_argument("--latency-batch", type=int, default=32)
    ap.add_argument("--out", default=str(HERE / "results" / "compare_quantizers"))
    ap.add_argument("--fresh", action="store_true", help="delete earlier records (and cached networks) first")
    return ap.parse_args(argv)


def markdown(records: list[dict]) -> list[str]:
    """Per model: accuracy (int8) and its change against the float network, file size and latency
    ratios, dense and slim side by side (mean over seeds)."""
    import numpy as np

    from slimc.compare.quant import QUANTIZERS

    groups: dict[tuple, list[dict]] = defaultdict(list)
    for r in records:
        groups[(r["model"], r["quantizer"], r["target"])].append(r)
    lines: list[str] = []
    for model in sorted({r["model"] for r in records}):
        targets = [t for t in ("dense", "slim=0.5") if any(k[0] == model and k[2] == t for k in groups)]
        head = "| quantizer | " + " | ".join(f"{t}: acc. % (Δ vs float) | {t}: file | {t}: latency"
                                               for t in targets) + " |"
        lines += [f"### {model}", "", "Test accuracy of the int8 file in onnxruntime (Δ: against the same network "
                  "in float, points), file size and latency (batch 32, 1 thread) as fractions of the float file's; weights-only "
                  "files (Naive, DoReFa, BNN) in brackets: with `session.disable_quant_qdq=1`, onnxruntime "
                  "dequantizes their weights once at load instead of at every run:",
                  "", head, "|---|" + "---:|---:|---:|" * len(targets)]
        for qname, (_, _, label) in QUANTIZERS.items():
            cells = []
            for t in targets:
                rs = groups.get((model, qname, t))
                if not rs:
                    cells += ["–", "–", "–"]
                    continue
                acc = np.mean([r["performance"]["quantized"] for r in rs]) * 100
                base = np.mean([r["performance"]["pruned"] for r in rs]) * 100
                lat = f"{np.mean([r['latency_ms']['ratio'] for r in rs]):.2f}×"
                if rs[0]["latency_ms"].get("ratio_dequantized_at_load") is not None:
                    lat += f" ({np.mean([r['latency_ms']['ratio_dequantized_at_load'] for r in rs]):.2f}×)"
                cells += [f"{acc:.1f} ({acc - base:+.1f})",
                          f"{np.mean([r['size_bytes']['ratio'] for r in rs]):.2f}×", lat]
            lines.append(f"| {label} | " + " | ".join(cells) + " |")
        dense = [r for r in records if r["model"] == model and r["target"] == "dense"]
        slim = [r for r in records if r["model"] == model and r["target"] != "dense"]
        if dense:
            lines += ["", f"Dense float: {np.mean([r['performance']['original'] for r in dense]) * 100:.1f} %, "
                      f"{dense[0]['params']['original']:,} params"
                      + (f"; slim (50 %, fine-tuned) float: {np.mean([r['performance']['pruned'] for r in slim]) * 100:.1f} "
                         f"%, {slim[0]['params']['slim']:,} params" if slim else "")]
        lines.append("")
    return lines


def main(argv: list[str] | None = None) -> int:
    from slimc.bench.machine import machine_info
    from slimc.bench.report import machine_markdown
    from slimc.compare.grid import Settings, dataset, load_records, pick
    from slimc.compare.nets import NETS
    from slimc.compare.quant import QUANTIZERS, TARGETS, QPoint, run_quant_point
    from slimc.errors import SlimcError
    from slimc.progress import plain_lines, progress

    plain_lines()
    a = parse_args(argv)
    try:
        models = pick(a.models, [n for n, v in NETS.items() if v[2] == "digits"], "model")
        quantizers = pick(a.quantizers, QUANTIZERS, "quantizer")
        targets = pick(a.targets, TARGETS, "target")
        out = Path(a.out)
        if a.fresh:
            for sub in ("records", "dense", "slim"):
                shutil.rmtree(out / sub, ignore_errors=True)
        s = Settings(out=str(out), train_steps=a.train_steps, finetune_steps=a.finetune_steps,
                     latency_batch=a.latency_batch)
        dataset(s)
        points = [QPoint(m, q, t, seed) for m in models for t in targets for seed in range(a.seeds) for q in quantizers]
        todo = [p for p in points if not (out / "records" / f"{p.stem}.json").exists()]
        print(f"{len(points)} runs ({len(points) - len(todo)} done before)", file=sys.stderr)
        start = time.perf_counter()
        for p in progress(todo, "quantizer runs"):
            r = run_quant_point(p, s)
            perf = r["performance"]
            print(f"{p.stem}: float {perf['pruned']:.3f} → int8 {perf['quantized']:.3f}, file "
                  f"{r['size_bytes']['ratio']:.2f}×, latency {r['latency_ms']['ratio']:.2f}×", file=sys.stderr, flush=True)
        wall = time.perf_counter() - start
    except SlimcError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    records = [r for r in load_records(out) if "quantizer" in r]
    command = ("python benchmarks/compare_quantizers.py " + " ".join(shlex.quote(x) for x in (argv or sys.argv[1:]))).strip()
    log = out / "run.json"
    runs = json.loads(log.read_text())["invocations"] if log.exists() and not a.fresh else []
    runs.append({"command": command, "wall_s": round(wall, 1), "points": len(points), "ran": len(todo),
                 "settings": s.to_dict(), "machine": machine_info()})
    log.write_text(json.dumps({"invocations": runs}, indent=1) + "\n")
    md = ["# Quantizer comparison (digits)", "", f"{len(records)} runs, by:", ""]
    md += [f"- `{r['command']}` — {r['ran']} runs in {r['wall_s'] / 60:.1f} min" for r in runs]
    md += ["", *markdown(records), "## Machine", "", machine_markdown(runs[-1]["machine"]), ""]
    (out / "compare_quantizers.md").write_text("\n".join(md))
    print(f"wrote {len(records)} records, {out / 'compare_quantizers.md'} ({wall / 60:.1f} min)", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
