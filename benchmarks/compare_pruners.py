"""Compare filter pruners — one-shot (L1, L2, FPGM, Taylor, Random) and automatic (NetAdapt,
Simulated Annealing, AutoCompress, ADMM) — at budgets of params or FLOPs, on real data,
with fine-tuning, several seeds, and the *measured* latency of the physically slim model.

    python benchmarks/compare_pruners.py                      # digits, the default grid
    python benchmarks/compare_pruners.py --budgets params,flops --seeds 2
    python benchmarks/compare_pruners.py --models vgg16,resnet18,resnet50 --data-dir ~/cifar-10-batches-py
    python benchmarks/compare_pruners.py --ray                # fan out on a local Ray cluster
    python benchmarks/compare_pruners.py --ray --address auto # … or on a running one

Writes ``<out>/records/<model>__<pruner>__<budget>__s<seed>.json`` (one per run, the
layout of the classic comparison, extended with FLOPs and latency; see
:mod:`slimc.compare.grid`), ``<out>/compare_pruners.md`` (tables, machine, command),
``<out>/<model>_<budget>.png`` (accuracy vs params, FLOPs, latency) and ``<out>/run.json``
(every invocation: command, wall time, settings, machine). The report covers every record
in ``<out>``, so several invocations (a params grid, then a FLOPs grid) make one report.
Points whose record exists are skipped (``--fresh`` to rerun). Dense networks are trained
once per (model, seed) and cached in ``<out>/dense/``.
"""
from __future__ import annotations

import argparse
import json
import shlex
import shutil
import sys
import time
from pathlib import Path

from slimc.errors import ConfigError, SlimcError

DEFAULT_PRUNERS = "l1,l2,fpgm,taylor,random,netadapt,sa,autocompress"
HERE = Path(__file__).resolve().parent


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--models", default="digits_vgg,digits_resnet",
                    help="digits_vgg, digits_resnet (digits); vgg16, resnet18, resnet50 (cifar10, needs --data-dir)")
    ap.add_argument("--pruners", default=DEFAULT_PRUNERS, help=f"default {DEFAULT_PRUNERS} (also: admm)")
    ap.add_argument("--targets", default="2,4,8,16,32", help="compression ratios (default 2,4,8,16,32)")
    ap.add_argument("--budgets", default="params", help="what is compressed: params, flops, latency (comma list)")
    ap.add_argument("--seeds", type=int, default=2, help="seeds per point (default 2)")
    ap.add_argument("--data-dir", default=None, help="CIFAR-10 python batches (cifar-10-batches-py)")
    ap.add_argument("--train-steps", type=int, default=400, help="SGD steps of dense training (default 400)")
    ap.add_argument("--finetune-steps", type=int, default=100, help="fine-tuning steps after pruning (default 100)")
    ap.add_argument("--search-steps", type=int, default=10,
                    help="fine-tuning steps between the automatic pruners' iterations (default 10)")
    ap.add_argument("--latency-batch", type=int, default=32, help="batch of the latency measurement (default 32)")
    ap.add_argument("--threads", type=int, default=1, help="torch threads per run (default 1)")
    ap.add_argument("--ray", action="store_true", help="fan the grid out on Ray (pip install 'slimc[ray]')")
    ap.add_argument("--address", default=None, help="a running Ray cluster (default: start a local one)")
    ap.add_argument("--workers", type=int, default=None, help="CPUs of the local Ray cluster (default: all)")
    ap.add_argument("--out", default=str(HERE / "results" / "compare_pruners"))
    ap.add_argument("--fresh", action="store_true", help="delete earlier records (and dense networks) first")
    return ap.parse_args(argv)


def grid(a: argparse.Namespace):
    from slimc.compare.grid import PRUNERS, Point, pick
    from slimc.compare.nets import NETS
    from slimc.prune.budget import BUDGET_KINDS

    models = pick(a.models, NETS, "model")
    pruners = pick(a.pruners, PRUNERS, "pruner")
    kinds = pick(a.budgets, BUDGET_KINDS, "budget")
    try:
        ratios = [float(t) for t in a.targets.split(",")]
    except ValueError:
        raise ConfigError(f"--targets '{a.targets}': compression ratios, e.g. 2,4,8,16,32") from None
    if any(r <= 1 for r in ratios):
        raise ConfigError(f"--targets '{a.targets}': every compression ratio must be > 1")
    if a.seeds < 1:
        raise ConfigError("--seeds must be at least 1")
    data = {NETS[m][2] for m in models}
    if len(data) > 1:
        raise ConfigError(f"--models mixes data sets ({', '.join(sorted(data))}): run them separately")
    points = [Point(m, p, f"{k}={1 / r:.6g}", s) for m in models for k in kinds for r in ratios
              for p in pruners for s in range(a.seeds)]
    return data.pop(), models, points


def run_local(points, dense, settings, done) -> None:
    import torch

    from slimc.compare.grid import run_point, train_dense
    from slimc.progress import progress

    torch.set_num_threads(settings.threads)
    for model, seed in progress(dense, "dense networks"):
        train_dense(settings, model, seed)
    for p in progress(points, "pruning runs"):
        done(p, run_point(p, settings))


def run_ray(points, dense, settings, done, address: str | None, workers: int | None) -> None:
    try:
        import ray
    except ImportError:
        raise ConfigError("--ray needs Ray: pip install 'slimc[ray]'") from None
    from slimc.compare.grid import run_point, train_dense
    from slimc.progress import progress

    ray.init(address=address, num_cpus=None if address else workers, include_dashboard=False,
             ignore_reinit_error=True, log_to_driver=False)
    try:
        remote_dense = ray.remote(num_cpus=1)(train_dense)
        ray.get([remote_dense.remote(settings, m, s) for m, s in dense])
        remote_point = ray.remote(num_cpus=1)(run_point)
        pending = {remote_point.remote(p, settings): p for p in points}
        for _ in progress(range(len(points)), "pruning runs (ray)"):
            ready, _ = ray.wait(list(pending), num_returns=1)
            done(pending.pop(ready[0]), ray.get(ready[0]))
    finally:
        ray.shutdown()


def main(argv: list[str] | None = None) -> int:
    from slimc.bench.machine import machine_info
    from slimc.bench.report import machine_markdown
    from slimc.compare import report
    from slimc.compare.grid import Settings, dataset, load_records
    from slimc.progress import plain_lines

    plain_lines()  # progress lines when the log is piped

    a = parse_args(argv)
    try:
        data, models, points = grid(a)
        out = Path(a.out)
        if a.fresh:
            for sub in ("records", "dense"):
                shutil.rmtree(out / sub, ignore_errors=True)
        settings = Settings(out=str(out), data=data, data_dir=a.data_dir, train_steps=a.train_steps,
                            finetune_steps=a.finetune_steps, search_steps=a.search_steps,
                            latency_batch=a.latency_batch, threads=a.threads)
        dataset(settings)  # a missing data set fails here, in one line
        todo = [p for p in points if not (out / "records" / f"{p.stem}.json").exists()]
        dense = sorted({(p.model, p.seed) for p in todo})
        print(f"{len(points)} runs ({len(points) - len(todo)} done before), {len(dense)} dense networks to "
              f"train or load; {'Ray' if a.ray else 'in-process'}", file=sys.stderr)

        def done(p, rec) -> None:
            if "unreachable" in rec:
                print(f"{p.stem}: out of reach: {rec['unreachable']}", file=sys.stderr, flush=True)
                return
            perf = rec["performance"]
            print(f"{p.stem}: acc {perf['original']:.3f} → {perf['pruned']:.3f} → {perf['finetuned']:.3f}, params "
                  f"{rec['params']['slim'] / rec['params']['original']:.3f}, FLOPs "
                  f"{rec['flops']['slim'] / rec['flops']['original']:.3f}, slim {rec['latency_ms']['slim']:.3f} ms, latency "
                  f"{rec['latency_ms']['ratio']:.3f} of dense",
                  file=sys.stderr, flush=True)

        start = time.perf_counter()
        if a.ray:
            run_ray(todo, dense, settings, done, a.address, a.workers)
        else:
            run_local(todo, dense, settings, done)
        wall = time.perf_counter() - start
    except SlimcError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    records = load_records(out)  # every record in the folder: several invocations make one report
    unreachable = [r for r in records if "unreachable" in r]
    records = [r for r in records if "unreachable" not in r]
    command = ("python benchmarks/compare_pruners.py " + " ".join(shlex.quote(x) for x in (argv or sys.argv[1:]))).strip()
    log = out / "run.json"
    runs = json.loads(log.read_text())["invocations"] if log.exists() and not a.fresh else []
    runs.append({"command": command, "wall_s": round(wall, 1), "points": len(points), "ran": len(todo),
                 "ray": a.ray, "settings": settings.to_dict(), "machine": machine_info()})
    log.write_text(json.dumps({"invocations": runs}, indent=1) + "\n")
    plots = report.plot(records, out)
    md = [f"# Pruner comparison ({data})", "", f"{len(records)} runs, by:", ""]
    md += [f"- `{r['command']}` — {r['ran']} runs in {r['wall_s'] / 60:.1f} min "
           f"({'Ray' if r['ray'] else 'in-process'})" for r in runs]
    md += ["", report.markdown(records)]
    if unreachable:
        md += ["## Budgets out of reach", "", "No record: the budget lies below what the model costs with every "
               "prunable layer at its limit.", ""]
        md += [f"- {r['model']} / {r['pruner']} / `{r['target']}` / seed {r['seed']}: {r['unreachable']}" for r in unreachable]
        md += [""]
    md += ["## Plots", ""] + [f"![{Path(p).stem}]({Path(p).name})" for p in plots]
    md += ["", "## Machine", "", machine_markdown(runs[-1]["machine"]), ""]
    (out / "compare_pruners.md").write_text("\n".join(md))
    print(f"wrote {len(records)} records, {out / 'compare_pruners.md'}, {len(plots)} plots "
          f"({wall / 60:.1f} min)", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
