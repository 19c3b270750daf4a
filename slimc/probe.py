"""Probing ops without a shape rule: is the op channel-wise along a dim?

An op slimc has no rule for (a user's activation, a custom autograd function, a
``torch.ops`` extension op) is run on the values its inputs had on the example inputs
(one interpreter run captures them for every such op) and on random values of several
scales. For each output dim ``d``:

1. *dependence*, by group testing: perturb the inputs at the positions S along ``d``
   (every other position alike) for S = the positions whose bit b is set, and for its
   complement, b < ⌈log₂ n⌉; no output position outside S may move. Any position j that
   feeds a position c ≠ j is caught by a bit where j and c differ — 2⌈log₂ n⌉ runs, not n;
2. *restriction*: ``f(x[K]) == f(x)[K]`` along ``d`` for a random half K, so the op runs at
   the slim size and does not read the size as a value;
3. *zero*: inputs zeroed at S give zeros at S (then a zero stays zero there).

A dim that passes is treated as channel-wise (a flow, the node marked "probed" in the
report and in ``slimc inspect``); the built-in check after the rewrite stays the proof. A
dim that fails is a barrier, with what the probe found as the reason. The op must also
give the same result twice (no randomness) and may not have parameters of its own.
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

import torch
from torch import fx

from slimc.shape_rules import Coupling, OpView, Unsupported, find_rule
from slimc.modes import eval_mode
from slimc.errors import describe

CALLS = ("call_function", "call_method", "call_module")
SCALES = (1.0, 100.0)  # random inputs besides the captured ones: N(0, s²)
RTOL = 1e-6


@dataclass
class _Inputs:
    """One probe case: the op's args and kwargs with their tensor leaves listed in order
    (replaced, cloned, for each call), which of them are parameters, and for each leaf the
    output dim each of its dims lines up with (None: broadcast, size 1)."""

    args: Any
    kwargs: Any
    leaves: list[torch.Tensor]
    params: list[bool]
    dims: list[list[int | None]]

    def dim_of(self, i: int, d: int) -> int | None:
        """The dim of leaf ``i`` that lines up with output dim ``d`` (None if none does)."""
        return self.dims[i].index(d) if d in self.dims[i] else None


class Prober:
    """Captures the inputs of every rule-less node on the example inputs (once, lazily) and
    probes a node on demand: ``prober(view, name)`` → Coupling (marked ``probed``) or
    Unsupported (the finding)."""

    def __init__(self, gm: fx.GraphModule, example_inputs: tuple):
        self.gm = gm
        self.example_inputs = example_inputs
        self.captured: dict[str, tuple] | None = None
        self.verdicts: dict = {}

    def _capture(self, need: set[str]) -> dict[str, tuple]:
        """The args of the nodes named ``need``, from one run of the graph on the example inputs."""
        store: dict[str, tuple] = {}

        class _Capture(fx.Interpreter):
            def run_node(self, n: fx.Node) -> Any:
                if n.name in need:
                    args, kwargs = self.fetch_args_kwargs_from_env(n)
                    store[n.name] = fx.node.map_aggregate((args, kwargs), _clone)
                return super().run_node(n)

        try:
            with eval_mode(self.gm), torch.no_grad():
                _Capture(self.gm).run(*self.example_inputs)
        except Exception:  # the model ran in ShapeProp; a failure here only means no probing
            store.clear()
        return store

    def __call__(self, op: OpView, name: str) -> Coupling | Unsupported:
        if self.captured is None:  # every node without a rule, in one run
            self.captured = self._capture({n.name for n in self.gm.graph.nodes if n.op in CALLS and
                                           find_rule(n, self.gm) is None})
        if op.node.name not in self.captured:  # a rule declined this form (2 ** x): its kind, in one more run
            self.captured.update(self._capture({n.name for n in self.gm.graph.nodes if n.op in CALLS and
                                                n.target == op.node.target}))
        got = self.captured.get(op.node.name)
        if got is None:
            return Unsupported(f"no shape rule for {name} (not probed: its inputs were not captured)")
        try:
            with torch.no_grad():
                return _probe(op, name, got, self.verdicts)
        except Exception as e:  # an op that cannot be probed stays a barrier
            return Unsupported(f"no shape rule for {name}; probe failed: {describe(e)}"[:200])


def _clone(a: Any) -> Any:
    return a.detach().clone() if isinstance(a, torch.Tensor) else a


def _leaf_nodes(node: fx.Node) -> list[Any]:
    """The op's args and kwargs leaves in order (fx nodes where tensors go)."""
    out: list[Any] = []
    fx.node.map_aggregate((node.args, node.kwargs), lambda a: out.append(a) or a)
    return out


def _call(op: OpView, case: _Inputs, leaves: list[torch.Tensor]) -> Any:
    """The op on ``case``'s args with its tensor leaves replaced by (clones of) ``leaves``."""
    it = iter(leaves)
    args, kwargs = fx.node.map_aggregate(
        (case.args, case.kwargs), lambda a: next(it).clone() if isinstance(a, torch.Tensor) else a)
    n = op.node
    if n.op == "call_module":
        return op.module(*args, **kwargs)
    if n.op == "call_method":
        return getattr(args[0], n.target)(*args[1:], **kwargs)
    return n.target(*args, **kwargs)


def _close(a: torch.Tensor, b: torch.Tensor, mask: torch.Tensor | None = None) -> bool:
    """``a`` == ``b`` (where ``mask``) up to float rounding."""
    if a.shape != b.shape or a.dtype != b.dtype:
        return False
    if mask is not None:
        a, b = a[mask], b[mask]
    if a.is_floating_point() or a.is_complex():  # equal, close, or both NaN (overflowing values)
        return bool(((a == b) | ((a - b).abs() <= RTOL * (1 + b.abs())) | (a.isnan() & b.isnan())).all())
    return torch.equal(a, b)


def _along(t: torch.Tensor, k: int, positions: torch.Tensor) -> torch.Tensor:
    """A bool mask over ``t``, true at ``positions`` of its dim ``k``."""
    shape = [1] * t.dim()
    shape[k] = t.shape[k]
    sel = torch.zeros(t.shape[k], dtype=torch.bool)
    sel[positions] = True
    return sel.view(shape).expand(t.shape)


def _line_up(v: torch.Tensor, out: tuple) -> list[int | None] | None:
    """The output dim of each dim of ``v``: right-aligned broadcasting, or a 1-D tensor whose
    size only one output dim has (a per-channel weight reshaped inside the op). None if
    neither fits."""
    nd = len(out)
    if v.dim() <= nd and all(v.shape[k] in (1, out[nd - v.dim() + k]) for k in range(v.dim())):
        return [nd - v.dim() + k if v.shape[k] == out[nd - v.dim() + k] else None for k in range(v.dim())]
    if v.dim() == 1:
        same = [d for d, n in enumerate(out) if n == v.shape[0]]
        return [same[0]] if len(same) == 1 else None
    return None


def _probe(op: OpView, name: str, captured: tuple, verdicts: dict | None = None) -> Coupling | Unsupported:
    """Probe one node; ``verdicts`` caches what was found for nodes applying the same
    function to inputs of the same shapes and constants (fifty calls of one activation
    are probed once)."""
    fail = lambda why: Unsupported(f"no shape rule for {name}; probe: {why}")  # noqa: E731
    prepared = _prepare(op, captured)
    if isinstance(prepared, str):
        return fail(prepared)
    tensors, base = prepared
    key = _signature(op, base)
    verdict = verdicts.get(key) if verdicts is not None and key is not None else None
    if verdict is None:
        verdict = _judge(op, base)
        if verdicts is not None and key is not None:
            verdicts[key] = verdict
    if isinstance(verdict, str):
        return fail(verdict)
    return _coupling(op, name, tensors, base, *verdict)


def _prepare(op: OpView, captured: tuple) -> tuple[list, _Inputs] | str:
    """The op's tensor inputs (position, value, fx node) and its probe case, or why not."""
    out = op.out_shape
    if not isinstance(out, tuple) or not out:
        return "the op does not return one tensor"
    if op.module is not None and any(True for _ in [*op.module.parameters(), *op.module.buffers()]):
        return "a module with parameters or buffers of its own"
    args, kwargs = captured
    values: list[Any] = []
    fx.node.map_aggregate((args, kwargs), lambda a: values.append(a) or a)
    srcs = _leaf_nodes(op.node)
    tensors = [(i, v, s) for i, (v, s) in enumerate(zip(values, srcs)) if isinstance(v, torch.Tensor)]
    if not tensors or len(values) != len(srcs):
        return "no tensor input"
    dims = [_line_up(v, out) for _, v, _ in tensors]
    if any(d is None for d in dims):
        return "an input does not broadcast to the output (not elementwise-like)"
    return tensors, _Inputs(args, kwargs, [v for _, v, _ in tensors], [op.is_param(s) for _, _, s in tensors], dims)


def _signature(op: OpView, case: _Inputs) -> tuple | None:
    """What makes two nodes the same op for the probe (None: a module, judged alone)."""
    if op.node.op == "call_module":
        return None
    parts: list = []
    fx.node.map_aggregate((case.args, case.kwargs), lambda a: parts.append(
        (tuple(a.shape), a.dtype) if isinstance(a, torch.Tensor) else repr(a)) or a)
    return op.node.op, op.node.target, tuple(parts), tuple(case.params)


def _judge(op: OpView, base: _Inputs) -> tuple[dict, dict] | str:
    """(channel-wise dims → zeros kept, mixed dims → finding), or why the op is not probed."""
    out = op.out_shape
    y = _call(op, base, base.leaves)
    if not isinstance(y, torch.Tensor) or tuple(y.shape) != out:
        return "the output differs from the traced one"
    if not _close(_call(op, base, base.leaves), y):
        return "two runs on the same input differ (random?)"
    cases = [(base, y)]
    g = torch.Generator().manual_seed(0)
    for s in SCALES:
        leaves = [(torch.randn(v.shape, generator=g, dtype=v.dtype) * s if v.is_floating_point() else v)
                  for v in base.leaves]
        cases.append((_Inputs(base.args, base.kwargs, leaves, base.params, base.dims), _call(op, base, leaves)))
    passed: dict[int, bool] = {}
    findings: dict[int, str] = {}
    for d, n in enumerate(out):
        if n <= 1:
            continue
        why = _dim_finding(op, cases, d, n)
        if why is None:
            passed[d] = _zero_stays(op, cases[0], d, n)
        else:
            findings[d] = why
    if len(passed) > 1 and not _restricts(op, cases[0], list(passed)):
        for d in passed:
            findings[d] = "removing positions along several dims together changes the rest"
        passed = {}
    return passed, findings


def _dim_finding(op: OpView, cases: list, d: int, n: int) -> str | None:
    """Why output dim ``d`` is not channel-wise, or None."""
    for case, y in cases:
        lined = [(i, case.dim_of(i, d)) for i in range(len(case.leaves))]
        if any(k is not None and not case.leaves[i].is_floating_point() for i, k in lined):
            return f"it reads an integer tensor along dim {d}"
        g = torch.Generator().manual_seed(d)
        for b in range(max(1, math.ceil(math.log2(n)))):
            bit = ((torch.arange(n) >> b) & 1).bool()
            for s in (bit, ~bit):
                if not s.any() or s.all():
                    continue
                pos = s.nonzero().flatten()
                pert = []
                for (i, k), v in zip(lined, case.leaves):
                    if k is not None:
                        noise = torch.randn(v.shape, generator=g, dtype=v.dtype) * (1 + v.abs().max())
                        v = torch.where(_along(v, k, pos), v + noise, v)
                    pert.append(v)
                if not _close(_call(op, case, pert), y, ~_along(y, d, pos)):
                    c = int((~s).nonzero()[0])
                    return f"output position {c} along dim {d} moves when other positions change (it mixes dim {d})"
    if not _restricts(op, cases[0], [d], _half(n, d)):
        return f"removing positions along dim {d} changes the others (it reads dim {d}'s size or mixes it)"
    return None


def _half(n: int, seed: int) -> torch.Tensor:
    perm = torch.randperm(n, generator=torch.Generator().manual_seed(seed))
    return perm[: max(1, n // 2)].sort().values


def _restricts(op: OpView, case_y: tuple, dims: list[int], keep: torch.Tensor | None = None) -> bool:
    """f(inputs with only positions K of ``dims``) == f(inputs) at K?"""
    case, y = case_y
    leaves, want = list(case.leaves), y
    for d in dims:
        k = keep if keep is not None else _half(y.shape[d], d)
        leaves = [v if case.dim_of(i, d) is None else v.index_select(case.dim_of(i, d), k)
                  for i, v in enumerate(leaves)]
        want = want.index_select(d, k)
    try:
        got = _call(op, case, leaves)
    except Exception:
        return False
    return isinstance(got, torch.Tensor) and _close(got, want)


def _zero_stays(op: OpView, case_y: tuple, d: int, n: int) -> bool:
    """Value inputs zeroed at half the positions of ``d`` → zeros there?"""
    case, y = case_y
    pos = _half(n, d + 7)
    leaves = []
    for i, (v, is_param) in enumerate(zip(case.leaves, case.params)):
        k = case.dim_of(i, d)
        leaves.append(v.masked_fill(_along(v, k, pos), 0) if k is not None and not is_param else v)
    got = _call(op, case, leaves)
    return bool((got[_along(got, d, pos)] == 0).all())


def _coupling(op: OpView, name: str, tensors: list, case: _Inputs, passed: dict[int, bool],
              findings: dict[int, str]) -> Coupling | Unsupported:
    """Flows along the channel-wise dims (a parameter there follows), barriers along the rest."""
    if not passed:
        why = next(iter(findings.values()), "no dim to probe")
        return Unsupported(f"no shape rule for {name}; probe: {why}")
    c = Coupling()
    term = 0
    for i, (_, v, src) in enumerate(tensors):
        if not isinstance(src, fx.Node):
            continue
        param = op.is_param(src)
        for k, d in enumerate(case.dims[i]):
            slot = op.slot(src, k)
            if d is None:  # broadcast (size 1): a factor of every position
                c.cover(slot)
                continue
            if d in passed and param:
                c.param("follower", slot, op.out(d), term=None)
            elif d in passed:
                c.flow(slot, op.out(d), term=term, zero_ok=passed[d])
            elif not param and op.out_shape[d] > 1:
                c.barrier(slot, f"{name}: probe: {findings.get(d, 'dim not probed')}")
            else:
                c.cover(slot)
        if not param and v.dim():
            ones = [k for k, d in enumerate(case.dims[i]) if d is None]
            for d in range(len(op.out_shape)):  # dims this input is broadcast along: a term there too
                if d not in case.dims[i] and d in passed and op.out_shape[d] > 1:
                    c.feed(op.slot(src, ones[0] if ones else 0), op.out(d), term=term, zero_ok=passed[d])
        if not param:
            term += 1
    for d in range(len(op.out_shape)):
        if d in findings:
            c.barrier(op.out(d), f"{name}: probe: {findings[d]}")
    if findings:
        c.mixed = f"no shape rule for {name}; probe: {next(iter(findings.values()))}"
    c.probed = f"channel-wise along dim{'s' if len(passed) > 1 else ''} {', '.join(map(str, sorted(passed)))}"
    return c


# ops without a rule, as the tests probe them (tests/test_probe.py); the docs list them (docs/reference/rules.md)
# beside the rules (`slimc rules --markdown`)
PROBED_IN_TESTS = (
    ("a user's activation (a `torch.fx.wrap`-ed function)", "channel-wise along every dim"),
    ("a `torch.library` custom op (`torch.ops.<ns>.<op>`)", "channel-wise along every dim"),
    ("a function of `x` and a per-channel weight `w` (`x * w.view(1, -1, 1, 1)`)",
     "channel-wise; `w` is sliced with the channels"),
    ("`torch.cumsum(x, 3)`", "channel-wise along dims 0–2; dim 3 fixed"),
    ("`torch.fft.fft2(x)`", "channel-wise along batch and channels; the spatial dims fixed"),
    ("`torch.cumsum(x, 1)`, `torch.fft.fft(x, dim=1)`, `torch.gather(x, 1, idx)`",
     "mixes the channels: a barrier, the finding as its reason"),
    ("a roll or softmax over the channels, `torch.where(x > 2.5, x.flip(1), x)`, `x / x.shape[1]`",
     "mixes (or reads its size): a barrier"),
    ("`x + 0.01 * torch.randn_like(x)`", "differs between two runs: a barrier"),
)


def probed_markdown() -> str:
    """The docs' table of probed ops (docs/reference/rules.md)."""
    lines = ["| op without a rule | what probing finds |", "|---|---|"]
    lines += [f"| {op} | {found} |" for op, found in PROBED_IN_TESTS]
    return "\n".join(lines)
