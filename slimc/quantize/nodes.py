"""Which nodes of an int8 file run in int8, which stayed float, and why."""
from __future__ import annotations

from typing import Any

from slimc.quantize.check import INT8_OPS, module_of

#: ops that only move or reshape data, or convert: not listed as "stayed float"
PLUMBING = {"Constant", "Shape", "Gather", "Unsqueeze", "Squeeze", "Reshape", "Flatten", "Transpose", "Concat", "Slice",
            "Cast", "Identity", "QuantizeLinear", "DequantizeLinear", "DynamicQuantizeLinear", "ConstantOfShape",
            "Expand", "Range", "Split", "Where", "Equal"}


def _label(node: Any, inits: set[str]) -> str:
    mod = module_of(node, inits)
    return f"{mod} ({node.op_type})" if mod else f"{node.name} ({node.op_type})"


def node_plan(float_model: Any, int8_model: Any, *, float_reasons: dict[str, str] | None = None,
              excluded: set[str] = frozenset(), otherwise: str | None = None) -> dict:
    """Per compute node of ``int8_model``: int8 (inputs and weights dequantized from int8, or an
    integer kernel), int8 weights with float compute, or float — with the reason.
    ``float_reasons``: op type → why the method leaves it float; ``excluded``: node names a
    config list excluded; ``otherwise``: the reason for every other float node (a torch
    method's config list: what it does not select)."""
    float_names = {n.name for n in float_model.graph.node}
    inits = {i.name for i in int8_model.graph.initializer}
    dq = {n.output[0]: n for n in int8_model.graph.node if n.op_type == "DequantizeLinear"}
    reasons = float_reasons or {}
    int8, weights_only, stayed = [], [], {}
    for n in int8_model.graph.node:
        if any(k in n.op_type for k in INT8_OPS):
            int8.append(_label(n, inits))
            continue
        if n.op_type in PLUMBING or (n.name not in float_names and not n.name.startswith("node_")):
            continue
        data = [i for i in n.input if i and i not in inits]
        from_dq = [i for i in data if i in dq]
        weight_dq = [i for i in from_dq if dq[i].input[0] in inits]
        if data and len(from_dq) == len(data) and len(from_dq) > len(weight_dq):
            int8.append(_label(n, inits))
        elif weight_dq:
            weights_only.append(_label(n, inits))
        else:
            why = ("excluded by the config list" if n.name in excluded else reasons.get(n.op_type) or otherwise
                   or ("its inputs are not quantized" if n.op_type in ("Conv", "Gemm", "MatMul", "Add", "Mul")
                       else f"onnxruntime's quantizer has no int8 {n.op_type} here"))
            stayed.setdefault(why, []).append(_label(n, inits))
    return {"int8": len(int8), "int8_weights_float_compute": len(weights_only),
            "float": sum(len(v) for v in stayed.values()),
            "int8_nodes": int8, "int8_weight_nodes": weights_only, "float_nodes": stayed}
