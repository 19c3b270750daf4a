"""AGP (Zhu & Gupta's cubic schedule) in an ordinary training loop, then compile.

    python examples/schedules/agp.py

The schedule prunes a little more at each step (complete masks: weight rows *and* the
BatchNorm γ/β and the next layer's columns that go with them) and zeroes those weights; the
loop re-applies the masks after every optimizer step. The fine-tuned masked model is then
exactly the slim model slimc compile builds.
"""
import os

import torch

import slimc
from model import evaluate, example_inputs, loss_fn, model, train_batches  # sibling: the script's folder is on sys.path
from slimc.prune import AGP, Pruner

EPOCHS = int(os.environ.get("EPOCHS", "12"))
STEPS = min(6, EPOCHS)

opt = torch.optim.SGD(model.parameters(), lr=0.05, momentum=0.9)
agp = AGP(Pruner(model, example_inputs, "taylor", ratio=0.5, data=lambda: train_batches(128), loss_fn=loss_fn,
                 max_batches=2), steps=STEPS)
for epoch in range(EPOCHS):
    model.train()
    for x, y in train_batches():
        opt.zero_grad()
        loss_fn(model(x), y).backward()
        opt.step()
        agp.apply()  # masked weights stay zero
    if not agp.done:
        pruned = agp.step()
        print(f"epoch {epoch}: sparsity {max(pruned.sparsity.values()):.2f}, accuracy {evaluate(model):.3f}")
model.eval()
res = slimc.compile(model, agp.masks(), example_inputs)
print(f"params {res.report['params']['before']:,} -> {res.report['params']['after']:,}; "
      f"accuracy masked {evaluate(model):.3f} = slim {evaluate(res.module):.3f}")
