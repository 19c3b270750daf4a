"""The shape-rule registry.

A rule is a small pure function from an :class:`OpView` (one graph node, its inputs'
shapes and its module) to a :class:`Coupling` (how channels of its inputs, params and
outputs are tied) or :class:`Unsupported` (a readable reason; the node becomes a
barrier). Rules are keyed by the op objects themselves: module classes, torch
functions, Tensor method names, ATen overloads.

Links are element-level maps between two *slots* (one dim of one value or param):

* ``flow``: input value → output value (the output element depends on the input one);
* ``source`` / ``follower`` / ``sink``: param slice ↔ value slice (see DESIGN.md).

Each link into an output carries a *term*: an output element is zero when every term is
zero, and a term is zero when any of its factors is (``a + b`` has two terms, ``a * b``
one term with two factors, BatchNorm ``γ·x̂ + β`` the terms {γ, x̂} and {β}). The same
structure, with followers left out, says when an output channel is *dead* (every
source behind it masked).
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Callable, Union

import numpy as np
import torch
from torch import fx, nn

SlotKey = tuple  # ("v", node_name, dim) or ("p", param_fqn, dim); a part dim: ("p", param_fqn, (dim, at, index))


@dataclass(frozen=True)
class Unsupported:
    reason: str
    probe: bool = False  # the rule covers only some forms of the op: probing may judge this one


@dataclass
class Link:
    kind: str  # flow | source | follower | sink | tie | feed (a broadcast term: all of a → each of b)
    a: SlotKey  # flow: input value slot; param kinds: the param slot
    b: SlotKey  # flow: output value slot; param kinds: the value slot
    a_idx: np.ndarray | None = None  # element indices into a (None: arange)
    b_idx: np.ndarray | None = None
    term: int = 0
    zero_ok: bool = True  # flow: a zero input gives a zero contribution


def tie(a: SlotKey, b: SlotKey, a_idx=None, b_idx=None) -> Link:
    """Join channels of two slots (or of one slot with itself) without a data flow: a
    contracted dim, groups that must stay aligned."""
    return Link("tie", a, b, a_idx, b_idx, term=None)


@dataclass
class Reshape:
    """One block of a view/reshape: ``big`` (one dim) is the row-major product of ``parts``."""

    big: SlotKey
    parts: list[SlotKey]
    sizes: list[int]
    big_is_input: bool  # True: a split (big dim → parts); False: a merge (parts → big dim)
    node: str


@dataclass
class Blocks:
    """Whole blocks only: if any element of a block is kept, the whole block is (GroupNorm)."""

    slot: SlotKey
    block: int
    why: str


@dataclass
class EqualCount:
    """These slots must lose as many elements as each other: one ``hidden_size`` serves
    every layer and direction of an ``nn.LSTM`` (a layer that would lose more keeps some)."""

    slots: list
    why: str


@dataclass
class Multiple:
    """Each slot keeps a multiple of ``n`` elements (keeping its last extra ones): a kernel
    that needs aligned strides (transformers' grouped matrix products: 16 bytes)."""

    slots: list
    n: int
    why: str


@dataclass
class KeepMore:
    """Each slot of ``big`` keeps more elements than each slot of ``small`` (an LSTM's
    ``proj_size`` must stay below its ``hidden_size``): ``big`` keeps some it would lose."""

    big: list
    small: list
    why: str


@dataclass
class NeedsZero:
    """Removed elements of ``slot`` must be exactly zero in the reference (LayerNorm stats)."""

    slot: SlotKey
    why: str


@dataclass
class HeadAxis:
    """A hint, not a constraint: this dim indexes attention heads, or a grouped conv's groups
    (``unit="conv groups"``): pruners remove whole heads (whole groups)."""

    slot: SlotKey
    unit: str = "heads"


@dataclass
class Copies:
    """A hint for propagation: this dim holds copies of one value (an expand's broadcast dim
    whose count is written in the call). Its positions may go where it alone indexes a merged
    dim (multi-query attention: ``repeat_kv`` of one key/value head, so any query head can
    go); merged with another free dim (grouped-query: key/value heads × copies) it is fixed,
    so a key/value head goes with all of its query heads."""

    slot: SlotKey
    why: str


@dataclass
class ExpertRoute:
    """A hint, not a constraint: the expert dim of one mixture-of-experts layer, for removing
    whole experts (:mod:`slimc.propagate.experts`). Expert e is the router's logit e (slot ``logits``,
    made by the rows e of ``router``: its weight and bias) and index e of the experts'
    stacked parameters (``stacked``), joined through the top-k indices. ``lift``: the
    barriers ``(node, slot)`` that the router's softmax and top-k put on the route (lifted at
    the experts the masks remove whole, nowhere else); ``own``: per expert, the slots of its own FFN channels;
    ``top_k``: experts per token. ``why_not``: why no route was found (the others are empty)."""

    experts: str  # the experts module's path
    logits: SlotKey | None = None
    router: tuple[str, ...] = ()
    stacked: tuple[str, ...] = ()
    lift: tuple[tuple[str, SlotKey], ...] = ()
    own: tuple[tuple[SlotKey, ...], ...] = ()
    top_k: int = 0
    why_not: str = ""


@dataclass
class Coupling:
    links: list[Link] = field(default_factory=list)
    barriers: list[tuple[SlotKey, str]] = field(default_factory=list)
    reshapes: list[Reshape] = field(default_factory=list)
    constraints: list[Any] = field(default_factory=list)
    covered: set = field(default_factory=set)  # slots described without a link (size-1, scalars)
    virtual: dict = field(default_factory=dict)  # slots of no tensor (a reshape's common refinement) → size
    uses: list = field(default_factory=list)  # (input slot, output slot): a contracted dim is used iff the output is
    probed: str = ""  # set by slimc.probe: the op has no rule, this coupling is what probing found
    mixed: str = ""  # set by slimc.probe: the dims it found mixed (barriers), reported like a missing rule
    zeros: list = field(default_factory=list)  # output slots that are zero whatever the inputs (torch.zeros)
    holds: set = field(default_factory=set)  # barriers that hold positions without fixing their dim (hold)

    def use(self, contracted: SlotKey, by: SlotKey) -> "Coupling":
        """``contracted`` (a dim that the op sums over) is in use iff any element of ``by`` is."""
        self.uses.append((contracted, by))
        return self

    def flow(self, a: SlotKey, b: SlotKey, a_idx=None, b_idx=None, *, term: int = 0, zero_ok: bool = True) -> "Coupling":
        self.links.append(Link("flow", a, b, a_idx, b_idx, term, zero_ok))
        return self

    def param(self, kind: str, p: SlotKey, v: SlotKey, p_idx=None, v_idx=None, *, term: int = 0) -> "Coupling":
        assert kind in ("source", "follower", "sink"), kind
        self.links.append(Link(kind, p, v, p_idx, v_idx, term))
        return self

    def feed(self, a: SlotKey, b: SlotKey, *, term: int = 0, zero_ok: bool = True) -> "Coupling":
        """A term that does not vary along ``b``'s dim (a bias over a Linear's leading dims, a
        size-1 operand): it is zero for every element of ``b`` only if all of ``a`` is. Joins
        no channels; only the zero analysis reads it."""
        self.links.append(Link("feed", a, b, None, None, term, zero_ok))
        return self

    def barrier(self, slot: SlotKey, reason: str) -> "Coupling":
        self.barriers.append((slot, reason))
        return self

    def hold(self, slot: SlotKey, reason: str) -> "Coupling":
        """A barrier on positions that must stay (a one-element split piece: multi-query
        attention's key or value head) without fixing the other positions of the dims they
        are joined to: a reshape of such a dim still matches its positions one by one."""
        self.holds.add(slot)
        return self.barrier(slot, reason)

    def cover(self, slot: SlotKey) -> "Coupling":
        self.covered.add(slot)
        return self


@dataclass(frozen=True)
class ByName:
    """An op of a library slimc does not import (torchvision, timm), keyed by the qualified
    name of its function or module class, e.g. ``torchvision.ops.stochastic_depth.stochastic_depth``."""

    name: str


def qualified_name(obj: Any) -> str | None:
    mod, qn = getattr(obj, "__module__", None), getattr(obj, "__qualname__", None)
    return f"{mod}.{qn}" if isinstance(mod, str) and isinstance(qn, str) else None


def code_name(fn: Any) -> str | None:
    """The qualified name of the code ``fn`` runs, whatever ``functools.wraps`` copied onto
    it: a class decorator's wrapped ``forward`` is named by the decorator's own function
    (``transformers.integrations.moe.use_experts_implementation.<locals>.wrapper.<locals>.forward``),
    shared by every class it decorates."""
    code, glob = getattr(fn, "__code__", None), getattr(fn, "__globals__", None)
    qn = getattr(code, "co_qualname", None)
    return f"{glob.get('__name__')}.{qn}" if isinstance(glob, dict) and isinstance(qn, str) else None


def class_keys(cls: type) -> list:
    """What a module class is keyed by in the tables, in order: the class, its qualified name
    (a library slimc does not import), the code its ``forward`` runs (a decorator's)."""
    return [cls, ByName(qualified_name(cls) or ""), ByName(code_name(getattr(cls, "forward", None)) or "")]


Rule = Callable[["OpView"], Union[Coupling, Unsupported]]
RULES: dict[Any, Rule] = {}
RULE_DOCS: dict[Any, str] = {}
PERMUTATIONS: dict[Any, Callable[["OpView", int], "list[int] | None"]] = {}
"""op → its dim order: output dim i is input dim ``perm[i]`` (transposes, filled by shape_rules/permute.py)."""
RESIZERS: dict[Any, Callable[[nn.Module, dict[str, list[int]]], None]] = {}  # keyed like rules: class_keys


def shape_rule(*ops: Any) -> Callable[[Rule], Rule]:
    """Register ``fn`` for every op in ``ops`` (module classes, functions, method names)."""

    def deco(fn: Rule) -> Rule:
        for op in ops:
            RULES[op] = fn
            RULE_DOCS[op] = (fn.__doc__ or fn.__name__).strip().splitlines()[0]
        return fn

    return deco


def resizer(*classes: Any) -> Callable:
    """Register how to patch a module's attributes after its params were sliced (keyed by
    module classes, or by name: :func:`class_keys`).

    ``fn(module, new_sizes)`` gets ``new_sizes[param_name] = new shape``.
    """

    def deco(fn):
        for c in classes:
            RESIZERS[c] = fn
        return fn

    return deco


def aten(*names: str) -> list:
    """ATen overloads by name ("conv2d.default"); names this torch lacks are skipped."""
    out = []
    for n in names:
        op, _, overload = n.partition(".")
        packet = getattr(torch.ops.aten, op, None)
        if packet is not None and hasattr(packet, overload or "default"):
            out.append(getattr(packet, overload or "default"))
    return out


def op_key(node: fx.Node, gm: fx.GraphModule) -> Any:
    if node.op == "call_module":
        return type(gm.get_submodule(node.target))
    return node.target


def op_name(key: Any) -> str:
    if isinstance(key, type):
        return f"{key.__module__.replace('torch.nn.modules', 'nn')}.{key.__name__}".replace("nn.activation.", "nn.").replace(
            "nn.conv.", "nn."
        )
    if isinstance(key, str):
        return f"Tensor.{key}"
    if isinstance(key, ByName):
        return key.name
    if isinstance(key, torch._ops.OpOverload):
        return f"aten.{key._opname}.{key._overloadname}"
    mod = getattr(key, "__module__", "") or ""
    name = getattr(key, "__name__", repr(key))
    if mod in ("_operator", "operator"):
        return f"operator.{name}"
    if mod.startswith("torch.nn.functional"):
        return f"F.{name}"
    return f"torch.{name}" if mod.startswith("torch") else f"{mod}.{name}"


def module_rule(cls: type) -> Rule | None:
    """The rule for a module class (see :func:`class_keys`; a torch.nn subclass inherits its
    base's rule)."""
    for key in class_keys(cls):
        if key in RULES:
            return RULES[key]
    if cls.__module__.startswith("torch.nn"):
        for base in cls.__mro__[1:]:
            if base in RULES:
                return RULES[base]
    return None


@dataclass(frozen=True)
class WholeModule:
    """A module class that tracing keeps whole: one ``call_module`` node that its own rule
    describes (a mixture-of-experts experts module, whose token dispatch per-op rules could
    only wall off). Its output is shaped like its input ``out_like``; ``for_graph(module)``
    readies the graph's copy of the module to run in the slim graph (an implementation that
    torch.export and the ONNX exporters trace)."""

    out_like: int = 0
    for_graph: Callable[[nn.Module], None] | None = None
    indices: tuple[int, ...] = ()  # inputs that hold indices into its first parameter's leading dim (experts)


WHOLE_MODULES: dict[Any, WholeModule] = {}  # keyed like rules: class_keys


def whole_module(cls: type) -> WholeModule | None:
    return next((WHOLE_MODULES[k] for k in class_keys(cls) if k in WHOLE_MODULES), None)


def find_resizer(cls: type) -> Callable | None:
    """The resizer of a module class or of its nearest base that has one (:func:`class_keys`)."""
    for base in cls.__mro__:
        for key in class_keys(base):
            if key in RESIZERS:
                return RESIZERS[key]
    return None


def find_rule(node: fx.Node, gm: fx.GraphModule) -> Rule | None:
    key = op_key(node, gm)
    if isinstance(key, type):
        return module_rule(key)
    rule = RULES.get(key) if _hashable(key) else None
    if rule is None and node.op == "call_function":
        rule = RULES.get(ByName(qualified_name(key) or ""))
    return rule


def _hashable(key: Any) -> bool:
    try:
        hash(key)
    except TypeError:
        return False
    return True


class OpView:
    """What a rule sees of one node: its args, their shapes, its module and params."""

    def __init__(self, node: fx.Node, gm: fx.GraphModule, shapes: dict[str, Any]):
        self.node = node
        self.gm = gm
        self.shapes = shapes
        self.module = gm.get_submodule(node.target) if node.op == "call_module" else None
        self.viewed: set[SlotKey] = set()  # value slots read as the parameter they permute (slot())

    # --- arguments -------------------------------------------------------------
    def arg(self, i: int, name: str | None = None, default: Any = None) -> Any:
        if i < len(self.node.args):
            return self.node.args[i]
        if name is not None and name in self.node.kwargs:
            return self.node.kwargs[name]
        return default

    @property
    def inputs(self) -> list[fx.Node]:
        """Tensor-valued fx nodes among the args (flattened), in order."""
        out: list[fx.Node] = []
        for a in self.node.all_input_nodes:
            if isinstance(self.shapes.get(a.name), tuple) or a.op == "get_attr":
                out.append(a)
        return out

    def shape(self, x: Any) -> tuple | None:
        if isinstance(x, fx.Node):
            if x.op == "get_attr":
                t = self.attr(x)
                return tuple(t.shape) if isinstance(t, torch.Tensor) else None
            s = self.shapes.get(x.name)
            return s if isinstance(s, tuple) else None
        return None

    @property
    def out_shape(self) -> Any:
        return self.shapes.get(self.node.name)

    def attr(self, x: fx.Node) -> Any:
        obj: Any = self.gm
        for part in str(x.target).split("."):
            obj = getattr(obj, part)
        return obj

    # --- slots -----------------------------------------------------------------
    def slot(self, x: Any, dim: int) -> SlotKey:
        """Slot of dim ``dim`` of value ``x`` (an fx node, or a get_attr param): a parameter's
        own slot where ``x`` is a parameter read through transposes (:meth:`param_view`)."""
        shp = self.shape(x)
        assert shp is not None, f"{x} has no tensor shape"
        d = dim % len(shp)
        if x.op == "get_attr":
            return ("p", str(x.target), d)
        view = self.param_view(x)
        if view is not None:
            self.viewed.add(("v", x.name, d))
            return ("p", view[0], view[1][d])
        return ("v", x.name, d)

    def param_view(self, x: Any) -> tuple[str, list[int]] | None:
        """``x`` as a parameter (a get_attr tensor), read as it is or through transposes
        (``x @ self.weight.T``, ``W.t()``, ``W.mT``): (its name, ``dims``: dim d of ``x`` is
        the parameter's dim ``dims[d]``); None for a computed tensor."""
        if not isinstance(x, fx.Node):
            return None
        if x.op == "get_attr":
            t = self.attr(x)
            return (str(x.target), list(range(t.dim()))) if isinstance(t, torch.Tensor) else None
        order = PERMUTATIONS.get(x.target) if x.op in ("call_function", "call_method") and _hashable(x.target) else None
        inner = x.args[0] if order is not None and x.args else None
        base = self.param_view(inner) if isinstance(inner, fx.Node) else None
        if base is None:
            return None
        perm = order(OpView(x, self.gm, self.shapes), len(base[1]))
        return (base[0], [base[1][p] for p in perm]) if perm is not None else None

    def out(self, dim: int, item: int | tuple | None = None) -> SlotKey:
        """Slot of output dim ``dim`` (of tuple item ``item``; a tuple of ints for nested items)."""
        shp, name = self.out_shape, self.node.name
        for i in (item,) if isinstance(item, int) else item or ():
            shp, name = shp[i], f"{name}#{i}"
        return ("v", name, dim % len(shp))

    def p(self, name: str, dim: int) -> SlotKey:
        """Slot of dim ``dim`` of this module's param/buffer ``name``."""
        return ("p", f"{self.node.target}.{name}", dim)

    def has_param(self, name: str) -> bool:
        return self.module is not None and getattr(self.module, name, None) is not None

    def is_param(self, x: Any) -> bool:
        """A parameter or buffer, read as it is or through transposes (:meth:`param_view`)."""
        return isinstance(x, fx.Node) and (x.op == "get_attr" or self.param_view(x) is not None)

    def weight_bias(self, w_pos: int = 1, b_pos: int | None = 2):
        """``(weight slot of dim d, bias slot of dim d or None)`` of a layer in either form:
        the module's ``weight``/``bias``, or the functional call's args ``w_pos``/``b_pos``
        read as graph params. None where a functional weight or bias is computed."""
        if self.module is not None:
            bias = (lambda d: self.p("bias", d)) if getattr(self.module, "bias", None) is not None else None
            return (lambda d: self.p("weight", d)), bias
        wn = self.arg(w_pos, "weight")
        bn = self.arg(b_pos, "bias") if b_pos is not None else None
        if not self.is_param(wn) or (bn is not None and not self.is_param(bn)):
            return None
        return (lambda d: self.slot(wn, d)), ((lambda d: self.slot(bn, d)) if bn is not None else None)


def tensor_leaves(name: str, shp: Any) -> list[tuple[str, tuple]]:
    """(value name, shape) of each tensor of a node's shape: ``name`` for a tensor,
    ``name#i`` (``name#i#j`` nested: an LSTM's ``(out, (h, c))``) for tuple items."""
    if isinstance(shp, tuple):
        return [(name, shp)]
    if isinstance(shp, list):
        return [leaf for i, s in enumerate(shp) for leaf in tensor_leaves(f"{name}#{i}", s)]
    return []


def identity_all(c: Coupling, op: OpView, x: fx.Node, *, zero_ok: bool = True, term: int = 0) -> Coupling:
    """Output has the input's shape; couple every dim one-to-one."""
    shp = op.shape(x)
    for d in range(len(shp)):
        c.flow(op.slot(x, d), op.out(d), term=term, zero_ok=zero_ok)
    return c


def zero_preserving(fn: Callable[[torch.Tensor], torch.Tensor]) -> bool:
    """f(0) == 0 elementwise? Checked numerically, not guessed."""
    try:
        with torch.no_grad():
            y = fn(torch.zeros(4))
        return bool((y == 0).all())
    except Exception:
        return False


def arange(n: int) -> np.ndarray:
    return np.arange(n, dtype=np.int64)


def _load_rule_modules() -> None:
    from slimc.shape_rules import (  # noqa: F401
        attention,
        conv,
        permute,
        einsum,
        elementwise,
        experts,
        library,
        linear,
        norm,
        pooling,
        positions,
        recurrent,
        reshape,
        slicing,
        structural,
    )


_load_rule_modules()
