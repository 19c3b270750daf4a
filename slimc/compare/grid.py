"""One point of the comparison: a trained dense network, pruned by one pruner to one target,
fine-tuned, compiled (verified: slim == masked) and timed → one JSON record::

    {"model", "pruner", "target", "seed",
     "budget": {"achieved", "met"},     # the slim model's cost as the pruner measured it (latency: timed)
     "performance": {"original", "pruned", "finetuned"},     # test accuracy
     "params": {"original", "slim"}, "flops": {"original", "slim"},   # per image, after compile
     "latency_ms": {"masked", "slim", "ratio", "batch", "device"}}
    # measured: fastest of ≥ 20 calls; ratio: slim / dense (what a budget is relative to), timed interleaved

``target`` is the budget (``"params=0.25"``: a quarter of the dense parameters, 4×
compression). Every pruner meets it: the automatic ones search a per-layer distribution
under it, the classic criteria (L1, L2, FPGM, Taylor, Random) prune every layer alike at
the sparsity that meets it (:mod:`slimc.prune.auto`). Dense networks are trained once per
(model, seed) and cached under ``<out>/dense/``, so points can run anywhere (Ray workers)
that sees the output folder.
"""
from __future__ import annotations

import copy
import json
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F

from slimc.atomic import atomic_path
from slimc.errors import BudgetError

#: record name → (slimc name, label in tables and plots)
PRUNERS: dict[str, str] = {
    "l1": "L1", "l2": "L2", "fpgm": "FPGM", "taylor": "Taylor", "random": "Random",
    "netadapt": "NetAdapt", "sa": "SA", "autocompress": "AutoCompress", "admm": "ADMM",
}
AUTOMATIC = ("netadapt", "sa", "autocompress", "admm")


@dataclass(frozen=True)
class Point:
    model: str
    pruner: str
    target: str  # a budget: "params=0.25"
    seed: int

    @property
    def stem(self) -> str:
        return f"{self.model}__{self.pruner}__{self.target.replace('=', '-')}__s{self.seed}"


@dataclass
class Settings:
    """How every point is run (the same for the whole grid)."""

    out: str
    data: str = "digits"
    data_dir: str | None = None
    train_steps: int = 400  # dense training
    finetune_steps: int = 100  # after pruning
    search_steps: int = 10  # fine-tuning between the automatic pruners' iterations
    batch: int = 64
    lr: float = 0.05
    latency_batch: int = 32
    threads: int = 1  # torch threads of one point (timing always at 1)
    pruner_kw: dict[str, dict[str, Any]] = field(default_factory=lambda: {
        "netadapt": {"iterations": 5}, "sa": {"iterations": 10},
        "autocompress": {"rounds": 2, "sa_iterations": 5, "admm_rounds": 2}, "admm": {"rounds": 3}})

    def to_dict(self) -> dict:
        return asdict(self)


_DATA: dict[tuple, Any] = {}


def pick(text: str, choices, what: str) -> list[str]:
    """A comma list of names from ``choices`` (one line naming an unknown one)."""
    from slimc.errors import ConfigError

    out = [t.strip() for t in text.split(",") if t.strip()]
    bad = [t for t in out if t not in choices]
    if bad or not out:
        raise ConfigError(f"unknown {what} '{bad[0] if bad else text}': use {', '.join(choices)}")
    return out


def dataset(s: Settings):
    from slimc.compare.data import load

    key = (s.data, s.data_dir)
    if key not in _DATA:
        _DATA[key] = load(s.data, s.data_dir)
    return _DATA[key]


def trainer(s: Settings, seed: int):
    from slimc.compare.train import Trainer

    return Trainer(dataset(s), batch=s.batch, lr=s.lr, seed=seed)


def dense_path(s: Settings, model: str, seed: int) -> Path:
    return Path(s.out) / "dense" / f"{model}__s{seed}.pt"


def train_dense(s: Settings, model: str, seed: int) -> dict:
    """Train (or load the cached) dense network; its test accuracy."""
    from slimc.compare.nets import build

    torch.set_num_threads(s.threads)
    path = dense_path(s, model, seed)
    net = build(model, seed)
    t = trainer(s, seed)
    if path.exists():
        net.load_state_dict(torch.load(path, weights_only=True))
    else:
        t.fit(net, s.train_steps)
        path.parent.mkdir(parents=True, exist_ok=True)
        with atomic_path(path) as tmp:
            torch.save(net.state_dict(), tmp)
    return {"model": model, "seed": seed, "test": t.test(net), "val": t.evaluate(net)}


def latency(module: torch.nn.Module, x: torch.Tensor) -> float:
    """Milliseconds, timed as the latency budgets time the slim model."""
    from slimc.prune.budget import best_latency

    return best_latency()(module, (x,))


def run_point(p: Point, s: Settings) -> dict:
    """Prune, fine-tune, compile, time: the point's record (written to ``<out>/records/``)."""
    import slimc
    from slimc.compare.nets import build
    from slimc.prune.auto import make_auto
    from slimc.prune.budget import ROUNDS, latency_ratio
    from slimc.prune.callbacks import Callbacks

    torch.set_num_threads(s.threads)
    train_dense(s, p.model, p.seed)
    net = build(p.model, p.seed)
    net.load_state_dict(torch.load(dense_path(s, p.model, p.seed), weights_only=True))
    dense = copy.deepcopy(net).eval()  # what the budget is relative to
    t = trainer(s, p.seed)
    original = t.test(net)
    x = t.data.test.x[:1]
    lat_x = t.data.test.x[:s.latency_batch]
    if len(lat_x) < s.latency_batch:
        lat_x = lat_x.repeat((s.latency_batch + len(lat_x) - 1) // len(lat_x), 1, 1, 1)[:s.latency_batch]
    torch.manual_seed(p.seed)
    start = time.perf_counter()
    try:
        auto = make_auto(p.pruner, net, (x,), p.target, evaluate=t.evaluate, finetune=t.finetune, seed=p.seed,
                         steps=s.search_steps, data=t.calibration(), loss_fn=F.cross_entropy,
                         latency_inputs=(lat_x,), **s.pruner_kw.get(p.pruner, {}))
        result = auto.run()  # net now holds the masks (and, for NetAdapt / ADMM / AutoCompress, trained weights)
    except BudgetError as e:  # out of the model's reach (a latency floor): a result of the grid too
        record = {"model": p.model, "pruner": p.pruner, "target": p.target, "seed": p.seed, "unreachable": str(e)}
        write_record(s, p, record, time.perf_counter() - start)
        return record
    pruned_acc = t.test(net)
    Callbacks(finetune=t.finetune).train(net, s.finetune_steps, result.masks)
    finetuned = t.test(net)
    net.eval()
    res = slimc.compile(net, result.masks, (x,), user_model=False)  # verified: slim == masked
    rep = res.report
    # a latency budget is judged by this second measurement: longer there (48 rounds, ~4 s at batch 32)
    rounds = 3 * ROUNDS if p.target.startswith("latency") else ROUNDS
    record = {
        "model": p.model, "pruner": p.pruner, "target": p.target, "seed": p.seed,
        "budget": {"achieved": result.achieved, "met": result.met},
        "performance": {"original": original, "pruned": pruned_acc, "finetuned": finetuned},
        "params": {"original": rep["params"]["before"], "slim": rep["params"]["after"]},
        "flops": {"original": rep["flops"]["before"], "slim": rep["flops"]["after"]},
        "latency_ms": {"masked": latency(net, lat_x), "slim": latency(res.module, lat_x),
                       "ratio": latency_ratio(res.module, dense, (lat_x,), rounds=rounds), "batch": s.latency_batch,
                       "device": "cpu"},
    }
    write_record(s, p, record, time.perf_counter() - start)
    return record


def write_record(s: Settings, p: Point, record: dict, seconds: float) -> None:
    path = Path(s.out) / "records" / f"{p.stem}.json"
    path.parent.mkdir(parents=True, exist_ok=True)
    with atomic_path(path) as tmp:
        Path(tmp).write_text(json.dumps(record, indent=1) + "\n")
    with (Path(s.out) / "records" / "wall_s.jsonl").open("a") as f:  # how long each point took
        f.write(json.dumps({"point": p.stem, "seconds": round(seconds, 2)}) + "\n")


def load_records(out: str | Path) -> list[dict]:
    """Every record in ``out`` (those of budgets out of reach too: ``"unreachable"``, no results)."""
    return [json.loads(f.read_text()) for f in sorted((Path(out) / "records").glob("*.json"))]
