"""benchmarks/compare_pruners.py: the CIFAR-10 loader on a tiny folder of the standard
python-pickle batches, one grid point end to end (the record's layout, its numbers), the
report, and the Ray fan-out on a local 2-worker cluster (skipped without Ray)."""
from __future__ import annotations

import json
import pickle
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

from slimc.compare.data import CIFAR_TEST, CIFAR_TRAIN, cifar10
from slimc.compare.grid import Point, Settings, run_point
from slimc.errors import DataError

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "benchmarks"))

RECORD_KEYS = {"model", "pruner", "target", "seed", "budget", "performance", "params", "flops", "latency_ms"}


def write_cifar(folder: Path, per_batch: int = 20) -> Path:
    """A CIFAR-10 folder in the standard layout (pickled dicts of uint8 N×3072 and labels)."""
    rng = np.random.default_rng(0)
    folder.mkdir(parents=True, exist_ok=True)
    for name in CIFAR_TRAIN + [CIFAR_TEST]:
        d = {b"batch_label": name.encode(), b"labels": rng.integers(0, 10, per_batch).tolist(),
             b"data": rng.integers(0, 256, (per_batch, 3072), dtype=np.uint8),
             b"filenames": [f"{i}.png".encode() for i in range(per_batch)]}
        (folder / name).write_bytes(pickle.dumps(d))
    return folder


def test_cifar10_loader(tmp_path):
    folder = write_cifar(tmp_path / "cifar-10-batches-py")
    for root in (folder, tmp_path):  # the batches' folder or the folder holding it
        ds = cifar10(root)
        assert ds.input_shape == (3, 32, 32)
        assert len(ds.train) + len(ds.val) == 100 and len(ds.test) == 20 and len(ds.val) == 10
        assert ds.train.x.dtype == torch.float32 and ds.train.y.dtype == torch.long
        assert abs(float(ds.train.x.mean())) < 0.5  # normalised
    raw = pickle.loads((folder / CIFAR_TEST).read_bytes())
    img = torch.from_numpy(raw[b"data"][0].reshape(3, 32, 32)).float() / 255
    mean, std = torch.tensor((0.4914, 0.4822, 0.4465)), torch.tensor((0.2470, 0.2435, 0.2616))
    assert torch.allclose(ds.test.x[0], (img - mean.view(3, 1, 1)) / std.view(3, 1, 1), atol=1e-6)
    assert ds.test.y[0] == raw[b"labels"][0]


def test_cifar10_loader_errors(tmp_path):
    with pytest.raises(DataError, match="data_batch_1 not found"):
        cifar10(tmp_path)
    folder = write_cifar(tmp_path / "c")
    (folder / "data_batch_3").write_bytes(pickle.dumps({b"data": np.zeros((4, 10), np.uint8), b"labels": [0] * 4}))
    with pytest.raises(DataError, match="not N×3072"):
        cifar10(folder)


def test_cifar_grid_point(tmp_path):
    """The CIFAR path end to end on the generated folder (a small zoo net stands in for VGG-16)."""
    from slimc.compare import nets

    write_cifar(tmp_path / "data", per_batch=8)
    nets.NETS["tiny_cifar"] = (lambda: nets.DigitsResNet((4, 8, 8), in_channels=3), (3, 32, 32), "cifar10")
    try:
        s = Settings(out=str(tmp_path / "out"), data="cifar10", data_dir=str(tmp_path / "data"), train_steps=2,
                     finetune_steps=1, batch=8, latency_batch=2)
        rec = run_point(Point("tiny_cifar", "l1", "params=0.5", 0), s)
    finally:
        del nets.NETS["tiny_cifar"]
    assert abs(rec["params"]["slim"] / rec["params"]["original"] / 0.5 - 1) <= 0.05


@pytest.fixture(scope="module")
def digits_out(tmp_path_factory):
    pytest.importorskip("sklearn")
    return tmp_path_factory.mktemp("compare")


def check_record(rec: dict, point: Point) -> None:
    assert set(rec) == RECORD_KEYS
    assert (rec["model"], rec["pruner"], rec["target"], rec["seed"]) == (point.model, point.pruner, point.target,
                                                                        point.seed)
    assert set(rec["performance"]) == {"original", "pruned", "finetuned"}
    assert set(rec["params"]) == set(rec["flops"]) == {"original", "slim"}
    assert set(rec["latency_ms"]) == {"masked", "slim", "ratio", "batch", "device"}
    assert rec["latency_ms"]["slim"] > 0 and rec["latency_ms"]["masked"] > 0
    kind, frac = point.target.split("=")
    assert abs(rec[kind]["slim"] / rec[kind]["original"] / float(frac) - 1) <= 0.05


def test_compare_script_in_process(digits_out, capsys):
    import compare_pruners

    argv = ["--models", "digits_resnet", "--pruners", "l1,sa", "--targets", "4,100000", "--seeds", "1",
            "--train-steps", "150", "--finetune-steps", "5", "--search-steps", "2", "--out", str(digits_out)]
    assert compare_pruners.main(argv) == 0
    for pruner in ("l1", "sa"):
        p = Point("digits_resnet", pruner, "params=0.25", 0)
        rec = json.loads((digits_out / "records" / f"{p.stem}.json").read_text())
        check_record(rec, p)
        assert rec["performance"]["original"] >= 0.9  # the dense digits net is trained
    md = (digits_out / "compare_pruners.md").read_text()
    assert "| L1 |" in md and "| SA |" in md and "digits_resnet_params.png" in md
    assert (digits_out / "digits_resnet_params.png").stat().st_size > 1000
    # a budget below every layer at its limit: recorded as out of reach, the grid goes on
    p = Point("digits_resnet", "sa", "params=1e-05", 0)
    rec = json.loads((digits_out / "records" / f"{p.stem}.json").read_text())
    assert "cannot be met" in rec["unreachable"] and "performance" not in rec
    assert "## Budgets out of reach" in md and "`params=1e-05`" in md
    # a second invocation skips what is done
    assert compare_pruners.main(argv) == 0
    assert "4 runs (4 done before)" in capsys.readouterr().err


@pytest.mark.parametrize("argv, says", [(["--models", "lenet"], "unknown model 'lenet'"),
                                        (["--pruners", "l1,obs"], "unknown pruner 'obs'"),
                                        (["--targets", "1,2"], "must be > 1"),
                                        (["--models", "digits_vgg,vgg16"], "mixes data sets"),
                                        (["--models", "vgg16"], "needs --data-dir")])
def test_compare_script_errors(tmp_path, capsys, argv, says):
    import compare_pruners

    assert compare_pruners.main([*argv, "--out", str(tmp_path)]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert says in err[-1] and "Traceback" not in "\n".join(err)


def test_ray_two_workers(tmp_path, capsys):
    pytest.importorskip("ray")
    pytest.importorskip("sklearn")
    import compare_pruners

    argv = ["--ray", "--workers", "2", "--models", "digits_resnet", "--pruners", "l1,fpgm", "--targets", "2",
            "--seeds", "1", "--train-steps", "100", "--finetune-steps", "2", "--out", str(tmp_path)]
    assert compare_pruners.main(argv) == 0
    for pruner in ("l1", "fpgm"):
        p = Point("digits_resnet", pruner, "params=0.5", 0)
        check_record(json.loads((tmp_path / "records" / f"{p.stem}.json").read_text()), p)
    assert "Ray" in (tmp_path / "compare_pruners.md").read_text()
