"""NNI's quantizers in torch, on the user's own modules.

* weights: a ``torch.nn.utils.parametrize`` parametrization of ``weight`` (:class:`WeightQuantizer`)
  — the module keeps its class, name and parameter; ``slimc.compile`` bakes what it computes
  (the quantized weight) into the slim model, as it does for every reparametrization;
* activations: forward hooks (input: a pre-hook; output: a hook) calling an
  :class:`ActQuantizer` — an exponential moving average of the range (decay 0.99, as NNI's
  QAT), an affine per-tensor grid from it, or BNN's sign.

Kinds of weight quantizer: ``affine`` (Naive and QAT: the grid from the weight's own range,
per channel or per tensor, symmetric or affine), ``dorefa`` (k-bit, tanh-normalized) and
``sign`` (BNN). QAT folds a BatchNorm that follows a conv into it before quantizing (Jacob
et al. 2018): the quantized weight is ``fq(W·s) / s`` with ``s = γ / √(running_var + ε)``,
so that conv + BatchNorm computes exactly the folded conv with the quantized folded weight —
what the int8 file holds. Until ``start_step`` training steps have run (NNI's
``quant_start_step``), ranges are observed and nothing is quantized.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Callable

import torch
from torch import nn

from slimc.quantize.config import Scheme
from slimc.quantize.grid import Grid, affine_grid, dorefa_grid, dorefa_weight, sign_grid, sign_ste, weight_grid

WEIGHT_KINDS = ("affine", "dorefa", "sign")


@dataclass
class Clock:
    """Training steps seen (forward passes of the model in training mode)."""

    step: int = 0


def bn_factor(bn: nn.Module) -> torch.Tensor:
    """``γ / √(running_var + ε)``: what a BatchNorm multiplies each channel by in eval mode."""
    var = bn.running_var if bn.running_var is not None else torch.ones(bn.num_features)
    gamma = bn.weight if bn.weight is not None else torch.ones_like(var)
    return gamma / torch.sqrt(var + bn.eps)


def _per_out(t: torch.Tensor, w: torch.Tensor) -> torch.Tensor:
    return t.reshape(-1, *([1] * (w.dim() - 1)))


class WeightQuantizer(nn.Module):
    """Parametrization: the float weight → its quantized value (straight-through gradients)."""

    def __init__(self, kind: str, bits: int, scheme: Scheme, clock: Clock, start_step: int = 0,
                 mask: torch.Tensor | None = None):
        super().__init__()
        if kind not in WEIGHT_KINDS:
            raise ValueError(f"weight quantizer kind {kind!r}: one of {WEIGHT_KINDS}")
        self.kind, self.bits, self.scheme, self.start_step = kind, bits, scheme, start_step
        self._clock = clock
        self.__dict__["_bn"] = None  # the model's own BatchNorm when folded (not a submodule of this)
        self.register_buffer("mask", None if mask is None else mask.detach().to(torch.bool), persistent=False)

    def fold(self, bn: nn.Module) -> None:
        self.__dict__["_bn"] = bn  # a plain reference: not registered as a submodule

    @property
    def folded(self) -> bool:
        return self._bn is not None

    @property
    def active(self) -> bool:
        return self._clock.step >= self.start_step

    def forward(self, w: torch.Tensor) -> torch.Tensor:
        if self.mask is not None:
            w = w * self.mask
        s = _per_out(bn_factor(self._bn).detach(), w) if self._bn is not None else None
        wf = w * s if s is not None else w
        q = self.quantize(wf) if self.active else wf
        if self.mask is not None:
            q = q * self.mask  # DoReFa maps 0 off the grid's zero: a pruned weight stays pruned
        if s is None:
            return q
        # a channel whose BatchNorm γ is 0 (pruned) folds to 0: its weight stays 0, not 0/0
        return q / torch.where(s == 0, torch.ones_like(s), s)

    def quantize(self, wf: torch.Tensor) -> torch.Tensor:
        if self.kind == "dorefa":
            return dorefa_weight(wf, self.bits)
        if self.kind == "sign":
            return sign_ste(wf)
        return self.grid(wf).fake(wf)

    def grid(self, wf: torch.Tensor) -> Grid:
        """The grid the (folded) weight ``wf`` is quantized onto."""
        if self.kind == "dorefa":
            return dorefa_grid(self.bits)
        if self.kind == "sign":
            return sign_grid()
        return weight_grid(wf, self.bits, per_channel=self.scheme.per_channel, symmetric=self.scheme.symmetric)

    def folded_weight(self, module: nn.Module) -> torch.Tensor:
        """The float weight this quantizer sees: masked, times the BatchNorm factor when folded."""
        from torch.nn.utils import parametrize

        with parametrize.cached(), torch.no_grad():
            w = module.parametrizations.weight.original
            if self.mask is not None:
                w = w * self.mask
            return w * _per_out(bn_factor(self._bn), w) if self._bn is not None else w


class ActQuantizer(nn.Module):
    """An activation's quantizer: ``affine`` (EMA range → per-tensor grid) or ``sign`` (BNN)."""

    def __init__(self, kind: str, bits: int, signed: bool, clock: Clock, start_step: int = 0, decay: float = 0.99):
        super().__init__()
        self.kind, self.bits, self.signed, self.start_step, self.decay = kind, bits, signed, start_step, decay
        self._clock = clock
        self.observing = False  # observe in eval mode too (calibration of an untrained quantizer)
        self.register_buffer("lo", torch.tensor(0.0))
        self.register_buffer("hi", torch.tensor(0.0))
        self.register_buffer("seen", torch.tensor(False))

    def observe(self, x: torch.Tensor) -> None:
        x = x.detach().float()
        lo, hi = x.min(), x.max()
        if not bool(self.seen):
            self.lo.copy_(lo)
            self.hi.copy_(hi)
            self.seen.fill_(True)
        else:
            self.lo.mul_(self.decay).add_((1 - self.decay) * lo)
            self.hi.mul_(self.decay).add_((1 - self.decay) * hi)

    def grid(self) -> Grid:
        return affine_grid(self.lo, self.hi, self.bits, symmetric=False, signed=self.signed)

    def forward(self, x: torch.Tensor, training: bool) -> torch.Tensor:
        if not isinstance(x, torch.Tensor) or not x.is_floating_point():
            return x
        if self.kind == "sign":
            return sign_ste(x)
        if training or self.observing:
            self.observe(x)
        if self._clock.step < self.start_step or not bool(self.seen):
            return x
        return self.grid().fake(x)


def input_hook(q: ActQuantizer) -> Callable:
    def hook(module: nn.Module, args: tuple):
        if not args:
            return None
        return (q(args[0], module.training), *args[1:])

    return hook


def output_hook(q: ActQuantizer) -> Callable:
    def hook(module: nn.Module, args: tuple, out):
        return q(out, module.training)

    return hook


@dataclass
class Attached:
    """What :func:`attach` put on a model, to find and remove it again."""

    weights: dict[str, WeightQuantizer] = field(default_factory=dict)
    inputs: dict[str, ActQuantizer] = field(default_factory=dict)  # module → quantizer of its input
    outputs: dict[str, ActQuantizer] = field(default_factory=dict)  # module (the BatchNorm when folded) → ...
    handles: list = field(default_factory=list)

    def remove_hooks(self) -> None:
        for h in self.handles:
            h.remove()
        self.handles.clear()


def conv_bn_pairs(model: nn.Module, inputs: tuple) -> dict[str, str]:
    """conv → the BatchNorm its output goes straight into (one forward pass with hooks)."""
    convs = (nn.Conv1d, nn.Conv2d, nn.Conv3d)
    bns = (nn.BatchNorm1d, nn.BatchNorm2d, nn.BatchNorm3d)
    produced: dict[int, tuple[str, torch.Tensor]] = {}
    pairs: dict[str, str] = {}
    handles = []
    for name, m in model.named_modules():
        if isinstance(m, convs):
            handles.append(m.register_forward_hook(
                lambda _m, _a, out, n=name: produced.__setitem__(id(out), (n, out))))
        elif isinstance(m, bns) and m.track_running_stats:
            def pre(_m, args, n=name):
                got = produced.get(id(args[0])) if args else None
                if got is not None and got[1] is args[0]:
                    pairs.setdefault(got[0], n)
            handles.append(m.register_forward_pre_hook(pre))
    try:
        from slimc.modes import eval_mode

        with eval_mode(model), torch.no_grad():
            model(*inputs)
    finally:
        for h in handles:
            h.remove()
    return pairs
