"""The user's evaluation and training, as the automatic pruners call them.

``evaluate(model) -> float`` (accuracy; a loss with ``higher_is_better=False``) and
``finetune(model, steps)`` (a short training loop of the user's on the model it is given)
come from the API or from model.py. While ``finetune`` runs on a masked model, the
gradients of masked entries are zeroed (whatever the user's optimizer, nothing masked
moves) and the masks are applied again when it returns, so the model stays the one the
masks describe. What is missing is one line naming what to define.
"""
from __future__ import annotations

import contextlib
from typing import Callable, Iterator, Mapping

import torch
from torch import nn

from slimc.errors import DataError
from slimc.masks import MaskSet
from slimc.prune.data import UserData, failed

Evaluate = Callable[[nn.Module], float]
Finetune = Callable[[nn.Module, int], object]


@contextlib.contextmanager
def gradient_hooks(model: nn.Module, fns: Mapping[str, Callable[[torch.Tensor], torch.Tensor]]) -> Iterator[None]:
    """``fns[fqn](grad)`` replaces the gradient of parameter ``fqn`` while the block runs."""
    params = dict(model.named_parameters(remove_duplicate=False))
    handles = [params[fqn].register_hook(fn) for fqn, fn in fns.items() if fqn in params]
    try:
        yield
    finally:
        for h in handles:
            h.remove()


@contextlib.contextmanager
def masks_held(model: nn.Module, masks: Mapping[str, torch.Tensor]) -> Iterator[None]:
    """Train ``model`` under ``masks``: masked gradients are zero, the masks applied on exit."""
    def zero_masked(m: torch.Tensor) -> Callable[[torch.Tensor], torch.Tensor]:
        return lambda g: g * m.to(g.dtype)

    MaskSet(dict(masks)).apply(model)
    try:
        with gradient_hooks(model, {fqn: zero_masked(m) for fqn, m in masks.items()}):
            yield
    finally:
        MaskSet(dict(masks)).apply(model)


class Callbacks:
    """``evaluate`` and ``finetune`` from the API (first) or model.py."""

    def __init__(self, evaluate: Evaluate | None = None, finetune: Finetune | None = None, *,
                 higher_is_better: bool | None = None, user_data: UserData | None = None):
        user = user_data or UserData()
        self.evaluate = evaluate or user.evaluate
        self.finetune = finetune or user.finetune
        from_user = evaluate is None and user.evaluate is not None
        self.higher_is_better = user.higher_is_better if higher_is_better is None and from_user else \
            (True if higher_is_better is None else higher_is_better)

    def require(self, who: str, *, evaluate: bool = False, finetune: bool = False) -> "Callbacks":
        if evaluate and self.evaluate is None:
            raise DataError(f"{who} needs evaluate(model) -> float: define it in model.py (accuracy on held-out "
                            "data; evaluate_higher_is_better = False for a loss), or pass evaluate= to the API")
        if finetune and self.finetune is None:
            raise DataError(f"{who} needs finetune(model, steps): define it in model.py (a short training loop "
                            "on the model it is given), or pass finetune= to the API")
        return self

    def score(self, model: nn.Module) -> float:
        """``evaluate(model)``, higher = better (a loss is negated)."""
        was = model.training
        try:
            value = float(self.evaluate(model))
        except DataError:
            raise
        except Exception as e:
            raise failed("evaluate(model)", e, "it takes the model and returns a float") from e
        finally:
            model.train(was)
        return value if self.higher_is_better else -value

    def train(self, model: nn.Module, steps: int, masks: Mapping[str, torch.Tensor] | None = None,
              hooks: Mapping[str, Callable[[torch.Tensor], torch.Tensor]] | None = None) -> nn.Module:
        """``finetune(model, steps)`` in place, with ``masks`` held and gradient ``hooks`` on."""
        if steps <= 0 or self.finetune is None:
            if masks:
                MaskSet(dict(masks)).apply(model)
            return model
        with masks_held(model, masks or {}), gradient_hooks(model, hooks or {}):
            try:
                self.finetune(model, steps)
            except DataError:
                raise
            except Exception as e:
                raise failed("finetune(model, steps)", e, "it trains the model it is given for `steps` steps") from e
        return model
