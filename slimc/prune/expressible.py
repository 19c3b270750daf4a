"""Widths a Hugging Face config can express, measured on the model.

A slim HF model reloads with plain ``from_pretrained`` only where its config can say its
widths (:func:`slimc.surgery.hf.expressible`): one width per kind of layer, a hidden size
its config accepts with its head count (transformers' configs validate a multiple), heads
only where the head size is not ``hidden // heads`` (LLaMA, not GPT-2 or BERT), a hidden
size through LayerNorm never (the exact LayerNorm is another class). Which families of a
model its config can express is not guessed per architecture: each *class* of families
(repeated layers: the same kind, width and layer names up to the block number) is pruned
alone by one unit in every family, on the pruner's own traced graph; the user's class is
made slim from that plan as ``slimc compile`` makes it, and the check run on it. A class
that fails stays whole, with the check's reason; the stream (the channels of the input
embedding, the hidden size) is tried keeping a multiple of the head count, which
transformers' configs validate.

:class:`ConfigFit` then keeps every prune of the pruner to those widths: repeated layers
alike, the classes the config cannot express whole, and the hidden size a multiple of the
number of heads left (:meth:`ConfigFit.adjust`). ``Pruner(expressible=False)`` (``slimc
prune --free-widths``) prunes every family freely; ``slimc.load`` rebuilds such a model
from its layout.
"""
from __future__ import annotations

import math
import re
from dataclasses import dataclass, field

import numpy as np
from torch import nn

from slimc.errors import describe
from slimc.prune.emit import complete_masks
from slimc.prune.space import Family, PruneSpace, alike


class ConfigCheck:
    """Can ``type(model)(slim config)`` build the slim model that removing some units gives?
    The rewrite and the user's-class surgery of ``slimc compile``, on the pruner's traced
    graph and a copy of its model whose weights are on the meta device: a config expresses
    shapes, classes and sizes, so no weight needs slicing (the same answers, a third of the time)."""

    def __init__(self, space: PruneSpace):
        self.space = space
        self._meta: nn.Module | None = None

    def _slim_class(self, units: np.ndarray, real: bool):
        """The user's-class surgery on the slim graph of removing ``units``: on the meta copy, or
        (``real``, or where the copy lacks a traced tensor by its name) on the model itself."""
        from slimc.analysis import fork
        from slimc.passes import RewriteContext, run_pipeline
        from slimc.surgery import build
        from slimc.surgery.structure import skeleton

        space = self.space
        em = complete_masks(space, space.groups_of(units))
        ctx = RewriteContext(em.plan)
        if not real:
            if self._meta is None:
                self._meta = skeleton(space.model)
            try:
                gm, original = fork(space.gm, self._meta), self._meta
            except KeyError:  # a traced tensor the model does not hold by that name: the real weights
                real = True
        if real:
            gm, original = fork(space.gm), space.model
        slim, _ = run_pipeline(gm, ctx, code_from=space.gm)
        return build(original, em.plan, slim, ctx.events)

    def __call__(self, units: np.ndarray) -> tuple[bool | None, str]:
        """(True, ""), (False, why the config cannot express it), or (None, why slimc cannot
        tell: the user's class itself cannot be made slim)."""
        try:
            um = self._slim_class(units, real=False)
            if um.model is None and "meta device" in (um.reason or ""):
                um = self._slim_class(units, real=True)  # a form measured on values (a layer norm's): the pruner's weights
        except Exception as e:  # the rewrite or the surgery of a model slimc does not know
            return None, f"making the slim model failed: {describe(e)}"
        reason = um.reason or "the user's class cannot be made slim"
        if um.model is None:
            if "meta device" in reason:  # (real weights on the meta device too: a plan from shapes)
                return None, reason
            # the class cannot follow these widths (GPT-BigCode's value head size under its one kv_dim)
            return False, f"{type(self.space.model).__name__} cannot be made slim so: {reason}"
        info = um.hf or {}
        return bool(info.get("expressible")), info.get("why_not", "")


def _config_int(model, names: tuple[str, ...]) -> int | None:
    cfg = getattr(model, "config", None)
    for n in names:
        v = getattr(cfg, n, None)
        if isinstance(v, int) and not isinstance(v, bool):
            return v
    return None


def _stream_family(space: PruneSpace) -> int | None:
    """The family of the input embedding's channels (the hidden size), if the model has one."""
    try:
        w = space.model.get_input_embeddings().weight
    except (AttributeError, NotImplementedError):
        return None
    names = {n for n, p in space.model.named_parameters(remove_duplicate=False) if p is w}
    groups = [s.groups for s in space.sources if s.fqn in names and s.dim == 1]
    if not groups:
        return None
    entry = np.isin(space.group_of_entry, np.concatenate(groups))
    fams = np.unique(space.family_of_unit[space.unit_of_entry[entry]])
    return int(fams[0]) if len(fams) == 1 else None


def label(f: Family, stream: int | None) -> str:
    return "the hidden size" if f.index == stream else f"{f.kind} of {re.sub(r'[0-9]+', '#', f.name)}"


@dataclass
class ConfigFit:
    """What the config of ``space.model`` can express (measured by :func:`measure`)."""

    frozen: dict[int, str] = field(default_factory=dict)  # family index → why the config cannot express it
    stream: int | None = None  # the hidden size's family
    stream_multiple: bool = False  # it keeps a multiple of the head count
    heads: dict[int, int] = field(default_factory=dict)  # heads family index → query heads per unit
    heads0: int | None = None  # the config's head count
    ties: list[list[int]] = field(default_factory=list)  # classes one config field sizes together (T5's d_ff)
    notes: list[str] = field(default_factory=list)

    def adjust(self, space: PruneSpace, k: dict[int, int], round_to: int = 1) -> None:
        """Counts per family (already alike across repeated layers) → counts the config expresses."""
        for fi in [fi for fi in k if fi in self.frozen]:
            del k[fi]
        for tie in self.ties:  # one field for encoder and decoder: one count for all of them
            alike(k, tie)
        if self.stream in k and self.stream_multiple:
            n = len(space.families[self.stream])
            left = [q * (len(space.families[fi]) - k.get(fi, 0)) for fi, q in self.heads.items()]
            step = math.lcm(round_to, *(left or [self.heads0 or 1]))
            kept = min(n, -(-(n - k[self.stream]) // step) * step)
            k[self.stream] = n - kept
        for fi in [fi for fi, ki in k.items() if ki <= 0]:
            del k[fi]


def measure(space: PruneSpace, families: list[int], check: ConfigCheck) -> ConfigFit:
    """Try each class of ``families`` alone (one unit per family; the stream one head count of
    channels, as it keeps a multiple of the head count) and record what the config cannot express."""
    from slimc.surgery.sizes import HEADS

    fams = space.families
    fit = ConfigFit(stream=_stream_family(space), heads0=_config_int(space.model, HEADS))
    if fit.heads0:
        fit.heads = {f.index: fit.heads0 // len(f) for f in fams if f.kind == "heads" and fit.heads0 % len(f) == 0}
    failed: dict[tuple, list[list[int]]] = {}
    for cls in space.classes(families):
        f = fams[cls[0]]
        multiple = f.index == fit.stream and fit.heads0 is not None and 1 < fit.heads0 < len(f)
        ok, why = check(f.units[: fit.heads0] if multiple else np.array([fams[fi].units[0] for fi in cls]))
        fit.stream_multiple |= bool(ok) and multiple
        if ok is None:
            fit.notes.append(f"whether {type(space.model.config).__name__} can express pruning {label(f, fit.stream)} "
                             f"is not known ({_per_pattern(why)}): pruned")
        elif not ok:
            fit.frozen.update(dict.fromkeys(cls, why))
            if not multiple:
                failed.setdefault((f.kind, len(f)), []).append(cls)
    _tie(space, check, fit, failed)
    kept: dict[str, list[str]] = {}  # label → why, per class (repeated blocks share a label)
    for cls in space.classes(fi for fi in families if fi in fit.frozen):
        kept.setdefault(label(fams[cls[0]], fit.stream), []).append(_per_pattern(fit.frozen[cls[0]]))
    no_class = f"{type(space.model).__name__} cannot be made slim so"
    for what, whys in kept.items():
        more = f"; {len(whys) - 1} more alike" if len(whys) > 1 else ""
        then = ("the slim model is then the graph (slim.pt), not your class" if whys[0].startswith(no_class)
                else "and slimc.load rebuilds the class")
        fit.notes.append(f"{what} not pruned: {type(space.model.config).__name__} cannot express it ({whys[0]}{more}); "
                         f"--free-widths (expressible=False) prunes it, {then}")
    if fit.stream_multiple:
        fit.notes.append("the hidden size is kept a multiple of the number of heads (transformers' configs "
                         "validate it)")
    return fit


def _per_pattern(why: str) -> str:
    """A reason of one part per layer ('…(encoder.stages.1.layers.0.grn); …(….layers.1.grn)') as
    one part per layer pattern, the layer numbers as '#'."""
    out: list[str] = []
    for part in (re.sub(r"\.\d+(?=[.)\s])", ".#", p) for p in re.split(r"; (?!use )", why)):
        if not any(o.endswith(part) for o in out):  # (the first part may carry a lead-in)
            out.append(part)
    return "; ".join(out)


def _tie(space: PruneSpace, check: ConfigCheck, fit: ConfigFit, failed: dict[tuple, list[list[int]]]) -> None:
    """Classes the config could not express alone, of one kind and width, pruned together: one
    config field may size them all (T5's ``d_ff`` and ``num_heads`` for encoder and decoder)."""
    for classes in failed.values():
        if len(classes) < 2:
            continue
        tie = [fi for cls in classes for fi in cls]
        ok, _ = check(np.array([space.families[fi].units[0] for fi in tie]))
        if ok:
            fit.ties.append(tie)
            for fi in tie:
                del fit.frozen[fi]


__all__ = ["ConfigCheck", "ConfigFit", "measure", "label"]
