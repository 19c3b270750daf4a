"""Hand-derived cuts for every zoo model: a set of user masks and, written out by hand from
the architecture and DESIGN.md's semantics (*Semantics: groups and removal*, ``channel``
mode), every parameter slice the compiler must remove for them. No slimc code: each cut
lists the coupled members of a channel by reading the model's source (slimc/zoo/*.py).

A cut is ``(fqn, dim, indices)``. ``Case.masked``: the user's zeros; ``Case.removed``:
the complete removal (the user's slices that go, plus their followers and sinks); the
user's zeros that stay (a barrier, a residual add's other writer, a shuffle's rectangle)
are in ``masked`` only, and the case's ``kept`` says why.

Semantics used (DESIGN.md): a group goes when every source is masked or every sink is;
then its sources (conv/linear rows, embedding columns, a learned tensor added in), its
followers (biases, norm γ/β) and its sinks (conv/linear columns) all lose the slice. An
add joins its operands' channels; a concat offsets them; a depthwise conv and a gate's
product drop a channel that either factor kills; an attention head goes whole (with its
q/k/v rows and output-projection columns; GQA: a key/value head with all its query heads).
"""
from __future__ import annotations

import functools
from typing import Callable

from torch import nn

from .cnn import CNN_CUTS
from .cuts import Case, Cut, Cuts
from .transformer import bert, gpt, llama, vit

CUTS: dict[str, Callable[[nn.Module], Case]] = {
    **CNN_CUTS, "vit_tiny": vit, "bert_tiny": bert, "gpt_tiny": gpt, "llama_tiny": llama,
}
# the FFN cut alone: what ViT's and nanoGPT's own classes can take
FFN_ONLY: dict[str, Callable[[nn.Module], Case]] = {
    "vit_tiny": functools.partial(vit, attention=False), "gpt_tiny": functools.partial(gpt, attention=False),
}


__all__ = ["CUTS", "FFN_ONLY", "Case", "Cut", "Cuts"]
