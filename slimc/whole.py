"""Modules the export front end keeps whole (``shape_rules.WHOLE_MODULES``: a
mixture-of-experts experts module), as the fx front end keeps its leaves.

torch.export inlines every module. While it traces, each such module of slimc's copy is
called through an opaque op (``slimc::whole_module``: its output shaped like the input the
table names, nothing of its code traced); the op's nodes then become ``call_module`` nodes
of the modules themselves, which their rules describe whole. Either front end's modules
kept whole are then readied for the graph (the table's ``for_graph``: an implementation
that torch.export and the ONNX exporters trace, inlined at the slim sizes by the pass
``inline_whole``).
"""
from __future__ import annotations

import contextlib
import inspect
import itertools
from typing import Iterator

import torch
from torch import fx, nn

from slimc.shape_rules import WholeModule, whole_module
from slimc.tensors import set_by_path

#: key → (module, its table entry), while a trace runs
_CALLS: dict[int, tuple[nn.Module, WholeModule]] = {}
_KEYS = itertools.count()


@torch.library.custom_op("slimc::whole_module", mutates_args=())
def _whole_module(inputs: list[torch.Tensor], key: int) -> torch.Tensor:
    module, _ = _CALLS[key]
    return type(module).forward(module, *inputs)


@_whole_module.register_fake
def _(inputs: list[torch.Tensor], key: int) -> torch.Tensor:
    like = inputs[_CALLS[key][1].out_like]
    return like.new_empty(like.shape)


WHOLE_OP = torch.ops.slimc.whole_module.default


def _calling(module: nn.Module, key: int):
    sig = inspect.signature(type(module).forward)

    def forward(*args, **kwargs):
        bound = sig.bind(module, *args, **kwargs)
        bound.apply_defaults()
        values = list(bound.arguments.values())[1:]
        if not all(isinstance(v, torch.Tensor) for v in values):  # kept whole only when called on tensors
            return type(module).forward(module, *args, **kwargs)
        return torch.ops.slimc.whole_module(values, key)

    return forward


@contextlib.contextmanager
def kept_whole(model: nn.Module) -> Iterator[dict[int, str]]:
    """Meanwhile, every module of ``model`` (slimc's copy) that the table names is called
    through the opaque op. Yields key → module path."""
    paths: dict[int, str] = {}
    for path, m in model.named_modules():
        spec = whole_module(type(m))
        if spec is not None and path:
            key = next(_KEYS)
            _CALLS[key] = (m, spec)
            paths[key] = path
            m.forward = _calling(m, key)
    try:
        yield paths
    finally:
        for key in paths:
            m, _ = _CALLS.pop(key)
            m.__dict__.pop("forward", None)


def as_modules(gm: fx.GraphModule, model: nn.Module, paths: dict[int, str]) -> None:
    """The opaque op's nodes of ``gm`` (traced from ``model``) → ``call_module`` nodes of the
    modules themselves."""
    nodes = [n for n in gm.graph.nodes if n.op == "call_function" and n.target is WHOLE_OP]
    for node in nodes:
        inputs, key = node.args
        path = paths[key]
        module = model.get_submodule(path)
        set_by_path(gm, path, module)
        with gm.graph.inserting_before(node):
            call = gm.graph.call_module(path, tuple(inputs))
        call.meta = dict(node.meta)
        node.replace_all_uses_with(call)
        gm.graph.erase_node(node)
    if nodes:
        gm.recompile()


def ready_for_graph(gm: fx.GraphModule) -> None:
    """The modules ``gm`` calls whole (either front end) run what their table entry readies
    for the graph (MoE experts: batched products, which torch.export and ONNX trace)."""
    for node in gm.graph.nodes:
        if node.op == "call_module":
            module = gm.get_submodule(node.target)
            spec = whole_module(type(module))
            if spec is not None and spec.for_graph is not None:
                spec.for_graph(module)


__all__ = ["WHOLE_OP", "as_modules", "kept_whole", "ready_for_graph"]
