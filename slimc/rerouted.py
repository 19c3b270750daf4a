"""The exact reference of ``experts="drop"``: the masked original whose routers give the
dropped experts a logit of −∞.

A masked router row gives its expert a logit of 0: the masked model still routes tokens to
it (adding zero while taking a share of the renormalized top-k weights), so a model without
that expert is not the masked model, and the built-in check measures by how much (the
approximation, reported). What must hold exactly is the model without the dropped experts:
softmax and top-k over the experts left are softmax and top-k over all of them with the
dropped logits at −∞. So the check also runs the masked original with every router's
logits of the dropped experts set to −∞ — at the router's ``F.linear`` call, seen through a
``TorchFunctionMode`` while the reference runs — and the slim model must equal it within
the usual tolerance (the graph and the user's class alike).
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
    """A context factory for :class:`slimc.verify.Reference` (``around``): the masked
    original's routers skip the experts ``plan`` drops; None where it drops none."""
    rows = router_rows(plan)
    if not rows:
        return None

    @contextlib.contextmanager
    def around(masked) -> Iterator[None]:
        missing = [k for k in rows if k not in masked.params]
        if missing:
            raise VerifyError(f"internal: the router weight '{missing[0]}' has no final mask")
        mode = RoutedAway({id(masked.params[k]): (k, torch.from_numpy(v)) for k, v in rows.items()})
        with mode:
            yield
        unseen = sorted(set(rows) - mode.seen)
        if unseen:
            raise VerifyError(f"the check cannot route around the dropped experts: the router weight '{unseen[0]}' "
                              "is not read by F.linear in the model's forward (compile without --approximate-experts)")

    return around


def dropped_report(dg, plan, exact, vs_masked) -> tuple[dict, str]:
    """``report["verify"]["experts"]`` and its note: the experts dropped per layer, the slim
    model against the masked model (approximate: measured) and against the masked model whose
    routers skip them (``exact``, the built-in check)."""
    total = {r.experts: dg.size[("p", r.stacked[0], 0)] for r in expert_routes(dg) if r.stacked}
    dropped = {k: v.tolist() for k, v in plan.dropped_experts.items()}
    rel = vs_masked.max_abs_diff / max(vs_masked.output_scale, 1e-12)
    info = {"dropped": dropped, "experts_before": total,
            "vs_masked": {"max_abs_diff": vs_masked.max_abs_diff, "output_scale": vs_masked.output_scale,
                          "relative": rel, "shapes": vs_masked.shapes},
            "vs_routed_away": {"max_abs_diff": exact.max_abs_diff, "tolerance": exact.tolerance, "ok": exact.ok}}
    n, of = sum(len(v) for v in dropped.values()), sum(total[k] for k in dropped)
    note = (f"--approximate-experts: {n} of {of} experts dropped in {len(dropped)} layer(s) with their router rows; "
            f"approximate: max abs diff {vs_masked.max_abs_diff:.3g} from the masked model ({rel:.2g} of its output "
            f"scale); the model without them (the masked model, its routers skipping them) is matched to "
            f"{exact.max_abs_diff:.3g}")
    return info, note


__all__ = ["RoutedAway", "dropped_report", "routed_away", "router_rows"]
