"""Ops of libraries slimc does not import, keyed by qualified name (rules as data).

Drop-path / stochastic depth scales every sample by 0 or 1/(1-p) (the identity in eval):
channel-wise, and a zero stays zero. ``torchvision.ops.stochastic_depth`` is an
``fx.wrap``-ed function, so fx records a call to it; torchvision's ``StochasticDepth`` and
timm's ``DropPath`` modules are kept whole while tracing, so that their training flag is
not frozen, and :mod:`slimc.lowering` rewrites all of them into plain torch ops.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Callable

from torch import fx, nn

from slimc.shape_rules import ByName, Coupling, OpView, Unsupported, identity_all, shape_rule


@dataclass(frozen=True)
class DropPath:
    """What a drop-path call does: drop with probability ``p`` per sample (``per_sample``)
    or for the whole batch, scale the kept ones by 1/(1-p) (``scale``), when ``training``."""

    x: fx.Node
    p: Any
    per_sample: bool
    scale: bool
    training: Any


def _arg(node: fx.Node, i: int, name: str, default: Any) -> Any:
    if i < len(node.args):
        return node.args[i]
    return node.kwargs.get(name, default)


# function → (node → DropPath)
DROP_PATH_FUNCTIONS: dict[ByName, Callable[[fx.Node], DropPath]] = {
    ByName("torchvision.ops.stochastic_depth.stochastic_depth"): lambda n: DropPath(
        _arg(n, 0, "input", None), _arg(n, 1, "p", None), _arg(n, 2, "mode", "row") == "row", True,
        _arg(n, 3, "training", True)),
}
for _mod in ("timm.layers.drop", "timm.models.layers.drop"):
    DROP_PATH_FUNCTIONS[ByName(f"{_mod}.drop_path")] = lambda n: DropPath(
        _arg(n, 0, "x", None), _arg(n, 1, "drop_prob", 0.0), True, _arg(n, 3, "scale_by_keep", True),
        _arg(n, 2, "training", False))

# module class → (module, input node → DropPath); the training flag is the module's own
DROP_PATH_MODULES: dict[ByName, Callable[[nn.Module, fx.Node], DropPath]] = {
    ByName("torchvision.ops.stochastic_depth.StochasticDepth"): lambda m, x: DropPath(
        x, m.p, m.mode == "row", True, None),
}
for _mod in ("timm.layers.drop", "timm.models.layers.drop"):
    DROP_PATH_MODULES[ByName(f"{_mod}.DropPath")] = lambda m, x: DropPath(
        x, m.drop_prob, True, getattr(m, "scale_by_keep", True), None)


@shape_rule(*DROP_PATH_FUNCTIONS, *DROP_PATH_MODULES)
def drop_path(op: OpView) -> Coupling | Unsupported:
    """Drop-path / stochastic depth (torchvision, timm; keyed by name): every sample scaled
    by 0 or 1/(1-p), so every dim passes and zeros stay zero."""
    x = op.arg(0, "input")
    if not isinstance(x, fx.Node) or op.shape(x) != op.out_shape:
        return Unsupported("drop-path whose output shape differs from its input")
    return identity_all(Coupling(), op, x)
