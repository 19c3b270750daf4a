"""What passes share: the rewrite context, a pass's result, and the size events that the
user's own model (``res.model``) must follow.

A :class:`SizeEvent` records a size written into the graph that a pass changed (a view's
literal size, split sizes, a scale, a mean's count): the graph is patched in place; the
user's class gets the same change through its attributes (``self.num_heads``), or, where
the size is a literal in the user's code, cannot follow — the event names the line.
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


@dataclass
class RewriteContext:
    plan: Any  # slimc.propagate.RemovalPlan
    renorm: bool = False
    approximate: bool = False  # set by a pass that emits a non-exact rewrite (--renorm)
    events: list[SizeEvent] = field(default_factory=list)
