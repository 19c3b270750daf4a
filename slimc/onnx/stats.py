"""What an ONNX file holds: initializer bytes and params, op histogram, selection ops,
opset, the exporter that wrote it, and its real (non-initializer) inputs."""
from __future__ import annotations

import os
from typing import Any, Iterator

import numpy as np

from slimc.errors import ExportError, describe

__all__ = ["SELECTION_OP_TYPES", "EXPORTER_METADATA_KEY", "onnx_stats", "load_graph", "graph_inputs",
           "dynamic_axes", "opset_of", "exporter_of", "iter_graphs"]

#: ONNX op types that select/scatter elements (a sliced model should not need
#: any of them for a plain conv net; "Index" is not an ONNX op but is kept as a
#: key for callers that look it up).
SELECTION_OP_TYPES: tuple[str, ...] = (
    "Gather",
    "GatherElements",
    "GatherND",
    "Slice",
    "ScatterND",
    "ScatterElements",
    "Index",
)

#: Metadata key written into the ONNX model recording which exporter made it.
EXPORTER_METADATA_KEY = "slimc.exporter"


# --------------------------------------------------------------------------- reading a model


def load_graph(path: str | os.PathLike) -> Any:
    """The ModelProto at ``path`` without its external data (a one-line error otherwise)."""
    import onnx

    path = os.fspath(path)
    if not os.path.isfile(path):
        raise ExportError(f"ONNX file not found: {path}")
    try:
        return onnx.load(path, load_external_data=False)
    except Exception as e:
        raise ExportError(f"cannot read ONNX file {path}: {describe(e, 240, innermost=True)}") from e


def graph_inputs(model: Any) -> list[Any]:
    """The model's real inputs (ValueInfoProtos), without initializers listed as inputs."""
    inits = {i.name for i in model.graph.initializer}
    return [i for i in model.graph.input if i.name not in inits]


def dynamic_axes(value_info: Any) -> tuple[int, ...] | None:
    """The dims of an input that have no fixed size; None when the file records no shape."""
    tt = value_info.type.tensor_type
    if not tt.HasField("shape"):
        return None
    return tuple(d for d, dim in enumerate(tt.shape.dim) if not dim.HasField("dim_value"))


def opset_of(model: Any) -> int:
    for imp in model.opset_import:
        if imp.domain in ("", "ai.onnx"):
            return int(imp.version)
    return 0


def exporter_of(model: Any) -> str:
    """The exporter recorded in slimc's metadata ("" for a foreign file)."""
    return {p.key: p.value for p in model.metadata_props}.get(EXPORTER_METADATA_KEY, "")


def iter_graphs(graph: Any) -> Iterator[Any]:
    """The graph and all subgraphs (If/Loop/Scan bodies), depth-first."""
    import onnx

    yield graph
    for node in graph.node:
        for attr in node.attribute:
            if attr.type == onnx.AttributeProto.GRAPH:
                yield from iter_graphs(attr.g)
            elif attr.type == onnx.AttributeProto.GRAPHS:
                for g in attr.graphs:
                    yield from iter_graphs(g)


# --------------------------------------------------------------------------- statistics


def _itemsize(data_type: int) -> int:
    import onnx

    try:
        return int(np.dtype(onnx.helper.tensor_dtype_to_np_dtype(data_type)).itemsize)
    except Exception:
        # bfloat16 / float8 / int4 etc. map to custom numpy dtypes in some versions
        name = onnx.TensorProto.DataType.Name(data_type).upper()
        if "FLOAT8" in name or name in ("UINT8", "INT8", "BOOL"):
            return 1
        if "4" in name and "INT" in name:
            return 1  # packed, approximate
        if name in ("BFLOAT16", "FLOAT16"):
            return 2
        return 0


def _count_ops(model: Any) -> dict[str, int]:
    """Histogram of op types, expanding calls to model-local functions."""
    import onnx

    functions = {(f.domain, f.name): f for f in model.functions}
    counts: dict[str, int] = {}

    def visit_nodes(nodes, depth: int) -> None:
        for node in nodes:
            fn = functions.get((node.domain, node.op_type))
            if fn is not None and depth < 32:
                visit_nodes(fn.node, depth + 1)
            else:
                counts[node.op_type] = counts.get(node.op_type, 0) + 1
            for attr in node.attribute:
                if attr.type == onnx.AttributeProto.GRAPH:
                    visit_nodes(attr.g.node, depth + 1)
                elif attr.type == onnx.AttributeProto.GRAPHS:
                    for g in attr.graphs:
                        visit_nodes(g.node, depth + 1)

    visit_nodes(model.graph.node, 0)
    return dict(sorted(counts.items()))


def onnx_stats(path: str | os.PathLike) -> dict:
    """Size and op statistics of an ONNX file (external data is not loaded).

    Returns a dict with ``initializer_bytes``, ``initializer_params`` (sum of
    nbytes / numel over all initializers, subgraphs included),
    ``float_initializer_params`` (floating-point initializers only, i.e. weights
    without shape constants), ``num_initializers``, ``op_types`` (histogram),
    ``num_nodes``, ``selection_ops``, ``opset``, ``input_names``,
    ``output_names``, ``file_bytes`` (the .onnx plus external data files) and
    ``exporter`` (from slimc metadata, "" if absent).
    """
    import onnx

    path = os.fspath(path)
    model = load_graph(path)
    float_types = {
        onnx.TensorProto.FLOAT,
        onnx.TensorProto.DOUBLE,
        onnx.TensorProto.FLOAT16,
        onnx.TensorProto.BFLOAT16,
    }
    n_bytes = n_params = n_float = n_inits = 0
    external_files: set[str] = set()
    for g in iter_graphs(model.graph):
        for init in g.initializer:
            numel = int(np.prod(init.dims, dtype=np.int64)) if len(init.dims) else 1
            n_inits += 1
            n_params += numel
            if init.data_type in float_types:
                n_float += numel
            if init.data_type == onnx.TensorProto.STRING:
                n_bytes += sum(len(s) for s in init.string_data)
            else:
                n_bytes += numel * _itemsize(init.data_type)
            if init.data_location == onnx.TensorProto.EXTERNAL:
                for kv in init.external_data:
                    if kv.key == "location":
                        external_files.add(kv.value)

    file_bytes = os.path.getsize(path)
    base = os.path.dirname(os.path.abspath(path))
    for loc in external_files:
        p = os.path.join(base, loc)
        if os.path.isfile(p):
            file_bytes += os.path.getsize(p)

    op_types = _count_ops(model)
    return {
        "initializer_bytes": int(n_bytes),
        "initializer_params": int(n_params),
        "float_initializer_params": int(n_float),
        "num_initializers": int(n_inits),
        "op_types": op_types,
        "num_nodes": int(sum(op_types.values())),
        "selection_ops": {k: int(op_types.get(k, 0)) for k in SELECTION_OP_TYPES},
        "opset": opset_of(model),
        "input_names": [i.name for i in graph_inputs(model)],
        "output_names": [o.name for o in model.graph.output],
        "file_bytes": int(file_bytes),
        "external_data_files": sorted(external_files),
        "exporter": exporter_of(model),
    }
