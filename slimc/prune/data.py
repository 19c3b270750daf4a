"""Data for data-driven pruners and the sensitivity analysis.

From the API: ``data=`` an iterable (or a function returning one) of input tuples, single
tensors, or ``(inputs, target)`` pairs; ``loss_fn(output, target)``; ``evaluate(model) ->
float``. From a model.py: the same names, ``calibration_batches()``, ``loss_fn`` and
``evaluate`` (``evaluate_higher_is_better = False`` when it returns a loss), and for the
automatic pruners ``finetune(model, steps)`` (a short training loop on the model it is
given; :mod:`slimc.prune.callbacks` keeps the masked weights at zero). Every pass over the
data shows a progress bar; what is missing is a one-line error naming what to define.
"""
from __future__ import annotations

from dataclasses import dataclass, replace
from types import ModuleType
from typing import Any, Callable, Iterable, Iterator

import torch

from slimc.errors import DataError, describe
from slimc.progress import progress

MODEL_PY_HINT = ("define `calibration_batches()` in model.py (yielding input tuples or (inputs, target) pairs), "
                 "or pass data= to the API")


def failed(what: str, e: BaseException, hint: str = "") -> DataError:
    """One line for an exception the user's code raised (data, loss, evaluation)."""
    return DataError(f"{what} failed: {describe(e, 200)}" + (f" ({hint})" if hint else ""))


def batch_failed(e: BaseException) -> DataError:
    """One line for the model raising on a calibration batch (one unlike the example inputs)."""
    return failed("running the model on a calibration batch", e,
                  "yield inputs like example_inputs; other batch sizes are fine")


@dataclass
class Batch:
    inputs: tuple
    target: Any = None


def as_batch(item: Any, n_inputs: int, i: int = 0) -> Batch:
    """One calibration item → inputs (+ target). A pair whose first element is itself a
    tuple or list, or a pair given to a one-input model, is ``(inputs, target)``."""
    if isinstance(item, torch.Tensor):
        return Batch((item,))
    if isinstance(item, dict) and "inputs" in item:
        inputs = item["inputs"]
        return Batch(tuple(inputs) if isinstance(inputs, (tuple, list)) else (inputs,), item.get("target"))
    if isinstance(item, (tuple, list)) and item:
        if len(item) == 2 and isinstance(item[0], (tuple, list)):
            return Batch(tuple(item[0]), item[1])
        if len(item) == 2 and n_inputs == 1:
            return Batch((item[0],), item[1])
        if len(item) == n_inputs:
            return Batch(tuple(item))
    raise DataError(
        f"calibration batch {i} is a {type(item).__name__}"
        + (f" of {len(item)} items" if isinstance(item, (tuple, list)) else "")
        + f" but the model takes {n_inputs} input(s): yield tensors, tuples of the inputs, or (inputs, target) pairs"
    )


class Calibration:
    """Calibration batches for a model with ``n_inputs`` inputs; iterate to get :class:`Batch`es."""

    def __init__(self, data: Any, n_inputs: int, *, loss_fn: Callable | None = None,
                 max_batches: int | None = None, where: str = "data="):
        self.data = data
        self.n_inputs = n_inputs
        self.loss_fn = loss_fn
        self.max_batches = max_batches
        self.where = where

    def _items(self) -> Iterable:
        data = self.data() if callable(self.data) else self.data
        if isinstance(data, torch.Tensor):
            return [data]
        try:
            iter(data)
        except TypeError:
            raise DataError(f"{self.where} is a {type(data).__name__}, not an iterable of batches: "
                            f"{MODEL_PY_HINT}") from None
        return data

    def _guarded(self, items: Iterable) -> Iterator:
        """The user's iterable; an exception it raises becomes one line naming it."""
        it = iter(items)
        while True:
            try:
                item = next(it)
            except StopIteration:
                return
            except Exception as e:
                raise failed(self.where, e) from e
            yield item

    def batches(self, description: str) -> Iterator[Batch]:
        try:
            items = self._items()
        except DataError:
            raise
        except Exception as e:
            raise failed(self.where, e) from e
        total = len(items) if hasattr(items, "__len__") else None  # type: ignore[arg-type]
        if self.max_batches is not None:
            total = self.max_batches if total is None else min(total, self.max_batches)
        n = 0
        for i, item in enumerate(progress(self._guarded(items), description, total)):
            if self.max_batches is not None and i >= self.max_batches:
                break
            n += 1
            yield as_batch(item, self.n_inputs, i)
        if n == 0:
            raise DataError(f"{self.where} gave no batch: {MODEL_PY_HINT}")

    def loss(self, output: Any, target: Any) -> torch.Tensor:
        if self.loss_fn is None:
            raise DataError("no loss: define `loss_fn(output, target)` in model.py, or pass loss_fn= to the API")
        try:
            out = self.loss_fn(output, target)
        except Exception as e:
            raise failed("loss_fn(output, target)", e, "batches with targets are (inputs, target) pairs") from e
        if not isinstance(out, torch.Tensor) or out.numel() != 1:
            raise DataError(f"loss_fn returned {type(out).__name__}, not a scalar tensor: return e.g. "
                            "F.cross_entropy(output, target)")
        return out.reshape(())


@dataclass
class UserData:
    """What a model.py (or the API) provides for data-driven work."""

    data: Any = None
    loss_fn: Callable | None = None
    evaluate: Callable | None = None
    higher_is_better: bool = True
    where: str = "data="
    finetune: Callable | None = None

    @classmethod
    def from_namespace(cls, ns: ModuleType | None, where: str) -> "UserData":
        if ns is None:
            return cls(where=where)
        return cls(getattr(ns, "calibration_batches", None), getattr(ns, "loss_fn", None),
                   getattr(ns, "evaluate", None), bool(getattr(ns, "evaluate_higher_is_better", True)),
                   f"calibration_batches() in {where}", getattr(ns, "finetune", None))

    def with_api(self, data: Any = None, loss_fn: Callable | None = None) -> "UserData":
        """What the API passes takes precedence over what model.py defines."""
        return replace(self, data=self.data if data is None else data, loss_fn=loss_fn or self.loss_fn,
                       where="data=" if data is not None else self.where)

    def calibration(self, n_inputs: int, needs: str, *, needs_loss: bool = False,
                    max_batches: int | None = None) -> Calibration:
        """The calibration data, or a one-line error saying what ``needs`` it and what to define."""
        if self.data is None:
            raise DataError(f"{needs} needs calibration data: {MODEL_PY_HINT}")
        if needs_loss and self.loss_fn is None:
            raise DataError(f"{needs} needs a loss: define `loss_fn(output, target)` in model.py "
                            "(and yield (inputs, target) pairs), or pass loss_fn= to the API")
        return Calibration(self.data, n_inputs, loss_fn=self.loss_fn, max_batches=max_batches, where=self.where)
