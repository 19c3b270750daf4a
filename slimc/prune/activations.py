"""Data-driven criteria: statistics of the activations a group's channels carry.

The activations measured are the values the group's *sinks* read — the inputs of the next
convs and linears (after BatchNorm and ReLU in a conv-bn-relu stack, the attention output
before the output projection). Removing the group is exactly removing those channels, so
this is where "how much does this channel matter" is asked. The traced graph runs on the
calibration batches (in eval mode, with the user model's current weights) under an
:class:`fx.Interpreter` that hands the watched values over; a group's statistic pools
every value it appears in.
"""
from __future__ import annotations

from typing import Iterator

import numpy as np
import torch
from torch import fx

from slimc.prune.criteria import Criterion, ScoreContext, criterion
from slimc.prune.data import batch_failed
from slimc.prune.space import PruneSpace

Watch = tuple[int | None, int, np.ndarray]  # (item of a tuple output, channel dim, element ids)


class _Recorder(fx.Interpreter):
    """Runs a GraphModule and collects the outputs of watched nodes."""

    def __init__(self, gm: fx.GraphModule, watch: dict[str, list[Watch]]):
        super().__init__(gm)
        self.watch = watch
        self.seen: list[tuple[torch.Tensor, int, np.ndarray]] = []

    def run_node(self, n: fx.Node):
        out = super().run_node(n)
        for item, dim, ids in self.watch.get(n.name, ()):
            v = out if item is None else out[item]
            if isinstance(v, torch.Tensor) and v.is_floating_point() and v.dim() > dim and v.shape[dim] == len(ids):
                self.seen.append((v, dim, ids))
        return out


def _sink_inputs(space: PruneSpace) -> dict[str, list[Watch]]:
    """The values read by a sink (conv/linear input columns) whose channels a unit holds."""
    dg, grp = space.dg, space.P.group
    in_unit = np.zeros(space.ng, bool)
    in_unit[space.group_of_entry] = True
    nodes = {n.name for n in space.gm.graph.nodes}
    watch: dict[str, list[Watch]] = {}
    done: set = set()
    for _, ln, _a, _b in space.P.links:
        slot = ln.b
        if ln.kind != "sink" or slot in done or slot[0] != "v":
            continue
        done.add(slot)
        name, _, item = slot[1].partition("#")
        ids = dg.ids(slot)
        if name in nodes and in_unit[grp[ids]].any():
            watch.setdefault(name, []).append((int(item) if item else None, slot[2], ids))
    return watch


def _sync(space: PruneSpace, ctx: ScoreContext) -> fx.GraphModule:
    """The traced copy, with the user model's current parameters and buffers."""
    gm = space.gm
    live = {**dict(ctx.model.named_parameters(remove_duplicate=False)),
            **dict(ctx.model.named_buffers(remove_duplicate=False))}
    with torch.no_grad():
        for name, t in [*gm.named_parameters(remove_duplicate=False), *gm.named_buffers(remove_duplicate=False)]:
            src = live.get(name)
            if src is not None and src.shape == t.shape:
                t.copy_(src)
    return gm.eval()


def run_watched(space: PruneSpace, ctx: ScoreContext, inputs: tuple, grad: bool = False):
    """Run the graph on ``inputs``; returns (user-shaped output, watched values)."""
    gm = _sync(space, ctx)
    rec = _Recorder(gm, ctx.extra.setdefault("watch", _sink_inputs(space)))
    codegen = gm.graph._codegen
    try:
        with torch.set_grad_enabled(grad):
            out = rec.run(*codegen.process_inputs(*inputs))
    except Exception as e:
        raise batch_failed(e) from e
    return codegen.process_outputs(out), rec.seen


def _reduce_but(v: torch.Tensor, keep: tuple[int, ...], fn: str = "sum") -> torch.Tensor:
    other = [i for i in range(v.dim()) if i not in keep]
    if not other:
        return v
    return v.sum(dim=other) if fn == "sum" else v.mean(dim=other)


class ActivationCriterion(Criterion):
    """A per-channel statistic pooled over batches: score = Σ num / Σ den per group."""

    needs_data = True

    def per_channel(self, v: torch.Tensor, dim: int) -> tuple[torch.Tensor, torch.Tensor]:
        raise NotImplementedError

    def observations(self, space: PruneSpace, ctx: ScoreContext) -> Iterator[tuple[torch.Tensor, int, np.ndarray]]:
        for batch in ctx.data.batches(f"{self.name}: calibration"):
            _, seen = run_watched(space, ctx, batch.inputs)
            yield from seen

    def group_scores(self, space, ctx):
        num = np.zeros(space.dg.n)
        den = np.zeros(space.dg.n)
        for v, dim, ids in self.observations(space, ctx):
            a, b = self.per_channel(v.detach().float(), dim)
            num[ids] += a.double().numpy()
            den[ids] += b.double().numpy()
        return self.pool(space, num, den)

    def pool(self, space: PruneSpace, num: np.ndarray, den: np.ndarray) -> np.ndarray:
        grp = space.P.group
        n = np.bincount(grp, weights=num, minlength=space.ng)
        d = np.bincount(grp, weights=den, minlength=space.ng)
        with np.errstate(invalid="ignore", divide="ignore"):
            return np.where(d > 0, n / np.where(d > 0, d, 1), np.nan)


@criterion("apoz")
class APoZ(ActivationCriterion):
    """Average percentage of zeros: a channel that is ≤ 0 (zero after ReLU) most of the time
    carries little; score = 1 − APoZ."""

    label = "1 − average percentage of zeros of the activations"
    paper = "Hu et al. 2016, Network Trimming"
    comparable = True  # a fraction, on one scale for every layer

    def per_channel(self, v, dim):
        pos = _reduce_but((v > 0).float(), (dim,))
        return pos, torch.full_like(pos, v.numel() / v.shape[dim])


@criterion("mean_activation")
class MeanActivation(ActivationCriterion):
    label = "mean |activation|"
    paper = "Molchanov et al. 2017, Pruning CNNs for Resource Efficient Inference (mean activation)"

    def per_channel(self, v, dim):
        s = _reduce_but(v.abs(), (dim,))
        return s, torch.full_like(s, v.numel() / v.shape[dim])


@criterion("taylor")
class Taylor(ActivationCriterion):
    """First-order Taylor estimate of the loss change when a channel is zeroed:
    |mean over positions (a · ∂L/∂a)| per sample, averaged over samples, summed over a
    group's values."""

    label = "|activation × gradient| (first-order Taylor)"
    paper = "Molchanov et al. 2017, Pruning CNNs for Resource Efficient Inference"
    needs_loss = True

    def observations(self, space, ctx):
        for batch in ctx.data.batches(f"{self.name}: calibration + gradients"):
            out, seen = run_watched(space, ctx, batch.inputs, grad=True)
            seen = [s for s in seen if s[0].requires_grad]
            loss = ctx.data.loss(out, batch.target)
            grads = torch.autograd.grad(loss, [s[0] for s in seen], allow_unused=True)
            for (v, dim, ids), g in zip(seen, grads):
                if g is not None:
                    yield (v.detach() * g), dim, ids

    def per_channel(self, v, dim):
        if dim == 0 or v.dim() == 1:
            s = _reduce_but(v, (dim,), "mean").abs()
            return s, torch.ones_like(s)
        per_sample = _reduce_but(v, (0, dim), "mean").abs()  # (batch, C) once the other dims go
        return per_sample.sum(0), torch.full((v.shape[dim],), float(v.shape[0]), dtype=v.dtype)

    def pool(self, space, num, den):
        with np.errstate(invalid="ignore", divide="ignore"):
            per_el = np.where(den > 0, num / np.where(den > 0, den, 1), 0.0)
        grp = space.P.group
        seen = np.bincount(grp, weights=(den > 0).astype(float), minlength=space.ng) > 0
        return np.where(seen, np.bincount(grp, weights=per_el, minlength=space.ng), np.nan)
