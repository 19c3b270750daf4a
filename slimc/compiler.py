"""``slimc.compile``: model + masks → physically slim, verified model."""
from __future__ import annotations

import json
import math
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch import fx, nn

from slimc import graph as graph_mod
from slimc.copying import clean, dropped_hooks
from slimc.errors import PlanError, SlimcError, VerifyError
from slimc.loading import as_tuple
from slimc.masks import MaskSet, normalize
from slimc.passes import RewriteContext, run_pipeline
from slimc.probe import Prober
from slimc.propagate import RemovalPlan, plan as make_plan
from slimc.report import count_flops, count_params, layer_widths
from slimc.trace import shapes_of, trace
from slimc.verify import check, masks_cover


@dataclass
class CompileResult:
    module: fx.GraphModule
    masks: dict[str, torch.Tensor]
    report: dict[str, Any]
    plan: RemovalPlan = field(repr=False)
    example_inputs: tuple = field(repr=False, default=())

    def save(self, out_dir: str | Path, *, onnx: bool = True, opset: int | None = None,
             dynamic_batch: bool = True, weights: Any = None) -> dict[str, str]:
        """Write slim.pt, final masks.pth, slim.onnx (checked with onnxruntime) and report.json.

        ``weights``: a safetensors checkpoint (folder or files) to slice shard by shard into
        ``out_dir`` — for a plan made on the meta device, whose slim.pt holds no weights."""
        from slimc.atomic import atomic_path, write_text
        from slimc.masks import save_masks

        out = Path(out_dir)
        out.mkdir(parents=True, exist_ok=True)
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
        if onnx and on_meta:
            self.report["notes"].append("no ONNX: the slim model's weights are on the meta device")
        elif onnx:
            from slimc.export import export_onnx

            t0 = time.perf_counter()
            info = export_onnx(self.module, self.example_inputs, out / "slim.onnx", opset=opset,
                               dynamic_batch=dynamic_batch)
            self.report["times_s"]["export"] = time.perf_counter() - t0
            self.report["onnx"] = info.to_dict()
            paths["slim.onnx"] = str(out / "slim.onnx")
        write_text(out / "report.json", json.dumps(self.report, indent=2, default=str))
        paths["report.json"] = str(out / "report.json")
        return paths


def expected_params(p: RemovalPlan) -> int:
    total = 0
    for fqn, t in p.dg.gm.named_parameters():
        total += math.prod(p.new_size(("p", fqn, d)) for d in range(t.dim()))
    return total


def compile(model: nn.Module, masks: Any = None, example_inputs: Any = None, *, mode: str = "channel",
            verify: bool = True, front_end: str = "auto", renorm: bool = False, allow_empty: bool = False,
            name: str | None = None, probe: bool = True) -> CompileResult:
    """Compile ``model`` under ``masks`` into a physically smaller module.

    ``model`` is never modified: the slim module is a new object. ``masks`` may be NNI
    style, flat ``{param_fqn: 0/1 tensor}``, a prune state dict or a MaskSet. ``probe``:
    ops without a shape rule are probed on the example inputs and treated as channel-wise
    where no mixing is found (slimc.probe); if the built-in check then fails, the model is
    compiled again with them as barriers.
    """
    def unprobed() -> CompileResult:
        res = compile(model, masks, example_inputs, mode=mode, verify=verify, front_end=front_end, renorm=renorm,
                      allow_empty=allow_empty, name=name, probe=False)
        res.report["notes"].append("the check failed with the probed ops treated as channel-wise: "
                                   "compiled again with them as barriers")
        return res

    if not isinstance(model, nn.Module):
        raise SlimcError(f"model is a {type(model).__name__}, not an nn.Module")
    if example_inputs is None:
        raise SlimcError("example_inputs are needed to trace the model: pass a tensor or a tuple")
    inputs = given_inputs = as_tuple(example_inputs)
    on_meta = any(t.is_meta for t in model.parameters())
    if on_meta:  # shapes only: the example inputs go to the meta device too
        inputs = tuple(x.to("meta") if isinstance(x, torch.Tensor) else x for x in inputs)
    times: dict[str, float] = {}
    t = time.perf_counter()
    hooks = dropped_hooks(model)
    model = clean(model)  # slimc.copying: reparametrizations made plain params; hooks, caches left out
    user = normalize(masks, model)
    traced = trace(model, inputs, front_end, meta=on_meta)
    used_params = count_params(traced.gm)
    times["trace"] = time.perf_counter() - t
    t = time.perf_counter()
    # counted on the traced graph: the same ops the slim model runs (a fused fast path of the
    # original, e.g. TransformerEncoderLayer in eval, is invisible to the FLOP counter)
    flops_before = count_flops(traced.gm, inputs)
    times["flops"] = time.perf_counter() - t

    t = time.perf_counter()
    prober = Prober(traced.gm, inputs) if probe and not on_meta else None
    dg = graph_mod.build(traced.gm, shapes_of(traced.gm), prober)
    times["graph"] = time.perf_counter() - t

    t = time.perf_counter()
    p = make_plan(dg, user, mode=mode, allow_empty=allow_empty)
    want_params = expected_params(p)
    times["propagate"] = time.perf_counter() - t

    t = time.perf_counter()
    MaskSet(p.final_masks).apply(traced.gm)  # kept-but-masked weights stay zero
    ctx = RewriteContext(p, renorm=renorm)
    try:
        slim, notes = run_pipeline(traced.gm, ctx)
    except SlimcError:
        raise
    except Exception as e:
        raise PlanError(f"rewriting failed: {type(e).__name__}: {e}".splitlines()[0]) from e
    slim.train(model.training)
    if traced.real_tensors:  # a meta plan: the real buffers and constants go back, sliced
        from slimc.shards import sliced
        from slimc.trace import set_tensor

        for name, real in traced.real_tensors.items():
            set_tensor(slim, name, sliced(p, name, real))
    times["rewrite"] = time.perf_counter() - t

    bad = masks_cover(p.final_masks, user)
    if bad:
        raise VerifyError(f"internal: final masks would un-zero user-masked entries of {bad[0]}")
    got_params = count_params(slim)
    unused = count_params(model) - used_params
    approximate = ctx.approximate
    report: dict[str, Any] = {
        "model": name or type(model).__name__,
        "mode": mode,
        "front_end": traced.front_end,
        "params": {"before": used_params, "after": got_params, "expected_after": want_params,
                   "unused_dropped": unused},
        "groups_removed": p.n_groups_removed,
        "kept": p.kept_reasons,
        "barriers": graph_mod.unsupported_table(dg),
        "probed": graph_mod.probed_table(dg),
        "unstructured_zeros": user.unstructured_zeros(),
        "notes": [*traced.notes, *p.notes, *notes,
                  *([f"{hooks} forward hook(s) of the model are not part of the slim model"] if hooks else []),
                  *([f"{unused:,} params of modules forward() never uses are not in the slim model"] if unused else [])],
        "times_s": times,
    }
    if on_meta:  # a plan from shapes alone (a model larger than memory): nothing to run
        verify = False
        report["notes"].append("weights on the meta device: plan from shapes only, not verified; "
                               "slice a checkpoint with --weights (slimc.shards)")
    if verify:
        t = time.perf_counter()
        try:
            chk = check(slim, model, p.final_masks, inputs, user)
        except SlimcError:
            raise
        except Exception as e:
            if report["probed"]:
                return unprobed()
            raise VerifyError(f"the slim model failed to run: {type(e).__name__}: {e}".splitlines()[0]) from e
        if report["probed"] and not chk.ok:
            return unprobed()
        times["verify"] = time.perf_counter() - t
        report["verify"] = {**chk.to_dict(), "approximate": approximate}
        if got_params != want_params:
            raise VerifyError(f"the slim model has {got_params:,} params, the kept indices imply {want_params:,}")
        if approximate:
            report["notes"].append(f"--renorm: approximate LayerNorm, measured max abs diff {chk.max_abs_diff:.3g}")
        elif not chk.ok:
            raise VerifyError(
                f"the slim model differs from the masked model by {chk.max_abs_diff:.3g} "
                f"(tolerance {chk.tolerance:.3g}): please report this model; use --debug for details"
            )
    t = time.perf_counter()
    report["flops"] = {"before": flops_before, "after": count_flops(slim, inputs)}
    times["flops"] += time.perf_counter() - t
    report["layers"] = layer_widths(model, slim)
    times["total"] = sum(v for k, v in times.items() if k != "flops")
    return CompileResult(slim, p.final_masks, report, p, given_inputs)

