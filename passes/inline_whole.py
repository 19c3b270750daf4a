"""Modules kept whole while tracing (``shape_rules.WHOLE_MODULES``: a mixture-of-experts
experts module), inlined now that they are slim: each ``call_module`` node becomes the ATen
graph torch.export makes of the module at its new sizes (the implementation its table
entry readied: gathered weights and batched products), reading the module's parameters
by name. The slim graph then holds torch modules and ops alone (``slim.pt`` loads with
torch alone; the ONNX exporters see plain ops). Modules of one class and shapes are
exported once. Where export fails the module call stays, with a note.
"""
from __future__ import annotations

import torch
from torch import fx, nn

from slimc.errors import describe
from slimc.passes.context import PassResult, RewriteContext
from slimc.shape_rules import whole_module
from slimc.tensors import set_by_path

DROPPED = (torch.ops.aten._assert_tensor_metadata.default,)  # pins the example's device: not kept


def _example(node: fx.Node, module: nn.Module, plan) -> tuple:
    """Inputs shaped like the node's at the slim sizes (at least 2 along the first dim, which
    stays dynamic): floats in the module's dtype; the inputs its table entry names indices
    below its first parameter's leading size (the expert count)."""
    p = next(module.parameters())
    indices = whole_module(type(module)).indices
    out = []
    for i, x in enumerate(node.args):
        new = [plan.new_size(("v", x.name, d)) for d in range(len(plan.dg.shapes[x.name]))]
        new[0] = max(2, new[0])
        if i in indices:
            out.append(torch.randint(0, p.shape[0], new, device=p.device))
        else:
            out.append(torch.randn(new, device=p.device, dtype=p.dtype))
    return tuple(out)


def _exported(module: nn.Module, example: tuple) -> fx.GraphModule:
    dyn = tuple({0: torch.export.Dim.AUTO, **{d: torch.export.Dim.STATIC for d in range(1, t.dim())}}
                for t in example)
    with torch.no_grad():
        sub = torch.export.export(module, example, dynamic_shapes=dyn, strict=False).module()
    return sub


def _splice(gm: fx.GraphModule, node: fx.Node, sub: fx.GraphModule) -> None:
    """``sub``'s nodes in place of ``node``: its inputs are the node's args, its get_attr nodes
    read ``node.target``'s tensors."""
    env: dict[fx.Node, fx.Node] = {}
    inputs = iter(node.args)
    with gm.graph.inserting_before(node):
        for n in sub.graph.nodes:
            if n.op == "placeholder":
                env[n] = next(inputs)
            elif n.op == "get_attr":
                env[n] = gm.graph.get_attr(f"{node.target}.{n.target}")
            elif n.op == "output":
                out = n.args[0]
                result = env[out[0] if isinstance(out, (tuple, list)) else out]
            elif (n.op == "call_module" and not n.users) or n.target in DROPPED:
                continue
            else:  # made by the module's call: its source line and module stack
                env[n] = gm.graph.node_copy(n, lambda a: env[a])
                env[n].meta.update({k: node.meta[k] for k in ("stack_trace", "nn_module_stack") if k in node.meta})
    node.replace_all_uses_with(result)
    gm.graph.erase_node(node)


def _holder(module: nn.Module) -> nn.Module:
    """A plain module holding ``module``'s parameters and buffers under their names."""
    holder = nn.Module()
    for name, t in module.named_parameters(recurse=False):
        holder.register_parameter(name, t)
    for name, t in module.named_buffers(recurse=False):
        holder.register_buffer(name, t)
    return holder


def run(gm: fx.GraphModule, ctx: RewriteContext) -> PassResult:
    notes: list[str] = []
    exported: dict[tuple, fx.GraphModule | None] = {}
    modified = False
    for node in [n for n in gm.graph.nodes if n.op == "call_module"]:
        module = gm.get_submodule(node.target)
        if whole_module(type(module)) is None:
            continue
        example = _example(node, module, ctx.plan)
        key = (type(module), tuple((n, tuple(t.shape), t.dtype) for n, t in module.named_parameters()),
               tuple((tuple(t.shape[1:]), t.dtype) for t in example))
        if key not in exported:
            try:
                exported[key] = _exported(module, example)
            except Exception as e:  # the module's code may not export: it stays a module call
                exported[key] = None
                notes.append(f"{node.target}: kept as a {type(module).__name__} call ({describe(e, 120)})")
        if exported[key] is None:
            continue
        _splice(gm, node, exported[key])
        set_by_path(gm, node.target, _holder(module))
        modified = True
    return PassResult(gm, modified, notes)


__all__ = ["run"]
