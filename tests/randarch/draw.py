"""One draw: seed → random model, example and second-shape inputs, user masks, the coupled
channel groups the generator built (:meth:`ChannelIR.groups`) and the final masks it derives
for the masks (:meth:`ChannelIR.final_masks`)."""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch
from torch import nn

from .channels import ChannelIR, Slice, UserMasks
from .cnn import draw_convnet
from .masks import draw_masks
from .transformer import TransformerNet, draw_transformer


@dataclass
class Draw:
    seed: int
    desc: str
    model: nn.Module
    example: tuple
    second: tuple  # another batch, and another image size or sequence length
    masks: dict[str, torch.Tensor]  # the user's: flat 0/1, full or compact
    user: UserMasks  # the same, full-shape bool
    groups: list[frozenset[Slice]]  # the coupled channel groups of param slices (ChannelIR.groups)
    removed: set[Slice]  # the param slices that go: (fqn, dim, index)
    oracle: dict[str, torch.Tensor]  # final masks: full-shape bool of every parameter


@torch.no_grad()
def _randomize(model: nn.Module, g: torch.Generator) -> None:
    """Norms with non-trivial γ, β and running statistics, so a follower sliced wrong shows."""
    for m in model.modules():
        if isinstance(m, nn.BatchNorm2d):
            m.running_mean.copy_(torch.randn(m.num_features, generator=g) * 0.2)
            m.running_var.copy_(torch.rand(m.num_features, generator=g) + 0.5)
        if isinstance(m, (nn.BatchNorm2d, nn.LayerNorm, nn.RMSNorm)) or type(m).__name__ == "RMSNorm":
            m.weight.copy_(torch.rand(m.weight.shape, generator=g) + 0.5)
            if getattr(m, "bias", None) is not None:
                m.bias.copy_(torch.randn(m.bias.shape, generator=g) * 0.3)


def _inputs(model: nn.Module, g: torch.Generator) -> tuple[tuple, tuple]:
    if isinstance(model, TransformerNet) and model.kind != "patch":
        t = int(torch.randint(4, 9, (1,), generator=g))
        shapes = ((2, t), (3, t + 3))
        if model.kind == "tokens":
            n = model.embed.num_embeddings
            return tuple((torch.randint(0, n, s, generator=g),) for s in shapes)
        return tuple((torch.randn(*s, model.embed.in_features, generator=g),) for s in shapes)
    return (torch.randn(2, 3, 8, 8, generator=g),), (torch.randn(3, 3, 12, 12, generator=g),)


def draw(seed: int) -> Draw:
    rng = np.random.default_rng(seed)
    with torch.random.fork_rng():
        torch.manual_seed(seed)
        model, kinds = draw_transformer(rng) if rng.random() < 0.5 else draw_convnet(rng)
    g = torch.Generator().manual_seed(seed)
    _randomize(model, g)
    model.eval()
    example, second = _inputs(model, g)
    shapes = {k: tuple(p.shape) for k, p in model.named_parameters()}
    ir = ChannelIR(shapes)
    model.channels(ir)
    protected = ir.protect(rng)
    for _ in range(20):  # masks that would empty a layer (a grouped conv's group read by nothing, whose
        masks = draw_masks(rng, ir, protected)  # inputs are a whole branch) are drawn again: no
        user = UserMasks(masks, shapes)  # allow_empty rule is exercised by accident
        removed = ir.removed_slices(user)
        if not ir.emptied():
            break
    desc = f"seed {seed}: {type(model).__name__}[{', '.join(kinds)}]"
    return Draw(seed, desc, model, example, second, masks, user, ir.groups(), removed, ir.final_masks(user, removed))
