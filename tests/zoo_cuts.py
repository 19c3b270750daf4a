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
from dataclasses import dataclass, field
from typing import Callable

from torch import nn

Cut = tuple[str, int, tuple[int, ...]]


@dataclass
class Case:
    masked: list[Cut]
    removed: list[Cut]
    # user zeros that stay: (what, a word the report's reason must hold: the holding writer, "rectangle", "output")
    kept: list[tuple[str, str]] = field(default_factory=list)
    # where the user's class cannot be made slim: (why, a word the report's reason must hold)
    no_user_class: tuple[str, str] | None = None


def _r(idx) -> tuple[int, ...]:
    return tuple(idx)


class Cuts:
    """Builds a case for one model: ``mask`` records the user's zeros, ``remove`` the slices
    that must go; ``rows``/``cols``/``norm`` name a layer's coupled members."""

    def __init__(self, model: nn.Module):
        self.mods = dict(model.named_modules())
        self.params = dict(model.named_parameters())
        self.case = Case([], [])

    def rows(self, name: str, idx, *, dim: int = 0) -> list[Cut]:
        """Output channels ``idx`` of a conv / linear (dim 1 of a ConvTranspose), with its bias."""
        out = [(f"{name}.weight", dim, _r(idx))]
        if getattr(self.mods[name], "bias", None) is not None:
            out.append((f"{name}.bias", 0, _r(idx)))
        return out

    def cols(self, name: str, idx, *, dim: int = 1) -> list[Cut]:
        """Input channels ``idx`` of a conv / linear (dim 0 of a ConvTranspose)."""
        return [(f"{name}.weight", dim, _r(idx))]

    def norm(self, name: str, idx) -> list[Cut]:
        """A norm's γ (and β) at ``idx``."""
        return [(f"{name}.{p}", 0, _r(idx)) for p in ("weight", "bias") if f"{name}.{p}" in self.params]

    def mask(self, *cuts: Cut | list[Cut]) -> None:
        self.case.masked += _flat(cuts)

    def remove(self, *cuts: Cut | list[Cut]) -> None:
        self.case.removed += _flat(cuts)

    def keep(self, what: str, reason: str) -> None:
        self.case.kept.append((what, reason))

    def no_user_class(self, why: str, reason: str) -> None:
        self.case.no_user_class = (why, reason)


def _flat(cuts) -> list[Cut]:
    out: list[Cut] = []
    for c in cuts:
        out += c if isinstance(c, list) else [c]
    return out


def _weight(name: str, dim: int, idx) -> Cut:
    return (f"{name}.weight", dim, _r(idx))


# --------------------------------------------------------------------------- CNNs
def vgg(m: nn.Module) -> Case:
    """features: conv → BN → ReLU (→ pool); 32×32 pooled five times to 1×1, so the last
    conv's channel c is classifier.0's feature c."""
    c = Cuts(m)
    convs = [f"features.{i}" for i, mod in enumerate(m.features) if isinstance(mod, nn.Conv2d)]
    bn = {n: f"features.{int(n.split('.')[1]) + 1}" for n in convs}
    # filters 1, 5 of the first conv: its BN and the second conv's columns go with them
    c.mask(_weight(convs[0], 0, (1, 5)))
    c.remove(c.rows(convs[0], (1, 5)), c.norm(bn[convs[0]], (1, 5)), c.cols(convs[1], (1, 5)))
    c.mask(_weight(convs[3], 0, range(4)))
    c.remove(c.rows(convs[3], range(4)), c.norm(bn[convs[3]], range(4)), c.cols(convs[4], range(4)))
    # every sink of conv 4's channel 3 (conv 5's column): the filter that makes it goes too
    c.mask(_weight(convs[5], 1, (3,)))
    c.remove(c.rows(convs[4], (3,)), c.norm(bn[convs[4]], (3,)), c.cols(convs[5], (3,)))
    c.mask(_weight(convs[-1], 0, (7,)))
    c.remove(c.rows(convs[-1], (7,)), c.norm(bn[convs[-1]], (7,)), c.cols("classifier.0", (7,)))
    c.mask(_weight("classifier.0", 0, (2, 9)))
    c.remove(c.rows("classifier.0", (2, 9)), c.cols("classifier.3", (2, 9)))
    c.mask(_weight("classifier.3", 0, (0,)))
    c.keep("classifier.3 row 0", "graph output")
    return c.case


def resnet_basic(m: nn.Module) -> Case:
    """BasicBlock ResNets (resnet_tiny, resnet18): out = relu(bn2(conv2(relu(bn1(conv1 x)))) + shortcut x)."""
    c = Cuts(m)
    blocks = {s: [f"layer{s}.{b}" for b in range(len(getattr(m, f"layer{s}")))] for s in (1, 2, 3, 4)}
    # a block's inner channels: conv1's filters, bn1, conv2's columns
    c.mask(_weight("layer1.0.conv1", 0, (0, 3)))
    c.remove(c.rows("layer1.0.conv1", (0, 3)), c.norm("layer1.0.bn1", (0, 3)), c.cols("layer1.0.conv2", (0, 3)))
    # stage 1's stream (identity shortcuts): channel 2 written by the stem and every block's conv2
    writers = ["conv1", *[f"{b}.conv2" for b in blocks[1]]]
    c.mask(*[_weight(w, 0, (2,)) for w in writers])
    c.remove(c.rows("conv1", (2,)), c.norm("bn1", (2,)))
    for b in blocks[1]:
        c.remove(c.cols(f"{b}.conv1", (2,)), c.rows(f"{b}.conv2", (2,)), c.norm(f"{b}.bn2", (2,)))
    c.remove(c.cols("layer2.0.conv1", (2,)), c.cols("layer2.0.shortcut.0", (2,)))
    # the stem alone: layer1's conv2 still writes channel 5
    c.mask(_weight("conv1", 0, (5,)))
    c.keep("conv1 row 5 (residual add)", "layer1.0.conv2.weight")
    # one branch of stage 3's first block: the projection shortcut still writes channel 10
    c.mask(_weight("layer3.0.conv2", 0, (10,)))
    c.keep("layer3.0.conv2 row 10", "layer3.0.shortcut.0.weight")
    # stage 4's stream: channel 1 by every writer (sources), channel 4 by every reader (sinks)
    first, rest = blocks[4][0], blocks[4][1:]
    c.mask(_weight(f"{first}.conv2", 0, (1,)), _weight(f"{first}.shortcut.0", 0, (1,)),
           *[_weight(f"{b}.conv2", 0, (1,)) for b in rest])
    c.mask(_weight("fc", 1, (4,)), *[_weight(f"{b}.conv1", 1, (4,)) for b in rest])
    for i in (1, 4):
        c.remove(c.rows(f"{first}.conv2", (i,)), c.norm(f"{first}.bn2", (i,)),
                 c.rows(f"{first}.shortcut.0", (i,)), c.norm(f"{first}.shortcut.1", (i,)), c.cols("fc", (i,)))
        for b in rest:
            c.remove(c.cols(f"{b}.conv1", (i,)), c.rows(f"{b}.conv2", (i,)), c.norm(f"{b}.bn2", (i,)))
    return c.case


def resnet_bottleneck(m: nn.Module) -> Case:
    """Bottleneck ResNet-50: conv1 1×1 → conv2 3×3 → conv3 1×1 (×4), projection shortcut in
    every stage's first block (layer1's too: 64 → 256)."""
    c = Cuts(m)
    c.mask(_weight("layer1.0.conv1", 0, (7,)))
    c.remove(c.rows("layer1.0.conv1", (7,)), c.norm("layer1.0.bn1", (7,)), c.cols("layer1.0.conv2", (7,)))
    c.mask(_weight("layer1.0.conv2", 0, (0, 3)))
    c.remove(c.rows("layer1.0.conv2", (0, 3)), c.norm("layer1.0.bn2", (0, 3)), c.cols("layer1.0.conv3", (0, 3)))
    # the stem's channel 5 is read by layer1.0's conv1 and shortcut only
    c.mask(_weight("conv1", 0, (5,)))
    c.remove(c.rows("conv1", (5,)), c.norm("bn1", (5,)), c.cols("layer1.0.conv1", (5,)),
             c.cols("layer1.0.shortcut.0", (5,)))
    # stage 1's stream channel 2: layer1.0's conv3 and shortcut, layer1.1 and 1.2's conv3
    blocks = [f"layer1.{b}" for b in range(len(m.layer1))]
    c.mask(_weight("layer1.0.shortcut.0", 0, (2,)), *[_weight(f"{b}.conv3", 0, (2,)) for b in blocks])
    c.remove(c.rows("layer1.0.shortcut.0", (2,)), c.norm("layer1.0.shortcut.1", (2,)))
    for b in blocks:
        c.remove(c.rows(f"{b}.conv3", (2,)), c.norm(f"{b}.bn3", (2,)))
    for b in blocks[1:]:
        c.remove(c.cols(f"{b}.conv1", (2,)))
    c.remove(c.cols("layer2.0.conv1", (2,)), c.cols("layer2.0.shortcut.0", (2,)))
    # stage 4's stream channel 4: every reader masked (fc and the later blocks' conv1)
    rest = [f"layer4.{b}" for b in range(1, len(m.layer4))]
    c.mask(_weight("fc", 1, (4,)), *[_weight(f"{b}.conv1", 1, (4,)) for b in rest])
    c.remove(c.rows("layer4.0.conv3", (4,)), c.norm("layer4.0.bn3", (4,)), c.rows("layer4.0.shortcut.0", (4,)),
             c.norm("layer4.0.shortcut.1", (4,)), c.cols("fc", (4,)))
    for b in rest:
        c.remove(c.cols(f"{b}.conv1", (4,)), c.rows(f"{b}.conv3", (4,)), c.norm(f"{b}.bn3", (4,)))
    c.mask(_weight("layer3.0.conv3", 0, (10,)))
    c.keep("layer3.0.conv3 row 10", "layer3.0.shortcut.0.weight")
    return c.case


def mobilenetv2(m: nn.Module) -> Case:
    """features.0 stem; features.1..17 inverted residuals (features.1: depthwise conv.0,
    project conv.1; the others: expand conv.0, depthwise conv.1, project conv.2, BN conv.3);
    features.18 the last 1×1 conv; classifier.1 the head."""
    c = Cuts(m)
    f = "features"
    # the stem's channel 3 is features.1's depthwise channel 3 (its filter and BN) and its projection's column
    c.mask(_weight(f"{f}.0.0", 0, (3,)))
    c.remove(c.rows(f"{f}.0.0", (3,)), c.norm(f"{f}.0.1", (3,)), c.rows(f"{f}.1.conv.0.0", (3,)),
             c.norm(f"{f}.1.conv.0.1", (3,)), c.cols(f"{f}.1.conv.1", (3,)))
    # expansion filters 0, 5 of features.2: the depthwise channels behind them go
    ex = (0, 5)
    c.mask(_weight(f"{f}.2.conv.0.0", 0, ex))
    c.remove(c.rows(f"{f}.2.conv.0.0", ex), c.norm(f"{f}.2.conv.0.1", ex), c.rows(f"{f}.2.conv.1.0", ex),
             c.norm(f"{f}.2.conv.1.1", ex), c.cols(f"{f}.2.conv.2", ex))
    # a depthwise filter alone (features.3's channel 2): the product is zero, the expansion row goes too
    c.mask(_weight(f"{f}.3.conv.1.0", 0, (2,)))
    c.remove(c.rows(f"{f}.3.conv.0.0", (2,)), c.norm(f"{f}.3.conv.0.1", (2,)), c.rows(f"{f}.3.conv.1.0", (2,)),
             c.norm(f"{f}.3.conv.1.1", (2,)), c.cols(f"{f}.3.conv.2", (2,)))
    # the stride-2 stage features.4-6 (5 and 6 residual): stream channel 6 by all three projections
    for b in (4, 5, 6):
        assert m.features[b].use_res == (b != 4)
        c.mask(_weight(f"{f}.{b}.conv.2", 0, (6,)))
        c.remove(c.rows(f"{f}.{b}.conv.2", (6,)), c.norm(f"{f}.{b}.conv.3", (6,)))
    for b in (5, 6, 7):
        c.remove(c.cols(f"{f}.{b}.conv.0.0", (6,)))
    c.mask(_weight(f"{f}.18.0", 0, range(10)))
    c.remove(c.rows(f"{f}.18.0", range(10)), c.norm(f"{f}.18.1", range(10)), c.cols("classifier.1", range(10)))
    return c.case


def densenet(m: nn.Module) -> Case:
    """Stem conv1 → dense stages (each layer: bn1 → conv1 1×1 → bn2 → conv2 3×3, its
    growth channels concatenated after its input) with transitions (bn → conv → pool)
    between → bn → fc. A channel of a stage's concat is read by every later layer's bn1
    and conv1 and by the transition (or the final bn and fc)."""
    c = Cuts(m)
    stages = [s for s in m.features if isinstance(s, nn.Sequential)]
    names = [f"features.{i}" for i, s in enumerate(m.features) if isinstance(s, nn.Sequential)]
    after = ["features.1", "features.3", None]  # what reads a stage's concat: the transition, or bn + fc

    def readers(stage: int, ch: int, first_layer: int) -> list[Cut]:
        out: list[Cut] = []
        for j in range(first_layer, len(stages[stage])):
            out += c.norm(f"{names[stage]}.{j}.bn1", (ch,)) + c.cols(f"{names[stage]}.{j}.conv1", (ch,))
        t = after[stage]
        return out + (c.norm(f"{t}.bn", (ch,)) + c.cols(f"{t}.conv", (ch,)) if t else
                      c.norm("bn", (ch,)) + c.cols("fc", (ch,)))

    growth = m.features[0][0].conv2.out_channels
    c.mask(_weight("features.0.0.conv1", 0, range(4)))
    c.remove(c.rows("features.0.0.conv1", range(4)), c.norm("features.0.0.bn2", range(4)),
             c.cols("features.0.0.conv2", range(4)))
    c.mask(_weight("conv1", 0, (1,)))
    c.remove(c.rows("conv1", (1,)), readers(0, 1, 0))
    stem = m.conv1.out_channels  # layer 1's channel 5 sits after the stem's and layer 0's channels
    c.mask(_weight("features.0.1.conv2", 0, (5,)))
    c.remove(c.rows("features.0.1.conv2", (5,)), readers(0, stem + growth + 5, 2))
    c.mask(_weight("features.1.conv", 0, (0, 1)))
    c.remove(c.rows("features.1.conv", (0, 1)), *[readers(1, i, 0) for i in (0, 1)])
    last = len(stages[2]) - 1
    width = m.fc.in_features
    c.mask(_weight(f"features.4.{last}.conv2", 0, (growth - 1,)))
    c.remove(c.rows(f"features.4.{last}.conv2", (growth - 1,)), readers(2, width - 1, last + 1))
    return c.case


def shufflenetv2(m: nn.Module) -> Case:
    """Stem conv1 → stages of units (a down unit: branch1 = depthwise, pointwise; branch2 =
    pointwise, depthwise, pointwise; concat and shuffle) → conv5 → mean → fc."""
    c = Cuts(m)
    s00 = "stages.0.0"
    c.mask(_weight("conv1.0", 0, (1,)))  # read by both branches of the first down unit
    c.remove(c.rows("conv1.0", (1,)), c.norm("conv1.1", (1,)), c.rows(f"{s00}.branch1.0", (1,)),
             c.norm(f"{s00}.branch1.1", (1,)), c.cols(f"{s00}.branch1.2", (1,)), c.cols(f"{s00}.branch2.0", (1,)))
    b = "stages.1.1.branch2"
    c.mask(_weight(f"{b}.0", 0, (0, 2)))  # a unit's inner channels: pointwise → depthwise → pointwise
    c.remove(c.rows(f"{b}.0", (0, 2)), c.norm(f"{b}.1", (0, 2)), c.rows(f"{b}.3", (0, 2)), c.norm(f"{b}.4", (0, 2)),
             c.cols(f"{b}.5", (0, 2)))
    c.mask(_weight("conv5.0", 0, (4,)))
    c.remove(c.rows("conv5.0", (4,)), c.norm("conv5.1", (4,)), c.cols("fc", (4,)))
    c.mask(_weight(f"{s00}.branch2.5", 0, (3,)))
    c.keep("stages.0.0.branch2.5 row 3: one half of the shuffle's (2, C/2) view", "rectangle")
    return c.case


def senet(m: nn.Module) -> Case:
    """SE-ResNet: out = relu(se(bn2(conv2(relu(bn1(conv1 x))))) + shortcut x); se(y) = y ·
    gate(y) (SEConv: pool → gate.1 → ReLU → gate.3 → σ; SELinear: mean → fc1 → ReLU → fc2 → σ).
    A branch channel whose conv2 filter is masked is zero whatever the gate: the product
    goes, with the gate's last layer's row and bias and its first layer's column."""
    c = Cuts(m)
    c.mask(_weight("stages.0.0.conv1", 0, (0, 1)))
    c.remove(c.rows("stages.0.0.conv1", (0, 1)), c.norm("stages.0.0.bn1", (0, 1)), c.cols("stages.0.0.conv2", (0, 1)))
    c.mask(_weight("stages.0.1.se.fc1", 0, (3,)))  # an SE's own hidden channel
    c.remove(c.rows("stages.0.1.se.fc1", (3,)), c.cols("stages.0.1.se.fc2", (3,)))
    c.mask(_weight("stages.1.0.se.gate.1", 0, (2,)))
    c.remove(c.rows("stages.1.0.se.gate.1", (2,)), c.cols("stages.1.0.se.gate.3", (2,)))

    def gated_branch(block: str, ch: int) -> list[Cut]:
        se = f"{block}.se.gate.1", f"{block}.se.gate.3"
        if f"{block}.se.fc1" in c.mods:
            se = f"{block}.se.fc1", f"{block}.se.fc2"
        return c.rows(f"{block}.conv2", (ch,)) + c.norm(f"{block}.bn2", (ch,)) + c.cols(se[0], (ch,)) + c.rows(se[1], (ch,))

    # stage 0's stream (identity shortcuts) channel 3: the stem and both blocks' conv2
    c.mask(_weight("conv1", 0, (3,)), _weight("stages.0.0.conv2", 0, (3,)), _weight("stages.0.1.conv2", 0, (3,)))
    c.remove(c.rows("conv1", (3,)), c.norm("bn1", (3,)))
    for blk in ("stages.0.0", "stages.0.1"):
        c.remove(c.cols(f"{blk}.conv1", (3,)), gated_branch(blk, 3))
    c.remove(c.cols("stages.1.0.conv1", (3,)), c.cols("stages.1.0.shortcut.0", (3,)))
    # stage 2's stream channel 5: block 0's conv2 and shortcut, block 1's conv2
    c.mask(_weight("stages.2.0.conv2", 0, (5,)), _weight("stages.2.0.shortcut.0", 0, (5,)),
           _weight("stages.2.1.conv2", 0, (5,)))
    c.remove(gated_branch("stages.2.0", 5), c.rows("stages.2.0.shortcut.0", (5,)),
             c.norm("stages.2.0.shortcut.1", (5,)), c.cols("stages.2.1.conv1", (5,)), gated_branch("stages.2.1", 5),
             c.cols("fc", (5,)))
    return c.case


def unet(m: nn.Module) -> Case:
    """enc1 → enc2 → enc3 → bottleneck (each a DoubleConv: block.0/1 and block.3/4), then
    up3, up2 (ConvTranspose2d: weight (in, out, 2, 2)) and up1 (bilinear + 1×1 reduce), each
    concatenating [skip, up] into a DoubleConv, then the 1×1 head (the output)."""
    c = Cuts(m)
    c.mask(_weight("enc1.block.0", 0, (0, 1)))
    c.remove(c.rows("enc1.block.0", (0, 1)), c.norm("enc1.block.1", (0, 1)), c.cols("enc1.block.3", (0, 1)))
    # enc1's output channel 2 is the skip: read by enc2 (after the pool) and by up1's concat at 2
    c.mask(_weight("enc1.block.3", 0, (2,)))
    c.remove(c.rows("enc1.block.3", (2,)), c.norm("enc1.block.4", (2,)), c.cols("enc2.block.0", (2,)),
             c.cols("up1.conv.block.0", (2,)))
    c.mask(_weight("bottleneck.block.3", 0, (0,)))  # read by up3's transposed conv: its dim 0
    c.remove(c.rows("bottleneck.block.3", (0,)), c.norm("bottleneck.block.4", (0,)), c.cols("up3.up", (0,), dim=0))
    w3 = m.up3.up.out_channels  # up3's output channel 5 follows the skip's w3 channels in the concat
    c.mask(_weight("up3.up", 1, (5,)))
    c.remove(c.rows("up3.up", (5,), dim=1), c.cols("up3.conv.block.0", (w3 + 5,)))
    w1 = m.up1.reduce.out_channels
    c.mask(_weight("up1.reduce", 0, (3,)))
    c.remove(c.rows("up1.reduce", (3,)), c.cols("up1.conv.block.0", (w1 + 3,)))
    c.mask(_weight("head", 0, (0,)))
    c.keep("head row 0", "graph output")
    return c.case


CNN_CUTS: dict[str, Callable[[nn.Module], Case]] = {
    "vgg16": vgg, "vgg11_small": vgg, "resnet18": resnet_basic, "resnet_tiny": resnet_basic,
    "resnet50": resnet_bottleneck, "mobilenetv2": mobilenetv2, "mobilenetv2_small": mobilenetv2,
    "densenet_small": densenet, "shufflenetv2_small": shufflenetv2, "senet_small": senet, "unet_small": unet,
}


# --------------------------------------------------------------------------- transformers
def _head(h: int, d: int) -> range:
    """The rows (columns) of head ``h`` in a (heads · d) projection."""
    return range(h * d, (h + 1) * d)


def vit(m: nn.Module, attention: bool = True) -> Case:
    """timm ViT: qkv viewed as (3, heads, head_dim) at once, so a channel (h, d) of q, k and v
    is one group with proj's column (h, d); the residual stream's channel c is made by the
    patch conv, cls_token, pos_embed and every block's proj and fc2, and read by every
    norm, qkv, fc1 and the head. The class reshapes the heads' output to the stream's width
    (``reshape(B, N, C)``, C = x.shape[-1]): with heads or hidden channels cut it cannot run
    slim (``attention=False``: the FFN cut alone, which it can)."""
    c = Cuts(m)
    C, H = m.head.in_features, m.blocks[0].attn.num_heads
    D = C // H
    c.mask(_weight("blocks.1.mlp.fc1", 0, range(10)))
    c.remove(c.rows("blocks.1.mlp.fc1", range(10)), c.cols("blocks.1.mlp.fc2", range(10)))
    if not attention:
        return c.case
    head1 = _head(1, D)
    c.mask(_weight("blocks.0.attn.proj", 1, head1))  # head 1's output columns: the head goes
    c.remove(c.cols("blocks.0.attn.proj", head1), c.rows("blocks.0.attn.qkv", [i + k * C for k in range(3) for i in head1]))
    dim3 = [h * D + 3 for h in range(H)]  # head-dim channel 3 in every head
    c.mask(_weight("blocks.3.attn.proj", 1, dim3))
    c.remove(c.cols("blocks.3.attn.proj", dim3), c.rows("blocks.3.attn.qkv", [i + k * C for k in range(3) for i in dim3]))
    ch = 7
    c.mask(_weight("patch_embed.proj", 0, (ch,)), ("cls_token", 2, (ch,)), ("pos_embed", 2, (ch,)))
    c.remove(c.rows("patch_embed.proj", (ch,)), ("cls_token", 2, (ch,)), ("pos_embed", 2, (ch,)))
    for i in range(len(m.blocks)):
        b = f"blocks.{i}"
        c.mask(_weight(f"{b}.attn.proj", 0, (ch,)), _weight(f"{b}.mlp.fc2", 0, (ch,)))
        c.remove(c.norm(f"{b}.norm1", (ch,)), c.cols(f"{b}.attn.qkv", (ch,)), c.rows(f"{b}.attn.proj", (ch,)),
                 c.norm(f"{b}.norm2", (ch,)), c.cols(f"{b}.mlp.fc1", (ch,)), c.rows(f"{b}.mlp.fc2", (ch,)))
    c.remove(c.norm("norm", (ch,)), c.cols("head", (ch,)))
    c.no_user_class("Attention reshapes its output to the stream's width C = x.shape[-1], not heads · head_dim",
                    "failed to run")
    return c.case


def bert(m: nn.Module) -> Case:
    """HF BERT (post-LN): query/key/value Linears viewed as (heads, head_dim); the stream's
    channel c is made by the three embedding tables and every attention.output.dense and
    output.dense row, carried through every LayerNorm, read by query/key/value,
    intermediate.dense and the pooler."""
    c = Cuts(m)
    att = m.layer[0].attention.self
    D = att.attention_head_size
    head2 = _head(2, D)
    s = "layer.0.attention"
    c.mask(_weight(f"{s}.self.query", 0, head2))  # head 2's queries: the head is zero, it goes
    c.remove(*[c.rows(f"{s}.self.{w}", head2) for w in ("query", "key", "value")], c.cols(f"{s}.output.dense", head2))
    c.mask(_weight("layer.1.intermediate.dense", 0, range(16)))
    c.remove(c.rows("layer.1.intermediate.dense", range(16)), c.cols("layer.1.output.dense", range(16)))
    c.mask(_weight("pooler", 0, (3,)))
    c.remove(c.rows("pooler", (3,)), c.cols("classifier", (3,)))
    ch = 5
    emb = "embeddings"
    c.mask(*[_weight(f"{emb}.{t}_embeddings", 1, (ch,)) for t in ("word", "position", "token_type")])
    c.remove(*[_weight(f"{emb}.{t}_embeddings", 1, (ch,)) for t in ("word", "position", "token_type")],
             c.norm(f"{emb}.LayerNorm", (ch,)))
    for i in range(len(m.layer)):
        L = f"layer.{i}"
        c.mask(_weight(f"{L}.attention.output.dense", 0, (ch,)), _weight(f"{L}.output.dense", 0, (ch,)))
        c.remove(*[c.cols(f"{L}.attention.self.{w}", (ch,)) for w in ("query", "key", "value")],
                 c.rows(f"{L}.attention.output.dense", (ch,)), c.norm(f"{L}.attention.output.LayerNorm", (ch,)),
                 c.cols(f"{L}.intermediate.dense", (ch,)), c.rows(f"{L}.output.dense", (ch,)),
                 c.norm(f"{L}.output.LayerNorm", (ch,)))
    c.remove(c.cols("pooler", (ch,)))
    return c.case


def gpt(m: nn.Module, attention: bool = True) -> Case:
    """nanoGPT: c_attn split in q, k, v, each viewed as (heads, head_dim); lm_head is wte
    (tied: one parameter, transformer.wte.weight, a source and a sink of the stream). The
    class takes head_dim = C // n_head and views the heads' output as C, from the stream's
    width: with heads or hidden channels cut it cannot run slim (``attention=False``: the
    FFN cut alone)."""
    c = Cuts(m)
    C, H = m.transformer.wte.weight.shape[1], m.transformer.h[0].attn.n_head
    D = C // H
    c.mask(_weight("transformer.h.1.mlp.c_fc", 0, (1, 2)))
    c.remove(c.rows("transformer.h.1.mlp.c_fc", (1, 2)), c.cols("transformer.h.1.mlp.c_proj", (1, 2)))
    if not attention:
        return c.case
    head3 = _head(3, D)
    a = "transformer.h.0.attn"
    c.mask(_weight(f"{a}.c_proj", 1, head3))
    c.remove(c.cols(f"{a}.c_proj", head3), c.rows(f"{a}.c_attn", [i + k * C for k in range(3) for i in head3]))
    ch = 9
    c.mask(_weight("transformer.wte", 1, (ch,)), _weight("transformer.wpe", 1, (ch,)))
    c.remove(_weight("transformer.wte", 1, (ch,)), _weight("transformer.wpe", 1, (ch,)), c.norm("transformer.ln_f", (ch,)))
    for i in range(len(m.transformer.h)):
        b = f"transformer.h.{i}"
        c.mask(_weight(f"{b}.attn.c_proj", 0, (ch,)), _weight(f"{b}.mlp.c_proj", 0, (ch,)))
        c.remove(c.norm(f"{b}.ln_1", (ch,)), c.cols(f"{b}.attn.c_attn", (ch,)), c.rows(f"{b}.attn.c_proj", (ch,)),
                 c.norm(f"{b}.ln_2", (ch,)), c.cols(f"{b}.mlp.c_fc", (ch,)), c.rows(f"{b}.mlp.c_proj", (ch,)))
    c.no_user_class("CausalSelfAttention views its heads' output as the stream's width C = x.size(-1)",
                    "failed to run")
    return c.case


def llama(m: nn.Module) -> Case:
    """HF LLaMA: GQA (query head h reads key/value head h // (heads / kv_heads)), SwiGLU
    (down(silu(gate x) · up x): a masked gate row kills the product), RMSNorm γ followers."""
    c = Cuts(m)
    att = m.model.layers[0].self_attn
    D, g = att.head_dim, att.num_key_value_groups
    a = "model.layers.0.self_attn"
    c.mask(_weight(f"{a}.k_proj", 0, _head(1, D)))  # kv head 1's keys: it goes with query heads 1·g … 2·g-1
    q_rows = [i for h in range(g, 2 * g) for i in _head(h, D)]
    c.remove(c.rows(f"{a}.q_proj", q_rows), c.rows(f"{a}.k_proj", _head(1, D)), c.rows(f"{a}.v_proj", _head(1, D)),
             c.cols(f"{a}.o_proj", q_rows))
    f = "model.layers.1.mlp"
    c.mask(_weight(f"{f}.gate_proj", 0, range(8)))
    c.remove(c.rows(f"{f}.gate_proj", range(8)), c.rows(f"{f}.up_proj", range(8)), c.cols(f"{f}.down_proj", range(8)))
    ch = 11
    c.mask(_weight("model.embed_tokens", 1, (ch,)))
    c.remove(_weight("model.embed_tokens", 1, (ch,)), c.norm("model.norm", (ch,)), c.cols("lm_head", (ch,)))
    for i in range(len(m.model.layers)):
        L = f"model.layers.{i}"
        c.mask(_weight(f"{L}.self_attn.o_proj", 0, (ch,)), _weight(f"{L}.mlp.down_proj", 0, (ch,)))
        c.remove(c.norm(f"{L}.input_layernorm", (ch,)), c.norm(f"{L}.post_attention_layernorm", (ch,)),
                 *[c.cols(f"{L}.self_attn.{w}_proj", (ch,)) for w in "qkv"], c.rows(f"{L}.self_attn.o_proj", (ch,)),
                 *[c.cols(f"{L}.mlp.{w}_proj", (ch,)) for w in ("gate", "up")], c.rows(f"{L}.mlp.down_proj", (ch,)))
    return c.case


CUTS: dict[str, Callable[[nn.Module], Case]] = {
    **CNN_CUTS, "vit_tiny": vit, "bert_tiny": bert, "gpt_tiny": gpt, "llama_tiny": llama,
}
# the FFN cut alone: what ViT's and nanoGPT's own classes can take
FFN_ONLY: dict[str, Callable[[nn.Module], Case]] = {
    "vit_tiny": functools.partial(vit, attention=False), "gpt_tiny": functools.partial(gpt, attention=False),
}
