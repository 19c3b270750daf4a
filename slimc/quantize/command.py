"""``slimc quantize`` and ``slimc compile --quantize``: the command line's side of quantization.

    slimc quantize model.py -o out/ [--masks m.pth] [--method static|dynamic|weight|qat|dorefa|bnn]
                  [--bits N] [--per-tensor] [--calibrate minmax|entropy|percentile] [--config q.yaml]
                  [--steps N] [--all-ops]
    slimc quantize out/ -o out/            # a compile output: its slim graph, calibrated on it

Data comes from the model file, as for the data-driven pruners: ``calibration_batches()``,
``evaluate(model)`` (float and int8 accuracy), ``finetune(model, steps)`` (QAT family).
Everything is computed and checked before anything is written.
"""
from __future__ import annotations

import argparse
import json
from pathlib import Path
from typing import Any

from slimc.errors import ConfigError, DamagedOutput, LoadError

METHOD_CHOICES = ("auto", "static", "dynamic", "weight", "qat", "dorefa", "bnn")


def add_parser(sub: Any) -> None:
    q = sub.add_parser("quantize", help="int8 ONNX of the (slim) model: onnxruntime's or NNI's quantizers, checked")
    q.add_argument("model", help="model.py (or pkg.module:attr, zoo:NAME), or a `slimc compile` output folder")
    q.add_argument("-o", "--output", required=True, help="output folder: <model|slim>.int8.onnx, report.json")
    q.add_argument("--masks", default=None, help="masks: compile first, quantize the slim graph (QAT family: "
                                                 "trained masked, then compiled)")
    q.add_argument("--method", default="auto", choices=METHOD_CHOICES,
                   help="auto (default: static for CNNs, dynamic for transformers), static (calibrated QDQ), "
                        "dynamic (int8 MatMuls), weight (NNI's Naive: weights only), qat, dorefa, bnn "
                        "(trained by finetune(model, steps) in model.py)")
    q.add_argument("--bits", type=int, default=None, help="bits (static/dynamic: 8; weight, qat: 2-8; "
                                                          "dorefa: 1-7, default 4; bnn: 1)")
    q.add_argument("--per-tensor", action="store_true", help="one scale per weight tensor (default: per channel)")
    q.add_argument("--calibrate", default="minmax", choices=["minmax", "entropy", "percentile"],
                   help="static: how activation ranges are calibrated (default minmax)")
    q.add_argument("--config", default=None, metavar="CFG",
                   help="config list (.yaml/.json, NNI style): [{quant_types: [weight, input], quant_bits: 8, "
                        "op_types: [Conv2d]}, {exclude: true, op_names: [fc]}]")
    q.add_argument("--steps", type=int, default=100, metavar="N",
                   help="qat/dorefa/bnn: finetune(model, N) with the quantizers on (default 100; 0: untrained)")
    q.add_argument("--all-ops", action="store_true",
                   help="static on transformers: quantize LayerNorm, Softmax, GELU and residual adds too")
    q.add_argument("--batches", type=int, default=None, metavar="N", help="calibration batches to use (default: all)")
    q.add_argument("--json", action="store_true", help="print the quantize report as JSON")
    q.add_argument("--front-end", default="auto", choices=["auto", "fx", "export"], help="how to capture the graph")
    q.add_argument("--debug", action="store_true", default=argparse.SUPPRESS, help="show tracebacks on errors")


def _compiled(folder: Path):
    """A compile output folder → (CompileResult-like slim module, inputs, the model spec it names)."""
    from slimc.cli import _load_compiled_dir

    module, inputs = _load_compiled_dir(folder)
    spec = None
    rep = folder / "report.json"
    if rep.is_file():
        try:
            spec = (json.loads(rep.read_text()).get("source") or {}).get("model")
        except (ValueError, AttributeError) as e:  # not JSON, or not the report's dict
            raise DamagedOutput(rep, e) from e
    return module, inputs, spec


def user_data(spec: str | None):
    from slimc.loading import namespace_of
    from slimc.prune.data import UserData

    if not spec:
        return UserData()
    return UserData.from_namespace(namespace_of(spec), spec)


def run(a: argparse.Namespace) -> int:
    import slimc
    from slimc.loading import load_spec
    from slimc.masks import load_masks
    from slimc.prune.data import UserData
    from slimc.quantize import quantize

    out = Path(a.output)
    src = Path(a.model)
    common = dict(bits=a.bits, per_channel=not a.per_tensor, calibrate=a.calibrate, config_list=a.config,
                  all_ops=a.all_ops, steps=a.steps, max_batches=a.batches)
    if a.steps < 0:
        raise ConfigError(f"--steps {a.steps}: give a number of steps ≥ 0")
    if src.is_dir():
        if a.masks:
            raise LoadError(f"'{src}' is a compile output (slim already): quantize it without --masks")
        module, inputs, spec = _compiled(src)
        user = user_data(spec)
        res = quantize(module, inputs, a.method, user_data=user, **common).of_slim()
        res.report["source"] = {"compiled": str(src.resolve()), "model": spec}
    else:
        model, inputs, ns = load_spec(a.model)
        user = UserData.from_namespace(ns, a.model)
        masks = load_masks(a.masks) if a.masks else None
        from slimc.quantize.api import auto_method
        from slimc.quantize.methods import method as get_method

        meth = get_method(auto_method(model) if a.method == "auto" else a.method)
        if masks is not None and not meth.trains:
            comp = slimc.compile(model, masks, inputs, front_end=a.front_end, name=Path(a.model).stem)
            res = quantize(comp, method=meth.name, user_data=user, **common)
        else:
            res = quantize(model, inputs, meth.name, user_data=user, masks=masks, **common)
        res.report["source"] = {"model": str(src.resolve()) if src.is_file() else a.model,
                                "masks": str(Path(a.masks).resolve()) if a.masks else None}
    paths = res.save(out)
    if a.json:
        print(json.dumps(res.report, indent=2, default=str))
    else:
        from slimc.cli import _console

        render(res.report, _console())
        print("wrote " + ", ".join(paths.values()))
    return 0


def quantize_compiled(res: Any, spec: str, method: str, front_end: str = "auto"):
    """``slimc compile --quantize``: the slim graph of ``res``, calibrated with the model file's data."""
    from slimc.quantize import quantize

    return quantize(res, method=method, user_data=user_data(spec))


def render(rep: dict, console: Any) -> None:
    """The quantize report for people: what ran, size, the check, worst layers, accuracy."""
    from rich.table import Table

    size = rep["size"]
    t = Table(title=f"slimc quantize — {rep['label']}", show_header=True)
    t.add_column("")
    t.add_column("value")
    t.add_row("graph", rep.get("graph", "model"))
    t.add_row("types", f"activations {rep.get('activation_type', '–')}, weights "
                       f"{rep.get('weight_type', 'int8')} ({rep.get('bits', 8)} bit)")
    t.add_row("file", f"{size['float_bytes']:,} → {size['int8_bytes']:,} bytes ({size['ratio']:.2f}× the float file)")
    nodes = rep["nodes"]
    t.add_row("nodes", f"{nodes['int8']} int8, {nodes['int8_weights_float_compute']} int8 weights with float "
                       f"compute, {nodes['float']} float")
    rt = rep.get("runtime_ops", {})
    if rt.get("int8"):
        t.add_row("onnxruntime int8 ops", ", ".join(f"{k} ×{v}" for k, v in rt["int8"].items()))
    for r in rep["check"]["outputs"]:
        what = f"SQNR {r['sqnr_db']:.1f} dB" if r.get("sqnr_db") is not None else "identical"
        extra = f", top-1 agreement {r['top1_agreement']:.2%}" if "top1_agreement" in r else ""
        steps = f", |Δ| ≤ {r['steps_p999']:.2f} output steps (99.9 %)" if "steps_p999" in r else ""
        t.add_row(f"check: {r['output']}", f"{what}, cosine {r['cosine']:.5f}{extra}{steps} "
                                           f"vs the {rep['check']['against']}")
    vs = rep.get("vs_float")
    if vs:
        for r in vs["outputs"]:
            t.add_row(f"vs float: {r['output']}", f"SQNR {r['sqnr_db']:.1f} dB, cosine {r['cosine']:.5f}"
                      if r.get("sqnr_db") is not None else "identical")
    acc = rep.get("accuracy")
    if acc:
        t.add_row("evaluate()", f"float {acc['float']:.4g}, int8 {acc['int8']:.4g}")
    console.print(t)
    worst = (rep.get("vs_float") or rep["check"]).get("worst") or []
    if worst:
        w = Table(title="layers with the most quantization noise (int8 vs float)")
        for c in ("layer", "op", "SQNR dB", "cosine"):
            w.add_column(c)
        for r in worst[:6]:
            w.add_row(str(r.get("module") or r["tensor"]), r["op"],
                      "∞" if r["sqnr_db"] is None else f"{r['sqnr_db']:.1f}", f"{r['cosine']:.5f}")
        console.print(w)
    for n in rep.get("notes", []):
        console.print(f"note: {n}")
