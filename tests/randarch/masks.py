"""Random user masks for a drawn model, and the model with masks applied (the test's own
code: params multiplied by 0/1, no slimc helper).

Masks zero whole slices (rows, columns, γ entries, attention heads and head-dim channels)
in ways a pruner does and in ways it does not:

* coupled groups, wholly or but one member (every source of a residual-stream channel,
  every sink of a concat's channel, all but one source: kept);
* random rows and columns of single layers (a residual add's other branch keeps them);
* a following bias along with masked rows, and γ of norms alone (network slimming);
* attention: whole query heads, key/value heads, o columns of heads, the same head-dim
  channel in every head (q·k or v/o), and stray rows.

Slices in the groups :meth:`ChannelIR.protect` picked are never masked.
"""
from __future__ import annotations

import copy
from collections import defaultdict

import numpy as np
import torch
from torch import nn

from .channels import ChannelIR, Slice
from .heads import AttentionHeads


def _subset(rng: np.random.Generator, items: list, at_least: int = 1) -> list:
    if not items:
        return []
    k = int(rng.integers(min(at_least, len(items)), len(items) + 1))
    return [items[i] for i in sorted(rng.choice(len(items), size=k, replace=False))]


def _coupled(rng, ir: ChannelIR, protected: set[int], free) -> list[Slice]:
    """Every source (or sink) slice of a few random groups; sometimes all but one."""
    by_root: dict[int, dict[str, list[Slice]]] = defaultdict(lambda: defaultdict(list))
    for kind, s, e in ir.roles:
        if free(s):
            by_root[ir.root(e)][kind].append(s)
    fixed = protected | {ir.root(b) for b in ir.barriers}
    roots = [r for r in by_root if r not in fixed]
    picked = rng.choice(len(roots), size=min(len(roots), int(rng.integers(0, 5))), replace=False) if roots else []
    out: list[Slice] = []
    for i in picked:
        members = by_root[roots[int(i)]]
        kind = str(rng.choice(["source", "sink"])) if members["sink"] else "source"
        slices = sorted(set(members[kind]))
        if len(slices) > 1 and rng.random() < 0.3:  # all but one: the group must stay
            slices.pop(int(rng.integers(len(slices))))
        out += slices
        if kind == "source" and rng.random() < 0.3:
            out += members["follower"]
    return out


def _per_layer(rng, ir: ChannelIR, free) -> list[Slice]:
    """Random rows or columns of random layers, random γ of random norms."""
    by_dim: dict[tuple[str, int], set[Slice]] = defaultdict(set)
    for kind, s, _ in ir.roles:
        if free(s) and (kind != "follower" or rng.random() < 0.15):
            by_dim[(s[0], s[1])].add(s)
    out: list[Slice] = []
    for key in sorted(by_dim):
        if rng.random() < 0.3:
            picked = _subset(rng, sorted(by_dim[key]))
            out += picked
            name = key[0].rsplit(".", 1)[0]
            if key[1] == 0 and key[0].endswith(".weight") and f"{name}.bias" in ir.shapes and rng.random() < 0.3:
                out += [(f"{name}.bias", 0, s[2]) for s in picked]
    return out


def _attention(rng, a: AttentionHeads) -> list[Slice]:
    H, J, D = a.heads, a.kv_heads, a.head_dim
    out: list[Slice] = []
    for style in _subset(rng, ["heads", "kv", "qk_dims", "vo_dims", "stray"]):
        if style == "heads":  # some query heads: q rows and/or o columns
            for h in _subset(rng, list(range(H))):
                parts = _subset(rng, ["q", "o"])
                out += [a.rows("q", h, d) for d in range(D) if "q" in parts]
                out += [a.ocol(h, d) for d in range(D) if "o" in parts]
        elif style == "kv":  # some key/value heads: k rows and/or v rows
            for j in _subset(rng, list(range(J))):
                out += [a.rows(w, j, d) for w in _subset(rng, ["k", "v"]) for d in range(D)]
        elif style == "qk_dims":  # the same q·k channels in every head, on one side or both
            for d in _subset(rng, list(range(D))):
                sides = _subset(rng, ["q", "k"])
                out += [a.rows(w, h, d) for w in sides for h in range(H if w == "q" else J)]
        elif style == "vo_dims":
            for d in _subset(rng, list(range(D))):
                sides = _subset(rng, ["v", "o"])
                out += [a.rows("v", j, d) for j in range(J) if "v" in sides]
                out += [a.ocol(h, d) for h in range(H) if "o" in sides]
        else:
            for w, n in (("q", H), ("k", J), ("v", J)):
                out += [a.rows(w, int(rng.integers(n)), int(rng.integers(D))) for _ in range(int(rng.integers(0, 3)))]
            out += [a.ocol(int(rng.integers(H)), int(rng.integers(D))) for _ in range(int(rng.integers(0, 3)))]
    return [s for s in out if s not in a.keep]


def draw_masks(rng: np.random.Generator, ir: ChannelIR, protected: set[int]) -> dict[str, torch.Tensor]:
    """Flat ``{param: 0/1 float}`` masks: the param's shape, or compact ``(rows, 1, …)`` /
    ``(1, cols, …)`` where only one dim is masked (pruners write that form)."""
    def free(s: Slice) -> bool:
        r = ir.slice_root(s)
        return r is None or r not in protected

    zero: list[Slice] = _coupled(rng, ir, protected, free) + _per_layer(rng, ir, free)
    for a in ir.heads:
        if rng.random() < 0.7:
            zero += _attention(rng, a)
    by_param: dict[str, dict[int, set[int]]] = defaultdict(lambda: defaultdict(set))
    for fqn, dim, i in zero:
        by_param[fqn][dim].add(i)
    masks: dict[str, torch.Tensor] = {}
    for fqn in sorted(by_param):
        shape = ir.shapes[fqn]
        dims = by_param[fqn]
        compact = len(dims) == 1 and len(shape) > 1 and rng.random() < 0.4
        m = torch.ones(shape)
        for dim, idx in dims.items():
            m.index_fill_(dim, torch.tensor(sorted(idx)), 0.0)
        if compact:
            (dim,) = dims
            m = m.amax(dim=[d for d in range(len(shape)) if d != dim], keepdim=True)
        masks[fqn] = m
    return masks


@torch.no_grad()
def apply_masks(model: nn.Module, masks: dict[str, torch.Tensor]) -> nn.Module:
    """A copy of ``model`` with each parameter multiplied by its (full-shape) mask."""
    out = copy.deepcopy(model)
    for name, p in out.named_parameters():
        if name in masks:
            p.mul_(masks[name].to(p.dtype))
    return out
