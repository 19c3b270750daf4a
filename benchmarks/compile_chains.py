"""Synthetic chains for the scaling part of ``compile_time.py``: N conv-BN-ReLU blocks
(``plain``) or N residual basic blocks (``residual``) at tiny width and spatial size;
``slimc.compile(verify=False)`` per size, and the exponent k of time ≈ c · nodes^k."""
from __future__ import annotations

import gc
import time

import numpy as np
import torch
from torch import nn

import slimc
from slimc import zoo
from slimc.prune import group_masks

SCALING_STAGES = ("trace", "graph", "propagate", "rewrite")


class PlainChain(nn.Module):
    """stem conv, then N × (conv3x3 - BN - ReLU), global pool, linear."""

    def __init__(self, n: int, width: int = 8):
        super().__init__()
        self.stem = nn.Conv2d(3, width, 3, padding=1, bias=False)
        self.blocks = nn.Sequential(*[
            nn.Sequential(nn.Conv2d(width, width, 3, padding=1, bias=False), nn.BatchNorm2d(width), nn.ReLU())
            for _ in range(n)
        ])
        self.head = nn.Sequential(nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(width, 10))

    def forward(self, x):
        return self.head(self.blocks(self.stem(x)))


class BasicBlock(nn.Module):
    def __init__(self, width: int):
        super().__init__()
        self.conv1 = nn.Conv2d(width, width, 3, padding=1, bias=False)
        self.bn1 = nn.BatchNorm2d(width)
        self.conv2 = nn.Conv2d(width, width, 3, padding=1, bias=False)
        self.bn2 = nn.BatchNorm2d(width)

    def forward(self, x):
        y = torch.relu(self.bn1(self.conv1(x)))
        return torch.relu(self.bn2(self.conv2(y)) + x)


class ResidualChain(nn.Module):
    """stem conv-BN, then N residual basic blocks sharing one residual stream."""

    def __init__(self, n: int, width: int = 8):
        super().__init__()
        self.stem = nn.Sequential(nn.Conv2d(3, width, 3, padding=1, bias=False), nn.BatchNorm2d(width))
        self.blocks = nn.Sequential(*[BasicBlock(width) for _ in range(n)])
        self.head = nn.Sequential(nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(width, 10))

    def forward(self, x):
        return self.head(self.blocks(self.stem(x)))


SYNTHETIC = {"plain": PlainChain, "residual": ResidualChain}


def synthetic(kind: str, n: int, width: int, size: int) -> tuple[nn.Module, tuple]:
    torch.manual_seed(0)
    m = SYNTHETIC[kind](n, width)
    zoo.randomize_bn(m)
    m.eval()
    x = (torch.randn(1, 3, size, size, generator=torch.Generator().manual_seed(0)),)
    return m, x


# --------------------------------------------------------------------------- measurements


def fit_exponent(nodes: list[int], times: list[float]) -> dict | None:
    """Least-squares fit of log(time) = k·log(nodes) + c; k, c and R²."""
    pts = [(n, t) for n, t in zip(nodes, times) if n > 0 and t and t > 0]
    if len(pts) < 2:
        return None
    lx = np.log([p[0] for p in pts])
    ly = np.log([p[1] for p in pts])
    k, c = np.polyfit(lx, ly, 1)
    pred = k * lx + c
    ss_res = float(((ly - pred) ** 2).sum())
    ss_tot = float(((ly - ly.mean()) ** 2).sum())
    return {"exponent": float(k), "log_c": float(c), "r2": 1.0 - ss_res / ss_tot if ss_tot > 0 else None,
            "points": len(pts)}


def _best_synthetic(runs: list[dict]) -> dict:
    best = {k: min(r[k] for r in runs if k in r) for k in runs[0]}
    best["stages_total"] = sum(best[k] for k in SCALING_STAGES)
    return best


def time_synthetic(kind: str, n: int, width: int, size: int, repeats: int) -> dict:
    model, x = synthetic(kind, n, width, size)
    masks = group_masks(model, x, ratio=0.5, criterion="l1")
    runs = []
    for _ in range(repeats):
        gc.collect()
        t0 = time.perf_counter()
        res = slimc.compile(model, masks, x, verify=False, name=f"{kind}{n}")
        wall = time.perf_counter() - t0
        runs.append({**{k: float(v) for k, v in res.report["times_s"].items()}, "wall": wall})
    return {
        "kind": kind, "blocks": n, "nodes": len(res.plan.dg.gm.graph.nodes),
        "params": res.report["params"], "times_s": _best_synthetic(runs), "runs": runs,
    }


__all__ = ["SCALING_STAGES", "SYNTHETIC", "fit_exponent", "synthetic", "time_synthetic"]
