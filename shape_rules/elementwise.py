"""Elementwise ops: the unary family (activations, dropout, casts) and broadcasting
binary ops (add/sub: one term per operand; mul: one term, factors; div: numerator)."""
from __future__ import annotations

import operator

import torch
import torch.nn.functional as F
from torch import fx, nn

from slimc.shape_rules import (Coupling, OpView, Unsupported, aten, arange, identity_all, resizer, shape_rule,
                               zero_preserving)

UNARY_MODULES = (
    nn.ReLU, nn.ReLU6, nn.LeakyReLU, nn.ELU, nn.SELU, nn.CELU, nn.GELU, nn.SiLU, nn.Mish,
    nn.Hardswish, nn.Hardsigmoid, nn.Sigmoid, nn.Tanh, nn.Softplus, nn.Hardtanh, nn.Softsign,
    nn.Tanhshrink, nn.Hardshrink, nn.Softshrink, nn.Threshold, nn.LogSigmoid,
    nn.Identity, nn.Dropout, nn.Dropout1d, nn.Dropout2d, nn.Dropout3d, nn.AlphaDropout,
)
UNARY_FUNCTIONS = (
    F.relu, F.relu6, F.leaky_relu, F.elu, F.selu, F.celu, F.gelu, F.silu, F.mish, F.hardswish,
    F.hardsigmoid, F.sigmoid, F.tanh, F.softplus, F.hardtanh, F.softsign, F.logsigmoid,
    F.dropout, F.dropout1d, F.dropout2d, F.dropout3d, F.alpha_dropout,
    torch.relu, torch.sigmoid, torch.tanh, torch.exp, torch.abs, torch.neg, torch.sqrt, torch.rsqrt,
    torch.square, torch.sin, torch.cos, torch.erf, torch.clamp, torch.clip,
    torch.nn.functional.relu_, torch.relu_, torch.erf, operator.neg, torch.nn.functional.threshold,
    torch.clamp_min, torch.clamp_max,
)
UNARY_ATEN = tuple(aten(
    "relu.default", "relu_.default", "relu6.default", "hardtanh.default", "hardtanh_.default", "leaky_relu.default",
    "elu.default", "gelu.default", "silu.default", "silu_.default", "mish.default", "hardswish.default",
    "hardswish_.default", "hardsigmoid.default", "sigmoid.default", "tanh.default", "softplus.default",
    "dropout.default", "clone.default", "contiguous.default", "alias.default", "exp.default", "abs.default",
    "neg.default", "sqrt.default", "rsqrt.default", "clamp.default", "_to_copy.default",
    "to.dtype", "to.dtype_layout", "to.device", "erf.default", "lift_fresh_copy.default", "detach.default",
    "sin.default", "cos.default", "square.default", "log.default", "reciprocal.default", "sign.default",
    "clamp_min.default", "clamp_max.default",
))
UNARY_METHODS = (
    "relu", "relu_", "sigmoid", "tanh", "exp", "abs", "neg", "sqrt", "rsqrt", "square", "sin",
    "cos", "erf", "clamp", "clamp_", "clip", "contiguous", "clone", "detach", "float",
    "half", "bfloat16", "to", "sigmoid_", "tanh_", "mul_scalar", "clamp_min", "clamp_max",
)


VALUE_KEEPING_METHODS = ("to", "type_as", "float", "half", "bfloat16", "contiguous", "clone", "detach")
_ZERO_KEEPING_MODULES = (nn.Dropout, nn.Dropout1d, nn.Dropout2d, nn.Dropout3d, nn.Identity)
_ZERO_KEEPING_FUNCTIONS = (F.dropout, F.dropout1d, F.dropout2d, F.dropout3d)


def _unary_fn(op: OpView):
    """The op as a function of its first input, other args fixed (None if they are tensors)."""
    if isinstance(op.module, _ZERO_KEEPING_MODULES) or op.node.target in _ZERO_KEEPING_FUNCTIONS:
        return lambda t: t  # dropout scales kept entries: zeros stay zeros, whatever the mode
    if op.module is not None:
        return op.module
    if op.node.op == "call_method" and op.node.target in VALUE_KEEPING_METHODS:
        return lambda t: t  # casts keep zeros, whatever dtype they read (`.to(x.dtype)`)
    rest = op.node.args[1:]
    if any(isinstance(a, fx.Node) and a.op != "get_attr" for a in rest) or any(isinstance(v, fx.Node) for v in op.node.kwargs.values()):
        return None
    if op.node.op == "call_method":
        name = op.node.target
        return lambda t: getattr(t, name)(*rest, **op.node.kwargs)
    return lambda t: op.node.target(t, *rest, **op.node.kwargs)


@shape_rule(*UNARY_MODULES, *UNARY_FUNCTIONS, *UNARY_METHODS, *UNARY_ATEN)
def unary(op: OpView) -> Coupling | Unsupported:
    """Elementwise unary: every dim passes one-to-one (zero kept iff f(0) == 0, checked)."""
    x = op.arg(0, "input")
    if not isinstance(x, fx.Node) or op.shape(x) != op.out_shape:  # 2 ** x, x ** y: probed
        return Unsupported("elementwise op whose output shape differs from its input", probe=True)
    fn = _unary_fn(op)
    return identity_all(Coupling(), op, x, zero_ok=fn is not None and zero_preserving(fn))


@shape_rule("type_as", *aten("type_as.default"))
def type_as(op: OpView) -> Coupling | Unsupported:
    """x cast to the dtype of another tensor: x's dims pass (zeros stay zeros); the other
    tensor is read for its dtype alone, so none of its dims is coupled (a MoE router's
    ``softmax(…).type_as(hidden_states)`` leaves the hidden size free)."""
    x, other = op.arg(0, "input"), op.arg(1, "other")
    if not isinstance(x, fx.Node) or op.shape(x) != op.out_shape:
        return Unsupported("type_as whose output shape differs from its input")
    c = identity_all(Coupling(), op, x)
    if isinstance(other, fx.Node) and other is not x and op.shape(other) is not None:
        for d in range(len(op.shape(other))):
            c.cover(op.slot(other, d))
    return c


@shape_rule(nn.GLU, F.glu, *aten("glu.default"))
def glu(op: OpView) -> Coupling | Unsupported:
    """GLU along dim d: output c = a_c · σ(b_c) with a, b the two halves of d, so input
    channels c and c + n/2 go with output channel c (other dims pass)."""
    x = op.arg(0, "input")
    dim = op.module.dim if op.module is not None else op.arg(1, "dim", -1)
    xs = op.shape(x)
    if xs is None or not isinstance(dim, int) or not isinstance(op.out_shape, tuple):
        return Unsupported("glu along a computed dim")
    dim %= len(xs)
    half = xs[dim] // 2
    c = Coupling()
    for d in range(len(xs)):
        if d != dim:
            c.flow(op.slot(x, d), op.out(d))
    c.flow(op.slot(x, dim), op.out(dim), arange(half), arange(half))
    c.flow(op.slot(x, dim), op.out(dim), arange(half) + half, arange(half), zero_ok=False)  # σ(b): a factor
    return c


@shape_rule(nn.PReLU, F.prelu)
def prelu(op: OpView) -> Coupling | Unsupported:
    """PReLU: a per-channel slope (dim 1) follows its channel; prelu(0) = 0."""
    x = op.arg(0, "input")
    c = identity_all(Coupling(), op, x)
    if op.module is not None and op.module.num_parameters > 1:
        c.param("follower", op.p("weight", 0), op.out(1 if len(op.shape(x)) > 1 else 0), term=None)
    elif op.module is None:
        w = op.arg(1, "weight")
        if not op.is_param(w):
            return Unsupported("F.prelu with a computed weight")
        if op.shape(w)[0] > 1:
            c.param("follower", op.slot(w, 0), op.out(1), term=None)
        else:
            c.cover(op.slot(w, 0))
    return c


@resizer(nn.PReLU)
def _resize_prelu(m: nn.Module, new: dict) -> None:
    m.num_parameters = new["weight"][0]


def _broadcast(op: OpView, c: Coupling, x, *, kind: str, term, zero_ok: bool = True) -> None:
    """Couple operand ``x`` to the output dim by dim (right-aligned broadcasting). An output
    dim ``x`` is broadcast along (size 1, or missing) gets ``x`` as one term for all its
    elements (a ``feed``), so that the zero analysis sees ``x - x.mean(1)`` as non-zero."""
    out = op.out_shape
    xs = op.shape(x)
    lead = len(out) - len(xs)
    if term is not None and xs:
        for od in range(lead):
            if out[od] > 1:
                c.feed(op.slot(x, 0), op.out(od), term=term, zero_ok=zero_ok)
    for d, n in enumerate(xs):
        od = lead + d
        if n == out[od]:
            if op.is_param(x):
                role = kind if kind != "flow" else "follower"
                c.param(role, op.slot(x, d), op.out(od), term=term)
            else:
                c.flow(op.slot(x, d), op.out(od), term=term, zero_ok=zero_ok)
        elif n == 1:
            c.cover(op.slot(x, d))
            if term is not None:
                c.feed(op.slot(x, d), op.out(od), term=term, zero_ok=zero_ok)
        else:
            raise ValueError(f"operand dim {d} ({n}) does not broadcast to {out[od]}")


def broadcast_term(op: OpView, c: Coupling, x, *, term: int) -> None:
    """``x`` added into the result as one term, broadcast (a learned one is a source)."""
    _broadcast(op, c, x, kind="source", term=term)


def _operands(op: OpView) -> tuple:
    a = op.arg(0, "input")
    b = op.arg(1, "other")
    return a, b


def _is_tensor(op: OpView, x) -> bool:
    return isinstance(x, fx.Node) and op.shape(x) is not None


@shape_rule(operator.add, operator.iadd, torch.add, "add", "add_", operator.sub, operator.isub, torch.sub, "sub", "sub_",
            *aten("add.Tensor", "add_.Tensor", "sub.Tensor", "sub_.Tensor", "add.Scalar", "sub.Scalar"))
def add(op: OpView) -> Coupling | Unsupported:
    """a ± b: operands' channels join one group; each operand is its own term.
    A learned tensor added into the stream is a source."""
    a, b = _operands(op)
    if not isinstance(op.out_shape, tuple):
        return Unsupported("add of non-tensors")
    c = Coupling()
    tensors = [x for x in (a, b) if _is_tensor(op, x)]
    const = [x for x in (a, b) if not _is_tensor(op, x)]
    nonzero_const = any(isinstance(v, (int, float)) and v != 0 for v in const) or any(
        isinstance(v, fx.Node) for v in const
    ) or any(op.shape(x) == () for x in tensors)  # a 0-d tensor: treated as a constant
    for t, x in enumerate(tensors):
        _broadcast(op, c, x, kind="source", term=t, zero_ok=not nonzero_const)
    return c


@shape_rule(operator.mul, operator.imul, torch.mul, "mul", "mul_", *aten("mul.Tensor", "mul_.Tensor", "mul.Scalar"))
def mul(op: OpView) -> Coupling | Unsupported:
    """a * b: one term, each operand a factor: a channel is dead (zero) when either side is.
    A learned per-channel scale (layer scale) follows."""
    a, b = _operands(op)
    if not isinstance(op.out_shape, tuple):
        return Unsupported("mul of non-tensors")
    c = Coupling()
    for x in (a, b):
        if _is_tensor(op, x):
            _broadcast(op, c, x, kind="follower", term=0)
    return c


@shape_rule(torch.addcmul, "addcmul", *aten("addcmul.default"))
def addcmul(op: OpView) -> Coupling | Unsupported:
    """input + value·t1·t2 (ConvNeXt-V2's GRN): the input is one term (a learned one is a
    source), the product another, t1 and t2 its factors (a learned one follows)."""
    x, t1, t2 = op.arg(0, "input"), op.arg(1, "tensor1"), op.arg(2, "tensor2")
    if not isinstance(op.out_shape, tuple) or not all(_is_tensor(op, t) for t in (x, t1, t2)):
        return Unsupported("addcmul of non-tensors")
    c = Coupling()
    _broadcast(op, c, x, kind="source", term=0)
    for t in (t1, t2):
        _broadcast(op, c, t, kind="follower", term=1)
    return c


@shape_rule(torch.pow, "pow", operator.pow, *aten("pow.Tensor_Scalar", "pow.Tensor_Tensor", "pow.Scalar"))
def power(op: OpView) -> Coupling | Unsupported:
    """x ** y: a number exponent is elementwise unary (zero kept iff 0 ** y == 0); tensor
    operands broadcast like a product's factors, neither keeping zeros (0 ** 0 == 1) — ALiBi's
    per-head slopes ``base ** arange(1, 1 + heads)`` pass their head dim."""
    a, b = op.arg(0, "input", op.arg(0, "self")), op.arg(1, "exponent")
    if _is_tensor(op, a) and not _is_tensor(op, b):
        return unary(op)
    if not isinstance(op.out_shape, tuple):
        return Unsupported("pow of non-tensors")
    c = Coupling()
    for x in (a, b):
        if _is_tensor(op, x):
            _broadcast(op, c, x, kind="follower", term=0, zero_ok=False)
    return c


@shape_rule(operator.truediv, operator.itruediv, torch.div, "div", "div_", *aten("div.Tensor", "div_.Tensor", "div.Scalar"))
def div(op: OpView) -> Coupling | Unsupported:
    """a / b: zero and dead follow the numerator; the denominator's channels join (tie only)."""
    a, b = _operands(op)
    if not isinstance(op.out_shape, tuple):
        return Unsupported("div of non-tensors")
    if not _is_tensor(op, a):
        return Unsupported("a scalar divided by a tensor")
    c = Coupling()
    _broadcast(op, c, a, kind="follower", term=0)
    if _is_tensor(op, b):
        _broadcast(op, c, b, kind="follower", term=None, zero_ok=False)
    return c


COMPARISONS = (
    operator.eq, operator.ne, operator.lt, operator.le, operator.gt, operator.ge, torch.eq, torch.ne, torch.lt,
    torch.le, torch.gt, torch.ge, "eq", "ne", "lt", "le", "gt", "ge", torch.logical_and, torch.logical_or,
    "logical_and", "logical_or", operator.and_, operator.or_,
    torch.logical_not, "logical_not", torch.bitwise_not, operator.invert,
    *aten("__and__.Tensor", "__or__.Tensor", "bitwise_and.Tensor", "bitwise_or.Tensor", "logical_not.default",
          "bitwise_not.default"),
    *aten("eq.Scalar", "eq.Tensor", "ne.Scalar", "ne.Tensor", "lt.Scalar", "lt.Tensor", "le.Scalar", "le.Tensor",
          "gt.Scalar", "gt.Tensor", "ge.Scalar", "ge.Tensor", "logical_and.default", "logical_or.default"),
)


@shape_rule(*COMPARISONS)
def compare(op: OpView) -> Coupling | Unsupported:
    """Comparisons and logic (masks): operands' channels join the result's, which carries
    no data of its own (neither zero nor dead)."""
    if not isinstance(op.out_shape, tuple):
        return Unsupported("comparison of non-tensors")
    c = Coupling()
    for x in _operands(op):
        if _is_tensor(op, x):
            _broadcast(op, c, x, kind="follower", term=None, zero_ok=False)
    return c


@shape_rule("masked_fill", "masked_fill_", torch.masked_fill,
            *aten("masked_fill.Scalar", "masked_fill.Tensor", "masked_fill_.Scalar"))
def masked_fill(op: OpView) -> Coupling | Unsupported:
    """masked_fill(x, mask, v): x's dims pass (zero kept iff v == 0); the mask's join them."""
    x, mask, value = op.arg(0, "input"), op.arg(1, "mask"), op.arg(2, "value")
    if not _is_tensor(op, x) or not _is_tensor(op, mask):
        return Unsupported("masked_fill of non-tensors")
    c = Coupling()
    _broadcast(op, c, x, kind="follower", term=0, zero_ok=isinstance(value, (int, float)) and value == 0)
    _broadcast(op, c, mask, kind="follower", term=None, zero_ok=False)
    return c


@shape_rule(torch.where, *aten("where.self", "where.ScalarOther", "where.ScalarSelf", "where.Scalar"))
def where(op: OpView) -> Coupling | Unsupported:
    """where(cond, a, b): a and b are two terms (like a + b); the condition's channels join."""
    cond, a, b = op.arg(0, "condition"), op.arg(1, "input"), op.arg(2, "other")
    if not isinstance(op.out_shape, tuple) or not _is_tensor(op, cond):
        return Unsupported("where with one argument (returns indices)")
    c = Coupling()
    consts = [v for v in (a, b) if not _is_tensor(op, v)]
    zero_ok = all(isinstance(v, (int, float)) and v == 0 for v in consts)
    for t, x in enumerate((a, b)):
        if _is_tensor(op, x):
            _broadcast(op, c, x, kind="source", term=t, zero_ok=zero_ok)
    _broadcast(op, c, cond, kind="follower", term=None, zero_ok=False)
    return c


@shape_rule(torch.maximum, torch.minimum, torch.fmax, torch.fmin, "maximum", "minimum", "fmax", "fmin",
            *aten("maximum.default", "minimum.default", "max.other", "min.other", "fmax.default", "fmin.default"))
def extremum(op: OpView) -> Coupling | Unsupported:
    """Elementwise max(a, b) / min(a, b): each result is one operand or the other, so each is a
    term (as in a + b: a channel is dead, or zero, where both operands' are)."""
    if not isinstance(op.out_shape, tuple) or not all(_is_tensor(op, x) for x in _operands(op)):
        return Unsupported("max/min of non-tensors")
    c = Coupling()
    for t, x in enumerate(_operands(op)):
        _broadcast(op, c, x, kind="source", term=t)
    return c


@shape_rule(torch.tril, torch.triu, "tril", "triu", *aten("tril.default", "triu.default"))
def triangle(op: OpView) -> Coupling | Unsupported:
    """tril / triu: the last two dims are positions (fixed); leading dims pass."""
    x = op.arg(0, "input")
    xs = op.shape(x)
    if xs is None or len(xs) < 2:
        return Unsupported("tril/triu of a vector")
    c = Coupling()
    for d in range(len(xs)):
        if d >= len(xs) - 2:
            c.barrier(op.slot(x, d), "tril/triu: positions")
            c.barrier(op.out(d), "tril/triu: positions")
        else:
            c.flow(op.slot(x, d), op.out(d))
    return c
