"""Slice params and buffers to the kept indices (masked entries that stay are zeroed on
the way); replace each leaf module by a smaller instance of the same class (so the slim
model fine-tunes like the original)."""
from __future__ import annotations

import copy

import torch
from torch import fx, nn

from slimc.passes.context import PassResult, RewriteContext, node_error
from slimc.shape_rules import RESIZERS, class_keys, find_resizer
from slimc.shards import sliced
from slimc.tensors import set_by_path


def _sliced(t: torch.Tensor, fqn: str, plan) -> torch.Tensor | None:
    """``t`` masked with the final masks and cut to the kept indices; None if unchanged."""
    out = sliced(plan, fqn, t)
    return None if out is t else out


def run(gm: fx.GraphModule, ctx: RewriteContext) -> PassResult:
    plan = ctx.plan
    notes: list[str] = []
    modified = False
    done: set[str] = set()
    shared: dict[int, nn.Parameter] = {}  # tied weights stay tied: one sliced Parameter per original

    def param(orig: torch.Tensor, sliced: torch.Tensor) -> nn.Parameter:
        if id(orig) not in shared:
            shared[id(orig)] = nn.Parameter(sliced, requires_grad=orig.requires_grad)
        return shared[id(orig)]

    leaves = {n.target for n in gm.graph.nodes if n.op == "call_module"}
    modules = dict(gm.named_modules(remove_duplicate=False))
    for node in gm.graph.nodes:
        if node.op == "call_module" and node.target not in done:
            done.add(node.target)
            mod = modules[node.target]
            new_tensors = {}
            for name, t in [*mod._parameters.items(), *mod._buffers.items()]:
                s = None if t is None else _sliced(t.detach(), f"{node.target}.{name}", plan)
                if s is not None:
                    new_tensors[name] = s
            x = node.args[0] if node.args and isinstance(node.args[0], fx.Node) else None
            old_in = ctx.shapes.tensor(x)
            new_in = ctx.shapes.new(x) if old_in is not None else None
            own = any(k in RESIZERS for k in class_keys(type(mod)))  # resized for its input alone
            if not new_tensors and (new_in is None or new_in == old_in or not own):
                continue
            resize = find_resizer(type(mod))
            if resize is None:
                raise node_error(node, f"no resizer for {type(mod).__name__} at '{node.target}'")
            new = copy.copy(mod)
            new._parameters = dict(mod._parameters)
            new._buffers = dict(mod._buffers)
            for name, s in new_tensors.items():
                if name in mod._parameters:
                    new._parameters[name] = param(mod._parameters[name], s)
                else:
                    new._buffers[name] = s
            sizes = {name: tuple(t.shape) for name, t in [*new._parameters.items(), *new._buffers.items()] if t is not None}
            if new_in is not None:
                sizes["__input__"] = new_in  # for modules whose sizes no param carries (affine=False)
            resize(new, sizes)
            set_by_path(gm, node.target, new)
            modified = True
        elif node.op == "get_attr" and node.target not in done and node.target.rpartition(".")[0] not in leaves:
            # (a leaf module's own param read by get_attr, e.g. `.weight.device`, is sliced with the module)
            done.add(node.target)
            owner, _, leaf = node.target.rpartition(".")
            t = getattr(modules[owner], leaf)
            if isinstance(t, torch.Tensor):
                s = _sliced(t.detach(), node.target, plan)
                if s is not None:
                    val = param(t, s) if isinstance(t, nn.Parameter) else s
                    set_by_path(gm, node.target, val)
                    modified = True
    return PassResult(gm, modified, notes, graph_changed=False)  # modules and tensors swapped, nodes kept
