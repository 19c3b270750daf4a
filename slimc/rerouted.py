"""The reference where the masks remove whole experts: the masked original whose routers
give those experts a logit of −∞.

Masks that zero all of an expert's weights and its router row say that the expert does not
exist (:mod:`slimc.propagate.experts`); a zero router row alone would still give it a logit
of 0 and a share of the routing. What the slim model must equal, exactly, is the masked
original with those logits at −∞: softmax gives them 0 and top-k never picks them, which is
softmax and top-k over the experts left. So the check runs the masked original with every
router's logits of the removed experts set to −∞ — at the router's ``F.linear`` call, found
by the identity of its masked weight through a ``TorchFunctionMode`` while the reference
runs — and the slim model (the graph and the user's class alike) must equal it within the
usual tolerance. A router whose weight no ``F.linear`` reads is an error, never a silent
plain-zero reference.
"""
from __future__ import annotations

import contextlib
from typing import Iterator

import numpy as np
import torch
import torch.nn.functional as F
from torch.overrides import TorchFunctionMode

from slimc.errors import VerifyError
from slimc.propagate.experts import expert_routes


class RoutedAway(TorchFunctionMode):
    """While active, ``F.linear`` with one of ``rows``' weight tensors (by identity) returns −∞
    in the columns of the dropped experts; ``seen``: the router names it met."""

    def __init__(self, rows: dict[int, tuple[str, torch.Tensor]]):
        super().__init__()
        self.rows = rows  # id(weight) → (router weight name, bool per expert: dropped)
        self.seen: set[str] = set()

    def __torch_function__(self, func, types, args=(), kwargs=None):
        kwargs = kwargs or {}
        out = func(*args, **kwargs)
        if func is F.linear:
            weight = args[1] if len(args) > 1 else kwargs.get("weight")
            hit = self.rows.get(id(weight))
            if hit is not None and isinstance(out, torch.Tensor) and out.shape[-1] == len(hit[1]):
                self.seen.add(hit[0])
                out = out.masked_fill(hit[1].to(out.device), float("-inf"))
        return out


def router_rows(plan) -> dict[str, np.ndarray]:
    """Router weight name → bool per expert, True where the plan drops it."""
    out = {}
    for r in expert_routes(plan.dg):
        gone = plan.dropped_experts.get(r.experts)
        if gone is not None:
            flags = np.zeros(plan.dg.size[("p", r.router[0], 0)], bool)
            flags[gone] = True
            out[r.router[0]] = flags
    return out


def routed_away(plan):
    """A context factory for :class:`slimc.verify.Reference` (``around``): a masked
    original (:class:`slimc.verify.Masked`) whose routers skip the experts ``plan``
    removes; None where it removes none."""
    rows = router_rows(plan)
    if not rows:
        return None

    @contextlib.contextmanager
    def around(masked) -> Iterator[None]:
        missing = [k for k in rows if k not in masked.params]
        if missing:
            raise VerifyError(f"internal: the router weight '{missing[0]}' has no mask")
        mode = RoutedAway({id(masked.params[k]): (k, torch.from_numpy(v)) for k, v in rows.items()})
        with mode:
            yield
        unseen = sorted(set(rows) - mode.seen)
        if unseen:
            raise VerifyError(f"the check cannot route around the removed experts: the router weight '{unseen[0]}' "
                              "is not read by F.linear in the model's forward (compile with --keep-experts: they "
                              "stay, zero)")

    return around


def experts_report(dg, plan) -> dict:
    """``report["experts"]``: per MoE layer whose experts went, the experts removed and how
    many it had."""
    total = {r.experts: dg.size[("p", r.stacked[0], 0)] for r in expert_routes(dg) if r.stacked}
    return {k: {"removed": v.tolist(), "before": total[k], "after": total[k] - len(v)}
            for k, v in plan.dropped_experts.items()}


__all__ = ["RoutedAway", "experts_report", "routed_away", "router_rows"]
