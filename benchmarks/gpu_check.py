#!/usr/bin/env python
"""The GPU checks, as one short run (`make gpu-check`; a few minutes on one H200):

1. the tests marked ``gpu`` (``pytest -m gpu``: CUDA timing, CUDA graphs, bench on CUDA);
2. ``benchmarks/latency.py --device cuda``: masked vs slim in torch eager and replayed
   from CUDA graphs (a configuration whose graph time is below 0.7× its eager time is
   flagged launch-bound), onnxruntime on CUDA where onnxruntime-gpu is installed; the zoo
   CNNs at CIFAR shapes and the benchmark-size transformers, batch 1 and 64 →
   ``benchmarks/results/latency_cuda.{json,md,png}``; the docs' latency page shows its table
   (``readme_block``, called by docs/hooks.py when the site is built).

Without a CUDA device it prints one line, ``no CUDA device: …``, and exits 2.

    python benchmarks/gpu_check.py                     # both steps
    python benchmarks/gpu_check.py --skip-tests --min-time 1
"""
from __future__ import annotations

import argparse
import subprocess
import sys
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent
RESULTS = HERE / "results"
NO_RESULTS = ("No CUDA results are committed yet: `make gpu-check` on a machine with a GPU writes "
              "`benchmarks/results/latency_cuda.{json,md,png}` and puts their table here.")

MODELS = "vgg16,resnet18,resnet50,mobilenetv2,densenet_small,shufflenetv2_small,vit_small,bert_small,gpt_small,llama_small"


def no_cuda_reason() -> str | None:
    """Why this machine cannot run the GPU checks (None: it can)."""
    try:
        import torch
    except ImportError:
        return "no CUDA device: torch is not installed in this Python"
    if not torch.cuda.is_available():
        build = f"CUDA {torch.version.cuda}" if torch.version.cuda else "a CPU-only build"
        return (f"no CUDA device: torch {torch.__version__} ({build}) sees no GPU; "
                "run make gpu-check on a machine with one")
    return None


def readme_block(results_md: Path) -> str:
    """What the docs' latency page shows for CUDA: the masked vs slim table of
    ``results_md`` (with the machine line), or a line saying there are no CUDA results."""
    if not results_md.is_file():
        return NO_RESULTS
    lines = results_md.read_text().splitlines()
    machine = next((ln for ln in lines if ln.startswith("Machine: ")), "")
    start = next(i for i, ln in enumerate(lines) if ln.startswith("| model | pruner | runtime"))
    end = next((i for i in range(start, len(lines)) if not lines[i].startswith("|")), len(lines))
    return "\n".join([f"{machine} Full tables: [{results_md.name}](benchmarks/results/{results_md.name}).", "",
                      *lines[start:end], "", f"![latency on CUDA](benchmarks/results/{results_md.stem}.png)"])


def _step(title: str, cmd: list[str], timeout_s: float) -> bool:
    print(f"== {title}: {' '.join(cmd)}", flush=True)
    t0 = time.perf_counter()
    try:
        ok = subprocess.run(cmd, cwd=ROOT, timeout=timeout_s).returncode == 0
    except subprocess.TimeoutExpired:
        print(f"== {title}: stopped after {timeout_s:.0f} s")
        return False
    print(f"== {title}: {'ok' if ok else 'FAILED'} in {time.perf_counter() - t0:.0f} s", flush=True)
    return ok


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--skip-tests", action="store_true", help="only the latency table")
    ap.add_argument("--models", default=MODELS, help=f"zoo models for the latency table (default {MODELS})")
    ap.add_argument("--batch", default="1,64")
    ap.add_argument("--min-time", type=float, default=0.5, help="seconds of timed calls per configuration")
    ap.add_argument("--out", default=str(HERE / "results"))
    ap.add_argument("--stem", default="latency_cuda")
    ap.add_argument("--timeout", type=float, default=480.0, help="seconds each step may take")
    a = ap.parse_args(argv)
    why = no_cuda_reason()
    if why:
        print(why, file=sys.stderr)
        return 2
    ok = True
    if not a.skip_tests:
        ok &= _step("gpu tests", [sys.executable, "-m", "pytest", "-q", "-m", "gpu", "-p", "no:cacheprovider",
                                  "tests"], a.timeout)
    ok &= _step("latency on cuda", [sys.executable, str(HERE / "latency.py"), "--device", "cuda",
                                    "--models", a.models, "--batch", a.batch, "--min-time", str(a.min_time),
                                    "--out", a.out, "--stem", a.stem], a.timeout)
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
