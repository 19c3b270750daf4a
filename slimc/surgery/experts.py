"""Expert counts of the slim copy, where the plan removed whole experts: every
``num_experts``-like attribute that holds a layer's old count, in the MoE block that lost
them (its router, its experts module, the block), and elsewhere (the model's own
``num_experts``, read by its auxiliary loss) where every MoE layer agrees on the new count.
The config's fields follow in :mod:`.hf` (``num_local_experts``, ``num_experts``)."""
from __future__ import annotations

from torch import nn

from slimc.propagate.experts import expert_routes
from slimc.surgery.sizes import SizeFixes

COUNTS = ("num_experts", "num_local_experts", "n_routed_experts", "num_routed_experts")


def _counts(m: nn.Module):
    for a in COUNTS:
        v = vars(m).get(a)
        if isinstance(v, int) and not isinstance(v, bool):
            yield a, v


def sync_expert_counts(slim: nn.Module, plan, fixes: SizeFixes) -> None:
    news: dict[int, set[int]] = {}
    for r in expert_routes(plan.dg):
        if not r.stacked:
            continue
        old = plan.dg.size[("p", r.stacked[0], 0)]
        new = old - len(plan.dropped_experts.get(r.experts, ()))
        news.setdefault(old, set()).add(new)
        if new == old:
            continue
        block = r.experts.rpartition(".")[0]
        for path, m in slim.get_submodule(block).named_modules(prefix=block):
            for a, v in _counts(m):
                if v == old:
                    fixes.set(m, path, a, new)
    for path, m in slim.named_modules():
        for a, v in _counts(m):
            if (id(m), a) not in fixes.done and len(news.get(v, ())) == 1 and v not in news[v]:
                fixes.set(m, path, a, next(iter(news[v])))


__all__ = ["COUNTS", "sync_expert_counts"]
