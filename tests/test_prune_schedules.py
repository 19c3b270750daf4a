"""Schedules driven by the user's loop: AGP's cubic sparsity, Lottery Ticket's per-round rate
and rewind; pruned units stay pruned; masks are complete at every step."""
from __future__ import annotations

import copy

import numpy as np
import pytest
import torch

from helpers import assert_contract, assert_same_masks
from slimc import zoo
from slimc.prune import AGP, LevelPruner, LotteryTicket, Pruner


@pytest.fixture
def tiny():
    return zoo.build("resnet_tiny"), zoo.example_inputs("resnet_tiny")


def test_agp_is_cubic():
    agp = AGP(pruner=None, steps=4, model=torch.nn.Linear(1, 1))
    got = [agp.fraction(0.8, t) for t in range(5)]
    want = [0.8 + (0.0 - 0.8) * (1 - t / 4) ** 3 for t in range(5)]
    assert np.allclose(got, want) and got[0] == 0 and got[-1] == pytest.approx(0.8)
    steps = np.diff(got)
    assert (steps > 0).all() and (np.diff(steps) < 0).all()  # fast first, then slower
    assert AGP(None, steps=4, initial=0.2, model=torch.nn.Linear(1, 1)).fraction(0.8, 0) == pytest.approx(0.2)


def test_agp_steps_grow_monotonically_and_zero_the_model(tiny):
    m, x = copy.deepcopy(tiny[0]), tiny[1]
    agp = AGP(Pruner(m, x, "l1", round_to=1, ratio=0.5), steps=3)
    prev = set()
    for t in range(3):
        with torch.no_grad():  # "training" between steps changes the scores
            for p in m.parameters():
                p.add_(torch.randn_like(p) * 0.01)
        pruned = agp.step()
        units = set(pruned.units.tolist())
        assert prev <= units and len(units) > len(prev)
        prev = units
        params = dict(m.named_parameters())
        for fqn, mask in agp.masks().items():
            assert bool((params[fqn][(mask == 0).expand_as(params[fqn])] == 0).all()), fqn  # compact masks broadcast
    assert agp.done and max(pruned.sparsity.values()) == pytest.approx(0.5, abs=0.05)
    res = assert_contract(m, agp.masks(), x)
    assert res.report["kept"] == []
    assert_same_masks(res.masks, agp.masks())


def test_lottery_ticket_rate_and_rewind(tiny):
    m, x = copy.deepcopy(tiny[0]), tiny[1]
    init = copy.deepcopy(m.state_dict())
    lt = LotteryTicket(Pruner(m, x, "l1", round_to=1, ratio=0.75), rounds=2)
    assert lt.rate(0.75) == pytest.approx(0.5)
    assert [lt.fraction(0.75, k) for k in (1, 2)] == pytest.approx([0.5, 0.75])
    for k in (1, 2):
        with torch.no_grad():
            for p in m.parameters():
                p.mul_(1.5)  # "training"
        pruned = lt.step()
        assert np.mean(list(pruned.sparsity.values())) == pytest.approx(lt.fraction(0.75, k), abs=0.06)
        masks = lt.masks()
        for fqn, p in m.named_parameters():  # rewound to the initial weights, masked ones zero
            mk = masks.get(fqn)
            want = init[fqn] if mk is None else init[fqn] * mk
            assert torch.equal(p.detach(), want), fqn
    assert lt.done


def test_agp_drives_level_too(tiny):
    m, x = copy.deepcopy(tiny[0]), tiny[1]
    agp = AGP(LevelPruner(m, x, ratio=0.6), steps=2)
    first = agp.step().masks
    second = agp.step().masks
    for fqn, a in first.items():
        assert bool((second[fqn][a == 0] == 0).all())  # zeros chosen before stay zero
    w = m.get_parameter("conv1.weight")
    assert (w == 0).float().mean().item() == pytest.approx(0.6, abs=0.01)


@pytest.mark.parametrize("script", ["agp.py", "lottery.py"])
def test_schedule_examples_run(script):
    """The examples train, prune and compile; the masked and slim accuracies they print agree."""
    import os
    import re
    import subprocess
    import sys
    from pathlib import Path

    path = Path(__file__).resolve().parents[1] / "examples" / "schedules" / script
    env = {**os.environ, "EPOCHS": "1", "OMP_NUM_THREADS": "1"}
    out = subprocess.run([sys.executable, str(path)], capture_output=True, text=True, env=env, timeout=300)
    assert out.returncode == 0, out.stderr[-2000:]
    masked, slim = re.search(r"accuracy masked ([\d.]+) = slim ([\d.]+)", out.stdout).groups()
    assert masked == slim
