"""Passes over a QDQ ONNX graph: the file holds int8, and onnxruntime's int8 kernels match it.

* :func:`fold_weight_quantize` — QuantizeLinear of a constant (a weight) → an int8/uint8
  initializer read by the DequantizeLinear (what makes the file ~4× smaller);
* :func:`quantize_biases` — the float bias of a Conv/Gemm whose input and weight come out of
  DequantizeLinear → int32 at scale ``s_input · s_weight`` behind its own DequantizeLinear
  (onnxruntime fuses DQ → Conv → Q into QLinearConv only then; the change is at most half a
  step of the accumulator, far below one output step);
* :func:`prune_unused` — nodes and initializers nothing reads any more.
"""
from __future__ import annotations

from typing import Any

import numpy as np

_INT_TYPES = {2: np.uint8, 3: np.int8, 6: np.int32}  # onnx TensorProto data types


def _consts(graph: Any) -> dict[str, np.ndarray]:
    from onnx import numpy_helper

    out = {i.name: numpy_helper.to_array(i) for i in graph.initializer}
    for n in graph.node:
        if n.op_type == "Constant" and n.attribute and n.attribute[0].name == "value":
            out[n.output[0]] = numpy_helper.to_array(n.attribute[0].t)
    return out


def _attr(node: Any, name: str, default: Any) -> Any:
    from onnx import helper

    for a in node.attribute:
        if a.name == name:
            return helper.get_attribute_value(a)
    return default


def quantize_array(x: np.ndarray, scale: np.ndarray, zp: np.ndarray, axis: int) -> np.ndarray:
    """What QuantizeLinear computes: round half to even, saturate to zp's type."""
    dtype = zp.dtype
    info = np.iinfo(dtype)
    if scale.ndim and scale.size > 1:
        shape = [1] * x.ndim
        shape[axis] = -1
        scale, zp = scale.reshape(shape), zp.reshape(shape)
    q = np.rint(x.astype(np.float32) / scale.astype(np.float32)) + zp.astype(np.float32)
    return np.clip(q, info.min, info.max).astype(dtype)


def _weight_name(q_node: Any, taken: set[str]) -> str:
    """``<module>.weight_quantized`` for the QuantizeLinear of a module's weight (the module from the
    exporter's record of where the node ran), unique in the graph."""
    from slimc.quantize.check import module_of

    mod = module_of(q_node) or q_node.input[0]
    base = mod.split(".parametrizations", 1)[0] + ".weight_quantized"
    name = base
    while name in taken:
        name += "_"
    taken.add(name)
    return name


def fold_weight_quantize(model: Any) -> int:
    """QuantizeLinear(constant) → an integer initializer; returns how many were folded."""
    from onnx import numpy_helper

    g = model.graph
    consts = _consts(g)
    folded = 0
    keep = []
    taken = {i.name for i in g.initializer}
    clipped = {n.output[0]: n for n in g.node if n.op_type == "Clip" and all(i in consts for i in n.input if i)}
    for c in clipped.values():  # a sub-8-bit grid's clamp of a constant weight: computed here
        lo = consts[c.input[1]] if len(c.input) > 1 and c.input[1] else None
        hi = consts[c.input[2]] if len(c.input) > 2 and c.input[2] else None
        consts[c.output[0]] = np.clip(consts[c.input[0]], lo, hi)
    for n in g.node:
        if n.op_type == "QuantizeLinear" and n.input[0] in consts and all(i in consts for i in n.input[1:3]):
            x, scale = consts[n.input[0]], consts[n.input[1]]
            zp = consts[n.input[2]] if len(n.input) > 2 and n.input[2] else np.zeros((), np.uint8)
            axis = int(_attr(n, "axis", 1))
            q = quantize_array(x, scale, zp, axis if axis >= 0 else axis + x.ndim)
            name = _weight_name(n, taken)
            g.initializer.append(numpy_helper.from_array(q, name))
            for m in g.node:
                for k, i in enumerate(m.input):
                    if i == n.output[0]:
                        m.input[k] = name
            folded += 1
            continue
        keep.append(n)
    _set_nodes(g, keep)
    return folded


def quantize_biases(model: Any) -> int:
    """Float Conv/Gemm biases behind int8 input and weight → int32 DequantizeLinear."""
    from onnx import helper, numpy_helper

    g = model.graph
    consts = _consts(g)
    dq_of = {n.output[0]: n for n in g.node if n.op_type == "DequantizeLinear"}
    added = []
    done = 0
    taken = {i.name for i in g.initializer}
    for n in g.node:
        if n.op_type not in ("Conv", "Gemm") or len(n.input) < 3 or not n.input[2] or n.input[2] not in consts:
            continue
        x_dq, w_dq = dq_of.get(n.input[0]), dq_of.get(n.input[1])
        if x_dq is None or w_dq is None or w_dq.input[0] not in consts:
            continue
        sx, sw = consts.get(x_dq.input[1]), consts.get(w_dq.input[1])
        if sx is None or sw is None or sx.size != 1:
            continue
        if n.op_type == "Gemm" and (int(_attr(n, "transB", 0)) != 1 or sw.size not in (1, consts[n.input[2]].size)):
            continue
        bias = consts[n.input[2]].astype(np.float64)
        scale = (float(sx.reshape(())) * sw.astype(np.float64).reshape(-1)).astype(np.float32)
        scale = np.broadcast_to(scale, bias.shape).copy() if scale.size == 1 else scale
        q = np.clip(np.rint(bias / np.maximum(scale, 1e-30)), -2**31, 2**31 - 1).astype(np.int32)
        base = n.input[2] + "_quantized"
        while base in taken:  # one float bias read by two nodes: each gets its own scale
            base += "_"
        taken.add(base)
        g.initializer.extend([numpy_helper.from_array(q, base), numpy_helper.from_array(scale, base + "_scale"),
                              numpy_helper.from_array(np.zeros_like(q), base + "_zero_point")])
        out = base + "_dequantized"
        added.append(helper.make_node("DequantizeLinear", [base, base + "_scale", base + "_zero_point"], [out],
                                      name=base + "_DequantizeLinear", axis=0))
        n.input[2] = out
        done += 1
    if added:
        _set_nodes(g, added + list(g.node))
    return done


def prune_unused(model: Any) -> None:
    g = model.graph
    while True:
        used = {i for n in g.node for i in n.input} | {o.name for o in g.output}
        dead = [n for n in g.node if not any(o in used for o in n.output)]
        inits = [i for i in g.initializer if i.name not in used]
        if not dead and not inits:
            return
        for n in dead:
            g.node.remove(n)
        for i in inits:
            g.initializer.remove(i)


#: node metadata kept in the files slimc writes here (the exporter's stack traces and fx text
#: are bulky: more than the weights of a small model)
KEEP_METADATA = ("namespace",)


def strip_metadata(model: Any) -> None:
    for n in model.graph.node:
        kept = [(p.key, p.value) for p in n.metadata_props if p.key in KEEP_METADATA]
        del n.metadata_props[:]
        for k, v in kept:
            e = n.metadata_props.add()
            e.key, e.value = k, v


def finish(model: Any) -> Any:
    """The passes, then the graph sorted and checked."""
    import onnx

    strip_metadata(model)
    fold_weight_quantize(model)
    quantize_biases(model)
    prune_unused(model)
    _topological(model.graph)
    onnx.checker.check_model(model)
    return model


def _topological(g: Any) -> None:
    """Nodes in an order where every input is made before it is read."""
    ready = {i.name for i in g.input} | {i.name for i in g.initializer} | {""}
    pending, order = list(g.node), []
    while pending:
        rest = []
        for n in pending:
            if all(i in ready for i in n.input):
                order.append(n)
                ready.update(n.output)
            else:
                rest.append(n)
        if len(rest) == len(pending):  # a cycle or an unknown input: keep the given order
            order.extend(rest)
            break
        pending = rest
    _set_nodes(g, order)


def _set_nodes(g: Any, nodes: list) -> None:
    """Replace the graph's nodes (copies first: protobuf repeated fields own their elements)."""
    copies = []
    for n in nodes:
        c = type(n)()
        c.CopyFrom(n)
        copies.append(c)
    del g.node[:]
    g.node.extend(copies)


def int8_initializers(model: Any) -> dict[str, Any]:
    """Integer initializers (the quantized weights and biases) → their dtype name."""
    return {i.name: np.dtype(_INT_TYPES[i.data_type]).name for i in model.graph.initializer
            if i.data_type in _INT_TYPES}
