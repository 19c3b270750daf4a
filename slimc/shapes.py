"""Node shapes of a traced graph, without arithmetic.

An ``fx.Interpreter`` runs the graph once with every tensor on the meta device and records
each node's output shape in ``node.meta["shape"]`` (a tuple; a list for tuple outputs;
None for non-tensors). Meta kernels of elementwise ops and norms are Python reference
code, slower than the real arithmetic of a small network; so a norm or elementwise
activation *layer* — whose output has its input's shape and dtype by definition — is not
run: its output is made like its input. A model that reads values (data-dependent shapes)
cannot run on meta: it runs for real, every node.
"""
from __future__ import annotations

import contextlib
from typing import Any

import torch
from torch import fx, nn
from torch.fx.passes.shape_prop import TensorMetadata
from slimc.modes import eval_mode


def _same_shape_modules() -> tuple[type, ...]:
    from slimc.shape_rules.elementwise import UNARY_MODULES

    return (nn.modules.batchnorm._NormBase, nn.GroupNorm, nn.LayerNorm, *UNARY_MODULES)


def shape(x: Any) -> Any:
    """A value's shape: a tuple for a tensor, a list for a tuple holding tensors, else None."""
    if isinstance(x, torch.Tensor):
        return tuple(int(s) for s in x.shape)
    if isinstance(x, (list, tuple)) and any(isinstance(e, torch.Tensor) or isinstance(e, (list, tuple)) for e in x):
        out = [shape(e) for e in x]
        return out if any(o is not None for o in out) else None
    return None


class ShapeRecorder(fx.Interpreter):
    """Runs the graph and records ``node.meta["shape"]``; ``skip_same_shape``: layers whose
    output has their input's shape (norms, activations) are not run (meta tensors only:
    on real tensors later ops may read their values)."""

    same_shape: tuple[type, ...] = ()

    def __init__(self, gm: fx.GraphModule, skip_same_shape: bool, into: dict[str, Any] | None = None):
        super().__init__(gm)
        self.skip = skip_same_shape
        self.into = into  # node name → shape here instead of node.meta (a graph whose meta is kept)
        if skip_same_shape and not ShapeRecorder.same_shape:
            ShapeRecorder.same_shape = _same_shape_modules()

    def run_node(self, n: fx.Node) -> Any:
        result = super().run_node(n)
        if self.into is None:
            n.meta["shape"] = shape(result)
        else:
            self.into[n.name] = shape(result)
        return result

    def call_module(self, target, args, kwargs):
        if self.skip and args and isinstance(args[0], torch.Tensor):
            mod = self.fetch_attr(target)
            if isinstance(mod, self.same_shape):
                return torch.empty_like(args[0])
            out = _by_formula(mod, args[0]) if len(args) == 1 and not kwargs else None
            if out is not None:
                return torch.empty(out, dtype=args[0].dtype, device=args[0].device)
        return super().call_module(target, args, kwargs)


_CONVS = (nn.Conv1d, nn.Conv2d, nn.Conv3d)


def _by_formula(mod: nn.Module, x: torch.Tensor) -> tuple[int, ...] | None:
    """The output shape of a plain Linear or Conv layer (batched input), by its formula:
    the meta kernels of convolutions are Python code, slower than the formula."""
    if type(mod) is nn.Linear:
        return (*x.shape[:-1], mod.out_features) if x.dim() >= 1 and x.shape[-1] == mod.in_features else None
    if type(mod) in _CONVS and not isinstance(mod.padding, str) and x.dim() == mod.weight.dim() \
            and x.shape[1] == mod.in_channels:
        spatial = [(n + 2 * p - d * (k - 1) - 1) // s + 1
                   for n, p, d, k, s in zip(x.shape[2:], mod.padding, mod.dilation, mod.kernel_size, mod.stride)]
        return (x.shape[0], mod.out_channels, *spatial) if all(v > 0 for v in spatial) else None
    return None


@contextlib.contextmanager
def tensors_on_meta(gm: nn.Module):
    """Every parameter and buffer of ``gm``'s modules on the meta device meanwhile (entries
    swapped in the modules' own dicts — gm is slimc's copy — and put back after)."""
    swapped = []
    for mod in gm.modules():
        for store in (mod._parameters, mod._buffers):
            for k, t in store.items():
                if t is not None and not t.is_meta:
                    swapped.append((store, k, t))
                    store[k] = t.detach().to("meta")
    try:
        yield
    finally:
        for store, k, t in swapped:
            store[k] = t


def _on_meta(inputs: tuple) -> tuple:
    return tuple(x.to("meta") if isinstance(x, torch.Tensor) else x for x in inputs)


def _meta_shape(meta: Any) -> Any:
    if isinstance(meta, TensorMetadata):
        return tuple(int(s) for s in meta.shape)
    if isinstance(meta, (list, tuple)):
        return [_meta_shape(m) for m in meta]
    return None


def node_shape(n: fx.Node) -> Any:
    """A node's shape as recorded: ``meta["shape"]`` (:func:`propagate_shapes`), else torch's
    ShapeProp ``tensor_meta`` — a tuple, a list for tuple outputs, or None."""
    return n.meta["shape"] if "shape" in n.meta else _meta_shape(n.meta.get("tensor_meta"))


def propagate_shapes(gm: fx.GraphModule, example_inputs: tuple) -> None:
    """Record every node's shape: on the meta device where the model runs there, else by
    running it (eval mode, no grad; the mode is put back)."""
    with eval_mode(gm), torch.no_grad():
        try:
            with tensors_on_meta(gm):
                ShapeRecorder(gm, skip_same_shape=True).run(*_on_meta(example_inputs))
        except Exception:
            if all(t.is_meta for t in gm.parameters()):
                raise
            ShapeRecorder(gm, skip_same_shape=False).run(*example_inputs)


def shapes_at(gm: fx.GraphModule, inputs: tuple) -> dict[str, Any]:
    """Every node's shape (as :func:`shape`) when ``gm`` runs ``inputs`` (eval mode, no grad),
    without touching the graph's recorded ones."""
    out: dict[str, Any] = {}
    with eval_mode(gm), torch.no_grad():
        ShapeRecorder(gm, skip_same_shape=False, into=out).run(*inputs)
    return out


__all__ = ["ShapeRecorder", "node_shape", "propagate_shapes", "shape", "shapes_at", "tensors_on_meta"]
