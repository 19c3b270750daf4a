"""Model zoo: small, self-contained CNN architectures used to exercise slimc.

Every entry is built from plain ``torch.nn`` layers and plain torch functions,
and is traceable with ``torch.fx.symbolic_trace``.

Usage::

    from slimc import zoo
    model = zoo.build("resnet18")          # seeded, eval() mode, randomized BN stats
    (x,) = zoo.example_inputs("resnet18")  # seeded input of shape (2, 3, 32, 32)
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable

import torch
from torch import nn

from . import densenet, mobilenet, resnet, senet, shufflenet, unet, vgg

__all__ = ["ZooEntry", "ZOO", "build", "example_inputs", "names", "normalize_scales", "randomize_bn"]


@dataclass(frozen=True)
class ZooEntry:
    name: str
    build: Callable[[], nn.Module]
    input_shape: tuple[int, ...]  # without the batch dimension, e.g. (3, 32, 32)
    family: str  # "cnn"


_CIFAR = (3, 32, 32)

_ENTRIES = [
    ZooEntry("vgg16", vgg.vgg16, _CIFAR, "cnn"),
    ZooEntry("vgg11_small", vgg.vgg11_small, _CIFAR, "cnn"),
    ZooEntry("resnet18", resnet.resnet18, _CIFAR, "cnn"),
    ZooEntry("resnet50", resnet.resnet50, _CIFAR, "cnn"),
    ZooEntry("resnet_tiny", resnet.resnet_tiny, (3, 16, 16), "cnn"),
    ZooEntry("mobilenetv2", mobilenet.mobilenetv2, _CIFAR, "cnn"),
    ZooEntry("mobilenetv2_small", mobilenet.mobilenetv2_small, _CIFAR, "cnn"),
    ZooEntry("densenet_small", densenet.densenet_small, _CIFAR, "cnn"),
    ZooEntry("shufflenetv2_small", shufflenet.shufflenetv2_small, _CIFAR, "cnn"),
    ZooEntry("senet_small", senet.senet_small, _CIFAR, "cnn"),
    ZooEntry("unet_small", unet.unet_small, _CIFAR, "cnn"),
]

ZOO: dict[str, ZooEntry] = {e.name: e for e in _ENTRIES}

_BN_TYPES = (nn.BatchNorm1d, nn.BatchNorm2d, nn.BatchNorm3d)


def _entry(name: str) -> ZooEntry:
    try:
        return ZOO[name]
    except KeyError:
        raise KeyError(f"unknown zoo model {name!r}; available: {sorted(ZOO)}") from None


@torch.no_grad()
def randomize_bn(model: nn.Module, seed: int = 1234) -> nn.Module:
    """Give every BatchNorm non-trivial statistics and affine parameters.

    Freshly initialised BN layers are the identity (mean 0, var 1, gamma 1,
    beta 0), which would hide bugs in how a compiler folds or slices them; in
    particular beta must be non-zero so that removed channels still carry a
    constant that has to be accounted for.
    """
    gen = torch.Generator().manual_seed(seed)
    for m in model.modules():
        if not isinstance(m, _BN_TYPES):
            continue
        n = m.num_features
        if m.track_running_stats and m.running_mean is not None:
            m.running_mean.copy_(torch.randn(n, generator=gen) * 0.1)
            m.running_var.copy_(torch.rand(n, generator=gen) + 0.5)
        if m.affine:
            m.weight.copy_(torch.rand(n, generator=gen) + 0.5)
            m.bias.copy_(torch.randn(n, generator=gen) * 0.2)
    return model


_SCALED_TYPES = (nn.Conv1d, nn.Conv2d, nn.Conv3d, nn.ConvTranspose2d, nn.Linear)


@torch.no_grad()
def normalize_scales(model: nn.Module, inputs: tuple[torch.Tensor, ...]) -> nn.Module:
    """Rescale each conv/linear so its output has unit RMS on ``inputs`` (LSUV-style).

    With default init and *fixed* (eval-mode) BN statistics the signal decays
    through deep stacks until the output is dominated by the BN-beta constants
    and barely depends on the input (or, for deep residual nets, explodes).
    Either makes exactness checks weak.  One forward pass with hooks fixes
    this: each layer, in execution order, divides its weight and bias by the
    RMS of its output and returns the rescaled output, so every later layer is
    calibrated on already-normalized activations.  BN parameters and buffers
    are left exactly as ``randomize_bn`` set them.
    """
    done: set[nn.Module] = set()

    def hook(mod: nn.Module, _args, out: torch.Tensor) -> torch.Tensor:
        if mod in done:
            return out
        done.add(mod)
        rms = out.pow(2).mean().sqrt().item()
        if not rms > 1e-8:  # also catches NaN
            return out
        mod.weight.div_(rms)
        if mod.bias is not None:
            mod.bias.div_(rms)
        return out / rms

    handles = [m.register_forward_hook(hook) for m in model.modules() if isinstance(m, _SCALED_TYPES)]
    try:
        model(*inputs)
    finally:
        for h in handles:
            h.remove()
    return model


def build(name: str) -> nn.Module:
    """Fresh, deterministic model in ``eval()`` mode.

    BN statistics/affine parameters are randomized (``randomize_bn``) and
    conv/linear weights rescaled for unit-scale activations
    (``normalize_scales``) so outputs depend strongly on the input.
    """
    entry = _entry(name)
    torch.manual_seed(0)
    model = entry.build()
    randomize_bn(model)
    model.eval()
    gen = torch.Generator().manual_seed(1)
    calib = (torch.randn((8, *entry.input_shape), generator=gen),)
    normalize_scales(model, calib)
    return model


def example_inputs(name: str, batch: int = 2) -> tuple[torch.Tensor, ...]:
    """Deterministic example inputs of shape ``(batch, *input_shape)``."""
    entry = _entry(name)
    gen = torch.Generator().manual_seed(0)
    return (torch.randn((batch, *entry.input_shape), generator=gen),)


def names(family: str | None = None) -> list[str]:
    """Registered model names (in registration order), optionally by family."""
    return [n for n, e in ZOO.items() if family is None or e.family == family]
