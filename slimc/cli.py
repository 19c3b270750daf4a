"""The ``slimc`` command line: compile, export, bench, inspect, prune, flops, sensitivity, quantize, rules.

Errors print one line (``error: …``) and exit 2; ``--debug`` shows the traceback. Exit
statuses: 0 done; 2 a user-facing error, nothing written; 1 an internal error; 3
(``slimc compile``) everything written but slim.onnx, whose export failed (the reason is in
report.json under ``onnx.error``); 130 interrupted.
"""
from __future__ import annotations

import argparse
import json
import os
import sys
import warnings
from pathlib import Path
from typing import Any, Callable

from slimc.errors import EXIT_NO_ONNX, ConfigError, DamagedOutput, LoadError, OnnxWarning, SlimcError, describe


def _console():
    """Rich output on stdout; when stdout is not a terminal (a pipe, a CI log), nothing is cut
    or wrapped to 80 columns: tables show full layer names."""
    from rich.console import Console

    con = Console(highlight=False)
    if not con.is_terminal:
        con = Console(highlight=False, width=1_000)
    return con


def _load(spec: str, masks_path: str | None):
    from slimc.loading import load_model
    from slimc.masks import load_masks

    model, inputs = load_model(spec)
    masks = load_masks(masks_path) if masks_path else None
    return model, inputs, masks


def _same_file(a: str | Path, b: str | Path) -> bool:
    try:
        return Path(a).resolve() == Path(b).resolve()
    except OSError:
        return False


def _guard_outputs(inputs: list[str | None], outputs: list[Path], folder: Path | None = None) -> None:
    """Refuse, before any work, an output that is an input, and an output folder (``-o``) that
    is an input or an existing file: one line naming the clash (exit 2)."""
    for i in inputs:
        if i is None:
            continue
        for o in [*([folder] if folder is not None else []), *outputs]:
            if _same_file(i, o):
                raise LoadError(f"output '{o}' would overwrite the input '{i}': choose another output path")
    if folder is not None and folder.exists() and not folder.is_dir():
        raise LoadError(f"output folder '{folder}' is a file: -o names a folder to write into, choose another path")


def cmd_compile(a: argparse.Namespace) -> int:
    import slimc

    out = Path(a.output)
    _guard_outputs([a.model, a.masks], [out / n for n in ("slim.pt", "slim.onnx", "report.json", "masks.pth", "inputs.pt")],
                   folder=out)
    model, inputs, masks = _load(a.model, a.masks)
    res = slimc.compile(model, masks, inputs, mode=a.mode, verify=not a.no_verify, front_end=a.front_end,
                        renorm=a.renorm, allow_empty=a.allow_empty, name=Path(a.model).stem, probe=not a.no_probe,
                        vs_user_masks=not a.no_verify, experts="keep" if a.keep_experts else "remove")
    spec = str(Path(a.model).resolve()) if Path(a.model).is_file() else a.model
    res.report["source"] = {"model": spec, "masks": str(Path(a.masks).resolve()) if a.masks else None,
                            "weights": str(Path(a.weights).resolve()) if a.weights else None}
    quantized = None
    if a.quantize:  # computed and checked before anything is written
        from slimc.quantize.command import quantize_compiled

        quantized = quantize_compiled(res, a.model, a.quantize)
    with warnings.catch_warnings():  # said below, in one line
        warnings.simplefilter("ignore", OnnxWarning)
        paths = res.save(out, onnx=not a.no_onnx, opset=a.opset, dynamic_batch=not a.static_batch, weights=a.weights)
    if quantized is not None:
        paths.update(quantized.save(out))
    if a.json:
        print(json.dumps(res.report, indent=2, default=str))
    else:
        from slimc.report import render

        render(res.report, _console())
        if quantized is not None:
            from slimc.quantize.command import render as render_quantize

            render_quantize(quantized.report, _console())
        weights = [p for n, p in paths.items() if n.endswith(".safetensors")]
        named = [p for n, p in paths.items() if not n.endswith(".safetensors")]
        if len(weights) > 2:  # a sharded checkpoint, sliced: one file per shard of the original
            named.append(f"{len(weights)} safetensors files")
        else:
            named += weights
        print("wrote " + ", ".join(named))
    if res.onnx_error:
        print(f"error: no slim.onnx (everything else is written; the reason is in report.json under onnx.error, "
              f"exit status {EXIT_NO_ONNX}): {res.onnx_error}", file=sys.stderr)
        return EXIT_NO_ONNX
    return 0


def _load_compiled_dir(path: Path):
    import torch

    slim_pt, inp = path / "slim.pt", path / "inputs.pt"
    if not slim_pt.is_file() or not inp.is_file():
        raise LoadError(f"'{path}' is not a slimc compile output (needs slim.pt and inputs.pt): run slimc compile first")
    from slimc.shards import load_slim

    module = load_slim(path)  # weights from sliced shards when slim.pt was planned on meta
    try:
        inputs = tuple(torch.load(inp, weights_only=True))
    except Exception as e:
        raise DamagedOutput(inp, e) from e
    return module, inputs


def cmd_export(a: argparse.Namespace) -> int:
    import slimc
    from slimc.onnx import export_onnx
    from slimc.verify import masked_copy

    out = Path(a.output)
    _guard_outputs([a.model, a.masks], [out])
    src = Path(a.model)
    variants: list[tuple[str, Any, Path]] = []
    if src.is_dir() or src.suffix == ".pt":
        module, inputs = _load_compiled_dir(src if src.is_dir() else src.parent)
        variants.append(("slim", module, out))
        if a.original or a.masked:
            raise LoadError("--original/--masked need the model file and masks, not a compiled slim.pt")
    else:
        model, inputs, masks = _load(a.model, a.masks)
        res = slimc.compile(model, masks, inputs, mode=a.mode)
        variants.append(("slim", res.module, out))
        if a.original:
            variants.append(("original", model, out.with_name(out.stem + ".original.onnx")))
        if a.masked:
            variants.append(("masked", masked_copy(model, res.masks), out.with_name(out.stem + ".masked.onnx")))
    con = _console()
    for name, module, path in variants:
        info = export_onnx(module, inputs, path, opset=a.opset, dynamic_batch=not a.static_batch)
        con.print(f"{name}: {path} ({info.exporter}, opset {info.opset}, {info.initializer_bytes:,} initializer bytes, "
                  f"onnxruntime max abs diff {info.max_abs_diff:.3g} at batch {info.batch_sizes})")
    return 0


def _round_to(text: str) -> int | str:
    from slimc.prune.select import AUTO, check_round_to

    try:
        return check_round_to(text if text == AUTO else int(text))
    except (ValueError, ConfigError):
        raise argparse.ArgumentTypeError(f"'{text}' is not an integer >= 1 or '{AUTO}'") from None


def cmd_bench(a: argparse.Namespace) -> int:
    from slimc import bench as bench_mod

    try:
        batches = tuple(int(b) for b in a.batch.split(",") if b.strip())
    except ValueError:
        raise LoadError(f"--batch '{a.batch}' is not a comma-separated list of integers, e.g. 1,8,64") from None
    src = Path(a.model)
    _guard_outputs([a.model, a.masks], [Path(a.output) / f"bench.{e}" for e in ("json", "md", "png")],
                   folder=Path(a.output))
    from slimc.progress import say

    kw = dict(batches=batches, device=a.device, runtimes=tuple(a.runtimes.split(",")), threads=a.threads,
              dtype=a.dtype, channels_last=a.channels_last, min_time_s=a.min_time, layers=a.layers, log=say)
    if a.device == "cuda":
        import torch

        if not torch.cuda.is_available():
            raise LoadError("--device cuda but no CUDA device is available: use --device cpu")
    if src.is_dir():  # a compile output: the model spec is in its report, the slim model in slim.pt
        rep = src / "report.json"
        try:
            spec = json.loads(rep.read_text())["source"]["model"]
        except (OSError, KeyError, TypeError, ValueError):
            raise LoadError(f"'{src}' is not a `slimc compile` output folder with a report.json naming its model: "
                            "pass a folder `slimc compile` wrote, or compile again") from None
        result = bench_mod.bench_spec(spec, compiled_dir=src, name=Path(spec).stem, **kw)
    else:
        if not a.masks:
            raise LoadError("bench needs masks: slimc bench model.py --masks m.pth (or a compile output folder)")
        model, inputs, masks = _load(a.model, a.masks)
        result = bench_mod.bench(model, masks, inputs, name=src.stem, **kw)
    out = Path(a.output)
    paths = bench_mod.write_outputs([result], out, "bench", log=lambda m: print(m, file=sys.stderr))
    print(bench_mod.to_markdown([result]))
    print("wrote " + ", ".join(paths.values()))
    return 0


def cmd_inspect(a: argparse.Namespace) -> int:
    from slimc.inspect import inspect_model, render_inspection

    model, inputs, masks = _load(a.model, a.masks)
    if a.graph and not a.graph.endswith((".graphml", ".dot", ".gv")):
        raise SlimcError(f"--graph writes .graphml or .dot, not '{a.graph}'")
    info = inspect_model(model, inputs, masks, front_end=a.front_end, probe=not a.no_probe, graph_path=a.graph)
    if a.json:
        print(json.dumps(info, indent=2, default=str))
    else:
        render_inspection(info, _console(), verbose=a.verbose)
    if a.graph:
        print(f"wrote {a.graph}", file=sys.stderr if a.json else sys.stdout)
    return 0


def cmd_prune(a: argparse.Namespace) -> int:
    from slimc.loading import load_spec
    from slimc.masks import save_masks
    from slimc.prune import make_pruner, to_layout
    from slimc.prune.auto import auto_class, make_auto
    from slimc.prune.criteria import names as criterion_names, unknown as unknown_criterion
    from slimc.prune.data import UserData

    out = Path(a.output)
    _guard_outputs([a.model, a.config], [out])
    automatic = auto_class(a.criterion) is not None
    if not automatic and a.criterion not in criterion_names():
        raise unknown_criterion(a.criterion)  # before the model is loaded
    if automatic and not a.budget:
        raise ConfigError(f"criterion '{a.criterion}' is an automatic pruner: give it a budget, e.g. --budget flops=0.5")
    if a.experts and (a.budget or a.criterion == "level"):
        raise ConfigError("--experts works with a structured criterion and a ratio or config list, "
                          f"not with {'--budget' if a.budget else 'the level (unstructured) criterion'}")
    model, inputs, ns = load_spec(a.model)
    common = dict(round_to=a.round_to, uniform=a.uniform, attention=a.attention, seed=a.seed,
                  front_end=a.front_end, max_batches=a.batches, user_data=UserData.from_namespace(ns, a.model),
                  expressible=not a.free_widths)
    result = None
    if a.budget:
        auto = make_auto(a.criterion, model, inputs, a.budget, config_list=a.config, steps=a.steps,
                         max_sparsity_per_layer=a.max_sparsity_per_layer, **common)
        result, pruner = auto.run(), auto.pruner
        pruned = result.pruned
    else:
        experts = dict(experts=a.experts, expert_criterion=a.expert_criterion) if a.experts else {}
        pruner = make_pruner(model, inputs, a.criterion, a.config, ratio=a.ratio, ranking=a.ranking,
                             max_sparsity_per_layer=a.max_sparsity_per_layer, **common, **experts)
        pruned = pruner.prune()
    save_masks(to_layout(pruned.masks, a.format), out)
    before = sum(p.numel() for p in model.parameters())
    after = pruned.params_after()
    what = f"{a.criterion}, " + (f"budget {a.budget}" if a.budget else
                                 f"config {a.config}" if a.config else f"{a.ranking} ratio {a.ratio}")
    print(f"wrote {out} ({a.format}): {len(pruned.masks)} params masked, {len(pruned.sparsity)} layers pruned ({what})")
    print(f"the masked model is the slim model: {before:,} → {after:,} params ({after / max(before, 1):.2f}×) "
          "once compiled")
    if result is not None:
        print(f"budget {result.budget}: the slim model's {result.budget.kind} is {result.achieved:.3f} of the dense "
              f"model's ({'met' if result.met else 'NOT met'}, tolerance ±5 %)")
        if result.trained:
            import torch

            weights = out.with_name(out.stem + ".weights.pth")
            torch.save(model.state_dict(), weights)
            print(f"{a.criterion} trained the weights (finetune in {a.model}): wrote {weights}; "
                  "load them into the model before compiling")
    for n in pruned.notes:
        print(f"note: {n}")
    expressible, why = pruner.expressible(pruned) if hasattr(pruner, "expressible") else (True, "")
    if expressible is False:
        print(f"note: {type(model.config).__name__} cannot express these widths ({why}): from_pretrained(out/hf) "
              "will not rebuild the slim model; slimc.load(out) will, from layout.json")
    print(f"next: fine-tune with the masks applied, then slimc compile {a.model} --masks {out} -o out/")
    return 0


def cmd_flops(a: argparse.Namespace) -> int:
    from slimc.flops import flops_report, render_flops

    rep = flops_report(*_load(a.model, a.masks), front_end=a.front_end)  # model, example inputs, masks
    if a.json:
        print(json.dumps(rep, indent=2))
    else:
        render_flops(rep, _console(), max_layers=a.top)
    return 0


def cmd_sensitivity(a: argparse.Namespace) -> int:
    from slimc.atomic import make_dirs, write_text
    from slimc.loading import load_spec
    from slimc.prune.config import dump_config
    from slimc.prune.data import UserData
    from slimc.prune.sensitivity import most_sensitive, plot_sensitivity, sensitivity, sensitivity_config, worst_drop

    out = Path(a.output)
    _guard_outputs([a.model], [out / n for n in ("sensitivity.json", "sensitivity.png", "config.yaml")], folder=out)
    try:
        sparsities = [float(s) for s in a.sparsities.split(",") if s.strip()]
    except ValueError:
        raise LoadError(f"--sparsities '{a.sparsities}' is not a comma-separated list of numbers, "
                        "e.g. 0.25,0.5,0.75") from None
    model, inputs, ns = load_spec(a.model)
    result = sensitivity(model, inputs, criterion=a.criterion, sparsities=sparsities, attention=a.attention,
                         front_end=a.front_end, user_data=UserData.from_namespace(ns, a.model), max_batches=a.batches)
    make_dirs(out)
    write_text(out / "sensitivity.json", json.dumps(result, indent=2) + "\n")
    plot_sensitivity(result, str(out / "sensitivity.png"))
    config = sensitivity_config(result, a.max_drop)
    dump_config(config, out / "config.yaml")
    worst = ", ".join(f"{r['family']} ({worst_drop(r):.3g})" for r in most_sensitive(result, 5))
    print(f"{result['metric']} of the dense model: {result['baseline']:.4g}; most sensitive: {worst}")
    print(f"wrote {out}/sensitivity.json, sensitivity.png, config.yaml "
          f"({len(config)} layers within a drop of {a.max_drop})")
    print(f"next: slimc prune {a.model} --config {out}/config.yaml")
    return 0


def cmd_quantize(a: argparse.Namespace) -> int:
    from slimc.quantize.command import run

    _guard_outputs([a.model, a.masks, a.config], [Path(a.output) / n for n in
                                                  ("model.int8.onnx", "slim.int8.onnx", "model.onnx", "report.json")])
    return run(a)


def rules_markdown() -> str:
    """The supported-op table of the docs (docs/reference/rules.md), one row per rule family."""
    from slimc.shape_rules import RULES, op_name

    fams: dict = {}
    for key, fn in RULES.items():
        fams.setdefault(fn, []).append(op_name(key))
    lines = ["| rule | ops | coupling |", "|---|---|---|"]
    for fn, ops in sorted(fams.items(), key=lambda kv: (kv[0].__module__, kv[0].__name__)):
        doc = " ".join((fn.__doc__ or "").split())
        fam = f"`{fn.__module__.rsplit('.', 1)[-1]}.{fn.__name__}`"
        lines.append(f"| {fam} | {', '.join(f'`{o}`' for o in sorted(set(ops)))} | {doc} |")
    from slimc.probe import probed_markdown

    lines += ["", "Ops without a rule are *probed* on the example inputs (`--no-probe` turns it off); as the "
              "tests probe them:", "", probed_markdown()]
    return "\n".join(lines)


def cmd_rules(a: argparse.Namespace) -> int:
    from rich.table import Table

    from slimc.shape_rules import RULE_DOCS, op_name

    if a.markdown:
        print(rules_markdown())
        return 0
    t = Table(title="shape rules (ops without a rule are barriers)")
    t.add_column("op")
    t.add_column("rule")
    for key, doc in sorted(RULE_DOCS.items(), key=lambda kv: op_name(kv[0])):
        t.add_row(op_name(key), doc)
    _console().print(t)
    return 0


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="slimc", description="Make pruned (masked) PyTorch models physically smaller, verified exact.")
    p.add_argument("--debug", action="store_true", help="show tracebacks on errors")
    sub = p.add_subparsers(dest="cmd", required=True)
    for add in (_compile_parser, _export_parser, _bench_parser, _inspect_parser, _prune_parser, _flops_parser,
                _sensitivity_parser, _quantize_parser, _rules_parser):
        add(sub)
    return p


def model_args(sp: argparse.ArgumentParser, masks_required: bool = False) -> None:
    """The arguments of every command that reads a model and masks."""
    sp.add_argument("model", help="model.py (defines `model` or `build_model()` and `example_inputs`), pkg.module:attr, or zoo:NAME")
    sp.add_argument("--masks", required=masks_required, help="masks file (.pth/.pt/.safetensors): NNI, flat or torch.nn.utils.prune format")
    sp.add_argument("--front-end", default="auto", choices=["auto", "fx", "export"], help="how to capture the graph")
    sp.add_argument("--debug", action="store_true", default=argparse.SUPPRESS, help="show tracebacks on errors")


def _compile_parser(sub: Any) -> None:
    c = sub.add_parser("compile", help="model + masks → out/slim.pt, slim.onnx, masks.pth, report.json",
                       epilog=f"exit status: 0 done; 2 an error, nothing written; {EXIT_NO_ONNX} everything "
                              "written but slim.onnx, whose export failed (report.json: onnx.error)")
    model_args(c)
    c.add_argument("-o", "--output", default="out", help="output folder (default: out)")
    c.add_argument("--mode", default="channel", choices=["channel", "exact"], help="channel: remove whole masked groups (default); exact: only provably zero/unused slices")
    c.add_argument("--renorm", action="store_true", help="plain LayerNorm over the kept channels (approximate) instead of the exact form")
    c.add_argument("--allow-empty", action="store_true", help="keep one zero channel where the masks remove a whole layer")
    c.add_argument("--keep-experts", action="store_true",
                   help="mixture-of-experts: keep the experts the masks remove whole (every weight and the router "
                        "row), zero, routed to with logit 0 (default: they do not exist, and go)")
    c.add_argument("--no-verify", action="store_true", help="skip the built-in equivalence check")
    c.add_argument("--no-probe", action="store_true", help="ops without a shape rule stay barriers (default: probed)")
    c.add_argument("--no-onnx", action="store_true", help="do not export slim.onnx")
    c.add_argument("--opset", type=int, default=None, help="ONNX opset (default: the exporter's)")
    c.add_argument("--static-batch", action="store_true", help="fixed batch axis in ONNX (default: dynamic)")
    c.add_argument("--json", action="store_true", help="print the report as JSON")
    c.add_argument("--weights", default=None, metavar="CKPT",
                   help="safetensors checkpoint (folder of shards or a file) to slice, tensor by tensor, into "
                        "the output folder; with a model built on the meta device (slimc.shards.empty_weights) "
                        "the plan needs no weights in memory")
    c.add_argument("--quantize", default=None, choices=["static", "dynamic", "weight"],
                   help="also write slim.int8.onnx: the slim graph quantized (static: calibrated on "
                        "calibration_batches() of model.py), checked against slim.onnx")
    c.set_defaults(fn=cmd_compile)


def _export_parser(sub: Any) -> None:
    e = sub.add_parser("export", help="write an ONNX file (checked with onnxruntime) of the slim model")
    model_args(e)
    e.add_argument("-o", "--output", default="slim.onnx", help="ONNX path (default: slim.onnx)")
    e.add_argument("--mode", default="channel", choices=["channel", "exact"])
    e.add_argument("--opset", type=int, default=None)
    g = e.add_mutually_exclusive_group()
    g.add_argument("--dynamic-batch", dest="static_batch", action="store_false", help="dynamic batch axis (default)")
    g.add_argument("--static-batch", dest="static_batch", action="store_true", help="fixed batch axis")
    e.add_argument("--original", action="store_true", help="also export the original model (NAME.original.onnx)")
    e.add_argument("--masked", action="store_true", help="also export the masked model (NAME.masked.onnx)")
    e.set_defaults(fn=cmd_export, static_batch=False)


def _bench_parser(sub: Any) -> None:
    b = sub.add_parser("bench", help="latency of original vs masked vs slim, torch and onnxruntime")
    model_args(b)
    b.add_argument("--batch", default="1,8,64", help="comma-separated batch sizes (default 1,8,64)")
    b.add_argument("--device", default="cpu", choices=["cpu", "cuda"])
    b.add_argument("--runtimes", default="torch,ort", help="torch, ort or both (default torch,ort)")
    b.add_argument("--threads", type=int, default=None, help="intra-op threads (default: physical cores)")
    b.add_argument("--dtype", default="fp32", choices=["fp32", "bf16"])
    b.add_argument("--channels-last", action="store_true")
    b.add_argument("--min-time", type=float, default=1.0, help="seconds of timed runs per measurement")
    b.add_argument("--layers", action="store_true",
                   help="also time every layer of original and slim at the first batch and list those whose speedup "
                   "falls short of their FLOPs cut, with why (channel counts off the SIMD block, narrowed groups, …)")
    b.add_argument("-o", "--output", default="bench_out", help="output folder for bench.json/.md/.png")
    b.set_defaults(fn=cmd_bench)


def _inspect_parser(sub: Any) -> None:
    i = sub.add_parser("inspect", help="channel groups, barriers and their reasons")
    model_args(i)
    i.add_argument("--json", action="store_true")
    i.add_argument("-v", "--verbose", action="store_true", help="list every family and barrier")
    i.add_argument("--no-probe", action="store_true", help="ops without a shape rule stay barriers (default: probed)")
    i.add_argument("--graph", metavar="PATH", help="also write the slot graph (channel families, barriers, couplings) "
                   "as GraphML (.graphml) or DOT (.dot)")
    i.set_defaults(fn=cmd_inspect)


def _prune_parser(sub: Any) -> None:
    pr = sub.add_parser("prune", help="complete masks of whole channel groups and heads (the masked model is the slim model)")
    pr.add_argument("model", help="model.py, pkg.module:attr or zoo:NAME (data-driven criteria: model.py defines "
                                  "calibration_batches(), and loss_fn(output, target) for taylor)")
    _prune_choice_args(pr)
    pr.add_argument("--format", default="flat", choices=["flat", "nni"],
                    help="masks layout: flat {param: mask} (default) or NNI {module: {weight: mask, bias: mask}}")
    pr.add_argument("--batches", type=int, default=None, metavar="N", help="calibration batches to use (default: all)")
    pr.add_argument("--seed", type=int, default=0)
    pr.add_argument("--front-end", default="auto", choices=["auto", "fx", "export"], help="how to capture the graph")
    pr.add_argument("-o", "--output", default="masks.pth")
    pr.add_argument("--debug", action="store_true", default=argparse.SUPPRESS, help="show tracebacks on errors")
    pr.set_defaults(fn=cmd_prune)


def _prune_choice_args(pr: argparse.ArgumentParser) -> None:
    """``slimc prune``'s options that say what goes: criterion, budget, ratio or config, widths, experts."""
    from slimc.prune.criteria import choices as criterion_choices

    pr.add_argument("--criterion", default="l1", metavar="NAME",
                    help=f"how units are chosen (default l1): {criterion_choices()} (data: model.py defines "
                         "calibration_batches(); automatic pruners: evaluate(model) -> float and "
                         "finetune(model, steps))")
    pr.add_argument("--budget", default=None, metavar="KIND=F",
                    help="params=0.3, flops=0.5 or latency=0.5: the slim model's cost as a fraction of the dense "
                         "model's (latency measured on the compiled slim model); with a classic criterion, "
                         "every layer alike at the sparsity that meets it")
    pr.add_argument("--steps", type=int, default=20, metavar="N",
                    help="finetune(model, N) between the automatic pruners' iterations (default 20)")
    pr.add_argument("--ratio", type=float, default=0.5, help="fraction of every layer's channels to prune (default 0.5)")
    pr.add_argument("--config", default=None, metavar="CFG",
                    help="config list (.yaml/.json, NNI style): [{sparsity: 0.5, op_types: [Conv2d]}, "
                         "{exclude: true, op_names: [classifier]}]; overrides --ratio")
    pr.add_argument("--ranking", default="layer", choices=["layer", "global"],
                    help="rank units within each layer (default) or across layers (--ratio as a total)")
    pr.add_argument("--max-sparsity-per-layer", type=float, default=None, metavar="S",
                    help="no layer loses more than this fraction (global ranking)")
    pr.add_argument("--round-to", type=_round_to, default="auto", metavar="N|auto",
                    help="keep a multiple of N channels in every layer; auto (default): layers of 16 channels or more "
                    "keep multiples of 16, the widths CPU kernels run fastest (measured); 1: exactly the ratio")
    pr.add_argument("--uniform", action="store_true",
                    help="repeated layers (transformer blocks) keep the same number of heads / channels")
    pr.add_argument("--free-widths", action="store_true",
                    help="Hugging Face models: prune every layer freely, also to widths the model's config cannot "
                         "express (by default: only those it can, so from_pretrained reloads the slim model; "
                         "slimc.load rebuilds either)")
    pr.add_argument("--experts", type=float, default=0.0, metavar="F",
                    help="mixture-of-experts: also remove this fraction of every MoE layer's experts whole (all "
                         "their weights and their router rows masked: slimc compile removes them exactly; the same "
                         "number per layer; default 0: none)")
    pr.add_argument("--expert-criterion", default="l1", choices=["l1", "frequency"],
                    help="which experts go: lowest L1 norm (default) or least often routed to on "
                         "calibration_batches()")
    pr.add_argument("--attention", default="heads", choices=["heads", "dims"],
                    help="attention unit: whole heads (default) or the same channels of every head")


def _flops_parser(sub: Any) -> None:
    fl = sub.add_parser("flops", help="params and FLOPs, total and per layer (before/after masks)")
    model_args(fl)
    fl.add_argument("--json", action="store_true", help="print the report as JSON")
    fl.add_argument("--top", type=int, default=40, help="layers to list, by FLOPs (default 40)")
    fl.set_defaults(fn=cmd_flops)


def _sensitivity_parser(sub: Any) -> None:
    se = sub.add_parser("sensitivity", help="per-layer sensitivity to pruning (JSON + PNG + a seeded config list)")
    se.add_argument("model", help="model.py defining evaluate(model) -> float (or calibration_batches() and loss_fn)")
    se.add_argument("--criterion", default="l1", metavar="NAME", help="how each layer is pruned (default l1)")
    se.add_argument("--sparsities", default="0.25,0.5,0.75", help="comma-separated sparsities (default 0.25,0.5,0.75)")
    se.add_argument("--max-drop", type=float, default=0.01,
                    help="config.yaml: per layer the largest sparsity whose drop stays within this (default 0.01)")
    se.add_argument("--attention", default="heads", choices=["heads", "dims"])
    se.add_argument("--batches", type=int, default=None, metavar="N", help="calibration batches to use (default: all)")
    se.add_argument("--front-end", default="auto", choices=["auto", "fx", "export"])
    se.add_argument("-o", "--output", default="sensitivity", help="output folder (default: sensitivity)")
    se.add_argument("--debug", action="store_true", default=argparse.SUPPRESS, help="show tracebacks on errors")
    se.set_defaults(fn=cmd_sensitivity)


def _quantize_parser(sub: Any) -> None:
    from slimc.quantize.command import add_parser as add_quantize

    add_quantize(sub)
    sub.choices["quantize"].set_defaults(fn=cmd_quantize)


def _rules_parser(sub: Any) -> None:
    r = sub.add_parser("rules", help="list the ops slimc has shape rules for")
    r.add_argument("--markdown", action="store_true", help="one row per rule family, as in the docs (docs/reference/rules.md)")
    r.set_defaults(fn=cmd_rules)


def main(argv: list[str] | None = None) -> int:
    from slimc.progress import plain_lines

    args = _parser().parse_args(argv)
    plain_lines()  # long commands print plain progress lines when stdout is piped
    stdout = sys.stdout
    sys.stdout = _ReaderMayLeave(stdout)
    try:
        return _run(args)
    finally:
        sys.stdout = stdout
        plain_lines(False)  # main() called in-process (a test, a notebook): the API stays quiet


class _ReaderMayLeave:
    """stdout for a command: where its reader goes away (`slimc prune … | head -2`), what is
    left to print goes nowhere and the command finishes — its outputs written, not undone
    half-way as a failed command's are."""

    def __init__(self, stream: Any):
        self._stream = stream

    def _gone(self) -> None:
        try:
            os.dup2(os.open(os.devnull, os.O_WRONLY), self._stream.fileno())
        except (OSError, ValueError, AttributeError):  # no file descriptor (captured): drop what is left
            self._stream = open(os.devnull, "w")  # noqa: SIM115

    def write(self, text: str) -> int:
        try:
            return self._stream.write(text)
        except BrokenPipeError:
            self._gone()
            return len(text)

    def flush(self) -> None:
        try:
            self._stream.flush()
        except BrokenPipeError:
            self._gone()

    def __getattr__(self, name: str) -> Any:
        return getattr(self._stream, name)


def _run(args: argparse.Namespace) -> int:
    from slimc.atomic import all_or_nothing

    debug = getattr(args, "debug", False) or os.environ.get("SLIMC_DEBUG") == "1"
    fn: Callable[[argparse.Namespace], int] = args.fn
    try:
        with all_or_nothing():  # a command that fails leaves no output behind, half-written or whole
            return fn(args)
    except SlimcError as e:
        if debug:
            raise
        print(f"error: {e}", file=sys.stderr)
        return e.exit_code
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return 130
    except Exception as e:  # an internal bug: still one line unless --debug
        if debug:
            raise
        print(f"error: internal error {describe(e)} (rerun with --debug and report it)", file=sys.stderr)
        return 1


if __name__ == "__main__":
    sys.exit(main())
