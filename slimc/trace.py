"""Front ends: nn.Module → torch.fx GraphModule with shape metadata.

* ``fx``: ``torch.fx`` symbolic trace, standard ``torch.nn`` modules as leaves.
* ``export``: ``torch.export.export(strict=False)`` then the unlifted GraphModule,
  for models with data-dependent Python control flow; ATen-level ops.
* ``auto``: try ``fx``, fall back to ``export``, and say which one was used (Hugging Face
  models go to ``export`` first: fx cannot trace them).
"""
from __future__ import annotations

import linecache
import sys
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import fx, nn

from slimc.absent import absent_inputs
from slimc.blocks import Blocks, NotRepeated, find_blocks, traced_by_blocks
from slimc.copying import clean
from slimc.errors import TraceError, describe
from slimc.lowering import live_batch_norm_flags, lower
from slimc.module_copy import copy_module
from slimc.shapes import node_shape, propagate_shapes
from slimc.tensors import owner_of, set_by_path
from slimc.modes import eval_mode
from slimc.whole import as_modules, kept_whole, ready_for_graph


@dataclass
class Traced:
    gm: fx.GraphModule
    front_end: str
    notes: list[str] = field(default_factory=list)
    real_tensors: dict[str, torch.Tensor] = field(default_factory=dict)  # set aside by a meta trace
    # input index → dims the front end kept dynamic (export); None: not known (fx traces every size)
    dynamic_dims: dict[int, list[int]] | None = None
    # input index → {dim: the name of its size} (export's symbols): dims of one name keep one
    # size (a batch, the lengths of input_ids and its attention mask); dims of different names
    # vary independently (an encoder's and a decoder's lengths). None: not known
    dim_names: dict[int, dict[int, str]] | None = None


def caches_off(model: nn.Module) -> list[str]:
    """Turn off the KV caches of HF models (``config.use_cache``) on ``model`` — a copy: the
    traced graph then returns no cache object; the user's model keeps its caches."""
    done = []
    for m in model.modules():
        cfg = getattr(m, "config", None)
        if getattr(cfg, "use_cache", None) and id(cfg) not in done:
            cfg.use_cache = False
            done.append(id(cfg))
    return ["KV cache traced off (config.use_cache=False on the traced copy)"] if done else []


def set_tensor(gm: nn.Module, name: str, t: torch.Tensor) -> None:
    """Set buffer or plain tensor attribute ``name`` (dotted path) of ``gm``, if it has it."""
    try:
        mod, leaf = owner_of(gm, name)
    except AttributeError:
        return
    if leaf in mod._buffers or isinstance(getattr(mod, leaf, None), torch.Tensor):
        set_by_path(gm, name, t)


def to_meta(gm: fx.GraphModule) -> dict[str, torch.Tensor]:
    """Move every tensor of ``gm`` to the meta device (params already are: a plan from shapes
    alone); return the real buffers and traced constants, to be put back after the rewrite."""
    real: dict[str, torch.Tensor] = {}
    names = {n.target for n in gm.graph.nodes if n.op == "get_attr"} | {n for n, _ in gm.named_buffers()}
    for name in sorted(names):
        mod, leaf = owner_of(gm, name)
        t = getattr(mod, leaf, None)
        if isinstance(t, torch.Tensor) and not isinstance(t, nn.Parameter) and not t.is_meta:
            real[name] = t
            set_tensor(gm, name, t.to("meta"))
    return real


def shapes_of(gm: fx.GraphModule) -> dict[str, Any]:
    """node name → shape tuple, list of shapes (tuple outputs), or None (recorded by
    :func:`slimc.shapes.propagate_shapes`, or by torch's ShapeProp)."""
    return {n.name: node_shape(n) for n in gm.graph.nodes}


def tree_copy(model: nn.Module) -> nn.Module:
    """A copy of ``model``'s objects (modules, attributes, config) whose parameters are the
    model's own: no weight is copied. Buffers are copied (small, and a traced graph may
    write them in place: a BatchNorm subclass traced in train mode counts its batches).
    What is traced and rewritten is this copy; :func:`own_tensors` gives the result tensors
    of its own."""
    memo: dict[int, object] = {id(t): t for t in model.parameters()}
    return copy_module(model, memo)


def own_tensors(gm: nn.Module, original: nn.Module) -> None:
    """Clone every parameter and buffer that ``gm`` still shares with ``original`` (tied
    ones stay tied), so that training one never changes the other."""
    theirs = {id(t) for t in [*original.parameters(), *original.buffers()]}
    new: dict[int, torch.Tensor] = {}
    with torch.no_grad():
        for mod in gm.modules():
            for store in (mod._parameters, mod._buffers):
                for k, t in store.items():
                    if t is None or id(t) not in theirs:
                        continue
                    if id(t) not in new:
                        c = t.detach().clone()
                        new[id(t)] = nn.Parameter(c, requires_grad=t.requires_grad) if isinstance(t, nn.Parameter) else c
                    store[k] = new[id(t)]


_DROPOUTS = {
    torch.nn.functional.dropout: 2, torch.nn.functional.dropout1d: 2, torch.nn.functional.dropout2d: 2,
    torch.nn.functional.dropout3d: 2, torch.nn.functional.alpha_dropout: 2,
    torch.nn.functional.feature_alpha_dropout: 2,
}


def _live_training_flags(graph: fx.Graph, training: bool) -> None:
    """`F.dropout(x, p, self.training)` traces `self.training` as a constant; read it from
    the module at run time instead, so the slim model's dropout follows .train()/.eval().
    Only where the source line names `training` (a literal True/False stays literal)."""
    from slimc.graph import source_line

    for n in graph.nodes:
        pos = _DROPOUTS.get(n.target) if n.op == "call_function" else None
        if pos is None:
            continue
        flag = n.args[pos] if len(n.args) > pos else n.kwargs.get("training")
        if flag is training and "training" in source_line(n):
            with graph.inserting_before(n):
                attr = graph.get_attr("training")
            if len(n.args) > pos:
                a = list(n.args)
                a[pos] = attr
                n.args = tuple(a)
            else:
                n.kwargs = {**n.kwargs, "training": attr}


class _Tracer(fx.Tracer):
    """torch.nn modules with a shape rule stay leaves; others (a TransformerEncoderLayer,
    a MultiheadAttention) are traced into, so their parts can be seen — or, if their code
    is not traceable, the export front end takes over. ``leaf_all``: every torch.nn module
    is a leaf (the last resort: one without a rule is then a barrier)."""

    def __init__(self, leaf_all: bool = False):
        super().__init__()
        self.leaf_all = leaf_all

    def is_leaf_module(self, m: nn.Module, qualname: str) -> bool:
        from slimc.lowering import kept_whole as lowered_later
        from slimc.shape_rules import module_rule, whole_module

        if lowered_later(m) or whole_module(type(m)) is not None:  # a library's drop-path (lowered
            return True  # to plain torch ops after the trace); a module its rule describes whole
        if not super().is_leaf_module(m, qualname):
            return False
        return self.leaf_all or module_rule(type(m)) is not None

    def create_node(self, *args, **kwargs) -> fx.Node:
        node = super().create_node(*args, **kwargs)
        if not node.stack_trace:
            node.stack_trace = user_frame()
        return node


def user_frame() -> str:
    """The innermost frame of the user's code that made the node being traced, formatted
    like a traceback entry (what reports and the user's-class sizes read: ``graph.source_line``).
    One frame, not the whole stack: formatting every frame of every node would cost more
    than the trace itself."""
    f = sys._getframe(2)
    while f is not None and f.f_code is not _TRACE_CODE:
        name = f.f_code.co_filename
        if "/torch/" not in name and "\\torch\\" not in name:
            code = linecache.getline(name, f.f_lineno).strip()
            return f'File "{name}", line {f.f_lineno}, in {f.f_code.co_name}\n    {code}'
        f = f.f_back
    return ""


_TRACE_CODE = fx.Tracer.trace.__code__


def trace_fx(model: nn.Module, leaf_all: bool = False, example_inputs: tuple = ()) -> fx.GraphModule:
    """``forward`` parameters the example inputs do not give (``attn_mask=None``), and inputs
    given as ``None``, are traced as the constants they are, not as graph inputs."""
    from slimc.inputs import forward_params, untaken_defaults

    tracer = _Tracer(leaf_all)  # records the user's source line of every node (reports, `inspect`)
    concrete = untaken_defaults(model, len(example_inputs)) if example_inputs else {}
    for p, x in zip(forward_params(model), example_inputs):
        if x is None or isinstance(x, (bool, int, float, str)):
            concrete[p.name] = x
    graph = tracer.trace(model, concrete_args=concrete or None)
    _live_training_flags(graph, model.training)
    live_batch_norm_flags(graph, model.training)  # a BatchNorm subclass's own F.batch_norm
    # forward() type annotations become node types, and torch 2.13 cannot pickle a
    # GraphModule whose code references them (torch.save fails on '_torch_Tensor_').
    for n in graph.nodes:
        n.type = None
    return fx.GraphModule(tracer.root, graph, model.__class__.__name__)


def _symbolic_dims(gm: fx.GraphModule, example_inputs: tuple) -> dict[int, dict[int, str]]:
    """Input index → {dim: its symbol}: the dims export kept symbolic (the model lets them
    vary); dims that share a symbol are ones the model needs equal."""
    vals = [n.meta.get("val") for n in gm.graph.nodes if n.op == "placeholder"]
    vals = [v for v in vals if isinstance(v, torch.Tensor)]
    positions = [i for i, x in enumerate(example_inputs) if isinstance(x, torch.Tensor)]
    return {i: {d: str(s) for d, s in enumerate(v.shape) if not isinstance(s, int)} for i, v in zip(positions, vals)}


def _auto_dims(inputs: tuple) -> tuple:
    """``Dim.AUTO`` for every dim of every tensor but those of size 0 or 1 (export would
    specialize them, and say so)."""
    return tuple({d: torch.export.Dim.AUTO for d, n in enumerate(t.shape) if n > 1}
                 if isinstance(t, torch.Tensor) and t.dim() else None for t in inputs)


def trace_export(model: nn.Module, example_inputs: tuple) -> tuple[fx.GraphModule, dict[int, dict[int, str]]]:
    """Every dim of every tensor input is marked ``Dim.AUTO``: export keeps dynamic what the
    model lets vary (batch, sequence length, image size) and specializes the rest. Export
    specializes every size 0 or 1, so a batch of 1 is traced as 2 (:func:`batch_of_two`;
    as given where the model refuses that), and other dims of size 1 stay static. Returns the
    graph and the symbol of every dynamic input dim (:func:`_symbolic_dims`)."""
    from slimc.inputs import batch_of_two

    was = model.training
    wide = batch_of_two(example_inputs)
    with eval_mode(model), kept_whole(model) as whole:
        ep = None
        if wide is not None:
            try:
                ep = torch.export.export(model, wide, dynamic_shapes=_auto_dims(wide), strict=False)
            except Exception:  # the model takes no other batch: traced at the example's
                ep = None
        if ep is None:
            ep = torch.export.export(model, example_inputs, dynamic_shapes=_auto_dims(example_inputs), strict=False)
    unlifted = ep.module()
    names = _symbolic_dims(unlifted, example_inputs)
    # the unlifted module refuses .train()/.eval(); a plain GraphModule over the same graph does not.
    # Its graph remembers export's tracer class, which cannot re-trace when torch.load unpickles it.
    unlifted.graph._tracer_cls = None
    gm = fx.GraphModule(unlifted, unlifted.graph, model.__class__.__name__)
    gm._tracer_cls, gm._tracer_extras = None, {}
    # export's input guards pin the example's shapes (batch size included): drop them
    for n in list(gm.graph.nodes):
        if n.op == "call_module" and type(gm.get_submodule(n.target)).__name__ == "GuardsFn" and not n.users:
            gm.graph.erase_node(n)
            gm.delete_submodule(n.target)
    as_modules(gm, model, whole)  # the modules kept whole: call_module nodes of their own
    absent_inputs(gm, example_inputs)
    gm.recompile()
    gm.train(was)
    return gm, names


def _traced_whole(model: nn.Module, fe: str, example_inputs: tuple) -> tuple[fx.GraphModule, dict | None]:
    """One front end on the whole of ``model``: (graph module with shapes, the names of the
    dynamic input dims; None where the front end does not say)."""
    dynamic = None
    if fe == "export":
        gm, dynamic = trace_export(model, example_inputs)
    else:
        gm = trace_fx(model, leaf_all=fe != "fx", example_inputs=example_inputs)
    ready_for_graph(gm)  # modules traced whole (MoE experts) run an implementation export and ONNX trace
    propagate_shapes(gm, example_inputs)
    if lower(gm, model.training):  # library calls, in-place slice writes → plain torch ops
        propagate_shapes(gm, example_inputs)
    return gm, dynamic


def trace(model: nn.Module, example_inputs: tuple, front_end: str = "auto", meta: bool = False) -> Traced:
    """Trace a copy of ``model`` (:func:`tree_copy`: its tensors shared, never written; a model
    that earlier runs left state in is cleaned first, :func:`slimc.copying.clean`); the model
    passed in is never touched. ``meta``: the parameters are on the meta device; shapes are
    propagated with every tensor there. A long list of identical blocks is traced three
    blocks deep and copied (:mod:`slimc.blocks`)."""
    model = tree_copy(clean(model))
    notes: list[str] = caches_off(model)
    errors: list[str] = []
    # "fx (leaves)": torch.nn modules without a rule kept whole (barriers), when neither
    # tracing into them nor torch.export works
    order = {"auto": ["fx", "export", "fx (leaves)"], "fx": ["fx", "fx (leaves)"], "export": ["export"]}.get(front_end)
    if order is None:
        raise TraceError(f"unknown front end '{front_end}': use auto, fx or export")
    if front_end == "auto" and _export_first(model):
        order = ["export", "fx", "fx (leaves)"]
    blocks = find_blocks(model)
    for fe in order:
        try:
            gm, names = _traced(model, fe, example_inputs, blocks, notes)
            real = to_meta(gm) if meta else {}
        except Exception as e:  # tracing user code can raise anything
            errors.append(f"{fe}: {describe(e, 200)}")
            continue
        if errors:
            notes.append(f"front end '{fe}' used; " + "; ".join(errors))
        dynamic_dims = None if names is None else {i: list(ds) for i, ds in names.items()}
        return Traced(gm, fe.split()[0], notes, real, dynamic_dims=dynamic_dims, dim_names=names)
    raise TraceError(
        "cannot trace the model (" + "; ".join(errors) + "): remove data-dependent Python control flow "
        "from forward() or try --front-end export"
    )


def _export_first(model: nn.Module) -> bool:
    """Hugging Face models: their forward() is not fx-traceable (data-dependent control flow,
    ``co_varnames`` checks), so ``auto`` goes to export without the failed fx attempt."""
    from slimc.surgery.hf import is_hf

    return is_hf(model)


def _traced(model: nn.Module, fe: str, example_inputs: tuple, blocks: Blocks | None, notes: list[str]):
    def whole(m: nn.Module):
        return _traced_whole(m, fe, example_inputs)

    if blocks is None:
        return whole(model)
    try:
        out = traced_by_blocks(model, blocks, whole)
    except NotRepeated as e:
        notes.append(f"{blocks.n} blocks of '{blocks.path}' traced one by one ({e})")
        return whole(model)
    notes.append(f"{blocks.n} identical blocks of '{blocks.path}': first and last traced, the others copied")
    return out
