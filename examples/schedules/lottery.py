"""Lottery ticket: train, prune 1-(1-P)^(1/n) of what is left, rewind to the initial weights,
repeat n rounds; then train the ticket and compile it.

    python examples/schedules/lottery.py
"""
import os

import torch

import slimc
from model import evaluate, example_inputs, loss_fn, model, train_batches  # sibling: the script's folder is on sys.path
from slimc.prune import LotteryTicket, Pruner

EPOCHS = int(os.environ.get("EPOCHS", "4"))
ROUNDS = 3


def train(epochs: int) -> None:
    opt = torch.optim.SGD(model.parameters(), lr=0.05, momentum=0.9)  # a fresh optimizer each round
    model.train()
    for _ in range(epochs):
        for x, y in train_batches():
            opt.zero_grad()
            loss_fn(model(x), y).backward()
            opt.step()
            ticket.apply()


ticket = LotteryTicket(Pruner(model, example_inputs, "l1", ratio=0.75), rounds=ROUNDS)
print(f"each round prunes {ticket.rate(0.75):.3f} of the remaining channels")
for r in range(ROUNDS):
    train(EPOCHS)
    pruned = ticket.step()  # prune by the trained weights, then rewind the rest to their initial values
    print(f"round {r}: sparsity {max(pruned.sparsity.values()):.2f}")
train(EPOCHS)
model.eval()
res = slimc.compile(model, ticket.masks(), example_inputs)
print(f"params {res.report['params']['before']:,} -> {res.report['params']['after']:,}; "
      f"accuracy masked {evaluate(model):.3f} = slim {evaluate(res.module):.3f}")
