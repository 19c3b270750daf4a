#!/usr/bin/env python
"""Every pruner, 50 %, then compile, on torchvision CNNs the tests do not build.

BatchNorm statistics and affine parameters are randomized (fresh ones are the identity
and would hide a BatchNorm β left alive in the masked model). For each model × criterion:
``make_pruner(...).prune()`` (data-driven criteria get two calibration batches of random
images with random labels and cross-entropy), ``slimc.compile(verify=False)``, then the
slim model against the model masked with the *pruner's own* masks on fresh inputs
(max |Δ| / max |output|), the parameter ratio, groups compile kept "because coupled"
and the unstructured zeros left (Level).

Needs torchvision (not a slimc dependency):

    python benchmarks/prune_torchvision.py --models resnet50,densenet121 --criteria l1,taylor

Writes <out>/prune_torchvision.json and .md.
"""
from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import torch
from torch import nn

import slimc
from slimc.atomic import write_text
from slimc.prune import make_pruner
from slimc.prune.criteria import names
from slimc.verify import masked_copy
from slimc.zoo import randomize_bn

HERE = Path(__file__).resolve().parent

MODELS = ("resnet50", "densenet121", "mobilenet_v2", "efficientnet_b0", "vgg16_bn", "resnext50_32x4d",
          "regnet_y_400mf", "shufflenet_v2_x1_0", "mnasnet1_0", "mobilenet_v3_large", "convnext_tiny")


def run(name: str, criterion: str, size: int) -> dict:
    import torchvision

    torch.manual_seed(0)
    m = randomize_bn(getattr(torchvision.models, name)(weights=None), seed=0).eval()
    g = torch.Generator().manual_seed(1)
    x = (torch.randn(1, 3, size, size, generator=g),)
    data = [(torch.randn(2, 3, size, size, generator=g), torch.randint(0, 1000, (2,), generator=g)) for _ in range(2)]
    t = time.perf_counter()
    pruned = make_pruner(m, x, criterion, ratio=0.5, data=data, loss_fn=nn.functional.cross_entropy).prune()
    t_prune = time.perf_counter() - t
    t = time.perf_counter()
    res = slimc.compile(m, pruned.masks, x, verify=False)
    t_compile = time.perf_counter() - t
    xt = (torch.randn(2, 3, size, size, generator=g),)
    with torch.no_grad():
        a, b = res.module(*xt), masked_copy(m, pruned.masks)(*xt)
    p = res.report["params"]
    return {"model": name, "criterion": criterion, "params": p["before"], "slim_params": p["after"],
            "ratio": p["after"] / p["before"], "rel_diff": float((a - b).abs().max() / b.abs().max()),
            "kept_because_coupled": sum(k["groups"] for k in res.report["kept"]),
            "unstructured_zeros": sum(res.report["unstructured_zeros"].values()),
            "prune_s": round(t_prune, 1), "compile_s": round(t_compile, 1), "notes": pruned.notes}


def markdown(rows: list[dict]) -> str:
    lines = ["| model | criterion | params | slim params | ratio | slim vs masked (rel.) | kept | unstructured zeros |",
             "|---|---|---|---|---|---|---|---|"]
    for r in rows:
        if "error" in r:
            lines.append(f"| {r['model']} | {r['criterion']} | error: {r['error']} | | | | | |")
            continue
        lines.append(f"| {r['model']} | {r['criterion']} | {r['params'] / 1e6:.2f} M | {r['slim_params'] / 1e6:.2f} M | "
                     f"{r['ratio']:.3f} | {r['rel_diff']:.1e} | {r['kept_because_coupled']} | {r['unstructured_zeros']:,} |")
    return "\n".join(lines) + "\n"


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--models", default=",".join(MODELS))
    ap.add_argument("--criteria", default=",".join(names()))
    ap.add_argument("--size", type=int, default=224)
    ap.add_argument("-o", "--out", default=str(HERE / "results"))
    a = ap.parse_args()
    rows = []
    for name in a.models.split(","):
        for crit in a.criteria.split(","):
            try:
                rows.append(run(name, crit, a.size))
            except Exception as e:  # a failure is a row, not the end of the run
                rows.append({"model": name, "criterion": crit, "error": f"{type(e).__name__}: {e}".splitlines()[0][:200]})
            print(json.dumps(rows[-1]), flush=True)
    out = Path(a.out)
    write_text(out / "prune_torchvision.json", json.dumps(rows, indent=2) + "\n")
    write_text(out / "prune_torchvision.md", markdown(rows))
    print(markdown(rows))


if __name__ == "__main__":
    main()
