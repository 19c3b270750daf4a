"""Model zoo: small, self-contained architectures used to exercise slimc.

Family ``"cnn"``: CNNs on images; family ``"transformer"``: a ViT on images and
BERT / GPT / LLaMA-style models on token ids (``torch.long``, shape (batch, 16)).
Every entry is built from plain ``torch.nn`` layers and plain torch functions,
and is traceable with ``torch.fx.symbolic_trace``.

Usage::

    from slimc import zoo
    model = zoo.build("resnet18")          # seeded, eval() mode, randomized BN stats
    (x,) = zoo.example_inputs("resnet18")  # seeded input of shape (2, 3, 32, 32)
    (ids,) = zoo.example_inputs("gpt_tiny")  # seeded token ids of shape (2, 16)
"""

from __future__ import annotations

import functools
from dataclasses import dataclass
from typing import Callable

import torch
from torch import nn

from . import densenet, mobilenet, resnet, senet, shufflenet, transformer, unet, vgg

__all__ = [
    "ZooEntry", "ZOO", "build", "example_inputs", "names", "normalize_scales", "randomize_bn", "randomize_norms",
]


@dataclass(frozen=True)
class ZooEntry:
    name: str
    build: Callable[[], nn.Module]
    input_shape: tuple[int, ...]  # without the batch dimension, e.g. (3, 32, 32) or (16,) for token ids
    family: str  # "cnn" or "transformer"
    #: ``make_input(batch, generator)`` -> one input tensor; None: float ``randn((batch, *input_shape))``
    make_input: Callable[[int, torch.Generator], torch.Tensor] | None = None

    def inputs(self, batch: int, generator: torch.Generator) -> tuple[torch.Tensor, ...]:
        """The model's inputs for ``batch`` samples, drawn from ``generator``."""
        if self.make_input is not None:
            return (self.make_input(batch, generator),)
        return (torch.randn((batch, *self.input_shape), generator=generator),)


def _token_ids(vocab: int, seq_len: int, batch: int, generator: torch.Generator) -> torch.Tensor:
    return torch.randint(0, vocab, (batch, seq_len), generator=generator, dtype=torch.long)


def _tokens(vocab: int, seq_len: int = 16) -> Callable[[int, torch.Generator], torch.Tensor]:
    return functools.partial(_token_ids, vocab, seq_len)


_CIFAR = (3, 32, 32)
_SEQ = (16,)

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
    ZooEntry("vit_tiny", transformer.vit_tiny, _CIFAR, "transformer"),
    ZooEntry("bert_tiny", transformer.bert_tiny, _SEQ, "transformer", _tokens(100)),
    ZooEntry("gpt_tiny", transformer.gpt_tiny, _SEQ, "transformer", _tokens(128)),
    ZooEntry("llama_tiny", transformer.llama_tiny, _SEQ, "transformer", _tokens(128)),
    # benchmark sizes of the same transformers (not in names() unless asked for)
    ZooEntry("vit_small", transformer.vit_small, _CIFAR, "bench"),
    ZooEntry("bert_small", transformer.bert_small, (128,), "bench", _tokens(1000, 128)),
    ZooEntry("gpt_small", transformer.gpt_small, (128,), "bench", _tokens(1000, 128)),
    ZooEntry("llama_small", transformer.llama_small, (128,), "bench", _tokens(1000, 128)),
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


_NORM_TYPES = (nn.LayerNorm, nn.RMSNorm, transformer.LayerNorm, transformer.LlamaRMSNorm)


@torch.no_grad()
def randomize_norms(model: nn.Module, seed: int = 4321) -> nn.Module:
    """Give every LayerNorm / RMSNorm non-trivial affine parameters.

    The transformer counterpart of ``randomize_bn``: freshly initialised norms
    have weight 1 and bias 0, which would hide bugs in how a compiler slices them.
    Weight becomes ``rand + 0.5``, bias (where there is one) ``randn * 0.2``.
    """
    gen = torch.Generator().manual_seed(seed)
    for m in model.modules():
        if not isinstance(m, _NORM_TYPES):
            continue
        w, b = getattr(m, "weight", None), getattr(m, "bias", None)
        if isinstance(w, torch.Tensor):
            w.copy_(torch.rand(w.shape, generator=gen) + 0.5)
        if isinstance(b, torch.Tensor):
            b.copy_(torch.randn(b.shape, generator=gen) * 0.2)
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
    are left exactly as ``randomize_bn`` set them (norm parameters as
    ``randomize_norms`` set them).  A weight tied to an embedding (GPT's
    ``lm_head``) rescales the embedding with it.
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

    BN statistics/affine parameters are randomized (``randomize_bn``), as are
    LayerNorm/RMSNorm affine parameters (``randomize_norms``), and conv/linear
    weights rescaled for unit-scale activations (``normalize_scales``, calibrated
    on the entry's own kind of input) so outputs depend strongly on the input.
    """
    entry = _entry(name)
    torch.manual_seed(0)
    model = entry.build()
    randomize_bn(model)
    randomize_norms(model)
    model.eval()
    gen = torch.Generator().manual_seed(1)
    calib = entry.inputs(8, gen)
    normalize_scales(model, calib)
    return model


def example_inputs(name: str, batch: int = 2, seed: int = 0) -> tuple[torch.Tensor, ...]:
    """Deterministic example inputs of shape ``(batch, *input_shape)``.

    Float ``randn`` images for the CNNs and the ViT, ``torch.long`` token ids in
    ``[0, vocab)`` for the token models.
    """
    entry = _entry(name)
    gen = torch.Generator().manual_seed(seed)
    return entry.inputs(batch, gen)


def names(family: str | None = None) -> list[str]:
    """Registered model names (in registration order), optionally by family. Without a
    family: every model the tests run on ("cnn", "transformer"), not the "bench" sizes."""
    return [n for n, e in ZOO.items() if (e.family == family if family else e.family != "bench")]
