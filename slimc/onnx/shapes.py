"""Which input dims an export leaves dynamic, and the input shapes the onnxruntime check
runs at: the example's shape (at the first batch size), then a second shape that changes
every dynamic dim — the batch to the next batch size, any other dim to ``size + its
lowest set bit`` (16 → 32, 12 → 16: divisibility by powers of two is kept)."""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Mapping, Sequence

import torch

from slimc.errors import ExportError
from slimc.inputs import random_tensor_like

__all__ = ["DynamicDims", "absent_filled", "without_absent", "normalize_inputs", "example_batch", "resolve_dynamic_dims", "grown_size",
           "CheckRun", "check_runs", "random_like"]

#: input index → the dims of that input that may vary.
DynamicDims = Mapping[int, Sequence[int]]


def absent_filled(module: torch.nn.Module, absent: Sequence[int], n: int) -> torch.fx.GraphModule:
    """``module`` called with the given tensors alone: the ``absent`` inputs of its ``n``
    (optional arguments the example gives as None, traced as absent) are put back as None in
    their places. An ONNX file takes tensors only, and the slim model takes nothing there.
    A small graph (one positional argument per given tensor, as exporters want them)."""
    import inspect

    try:
        names = list(inspect.signature(module.forward).parameters)[:n]
    except (TypeError, ValueError):
        names = []
    names = names if len(names) == n else [f"input_{i}" for i in range(n)]
    g = torch.fx.Graph()
    args = tuple(None if i in absent else g.placeholder(names[i]) for i in range(n))
    g.output(g.call_module("module", args))
    return torch.fx.GraphModule({"module": module}, g, type(module).__name__)


def without_absent(module: torch.nn.Module, example_inputs: Any, dynamic_dims: DynamicDims | None = None
                   ) -> tuple[torch.nn.Module, Any, DynamicDims | None]:
    """The module, inputs and dynamic dims (keyed by input index) with the inputs given as None
    left out (:func:`absent_filled`); unchanged where there are none."""
    if not isinstance(example_inputs, (tuple, list)) or all(x is not None for x in example_inputs):
        return module, example_inputs, dynamic_dims
    absent = [i for i, x in enumerate(example_inputs) if x is None]
    index = {i: k for k, i in enumerate(i for i, x in enumerate(example_inputs) if x is not None)}
    dims = None if dynamic_dims is None else {index[i]: ds for i, ds in dict(dynamic_dims).items() if i in index}
    return (absent_filled(module, absent, len(example_inputs)), tuple(x for x in example_inputs if x is not None),
            dims)


def normalize_inputs(example_inputs: Any) -> tuple[torch.Tensor, ...]:
    """The example inputs as a non-empty tuple of tensors (one-line error otherwise)."""
    if isinstance(example_inputs, torch.Tensor):
        example_inputs = (example_inputs,)
    if not isinstance(example_inputs, (tuple, list)) or len(example_inputs) == 0:
        raise ExportError(
            "example_inputs must be a non-empty tuple of tensors; "
            f"got {type(example_inputs).__name__}"
        )
    for i, t in enumerate(example_inputs):
        if not isinstance(t, torch.Tensor):
            raise ExportError(
                f"example_inputs[{i}] is of type {type(t).__name__}, not a tensor; "
                "bake non-tensor arguments into the module (e.g. functools.partial or a wrapper module)"
            )
    return tuple(example_inputs)


def example_batch(example_inputs: Sequence[torch.Tensor]) -> int | None:
    """Dim 0 of the first input that has one (None: every input is a scalar)."""
    return next((int(t.shape[0]) for t in example_inputs if t.dim() > 0), None)


def resolve_dynamic_dims(example_inputs: Sequence[torch.Tensor], dynamic_dims: DynamicDims | None,
                         dynamic_batch: bool) -> dict[int, tuple[int, ...]]:
    """``{input index: sorted non-negative dims}`` that the export leaves dynamic.

    Default: dim 0 of every input that has one (the batch); ``dynamic_batch=False``: none.
    """
    if not dynamic_batch:
        return {}
    if dynamic_dims is None:
        return {i: (0,) for i, t in enumerate(example_inputs) if t.dim() > 0}
    out: dict[int, tuple[int, ...]] = {}
    for i, dims in dict(dynamic_dims).items():
        if not isinstance(i, int) or not 0 <= i < len(example_inputs):
            raise ExportError(f"dynamic_dims names input {i!r} but the model takes {len(example_inputs)} "
                              f"inputs; key it by input index 0..{len(example_inputs) - 1}")
        rank = example_inputs[i].dim()
        picked = set()
        for d in dims:
            if not isinstance(d, int) or not -rank <= d < rank:
                raise ExportError(f"dynamic_dims[{i}] names dim {d!r} but input {i} has {rank} dims; "
                                  f"use dims in 0..{rank - 1}")
            picked.add(d % rank)
        if picked:
            out[i] = tuple(sorted(picked))
    return out


def grown_size(size: int) -> int:
    """The size a non-batch dynamic dim takes in the second check run: ``size`` plus its
    lowest set bit, so a size divisible by 2^k stays so (16 → 32, 12 → 16, 7 → 8)."""
    return size + (size & -size) if size > 0 else 1


@dataclass(frozen=True)
class CheckRun:
    """One onnxruntime run of the check: its batch size and the shape of every input."""

    batch: int
    shapes: tuple[tuple[int, ...], ...]
    grown: bool  # the non-batch dynamic dims are at their grown size

    def label(self) -> str:
        if not self.grown:
            return f"batch {self.batch}"
        return f"batch {self.batch}, input shapes {', '.join(str(s) for s in self.shapes)}"


def check_runs(example_inputs: Sequence[torch.Tensor], dims: Mapping[int, Sequence[int] | None],
               batch_sizes: Sequence[int]) -> list[CheckRun]:
    """The runs of the check. ``dims``: per input, its dynamic dims as the ONNX file declares
    them (None: the file records no shape; taken as a dynamic batch, as before).

    Run k uses ``batch_sizes[k]`` on inputs with a dynamic dim 0; other dynamic dims keep
    the example size in the first run and grow in the later ones (a second run at the
    last batch size is added when only one batch size is checked).
    """
    def axes(k: int) -> tuple[int, ...]:
        d = dims.get(k, ())
        return (0,) if d is None else tuple(d)

    rest = any(a > 0 for k in range(len(example_inputs)) for a in axes(k) if example_inputs[k].dim() > a)
    batches = list(batch_sizes)
    if rest and len(batches) == 1:
        batches.append(batches[0])
    runs = []
    for r, b in enumerate(batches):
        grown = rest and r > 0
        shapes = []
        for k, ex in enumerate(example_inputs):
            shape = list(ex.shape)
            for a in axes(k):
                if a >= len(shape):
                    continue
                if a == 0:
                    shape[0] = b
                elif grown:
                    shape[a] = grown_size(shape[a])
            shapes.append(tuple(shape))
        runs.append(CheckRun(int(b), tuple(shapes), grown))
    return runs


def random_like(example: torch.Tensor, shape: Sequence[int], seed: int) -> torch.Tensor:
    """A seeded random tensor of ``shape`` like ``example``: :func:`slimc.inputs.random_tensor_like`."""
    return random_tensor_like(example.detach(), tuple(shape), torch.Generator().manual_seed(seed))
