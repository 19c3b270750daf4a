"""What passes share: the rewrite context, a pass's result, and the size events that the
user's own model (``res.model``) must follow.

A :class:`SizeEvent` records a size written into the graph that a pass changed (a view's
literal size, split sizes, a scale, a mean's count): the graph is patched in place; the
user's class gets the same change through its attributes (``self.num_heads``), or, where
the size is a literal in the user's code, cannot follow — the event names the line.

:class:`TracedShapes` answers what the trace recorded for a node of the graph being
rewritten: a pass that replaces a node by new ones says so (:meth:`RewriteContext.replace`),
and every later lookup of the new node — a later pass's, the user's class's — reads the
node it stands for. A node a pass made that stands for none has no recorded shape: asking
for it is an error that names it, never a skipped rewrite.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from torch import fx

from slimc.errors import PlanError
from slimc.graph import source_line


def node_error(node: fx.Node, message: str) -> PlanError:
    """A pass's failure at ``node``, named like the rules name theirs: the node and the
    user's source line (``"view_3 (model.py:42: x.view(B, 8, 16)): …"``)."""
    where = source_line(node)
    return PlanError(f"{node.name} ({where}): {message}" if where else f"{node.name}: {message}")


@dataclass
class PassResult:
    gm: fx.GraphModule
    modified: bool
    notes: list[str] = field(default_factory=list)
    graph_changed: bool | None = None  # None: whenever modified; False: modules or params only

    @property
    def changed_graph(self) -> bool:
        return self.modified if self.graph_changed is None else self.graph_changed


@dataclass
class SizeEvent:
    kind: str  # literal | scaled | split | sdpa_scale | mean | layernorm
    node: str  # graph node name
    op: str  # the node's target, readable
    module: str | None  # path of the innermost module whose forward made the node ("" = root)
    source: str  # the user's source line, "file.py:LINE: code"
    position: Any = None  # which size argument (index into the sizes), or a name ("groups")
    old: Any = None
    new: Any = None
    detail: dict = field(default_factory=dict)

    @classmethod
    def at(cls, node: fx.Node, kind: str, **kw) -> "SizeEvent":
        stack = node.meta.get("nn_module_stack") or {}
        module = list(stack.values())[-1][0] if stack else ""
        op = node.target if isinstance(node.target, str) else getattr(node.target, "__name__", str(node.target))
        return cls(kind, node.name, str(op), module, source_line(node), **kw)


class TracedShapes:
    """The shapes the trace recorded (``plan.dg.shapes``) and the plan's slim sizes, looked up
    for nodes of a graph the passes rewrite: a node that a pass made in place of a traced one
    (``origin``: its name → the traced node's) reads that one's."""

    def __init__(self, plan: Any, origin: dict[str, str] | None = None):
        self.plan = plan
        self.origin = {} if origin is None else origin

    def traced_name(self, node: fx.Node) -> str | None:
        """The traced node whose value ``node`` computes; None for a node a pass made that
        stands for no traced node (a partial result, a computed size)."""
        name = self.origin.get(node.name, node.name)
        return name if name in self.plan.dg.shapes else None

    def old(self, node: fx.Node) -> Any:
        """The traced shape of ``node``'s value (a tuple, a list for tuple outputs, None for a
        non-tensor). A node a pass made that stands for none: PlanError naming it."""
        name = self.traced_name(node)
        if name is None:
            raise node_error(node, "internal: a rewrite pass made this node without saying which traced node it "
                                   "stands for, so its shape is unknown (RewriteContext.replace)")
        return self.plan.dg.shapes[name]

    def tensor(self, node: Any) -> tuple | None:
        """:meth:`old` where ``node`` is a node whose value is one tensor, else None."""
        if not isinstance(node, fx.Node):
            return None
        old = self.old(node)
        return old if isinstance(old, tuple) else None

    def slot(self, node: fx.Node, d: int) -> tuple:
        """The plan's slot of ``node``'s dim ``d`` (a param's for a get_attr)."""
        if node.op == "get_attr":
            return ("p", str(node.target), d)
        name = self.traced_name(node)
        if name is None:
            self.old(node)  # raises, naming the node
        return ("v", name, d)

    def new_size(self, node: fx.Node, d: int) -> int:
        return self.plan.new_size(self.slot(node, d))

    def new(self, node: fx.Node) -> tuple:
        """The slim shape of ``node``'s (one tensor) value."""
        return tuple(self.new_size(node, d) for d in range(len(self.old(node))))

    def kept(self, node: fx.Node, d: int):
        """Kept indices of ``node``'s dim ``d`` (None: the dim keeps all)."""
        return self.plan.kept_idx(self.slot(node, d))


@dataclass
class RewriteContext:
    plan: Any  # slimc.propagate.RemovalPlan
    renorm: bool = False
    approximate: bool = False  # set by a pass that emits a non-exact rewrite (--renorm)
    events: list[SizeEvent] = field(default_factory=list)
    origin: dict[str, str] = field(default_factory=dict)  # node a pass made → the traced node it stands for

    @property
    def shapes(self) -> TracedShapes:
        return TracedShapes(self.plan, self.origin)

    def replace(self, node: fx.Node, new: fx.Node) -> None:
        """``new`` (made by a pass) computes ``node``'s value: its users read ``new``, ``node``
        goes, and later lookups of ``new``'s shape read ``node``'s."""
        self.origin[new.name] = self.origin.get(node.name, node.name)
        node.replace_all_uses_with(new)
        node.graph.erase_node(node)
