"""Where a size in the graph came from in the user's code.

A size that slimming changes is a literal in the traced graph whatever wrote it: ``self.num_heads``,
``512 * 7 * 7``, or a local computed from a shape. The user's own class can follow the
change only through an attribute, so each changed size is looked up in the user's source
line (``ast``): the argument at its position is

* ``self.<attr>`` (or ``self.a.b``): an attribute to set — :class:`Attribute`;
* an expression of constants only: a literal the class cannot follow — :class:`Literal`;
* anything else (a local, a shape read, an unparsable line): not known — ``None``; the
  built-in check decides.
"""
from __future__ import annotations

import ast
from dataclasses import dataclass

# graph op → the names the user's code calls it by
CALL_NAMES = {
    "view": ("view", "reshape"), "_unsafe_view": ("view", "reshape"), "reshape": ("reshape", "view"),
    "expand": ("expand",), "unflatten": ("unflatten",), "split": ("split", "chunk", "tensor_split"),
    "split_with_sizes": ("split",), "chunk": ("chunk", "split"), "tensor_split": ("tensor_split", "split"),
    "conv1d": ("conv1d",), "conv2d": ("conv2d",), "conv3d": ("conv3d",),
}
TENSOR_FUNCS = ("torch", "F", "nn", "functional")  # torch.reshape(x, …): the tensor is an argument


@dataclass(frozen=True)
class Attribute:
    path: tuple[str, ...]  # ("num_heads",) for self.num_heads, ("config", "n_head") for self.config.n_head


@dataclass(frozen=True)
class Literal:
    text: str


def _code(source: str) -> str:
    """The code part of 'file.py:LINE: code'."""
    parts = source.split(": ", 1)
    return parts[1].strip() if len(parts) == 2 else source.strip()


def _parse(code: str) -> ast.AST | None:
    for text in (code, code.rstrip(",(") + ")" * max(0, code.count("(") - code.count(")"))):
        try:
            return ast.parse(text)
        except SyntaxError:
            continue
    return None


def _call_args(call: ast.Call) -> list[ast.expr]:
    """The size arguments of a call: a method's own arguments, a torch function's after the tensor."""
    f = call.func
    if isinstance(f, ast.Attribute) and isinstance(f.value, ast.Name) and f.value.id in TENSOR_FUNCS:
        return list(call.args[1:])
    return list(call.args)


def _attr_path(e: ast.expr) -> tuple[str, ...] | None:
    names = []
    while isinstance(e, ast.Attribute):
        names.append(e.attr)
        e = e.value
    if isinstance(e, ast.Name) and e.id == "self" and names:
        return tuple(reversed(names))
    return None


def _constant(e: ast.expr) -> bool:
    if isinstance(e, ast.Constant):
        return isinstance(e.value, (int, float))
    if isinstance(e, ast.BinOp):
        return _constant(e.left) and _constant(e.right)
    if isinstance(e, ast.UnaryOp):
        return _constant(e.operand)
    if isinstance(e, (ast.Tuple, ast.List)):
        return all(_constant(x) for x in e.elts)
    return False


def classify(e: ast.expr) -> Attribute | Literal | None:
    path = _attr_path(e)
    if path is not None:
        return Attribute(path)
    if _constant(e):
        return Literal(ast.unparse(e))
    return None


ARG_POSITIONS = {"groups": 6}  # F.conv*d(input, weight, bias, stride, padding, dilation | output_padding, groups)


def size_argument(source: str, op: str, position, n_sizes: int, keyword: str | None = None) -> ast.expr | None:
    """The expression at size ``position`` of the call to ``op`` on the user's line, if the
    line shows it unambiguously (one such call; the sizes spelled out or as one tuple)."""
    tree = _parse(_code(source))
    if tree is None:
        return None
    base = op.split(".")[0]
    names = CALL_NAMES.get(base, (base,))
    calls = [c for c in ast.walk(tree) if isinstance(c, ast.Call)
             and ((isinstance(c.func, ast.Attribute) and c.func.attr in names)
                  or (isinstance(c.func, ast.Name) and c.func.id in names))]
    if len(calls) != 1:
        return None
    call = calls[0]
    if keyword is not None:
        kw = next((k.value for k in call.keywords if k.arg == keyword), None)
        if kw is not None:
            return kw
    if isinstance(position, str):  # a named argument passed by position: conv's groups (args[6])
        at = ARG_POSITIONS.get(position)
        return call.args[at] if at is not None and len(call.args) > at and not any(
            isinstance(a, ast.Starred) for a in call.args[: at + 1]) else None
    args = _call_args(call)
    if len(args) == 1 and isinstance(args[0], (ast.Tuple, ast.List)) and len(args[0].elts) == n_sizes:
        args = list(args[0].elts)
    if base in ("split", "split_with_sizes", "chunk", "tensor_split"):
        return args[0] if args and not isinstance(args[0], ast.Starred) else None
    return _unstarred(args, n_sizes, position)


def _unstarred(args: list[ast.expr], n_sizes: int, position: int) -> ast.expr | None:
    """The argument at size ``position`` where one ``*sizes`` may stand for several
    (``view(*input_shape, self.num_kv_heads, -1, self.head_dim)``: the sizes after it count
    from the end); None inside the starred ones or where the count does not fit."""
    starred = [i for i, a in enumerate(args) if isinstance(a, ast.Starred)]
    if len(starred) > 1 or not 0 <= position < n_sizes:
        return None
    if not starred:
        return args[position] if len(args) == n_sizes else None
    s, n_star = starred[0], n_sizes - (len(args) - 1)
    if n_star < 0 or s <= position < s + n_star:
        return None
    return args[position] if position < s else args[position - n_star + 1]


def literal_slice(source: str) -> str | None:
    """The text of a subscript on the user's line whose bounds are all constants
    (``x[:, :64]``), if that is the only kind of subscript there."""
    tree = _parse(_code(source))
    if tree is None:
        return None
    subs = [n for n in ast.walk(tree) if isinstance(n, ast.Subscript)]
    bounds = [b for sub in subs for sl in ast.walk(sub.slice) if isinstance(sl, ast.Slice)
              for b in (sl.lower, sl.upper, sl.step) if b is not None]
    if subs and bounds and all(_constant(b) for b in bounds):
        return ast.unparse(subs[0])
    return None


def attributes_in(e: ast.expr) -> list[tuple[str, ...]]:
    """``self.x`` paths that an expression reads (``bsz * self.num_heads`` → [("num_heads",)])."""
    paths = {p for node in ast.walk(e) if isinstance(node, ast.Attribute) and (p := _attr_path(node)) is not None}
    return sorted(p for p in paths if not any(q != p and q[: len(p)] == p for q in paths))


def line_of(source: str) -> tuple[str, int] | None:
    """(file name, line) of 'file.py:LINE: code'."""
    parts = source.split(":", 2)
    return (parts[0], int(parts[1])) if len(parts) == 3 and parts[1].isdigit() else None


def other_reads(owner: object, attr: str, lines: set[tuple[str, int]], ran: set[tuple[str, int]]) -> list[str]:
    """'file.py:LINE: code' of each line of ``owner``'s forward that ran (``ran``) and reads
    ``self.<attr>``, other than ``lines`` (the size arguments slimc follows): a scale
    ``self.head_dim ** -0.5`` computed there would change with the attribute."""
    import inspect
    import textwrap

    fn = getattr(type(owner), "forward", None)
    try:
        src, start = inspect.getsourcelines(fn)
        fname = (inspect.getsourcefile(fn) or "?").rsplit("/", 1)[-1]
        tree = ast.parse(textwrap.dedent("".join(src)))
    except (TypeError, OSError, SyntaxError):
        return []
    found = {start + n.lineno - 1 for n in ast.walk(tree)
             if isinstance(n, ast.Attribute) and n.attr == attr and isinstance(n.ctx, ast.Load)
             and isinstance(n.value, ast.Name) and n.value.id == "self"}
    return [f"{fname}:{line}: {src[line - start].strip()}" for line in sorted(found)
            if (fname, line) in ran and (fname, line) not in lines]


__all__ = ["Attribute", "Literal", "classify", "size_argument", "attributes_in", "literal_slice", "line_of",
           "other_reads"]
