"""The contract: slim(x) ≈ apply(original, final_masks)(x); final masks ⊇ user masks;
the slim model holds exactly the parameters its kept indices imply."""
from __future__ import annotations

import contextlib
from dataclasses import dataclass, field
from typing import Any, Callable, Iterable, Mapping

import torch
from torch import nn

from slimc.compact import FinalMasks, apply_mask, factors_of, product
from slimc.copying import safe_copy
from slimc.errors import VerifyError, describe
from slimc.inputs import other_shapes, random_like
from slimc.masks import MaskSet
from slimc.modes import eval_mode
from slimc.shapes import shapes_at

TOLERANCE = 1e-5  # max abs diff ≤ TOLERANCE × output scale (fp32)


@dataclass
class Check:
    max_abs_diff: float
    output_scale: float
    tolerance: float
    ok: bool
    vs_user_masked: float | None = None
    shapes: list[str] = field(default_factory=list)  # the input shapes checked
    varied: str = ""  # which dims the second shape changed, or why it changed none
    example: bool = True  # the example inputs themselves were checked (see Reference)

    def to_dict(self) -> dict:
        return dict(self.__dict__)


def flat_outputs(y: Any) -> list[torch.Tensor]:
    """Every tensor of a model output (tensors, tuples, dicts, HF ModelOutputs); cache
    objects and other values are not outputs to compare."""
    if isinstance(y, torch.Tensor):
        return [y]
    if isinstance(y, dict):
        y = list(y.values())
    if isinstance(y, (list, tuple)):
        return [t for v in y for t in flat_outputs(v)]
    if hasattr(y, "to_tuple"):
        return flat_outputs(y.to_tuple())
    return []


def masked_copy(model: nn.Module, masks: MaskSet | Mapping) -> nn.Module:
    ms = masks if isinstance(masks, MaskSet) else MaskSet(masks)
    return ms.apply(safe_copy(model)).eval()


def run_eval(m: nn.Module, x: tuple) -> list[torch.Tensor]:
    """``m``'s output tensors in eval mode, without grad; every module's mode restored."""
    with eval_mode(m), torch.no_grad():
        return flat_outputs(m(*x))


class _Refused(Exception):
    """A shape the traced graph runs but not as it was traced (a size literal in a view)."""


def max_diff(a: list[torch.Tensor], b: list[torch.Tensor]) -> tuple[float, float]:
    if len(a) != len(b):
        raise VerifyError(f"the slim model returns {len(a)} outputs, the reference {len(b)}")
    diff, scale = 0.0, 0.0
    for i, (x, y) in enumerate(zip(a, b)):
        if x.shape != y.shape:
            raise VerifyError(f"output {i} has shape {tuple(x.shape)} in the slim model but {tuple(y.shape)} in the reference")
        if x.is_floating_point():
            diff = max(diff, float((x.float() - y.float()).abs().max()) if x.numel() else 0.0)
            scale = max(scale, float(y.float().abs().max()) if y.numel() else 0.0)
        elif not torch.equal(x, y):
            diff = float("inf")
    return diff, scale


class Masked(nn.Module):
    """``original`` run with masked params, without copying the model (``masks``: any mask
    mapping, compact masks and final-mask factors included)."""

    def __init__(self, original: nn.Module, masks: Mapping):
        super().__init__()
        self.original = original
        params = dict(original.named_parameters(remove_duplicate=False))
        with torch.no_grad():
            self.params = {k: apply_mask(params[k], _factors(masks, k)) for k in masks if k in params}

    def applied(self):
        """A context in which ``original`` itself holds the masked params (what each call of
        ``functional_call`` sets up and undoes: several forwards pay for it once); None
        where this torch does not have it (then each forward of this module sets them up)."""
        try:
            from torch.nn.utils.stateless import _reparametrize_module
        except ImportError:
            return None
        return _reparametrize_module(self.original, self.params, tie_weights=False, strict=False)

    def forward(self, *x):
        return torch.func.functional_call(self.original, self.params, x, tie_weights=False, strict=False)


def _factors(masks: Mapping, fqn: str):
    """``fqn``'s mask factors, as numpy arrays where they are compact CPU masks (final masks)."""
    arrays = masks.arrays(fqn) if isinstance(masks, FinalMasks) else None
    return arrays if arrays is not None else factors_of(masks, fqn)


def shape_text(inputs: tuple) -> str:
    return ", ".join(str(tuple(t.shape)) for t in inputs if isinstance(t, torch.Tensor))


class Reference:
    """The masked original's outputs at the inputs the check uses: random inputs at a second
    shape that changes the batch and every other dim that may vary (``free``: input index →
    dims), each down to about a quarter (cheap to run; see :func:`slimc.inputs.other_size`);
    and the example inputs themselves where their values say more than random ones would
    (:func:`values_matter`: token ids, masks). Where the original refuses the second shape
    (a minimum size, a size literal in its code, a maximum length), the dims shrink less
    (to about half), then fewer dims vary, down to the batch alone, and it says so.

    Why not always the example too: the slim graph was traced at the example's shape, so a
    second shape is the harder case for it (sizes that must follow the input), and a wrong
    channel shows at any shape; for float inputs, random values at the second shape are
    what random values at the example's shape would be, and the check costs one forward of
    the masked original and one of the slim model less."""

    def __init__(self, original: nn.Module, final_masks: dict, inputs: tuple, free: dict[int, list[int]],
                 names: dict[int, dict[int, str]] | None = None, around=None, graph: nn.Module | None = None,
                 reshapes_broken: Callable[[dict[str, Any]], str] | None = None):
        self.module = Masked(original, final_masks)
        # ``reshapes_broken(sizes)``: "" where every view of the traced graph still splits or
        # merges the dims it did at the example (``view(-1, 32 * 4 * 4)`` flattens C × 4 × 4
        # only at the traced image size: at another the rows mix channels, and no slim model
        # can compute that); else which one does not. Such a shape is refused like one the
        # graph cannot run.
        self.reshapes_broken = reshapes_broken
        self.names = names  # input → {dim: the name of its size}: see slimc.inputs.other_shapes
        # the traced graph: a second shape it refuses is refused (torch.export specializes
        # relations of sizes it could not keep symbolic: HF Swin's height and width tied)
        self.graph = graph
        # ``around(masked)``: a context every masked original runs in, this one and the user's
        # masked model of check() (slimc.rerouted: the experts the masks remove routed around)
        self.around = around or (lambda masked: contextlib.nullcontext())
        applied = self.module.applied()
        with self.around(self.module):
            if applied is None:
                self._run(self.module, inputs, free)
                return
            with applied:  # every forward of the original below runs with the masked params
                self._run(original, inputs, free)

    def _run(self, masked: nn.Module, inputs: tuple, free: dict[int, list[int]]) -> None:
        self.sets: list[tuple] = []
        self.outputs: list[list[torch.Tensor]] = []
        self.example = values_matter(inputs)
        if self.example:
            self.sets.append(inputs)
            self.outputs.append(run_eval(masked, inputs))
        self.varied = ""
        self.varied_dims: dict[int, list[int]] = {}  # the dims the second shape changed
        batch = {i: [d for d in dims if d == 0] for i, dims in free.items()}
        # names apart first (an encoder's and a decoder's lengths), then sizes alike stay alike
        tries = [(free, 4, self.names), (free, 4, None), (free, 2, self.names), (free, 2, None), (batch, 2, None)]
        seen: list = []
        for dims, keep, names in tries:
            dims = {i: ds for i, ds in dims.items() if ds}
            shapes = other_shapes(inputs, dims, keep, names)
            if shapes in seen:
                continue
            seen.append(shapes)
            x = random_like(inputs, 1, shapes)
            by = "the original"
            try:
                y = run_eval(masked, x)
                if self.graph is not None:
                    by = f"the traced graph at {shape_text(x)}"
                    sizes = shapes_at(self.graph, x)
                    broken = self.reshapes_broken(sizes) if self.reshapes_broken else ""
                    if broken:
                        raise _Refused(broken)
            except Exception as e:  # the original, or the graph traced from it, refuses that shape
                why = str(e) if isinstance(e, _Refused) else describe(e)[:160]
                self.varied += f"{_dims_text(dims)} refused by {by} ({why}); "
                continue
            self.sets.append(x)
            self.outputs.append(y)
            self.varied += f"varied {_dims_text(dims)}" if shapes else "no dim may vary"
            self.varied_dims = dims
            return
        x = random_like(inputs, 1)
        self.sets.append(x)
        self.outputs.append(run_eval(masked, x))
        self.varied += "second input at the example shape"

    def check(self, slim: nn.Module, user: nn.Module | None = None, which: Iterable[int] | None = None) -> Check:
        """``slim`` against the reference at every input set (``which``: at those only)."""
        diff, scale, vs_user = 0.0, 0.0, None
        picked = range(len(self.sets)) if which is None else [range(len(self.sets))[i] for i in which]
        for k in picked:
            x, want = self.sets[k], self.outputs[k]
            ys = run_eval(slim, x)
            d, s = max_diff(ys, want)
            diff, scale = max(diff, d), max(scale, s)
            if user is not None and k == 0:
                with self.around(user):
                    vs_user = max_diff(ys, run_eval(user, x))[0]
        tol = TOLERANCE * max(scale, 1.0)
        return Check(diff, scale, tol, diff <= tol, vs_user, [shape_text(self.sets[k]) for k in picked], self.varied,
                     self.example)


def values_matter(inputs: tuple) -> bool:
    """Do the example inputs' values decide what the model does beyond what random values
    of their kind would? Integer and bool tensors do (token ids, positions, masks: random
    ones at a new shape are all-ones masks), and 0/1-valued float tensors (float masks); a
    float tensor of other values does not (:func:`slimc.inputs.random_tensor_like` draws
    the same kind)."""
    for t in inputs:
        if not isinstance(t, torch.Tensor) or t.is_meta:
            continue
        if not t.is_floating_point() or (t.numel() and bool(((t == 0) | (t == 1)).all())):
            return True
    return False


def _dims_text(dims: dict[int, list[int]]) -> str:
    return "; ".join(f"input {i} dims {ds}" for i, ds in dims.items() if ds) or "nothing"


def check(slim: nn.Module, original: nn.Module, final_masks: dict, example_inputs: tuple,
          user_masks: MaskSet | None = None, free: dict[int, list[int]] | None = None) -> Check:
    """slim vs the original with the final masks, at a second shape and, where its values
    matter, at the example (:class:`Reference`)."""
    ref = Reference(original, final_masks, example_inputs, free or {})
    user = Masked(original, user_masks.masks) if user_masks is not None else None
    return ref.check(slim, user)


def masks_cover(final: Mapping, user: MaskSet) -> list[str]:
    """Names of params where the final masks would un-zero a user-masked entry. Final masks
    that hold the user's mask as a factor cover it by construction; others are compared."""
    bad = []
    for fqn, m in user.masks.items():
        if isinstance(final, FinalMasks) and final.user_mask(fqn) is m:
            continue  # a factor of its final mask (its keep vectors are not made for this)
        fs = factors_of(final, fqn)
        if fs is None:
            bad.append(fqn)
        elif not any(f is m for f in fs) and bool((m == 0).logical_and(product(fs) != 0).any()):
            bad.append(fqn)
    return bad
