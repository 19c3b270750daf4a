"""Training, fine-tuning and evaluation of the comparison's networks, as the callbacks the
pruners take: ``evaluate(model) -> float`` (accuracy on the validation split) and
``finetune(model, steps)`` (SGD with momentum on shuffled mini-batches of the training split).
"""
from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from slimc.compare.data import DataSet, Split


def accuracy(model: nn.Module, split: Split, batch: int = 512) -> float:
    was = model.training
    model.eval()
    correct = 0
    with torch.no_grad():
        for i in range(0, len(split), batch):
            correct += int((model(split.x[i:i + batch]).argmax(1) == split.y[i:i + batch]).sum())
    model.train(was)
    return correct / max(len(split), 1)


@dataclass
class Trainer:
    data: DataSet
    batch: int = 64
    lr: float = 0.05
    weight_decay: float = 5e-4
    seed: int = 0

    def batches(self, steps: int, seed: int):
        g = torch.Generator().manual_seed(seed)
        n = len(self.data.train)
        done = 0
        while done < steps:
            order = torch.randperm(n, generator=g)
            for i in range(0, n - self.batch + 1, self.batch):
                if done == steps:
                    return
                idx = order[i:i + self.batch]
                yield self.data.train.x[idx], self.data.train.y[idx]
                done += 1

    def fit(self, model: nn.Module, steps: int, lr: float | None = None, seed: int | None = None) -> nn.Module:
        """``steps`` of SGD (momentum 0.9, cosine-decayed learning rate) on the training split."""
        if steps <= 0:
            return model
        model.train()
        opt = torch.optim.SGD(model.parameters(), lr=lr or self.lr, momentum=0.9, weight_decay=self.weight_decay)
        sched = torch.optim.lr_scheduler.CosineAnnealingLR(opt, steps)
        for x, y in self.batches(steps, self.seed if seed is None else seed):
            opt.zero_grad(set_to_none=True)
            F.cross_entropy(model(x), y).backward()
            opt.step()
            sched.step()
        return model

    # the pruners' callbacks
    def finetune(self, model: nn.Module, steps: int) -> None:
        self.fit(model, steps, lr=self.lr / 5, seed=self.seed + 1000 + steps)

    def evaluate(self, model: nn.Module) -> float:
        return accuracy(model, self.data.val)

    def test(self, model: nn.Module) -> float:
        return accuracy(model, self.data.test)

    def calibration(self, n: int = 4) -> list[tuple[torch.Tensor, torch.Tensor]]:
        """A few training batches for the data-driven criteria (Taylor)."""
        return list(self.batches(n, self.seed + 7))
