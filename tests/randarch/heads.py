"""Attention heads as the generator knows them: which q/k/v rows and o columns go.

An attention layer with ``H`` query heads, ``Hkv`` key/value heads (query head h reads
key/value head ``h // (H / Hkv)``) and head dim ``D``. Its channels are rectangles
(DESIGN.md, *reshapes keep a rectangle*): a head goes whole, or the same head-dim channel
goes in every head. The query·key contraction and the value/output channels are two
head dims that shrink apart. Written from the semantics, not from slimc:

* a query head's output is dead when its q rows, its key/value head's k rows or its v rows
  are all masked (a product: any factor); its channel d is dead where the v row (j, d) is
  masked (the values of every head that shares j);
* **key/value group** j (its query heads and key/value head; one query head each in
  multi-head attention) goes when, for every value channel d, the output channels of its
  heads are all dead or their o columns all masked — then nothing reads its q·k either.
  A key/value head goes only with every query head that shares it (the query heads of a
  shared group go together); with one key/value head (multi-query) the query heads go
  alone: a head goes when its q rows or its o columns are all masked;
* **q·k channel** d goes when every group's q rows (h, d) and k row (j, d) are masked, or
  the group goes (one side masked is not enough: the other side still adds to the scores);
* **value channel** d goes when, in every group, the output channel d is dead or its o
  columns masked.

Where q, k and v are viewed as (3, heads, head_dim) at once (timm), channel (h, d) of the
three is one group with o column (h, d): it goes when its sources are all masked (the
q and k rows feed the scores of every channel of the head, so a masked v row alone does
not take them along) or its o column is; heads and head-dim channels as rectangles.
"""
from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

from .channels import Slice, UserMasks


@dataclass
class AttentionHeads:
    q: tuple[str, int]  # (the Linear making q, the row its first q row is): a fused qkv holds three
    k: tuple[str, int]
    v: tuple[str, int]
    o: str
    heads: int
    kv_heads: int
    head_dim: int
    bias: bool  # q, k, v biases (followers of their rows)
    shared: bool = False  # q, k, v viewed as (3, heads, head_dim) at once: one head dim for all three
    keep: set = field(default_factory=set)  # slices the random masks leave alone (protect)

    @property
    def group(self) -> int:
        return self.heads // self.kv_heads

    def rows(self, which: str, head: int, d: int) -> Slice:
        name, start = getattr(self, which)
        return (f"{name}.weight", 0, start + head * self.head_dim + d)

    def ocol(self, h: int, d: int) -> Slice:
        return (f"{self.o}.weight", 1, h * self.head_dim + d)

    def protect(self, rng: np.random.Generator) -> None:
        """One query head ``h0`` (and its key/value head), one q·k channel and one value
        channel the masks leave alone: no group and no head dim is ever emptied."""
        h0 = int(rng.integers(self.heads))
        j0 = h0 // self.group
        d0, d1 = (int(x) for x in rng.integers(self.head_dim, size=2))
        self.keep = {self.rows("q", h0, d0), self.rows("k", j0, d0), self.rows("v", j0, d1), self.ocol(h0, d1)}

    def removed_slices(self, um: UserMasks) -> set[Slice]:
        H, J, D, g = self.heads, self.kv_heads, self.head_dim, self.group
        mq = np.array([[um.masked(self.rows("q", h, d)) for d in range(D)] for h in range(H)])
        mk = np.array([[um.masked(self.rows("k", j, d)) for d in range(D)] for j in range(J)])
        mv = np.array([[um.masked(self.rows("v", j, d)) for d in range(D)] for j in range(J)])
        mo = np.array([[um.masked(self.ocol(h, d)) for d in range(D)] for h in range(H)])
        kv = np.arange(H) // g  # key/value head of each query head
        if self.shared:  # channel (h, d) of q, k and v is one: it goes when all three rows are masked, or its o column
            gone = (mq & mk & mv) | mo
            heads, qk = gone.all(1), gone.all(0)
            vo = qk
        elif J == 1:  # multi-query: the query heads go one by one
            heads = mq.all(1) | mo.all(1)
            qk = mk[0] & (mq | heads[:, None]).all(0)
            vo = mv[0] | mo.all(0)
        else:
            dead_head = mq.all(1) | mk.all(1)[kv] | mv.all(1)[kv]  # (H,)
            dead_out = dead_head[:, None] | mv.all(0)[None, :] | mv[kv]  # (H, D): head h's output channel d
            vo_group = np.array([[dead_out[kv == j, d].all() or mo[kv == j, d].all() for d in range(D)]
                                 for j in range(J)])  # (J, D)
            groups = vo_group.all(1)
            heads = groups[kv]
            qk_group = np.array([[(mq[kv == j, d].all() and mk[j, d]) or groups[j] for d in range(D)]
                                 for j in range(J)])
            qk = qk_group.all(0)
            vo = vo_group.all(0)
        kv_gone = np.array([heads[kv == j].all() for j in range(J)])
        out: set[Slice] = set()
        for h in range(H):
            for d in range(D):
                if heads[h] or qk[d]:
                    out |= self._row("q", h, d)
                if heads[h] or vo[d]:
                    out.add(self.ocol(h, d))
        for j in range(J):
            for d in range(D):
                if kv_gone[j] or qk[d]:
                    out |= self._row("k", j, d)
                if kv_gone[j] or vo[d]:
                    out |= self._row("v", j, d)
        return out

    def _row(self, which: str, head: int, d: int) -> set[Slice]:
        s = self.rows(which, head, d)
        return {s, (f"{getattr(self, which)[0]}.bias", 0, s[2])} if self.bias else {s}
