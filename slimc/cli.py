"""The ``slimc`` command line: compile, export, bench, inspect, prune, rules.

Errors print one line (``error: …``) and exit 2; ``--debug`` shows the traceback.
"""
from __future__ import annotations

import argparse
import json
import os
import sys
from pathlib import Path
from typing import Any, Callable

from slimc.errors import LoadError, SlimcError


def _console():
    from rich.console import Console

    return Console(highlight=False)


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


def _guard_outputs(inputs: list[str | None], outputs: list[Path]) -> None:
    for i in inputs:
        if i is None:
            continue
        for o in outputs:
            if _same_file(i, o):
                raise LoadError(f"output '{o}' would overwrite the input '{i}': choose another output path")


def cmd_compile(a: argparse.Namespace) -> int:
    import slimc

    out = Path(a.output)
    _guard_outputs([a.model, a.masks], [out / n for n in ("slim.pt", "slim.onnx", "report.json", "masks.pth", "inputs.pt")])
    model, inputs, masks = _load(a.model, a.masks)
    res = slimc.compile(model, masks, inputs, mode=a.mode, verify=not a.no_verify, front_end=a.front_end,
                        renorm=a.renorm, allow_empty=a.allow_empty, name=Path(a.model).stem,
                        vs_user_masks=not a.no_verify)
    spec = str(Path(a.model).resolve()) if Path(a.model).is_file() else a.model
    res.report["source"] = {"model": spec, "masks": str(Path(a.masks).resolve()) if a.masks else None,
                            "weights": str(Path(a.weights).resolve()) if a.weights else None}
    paths = res.save(out, onnx=not a.no_onnx, opset=a.opset, dynamic_batch=not a.static_batch, weights=a.weights)
    if a.json:
        print(json.dumps(res.report, indent=2, default=str))
    else:
        from slimc.report import render

        render(res.report, _console())
        shards = [p for n, p in paths.items() if n.endswith(".safetensors")]
        named = [p for n, p in paths.items() if not n.endswith(".safetensors")]
        print("wrote " + ", ".join(named) + (f" and {len(shards)} sliced safetensors shard(s)" if shards else ""))
    return 0


def _load_compiled_dir(path: Path):
    import torch

    slim_pt, inp = path / "slim.pt", path / "inputs.pt"
    if not slim_pt.is_file() or not inp.is_file():
        raise LoadError(f"'{path}' is not a slimc compile output (needs slim.pt and inputs.pt): run slimc compile first")
    from slimc.shards import load_slim

    try:
        module = load_slim(path)  # weights from sliced shards when slim.pt was planned on meta
        inputs = tuple(torch.load(inp, weights_only=True))
    except SlimcError:
        raise
    except Exception as e:
        raise LoadError(f"cannot read '{slim_pt}': {type(e).__name__}: {e}".splitlines()[0]) from e
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


def cmd_bench(a: argparse.Namespace) -> int:
    from slimc import bench as bench_mod

    try:
        batches = tuple(int(b) for b in a.batch.split(",") if b.strip())
    except ValueError:
        raise LoadError(f"--batch '{a.batch}' is not a comma-separated list of integers, e.g. 1,8,64") from None
    src = Path(a.model)
    kw = dict(batches=batches, device=a.device, runtimes=tuple(a.runtimes.split(",")), threads=a.threads,
              dtype=a.dtype, channels_last=a.channels_last, min_time_s=a.min_time)
    if a.device == "cuda":
        import torch

        if not torch.cuda.is_available():
            raise LoadError("--device cuda but no CUDA device is available: use --device cpu")
    if src.is_dir():  # a compile output: the model spec is in its report, the slim model in slim.pt
        rep = src / "report.json"
        try:
            spec = json.loads(rep.read_text())["source"]["model"]
        except (OSError, KeyError, TypeError, ValueError):
            raise LoadError(f"'{src}' is not a `slimc compile` output folder with a report.json naming its model") from None
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
    info = inspect_model(model, inputs, masks, front_end=a.front_end)
    if a.json:
        print(json.dumps(info, indent=2, default=str))
    else:
        render_inspection(info, _console(), verbose=a.verbose)
    return 0


def cmd_prune(a: argparse.Namespace) -> int:
    from slimc.masks import save_masks
    from slimc.prune import group_masks

    out = Path(a.output)
    _guard_outputs([a.model], [out])
    from slimc.loading import load_model

    model, inputs = load_model(a.model)
    masks = group_masks(model, inputs, ratio=a.ratio, criterion=a.criterion, seed=a.seed, attention=a.attention,
                        front_end=a.front_end, round_to=a.round_to)
    save_masks(masks, out)
    n = sum(int((m == 0).any(dim=tuple(range(1, m.dim()))).sum()) if m.dim() > 1 else int((m == 0).sum()) for m in masks.values())
    print(f"wrote {out}: {len(masks)} params masked, {n} output slices zeroed ({a.criterion}, ratio {a.ratio})")
    print(f"next: slimc compile {a.model} --masks {out} -o out/")
    return 0


def rules_markdown() -> str:
    """The supported-op table of the README, one row per rule family."""
    from slimc.shape_rules import RULES, op_name

    fams: dict = {}
    for key, fn in RULES.items():
        fams.setdefault(fn, []).append(op_name(key))
    lines = ["| rule | ops | coupling |", "|---|---|---|"]
    for fn, ops in sorted(fams.items(), key=lambda kv: (kv[0].__module__, kv[0].__name__)):
        doc = " ".join((fn.__doc__ or "").split())
        fam = f"`{fn.__module__.rsplit('.', 1)[-1]}.{fn.__name__}`"
        lines.append(f"| {fam} | {', '.join(f'`{o}`' for o in sorted(set(ops)))} | {doc} |")
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

    def model_args(sp: argparse.ArgumentParser, masks_required: bool = False) -> None:
        sp.add_argument("model", help="model.py (defines `model` or `build_model()` and `example_inputs`), pkg.module:attr, or zoo:NAME")
        sp.add_argument("--masks", required=masks_required, help="masks file (.pth/.pt/.safetensors): NNI, flat or torch.nn.utils.prune format")
        sp.add_argument("--front-end", default="auto", choices=["auto", "fx", "export"], help="how to capture the graph")
        sp.add_argument("--debug", action="store_true", default=argparse.SUPPRESS, help="show tracebacks on errors")

    c = sub.add_parser("compile", help="model + masks → out/slim.pt, slim.onnx, masks.pth, report.json")
    model_args(c)
    c.add_argument("-o", "--output", default="out", help="output folder (default: out)")
    c.add_argument("--mode", default="channel", choices=["channel", "exact"], help="channel: remove whole masked groups (default); exact: only provably zero/unused slices")
    c.add_argument("--renorm", action="store_true", help="plain LayerNorm over the kept channels (approximate) instead of the exact form")
    c.add_argument("--allow-empty", action="store_true", help="keep one zero channel where the masks remove a whole layer")
    c.add_argument("--no-verify", action="store_true", help="skip the built-in equivalence check")
    c.add_argument("--no-onnx", action="store_true", help="do not export slim.onnx")
    c.add_argument("--opset", type=int, default=None, help="ONNX opset (default: the exporter's)")
    c.add_argument("--static-batch", action="store_true", help="fixed batch axis in ONNX (default: dynamic)")
    c.add_argument("--json", action="store_true", help="print the report as JSON")
    c.add_argument("--weights", default=None, metavar="CKPT",
                   help="safetensors checkpoint (folder of shards or a file) to slice, tensor by tensor, into "
                        "the output folder; with a model built on the meta device (slimc.shards.empty_weights) "
                        "the plan needs no weights in memory")
    c.set_defaults(fn=cmd_compile)

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

    b = sub.add_parser("bench", help="latency of original vs masked vs slim, torch and onnxruntime")
    model_args(b)
    b.add_argument("--batch", default="1,8,64", help="comma-separated batch sizes (default 1,8,64)")
    b.add_argument("--device", default="cpu", choices=["cpu", "cuda"])
    b.add_argument("--runtimes", default="torch,ort", help="torch, ort or both (default torch,ort)")
    b.add_argument("--threads", type=int, default=None, help="intra-op threads (default: physical cores)")
    b.add_argument("--dtype", default="fp32", choices=["fp32", "bf16"])
    b.add_argument("--channels-last", action="store_true")
    b.add_argument("--min-time", type=float, default=1.0, help="seconds of timed runs per measurement")
    b.add_argument("-o", "--output", default="bench_out", help="output folder for bench.json/.md/.png")
    b.set_defaults(fn=cmd_bench)

    i = sub.add_parser("inspect", help="channel groups, barriers and their reasons")
    model_args(i)
    i.add_argument("--json", action="store_true")
    i.add_argument("-v", "--verbose", action="store_true", help="list every family and barrier")
    i.set_defaults(fn=cmd_inspect)

    pr = sub.add_parser("prune", help="dependency-aware masks: lowest-norm channels of every coupled group")
    pr.add_argument("model", help="model.py, pkg.module:attr or zoo:NAME")
    pr.add_argument("--ratio", type=float, default=0.5, help="fraction of each group's channels to mask (default 0.5)")
    pr.add_argument("--criterion", default="l1", choices=["l1", "l2", "fpgm", "slim", "random"],
                    help="channel score: L1/L2 norm of the filters, FPGM (distance to the geometric median), "
                         "slim (|BatchNorm γ|, network slimming), random")
    pr.add_argument("--seed", type=int, default=0)
    pr.add_argument("--front-end", default="auto", choices=["auto", "fx", "export"], help="how to capture the graph")
    pr.add_argument("--round-to", type=int, default=1, metavar="N",
                    help="keep a multiple of N channels in every group (e.g. 8 for hardware-friendly widths)")
    pr.add_argument("--attention", default="heads", choices=["heads", "dims"],
                    help="attention unit: whole heads (default) or the same channels of every head")
    pr.add_argument("-o", "--output", default="masks.pth")
    pr.add_argument("--debug", action="store_true", default=argparse.SUPPRESS, help="show tracebacks on errors")
    pr.set_defaults(fn=cmd_prune)

    r = sub.add_parser("rules", help="list the ops slimc has shape rules for")
    r.add_argument("--markdown", action="store_true", help="one row per rule family, as in the README")
    r.set_defaults(fn=cmd_rules)
    return p


def main(argv: list[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    debug = getattr(args, "debug", False) or os.environ.get("SLIMC_DEBUG") == "1"
    fn: Callable[[argparse.Namespace], int] = args.fn
    try:
        return fn(args)
    except SlimcError as e:
        if debug:
            raise
        print(f"error: {e}", file=sys.stderr)
        return e.exit_code
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return 130
    except BrokenPipeError:  # `slimc rules | head`
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        return 0
    except Exception as e:  # an internal bug: still one line unless --debug
        if debug:
            raise
        msg = str(e).strip().splitlines()[0] if str(e).strip() else ""
        print(f"error: internal error {type(e).__name__}: {msg[:300]} (rerun with --debug and report it)", file=sys.stderr)
        return 1


if __name__ == "__main__":
    sys.exit(main())
