"""The comparison's data sets, as tensors in memory.

* ``digits`` — scikit-learn's handwritten digits (1 797 images, 8×8, 10 classes), shipped
  inside the scikit-learn package: real data, offline. Pixels scaled to [0, 1], then
  standardised; a fixed stratified split: 60 % train, 15 % validation (what the automatic
  pruners' ``evaluate`` sees), 25 % test (what the records report).
* ``cifar10`` — the standard python-pickle batches (``data_batch_1`` … ``data_batch_5``,
  ``test_batch``: dicts with ``b"data"``, uint8 N×3072, and ``b"labels"``) in a folder the
  user points at; 5 000 training images held out for validation.

Loading pickles executes code from the file: only folders the user names are read, as
for ``torchvision.datasets.CIFAR10``.
"""
from __future__ import annotations

import pickle
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from slimc.errors import ConfigError, DataError

CIFAR_MEAN = (0.4914, 0.4822, 0.4465)
CIFAR_STD = (0.2470, 0.2435, 0.2616)
CIFAR_TRAIN = [f"data_batch_{i}" for i in range(1, 6)]
CIFAR_TEST = "test_batch"


@dataclass
class Split:
    x: torch.Tensor
    y: torch.Tensor

    def __len__(self) -> int:
        return len(self.y)


@dataclass
class DataSet:
    name: str
    train: Split
    val: Split
    test: Split

    @property
    def input_shape(self) -> tuple[int, ...]:
        return tuple(self.train.x.shape[1:])


def _stratified(y: np.ndarray, fractions: tuple[float, ...], seed: int = 0) -> list[np.ndarray]:
    """Indices of consecutive parts of ``y`` of the given fractions, every class split alike."""
    rng = np.random.default_rng(seed)
    parts: list[list[np.ndarray]] = [[] for _ in fractions]
    for c in np.unique(y):
        idx = rng.permutation(np.flatnonzero(y == c))
        cuts = np.round(np.cumsum(fractions)[:-1] * len(idx)).astype(int)
        for i, chunk in enumerate(np.split(idx, cuts)):
            parts[i].append(chunk)
    return [np.sort(np.concatenate(p)) for p in parts]


def digits() -> DataSet:
    try:
        from sklearn.datasets import load_digits
    except ImportError:
        raise DataError("the digits data set ships with scikit-learn: pip install 'slimc[digits]'") from None
    d = load_digits()
    x = torch.tensor(d.images / 16.0, dtype=torch.float32).unsqueeze(1)
    y = torch.tensor(d.target, dtype=torch.long)
    tr, va, te = _stratified(d.target, (0.6, 0.15, 0.25))
    mean, std = x[tr].mean(), x[tr].std()
    x = (x - mean) / std
    return DataSet("digits", *(Split(x[i], y[i]) for i in (tr, va, te)))


def _cifar_batch(path: Path) -> tuple[np.ndarray, np.ndarray]:
    if not path.is_file():
        raise DataError(f"{path} not found: --data-dir must hold the CIFAR-10 python batches "
                        f"({', '.join(CIFAR_TRAIN)}, {CIFAR_TEST}), as in cifar-10-python.tar.gz")
    with path.open("rb") as f:
        try:
            d = pickle.load(f, encoding="bytes")
        except Exception as e:
            raise DataError(f"{path} is not a CIFAR-10 python batch ({type(e).__name__}: {e})") from None
    data = d.get(b"data", d.get("data")) if isinstance(d, dict) else None
    labels = d.get(b"labels", d.get("labels")) if isinstance(d, dict) else None
    if data is None or labels is None:
        raise DataError(f"{path} is not a CIFAR-10 python batch: no 'data' and 'labels'")
    data = np.asarray(data, dtype=np.uint8)
    if data.ndim != 2 or data.shape[1] != 3 * 32 * 32 or len(data) != len(labels):
        raise DataError(f"{path}: 'data' is {data.shape}, not N×3072 with one label per row")
    return data.reshape(-1, 3, 32, 32), np.asarray(labels, dtype=np.int64)


def cifar10(data_dir: str | Path, val: int = 5000) -> DataSet:
    root = Path(data_dir)
    if (root / "cifar-10-batches-py").is_dir():
        root = root / "cifar-10-batches-py"
    parts = [_cifar_batch(root / n) for n in CIFAR_TRAIN]
    xs, ys = np.concatenate([p[0] for p in parts]), np.concatenate([p[1] for p in parts])
    xt, yt = _cifar_batch(root / CIFAR_TEST)
    mean = torch.tensor(CIFAR_MEAN).view(1, 3, 1, 1)
    std = torch.tensor(CIFAR_STD).view(1, 3, 1, 1)

    def tensors(x: np.ndarray, y: np.ndarray) -> Split:
        return Split((torch.from_numpy(x).float() / 255.0 - mean) / std, torch.from_numpy(y))

    n_val = min(val, len(ys) // 10)
    va, tr = _stratified(ys, (n_val / len(ys), 1 - n_val / len(ys)))
    return DataSet("cifar10", tensors(xs[tr], ys[tr]), tensors(xs[va], ys[va]), tensors(xt, yt))


def load(name: str, data_dir: str | Path | None = None) -> DataSet:
    if name == "digits":
        return digits()
    if name == "cifar10":
        if data_dir is None:
            raise ConfigError("cifar10 needs --data-dir: a folder with the CIFAR-10 python batches")
        return cifar10(data_dir)
    raise ConfigError(f"unknown data set '{name}': digits or cifar10")
