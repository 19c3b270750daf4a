"""``slimc.compile``: model + masks → physically slim, verified model."""
from __future__ import annotations

import functools
import json
import math
import time
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch import fx, nn

from slimc import analysis, graph as graph_mod
from slimc.copying import clean, copy_hooks, dropped_hooks
from slimc.errors import PlanError, SlimcError, VerifyError, describe
from slimc.inputs import bind
from slimc.masks import normalize
from slimc.modes import collector_paused_in
from slimc.passes import RewriteContext, adopt_code, run_pipeline
from slimc.probe import Prober
from slimc.propagate import RemovalPlan, plan as make_plan
from slimc.propagate.experts import expert_notes
from slimc.rerouted import experts_report, routed_away
from slimc.flops import dg_flops
from slimc.report import StageClock, added_ops, count_params, graph_ops, layer_widths
from slimc.trace import own_tensors, shapes_of, trace
from slimc.verify import Masked as _Masked, Reference, masks_cover


@dataclass
class CompileResult:
    module: fx.GraphModule  # the slim graph (loads with torch alone)
    masks: dict[str, torch.Tensor]
    report: dict[str, Any]
    plan: RemovalPlan = field(repr=False)
    example_inputs: tuple = field(repr=False, default=())
    model: nn.Module | None = field(repr=False, default=None)  # the user's class, slim (None: see report)
    user_model: Any = field(repr=False, default=None)  # slimc.surgery.UserModel: layout, reason, HF info
    original: nn.Module | None = field(repr=False, default=None)
    dynamic_dims: dict[int, list[int]] | None = field(repr=False, default=None)  # input → dims that may vary
    onnx_error: str | None = field(repr=False, default=None)  # why save() wrote no slim.onnx (None: it did, or was not asked)

    def save(self, out_dir: str | Path, *, onnx: bool = True, opset: int | None = None,
             dynamic_batch: bool = True, weights: Any = None) -> dict[str, str]:
        """Write slim.pt, final masks.pth, inputs.pt, the user's class (layout.json + weights,
        or hf/ for Hugging Face models), then slim.onnx (checked with onnxruntime), then
        report.json. Where the ONNX export fails, everything else is still written: the reason
        is ``report["onnx"]["error"]`` and ``self.onnx_error``, with an :class:`~slimc.errors.OnnxWarning`.

        ``weights``: a safetensors checkpoint (folder or files) to slice shard by shard into
        ``out_dir`` — for a plan made on the meta device, whose slim.pt holds no weights."""
        from slimc.atomic import all_or_nothing

        with all_or_nothing():  # where a write fails, no output is left half-written
            return self._save(Path(out_dir), onnx, opset, dynamic_batch, weights)

    def _save(self, out: Path, onnx: bool, opset: int | None, dynamic_batch: bool, weights: Any) -> dict[str, str]:
        from slimc.atomic import atomic_path, make_dirs, remove
        from slimc.masks import save_masks

        t_save = time.perf_counter()
        make_dirs(out)
        on_meta = any(t.is_meta for t in self.module.parameters())
        paths = {"slim.pt": str(out / "slim.pt"), "masks.pth": str(out / "masks.pth")}
        if weights is not None:
            from slimc.shards import slice_checkpoint

            t0 = time.perf_counter()
            info = slice_checkpoint(self.plan, weights, out)
            self.report["times_s"]["weights"] = time.perf_counter() - t0
            self.report["weights"] = info
            paths.update({Path(f).name: f for f in info["files"]})
        with atomic_path(out / "slim.pt") as tmp:
            torch.save(self.module, tmp)
        save_masks(self.masks, out / "masks.pth")
        with atomic_path(out / "inputs.pt") as tmp:  # lets `slimc export/bench out/` rebuild inputs
            torch.save(list(self.example_inputs), tmp)
        if self.user_model is not None and self.model is not None:
            from slimc.saved import save_user_model

            spec = (self.report.get("source") or {}).get("model")
            base_cfg = self.original.config.to_dict() if self.user_model.hf is not None else None
            files, self.report["user_model"]["reload"] = save_user_model(
                self.model, self.user_model.layout, out, hf_info=self.user_model.hf, base_config=base_cfg, spec=spec)
            paths.update({Path(f).name: f for f in files})
        self.onnx_error = None
        for stale in (out / "slim.onnx", out / "slim.onnx.data"):  # of an earlier compile: not of this model
            remove(stale)
        if onnx and on_meta:
            self.report["notes"].append("no ONNX: the slim model's weights are on the meta device")
        elif onnx:
            self._write_report(out, t_save)  # every torch output is written before the ONNX export is tried
            self._save_onnx(out, opset, dynamic_batch, paths)
        paths["report.json"] = self._write_report(out, t_save)
        if self.onnx_error:
            import warnings

            from slimc.errors import OnnxWarning

            warnings.warn(f"slim.onnx not written: {self.onnx_error}", OnnxWarning, stacklevel=2)
        return paths

    def _write_report(self, out: Path, t_save: float) -> str:
        from slimc.atomic import write_text

        times = self.report["times_s"]
        times["save"] = time.perf_counter() - t_save - times.get("export", 0.0) - times.get("weights", 0.0)
        write_text(out / "report.json", json.dumps(self.report, indent=2, default=str))
        return str(out / "report.json")

    def _save_onnx(self, out: Path, opset: int | None, dynamic_batch: bool, paths: dict[str, str]) -> None:
        """slim.onnx, after every torch output: the dims that vary dynamic, else the batch
        alone. Where neither exports, no slim.onnx, and the reason
        is ``report["onnx"]["error"]`` and ``self.onnx_error``: the compile is not lost."""
        from slimc.onnx import export_onnx

        t0 = time.perf_counter()
        tries = [self.dynamic_dims or None]
        if self.dynamic_dims and not all(ds == [0] for ds in self.dynamic_dims.values()):
            tries.append(None)  # the batch alone
        failed: list[str] = []
        info = None
        for dims in tries:
            try:
                info = export_onnx(self.module, self.example_inputs, out / "slim.onnx", opset=opset,
                                   dynamic_batch=dynamic_batch, dynamic_dims=dims)
                break
            except SlimcError as e:
                failed.append(str(e))
        self.report["times_s"]["export"] = time.perf_counter() - t0
        if info is None:
            self.onnx_error = failed[-1]
            self.report["onnx"] = {"error": failed[-1], "tried": failed}
            return
        self.report["onnx"] = info.to_dict()
        if failed:  # one line here; why, in the report
            self.report["onnx"]["dynamic_dims_refused"] = {"dims": self.dynamic_dims, "why": failed[0]}
            self.report["notes"].append(f"slim.onnx has a dynamic batch only: with dims {self.dynamic_dims} dynamic "
                                        "its check failed (report.json: onnx.dynamic_dims_refused)")
        paths["slim.onnx"] = str(out / "slim.onnx")


def expected_params(p: RemovalPlan) -> int:
    total = 0
    for fqn, t in p.dg.gm.named_parameters():
        total += math.prod(p.new_size(("p", fqn, d)) for d in range(t.dim()))
    return total


class _ProbedOpsMix(Exception):
    """The check failed with the probed ops treated as channel-wise: compile with them as barriers."""


@collector_paused_in
def compile(model: nn.Module, masks: Any = None, example_inputs: Any = None, *, mode: str = "channel",
            verify: bool = True, front_end: str = "auto", renorm: bool = False, allow_empty: bool = False,
            name: str | None = None, user_model: bool = True, probe: bool = True,
            vs_user_masks: bool = False, cache: bool = True, experts: str = "remove") -> CompileResult:
    """Compile ``model`` under ``masks`` into a physically smaller module.

    ``model`` is never modified: the slim module is a new object. ``masks`` may be NNI
    style, flat ``{param_fqn: 0/1 tensor}``, a prune state dict or a MaskSet.
    ``user_model``: also make the user's own class slim (``res.model``), verified like the graph.
    ``probe``: ops without a shape rule are probed on the example inputs and treated as
    channel-wise where no mixing is found (slimc.probe); if the built-in check then fails,
    the model is compiled again with them as barriers.
    ``vs_user_masks``: also report how far the slim model is from the masks *as given*
    (``report["verify"]["vs_user_masked"]``: one more forward pass of the full model).
    ``cache``: reuse the analysis of this model object from an earlier compile where nothing
    it depends on changed (:mod:`slimc.analysis`; the report's ``analysis`` says which).
    ``experts``: ``remove`` (default) — an expert of a mixture-of-experts layer whose every
    weight *and* router row the masks zero does not exist (its router logit is −∞): it goes,
    with its router row, and the check's reference routes around it (:mod:`slimc.rerouted`);
    ``report["experts"]`` lists them. ``keep``: such experts stay, zero (logit 0).
    """
    kw = dict(mode=mode, verify=verify, front_end=front_end, renorm=renorm, allow_empty=allow_empty, name=name,
              user_model=user_model, vs_user_masks=vs_user_masks, cache=cache, experts=experts)
    try:
        return _compile(model, masks, example_inputs, probe=probe, **kw)
    except _ProbedOpsMix:
        res = _compile(model, masks, example_inputs, probe=False, **kw)
        res.report["notes"].append("the check failed with the probed ops treated as channel-wise: "
                                   "compiled again with them as barriers")
        return res


def _compile(model: nn.Module, masks: Any, example_inputs: Any, *, mode: str, verify: bool, front_end: str,
             renorm: bool, allow_empty: bool, name: str | None, user_model: bool, probe: bool, vs_user_masks: bool,
             cache: bool, experts: str) -> CompileResult:
    """:func:`compile`'s steps: copy, masks, analysis, plan, rewrite, report, check, the user's class."""
    clock = StageClock()
    given_inputs, inputs, on_meta = _bound_inputs(model, example_inputs)
    hooks, given = dropped_hooks(model), model
    model = clean(model)  # slimc.copying: reparametrizations made plain params; hooks, caches left out
    clock.lap("copy")
    user = normalize(masks, model)
    clock.lap("masks")
    cache = cache and not on_meta  # a plan from shapes alone is made once
    an, reused = _analysis(model, inputs, front_end, on_meta, probe, cache, clock)
    ops_before = graph_ops(an.traced.gm)  # (the rewrite may change traced.gm in place: counted first)
    p = make_plan(an.dg, user, mode=mode, allow_empty=allow_empty, experts=experts)
    clock.lap("propagate")
    ctx = RewriteContext(p, renorm=renorm)
    slim, notes = _rewritten(model, an, ctx, cache)
    clock.lap("rewrite")
    report = _report(name or type(model).__name__, mode, model, slim, an, reused, p, user, experts, hooks,
                     notes, clock, ops_before)
    clock.lap("report")
    if on_meta:  # a plan from shapes alone (a model larger than memory): nothing to run
        verify = False
        report["notes"].append("weights on the meta device: plan from shapes only, not verified; "
                               "slice a checkpoint with --weights (slimc.shards)")
    free = p.free_input_dims(inputs, an.traced.dynamic_dims)
    ref = None
    if verify:
        ref = _checked(model, user, slim, p, an, inputs, free, report, approximate=ctx.approximate, cache=cache,
                       vs_user_masks=vs_user_masks)
        clock.lap("verify")
    um = None
    if user_model:
        um = _user_model(model, p, slim, ctx, ref, ctx.approximate)
        if um.model is not None and hooks:
            copy_hooks(given, um.model)  # checked without them, like the graph; the user's hooks stay
        report["user_model"] = um.report()
        clock.lap("model")
    _measured(report, model, slim, an, p, clock)
    dynamic = ref.varied_dims if ref is not None else free
    return CompileResult(slim, p.final_masks, report, p, given_inputs, um.model if um else None, um, model,
                         {i: ds for i, ds in dynamic.items() if ds})


def _bound_inputs(model: nn.Module, example_inputs: Any) -> tuple[tuple, tuple, bool]:
    """The example inputs bound to ``forward``'s arguments; the same on the meta device where the
    model's weights are (shapes only); and whether they are."""
    if not isinstance(model, nn.Module):
        raise SlimcError(f"model is a {type(model).__name__}, not an nn.Module")
    if example_inputs is None:
        raise SlimcError("example_inputs are needed to trace the model: pass a tensor or a tuple")
    given = bind(model, example_inputs)
    on_meta = any(t.is_meta for t in model.parameters())
    if not on_meta:
        return given, given, False
    return given, tuple(x.to("meta") if isinstance(x, torch.Tensor) else x for x in given), True


def _rewritten(model: nn.Module, an: analysis.Analysis, ctx: RewriteContext,
               cache: bool) -> tuple[fx.GraphModule, list]:
    """The slim graph and the passes' notes: the rewrite of the traced graph (of a fork of it where
    the analysis is kept for the next compile), in the model's train/eval mode, on its own tensors."""
    traced = an.traced
    try:  # slice_params zeroes kept-but-masked weights as it cuts
        slim, notes = run_pipeline(analysis.fork(traced.gm, model if an.bound else None), ctx, code_from=traced.gm) \
            if cache else run_pipeline(traced.gm, ctx)
    except SlimcError:
        raise
    except Exception as e:
        raise PlanError(f"rewriting failed: {describe(e)}") from e
    slim.train(model.training)
    own_tensors(slim, model)
    if traced.real_tensors:  # a meta plan: the real buffers and constants go back, sliced
        from slimc.shards import sliced
        from slimc.trace import set_tensor

        for name, real in traced.real_tensors.items():
            set_tensor(slim, name, sliced(ctx.plan, name, real))
        _meta_devices_to_cpu(slim)
    return slim, notes


def _meta_devices_to_cpu(gm: fx.GraphModule) -> None:
    """A graph traced on the meta device names it where the model's code moves a tensor to
    its input's device (HF's rotary ``inv_freq.to(x.device)``, ``arange(device=…)``): the
    weights it will run with are loaded on the CPU (``slimc.shards.load_slim``), so the graph
    names that device instead."""
    meta, cpu = torch.device("meta"), torch.device("cpu")
    swap = lambda a: cpu if isinstance(a, torch.device) and a == meta else a  # noqa: E731
    changed = False
    for n in gm.graph.nodes:
        args, kwargs = fx.node.map_aggregate(n.args, swap), fx.node.map_aggregate(n.kwargs, swap)
        if args != n.args or kwargs != n.kwargs:
            n.args, n.kwargs, changed = args, kwargs, True
    if changed:
        gm.recompile()


def _report(name: str, mode: str, model: nn.Module, slim: fx.GraphModule, an: analysis.Analysis, reused: bool,
            p: RemovalPlan, user: Any, experts: str, hooks: int, notes: list, clock: StageClock,
            ops_before: Counter) -> dict[str, Any]:
    """What the compile did, before the check: params, groups, what was kept and why, barriers, notes."""
    bad = masks_cover(p.final_masks, user)
    if bad:
        raise VerifyError(f"internal: final masks would un-zero user-masked entries of {bad[0]}")
    dg, unused = an.dg, count_params(model) - an.used_params
    return {
        "model": name,
        "mode": mode,
        "front_end": an.traced.front_end,
        "analysis": "reused" if reused else "fresh",
        "params": {"before": an.used_params, "after": count_params(slim), "expected_after": expected_params(p),
                   "unused_dropped": unused},
        "groups_removed": p.n_groups_removed,
        "kept": p.kept_reasons,
        "barriers": _barriers(dg, p),
        "probed": graph_mod.probed_table(dg),
        "ops_added": added_ops(ops_before, slim),
        "unstructured_zeros": user.unstructured_zeros({f: list(dg.parts(f)) for f in user.masks if dg.parts(f)}),
        **({"experts": experts_report(dg, p)} if p.dropped_experts else {}),
        "notes": [*an.traced.notes, *p.notes, *notes, *expert_notes(dg, p, experts),
                  *([f"{hooks} hook(s) of the model are not part of the slim graph (res.module); "
                     f"the user's class (res.model) keeps them"] if hooks else []),
                  *([f"{unused:,} params of modules forward() never uses are not in the slim model"] if unused else [])],
        "times_s": clock.times,
    }


def _reshapes_broken(dg: graph_mod.DependencyGraph, shapes: dict[str, Any]) -> str:
    """The first view/reshape of the traced graph whose merged (or split) dim is no longer the
    product of its parts at ``shapes`` (the nodes' shapes at another input shape): "" if none."""
    from slimc.shape_rules import tensor_leaves

    values = {v: shp for name, s in shapes.items() for v, shp in tensor_leaves(name, s)}

    def size(slot):
        shp = values.get(slot[1]) if slot[0] == "v" else None
        return shp[slot[2]] if shp is not None and isinstance(slot[2], int) and slot[2] < len(shp) else None

    for f in dg.facts:
        for r in f.coupling.reshapes:
            big, parts = size(r.big), [size(p) for p in r.parts]
            if big is None or None in parts or big == math.prod(parts):
                continue
            line = graph_mod.source_line(f.node)
            return (f"{r.node} {'splits' if r.big_is_input else 'merges'} {r.sizes} into one dim only at the traced "
                    f"sizes" + (f" ({line})" if line else "") + ": a size literal in the code")
    return ""


def _traced_graph(an: analysis.Analysis, model: nn.Module) -> fx.GraphModule:
    """The traced graph, runnable on ``model``'s tensors: a kept analysis of another model of
    the same structure holds that model's tensors, or meta ones once it was freed."""
    gm = an.traced.gm
    if not an.bound or analysis.bindable(gm, model):  # (a fresh analysis: the model's own tensors)
        return gm
    g = analysis.fork(gm, model)
    adopt_code(g, gm)
    return g


def _barriers(dg: graph_mod.DependencyGraph, p: RemovalPlan) -> list[dict]:
    """The ops without a usable rule, each with ``holds_channels``: does a dim it reads or
    writes share a group with a parameter's channels (it may hold what the masks remove),
    or not (positions, an integer mask computed from the input: nothing to prune there)."""
    rows = graph_mod.unsupported_table(dg)
    for row, f in zip(rows, dg.unsupported):
        slots = [s for n in (f.node, *f.node.all_input_nodes) for s in dg.value_slots(n)]
        row["holds_channels"] = p.param_group is None or any(bool(p.param_group[p.group[dg.ids(s)]].any()) for s in slots)
    return rows


def _checked(model: nn.Module, user: Any, slim: fx.GraphModule, p: RemovalPlan, an: analysis.Analysis,
             inputs: tuple, free: dict, report: dict, *, approximate: bool, cache: bool,
             vs_user_masks: bool) -> Reference:
    """The contract: the slim graph computes what the model with the final masks computes, and has
    the params the kept indices imply (``report["verify"]``); where probed ops make it fail,
    :class:`_ProbedOpsMix`. The reference it was checked against (for the user's class)."""
    try:
        ref = Reference(model, p.final_masks, inputs, free, an.traced.dim_names, around=routed_away(p),
                        graph=_traced_graph(an, model) if cache else None,  # (without cache the rewrite changed it)
                        reshapes_broken=functools.partial(_reshapes_broken, an.dg))
        chk = ref.check(slim, _Masked(model, user.masks) if vs_user_masks else None)
    except SlimcError:
        raise
    except Exception as e:
        if report["probed"]:
            raise _ProbedOpsMix() from e
        raise VerifyError(f"the slim model failed to run: {describe(e)}") from e
    if report["probed"] and not chk.ok:
        raise _ProbedOpsMix()
    report["verify"] = {**chk.to_dict(), "approximate": approximate}
    got, want = report["params"]["after"], report["params"]["expected_after"]
    if got != want:
        raise VerifyError(f"the slim model has {got:,} params, the kept indices imply {want:,}")
    if approximate:
        report["notes"].append(f"--renorm: approximate LayerNorm, measured max abs diff {chk.max_abs_diff:.3g}")
    elif not chk.ok:
        raise VerifyError(
            f"the slim model differs from the masked model by {chk.max_abs_diff:.3g} "
            f"(tolerance {chk.tolerance:.3g}): please report this model; use --debug for details"
        )
    return ref


def _measured(report: dict, model: nn.Module, slim: fx.GraphModule, an: analysis.Analysis, p: RemovalPlan,
              clock: StageClock) -> None:
    """FLOPs and per-layer widths before and after, in ``report``; the clock's total."""
    report["flops"] = {"before": an.flops, "after": dg_flops(an.dg, p.new_size)}
    clock.lap("flops")
    report["layers"] = layer_widths(model, slim)
    clock.lap("report")
    clock.total()
def _analysis(model: nn.Module, inputs: tuple, front_end: str, on_meta: bool, probe: bool, cache: bool,
              clock: StageClock) -> tuple[analysis.Analysis, bool]:
    """Trace, dependency graph and dense FLOPs of ``model`` (the masks-independent stages),
    or the kept ones of an earlier compile of it (:mod:`slimc.analysis`); and whether they
    were kept ones."""
    key = (front_end, probe)
    if cache:
        kept, st = analysis.lookup(model, inputs, *key)
        clock.lap("trace")
        if kept is not None:
            clock.lap("graph")
            clock.lap("flops")
            return kept, True
    traced = trace(model, inputs, front_end, meta=on_meta)
    used_params = count_params(traced.gm)
    clock.lap("trace")
    prober = Prober(traced.gm, inputs) if probe and not on_meta else None
    dg = graph_mod.build(traced.gm, shapes_of(traced.gm), prober)
    clock.lap("graph")
    # read off the traced graph's shapes: the ops the slim model runs (a fused fast path of
    # the original, e.g. TransformerEncoderLayer in eval, would hide them from a counter)
    an = analysis.Analysis(traced, dg, dg_flops(dg), used_params)
    clock.lap("flops")
    if cache:
        analysis.keep(model, key, an, inputs, st)
    return an, False


def _user_model(model: nn.Module, p: RemovalPlan, slim: fx.GraphModule, ctx: RewriteContext, ref, approximate: bool):
    """The user's class, slim, checked against the same reference as the graph (at the
    second input shape: its sizes must follow the input like the graph's); where it cannot
    be built or differs, ``model`` is None with the reason."""
    from slimc.surgery import build
    from slimc.surgery.consistent import size_mismatches

    try:
        um = build(model, p, slim, ctx.events, renorm=ctx.renorm, shapes=ctx.shapes)
    except Exception as e:  # surgery on a class slimc does not know: the graph output stands
        from slimc.surgery import UserModel

        return UserModel(None, f"could not rebuild {type(model).__name__}: {describe(e)}",
                         {"class": type(model).__name__})
    if um.model is None or ref is None:
        return um
    wrong = size_mismatches(um.model)
    if wrong:
        more = f" (and {len(wrong) - 1} more)" if len(wrong) > 1 else ""
        um.reason = f"the slim {type(model).__name__}'s sizes contradict its weights: {wrong[0]}{more}"
        um.model = None
        return um
    hint = f" (sizes computed in the code at: {'; '.join(um.unresolved[:3])})" if um.unresolved else ""
    try:  # at the second input shape (the one that varies the dims): the graph was checked at both
        chk = ref.check(um.model, which=[-1])
    except Exception as e:
        um.reason = f"the slim {type(model).__name__} failed to run: {describe(e)}" + hint
        um.model = None
        return um
    um.notes.append(f"checked like the graph: max abs diff {chk.max_abs_diff:.3g} at {', '.join(chk.shapes)}")
    if not chk.ok and not approximate:
        um.reason = f"the slim {type(model).__name__} differs from the masked model by {chk.max_abs_diff:.3g}" + hint
        um.model = None
    return um

