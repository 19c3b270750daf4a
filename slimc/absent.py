"""Inputs traced as absent: a ``forward`` argument the example gives as ``None`` (the
``attention_mask=None`` that :func:`slimc.inputs.bind` puts between ``input_ids`` and
``decoder_input_ids``) is no input of the graph, in every front end.

fx's ``concrete_args`` already makes it so: the placeholder and every later one default to
None. The export front end keeps a placeholder for it that nothing reads;
:func:`absent_inputs` gives that graph the same defaults, so it is called with the given
inputs alone, by keyword too. Later stages that take tensors only (ONNX) leave the absent
inputs out: :func:`slimc.onnx.shapes.absent_filled`.

No guard is left in the graph against a value passed there (fx's ``_assert_is_none``, which
drop_dead removes from fx graphs too): torch re-traces a saved GraphModule's code when it
loads, and a loaded graph holding that guard registers it under a name every later fx trace
in the process then fails to find (torch 2.13).
"""
from __future__ import annotations

from torch import fx
from torch.fx.graph import _PyTreeCodeGen


class _DefaultsCodeGen(_PyTreeCodeGen):
    """export's pytree code generator, whose ``forward`` gives the arguments from ``first`` on
    the default None (in the signature only: the flattening reads the plain names). The
    generated code is plain Python: a saved module loads without slimc."""

    def __init__(self, pytree_info, first: int) -> None:
        super().__init__(pytree_info)
        self.first = first

    def gen_fn_def(self, free_vars: list[str], maybe_return_annotation: str, *, expanded_def: bool = False) -> str:
        info = self.pytree_info
        args = list(info.orig_args)
        skip = 1 if args[:1] == ["self"] else 0
        self.plain = info
        self.pytree_info = info._replace(orig_args=[a if i < self.first + skip else f"{a}=None"
                                                    for i, a in enumerate(args)])
        try:
            return super().gen_fn_def(free_vars, maybe_return_annotation, expanded_def=expanded_def)
        finally:
            self.pytree_info = info

    def gen_var_bindings(self, fn_args: list[str], free_vars: list[str], expanded_def: bool) -> str:
        defaulted = self.pytree_info
        self.pytree_info = self.plain
        try:
            return super().gen_var_bindings([a.split("=")[0] for a in fn_args], free_vars, expanded_def)
        finally:
            self.pytree_info = defaulted


def absent_inputs(gm: fx.GraphModule, example_inputs: tuple) -> list[str]:
    """Make the inputs ``example_inputs`` gives as None absent in ``gm`` (an export graph, whose
    placeholders are its positional arguments): they and every later argument default to
    None. Returns their names; call ``gm.recompile()`` after."""
    phs = [n for n in gm.graph.nodes if n.op == "placeholder"]
    if len(phs) != len(example_inputs) or all(x is not None for x in example_inputs):
        return []
    first = next(i for i, x in enumerate(example_inputs) if x is None)
    codegen = gm.graph._codegen
    if isinstance(codegen, _PyTreeCodeGen) and codegen.pytree_info is not None:
        gm.graph._codegen = _DefaultsCodeGen(codegen.pytree_info, first)
    else:
        for n in phs[first:]:
            n.args = (None,)
    return [n.name for n, x in zip(phs, example_inputs) if x is None]


__all__ = ["absent_inputs"]
