"""Hand-derived cuts of the zoo's CNNs (slimc/zoo/: vgg, resnet, mobilenet, densenet,
shufflenet, senet, unet)."""
from __future__ import annotations

from typing import Callable

from torch import nn

from .cuts import Case, Cuts, _weight


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
