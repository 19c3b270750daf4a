"""slimc/propagate/ on its own: masks → removal plan (groups, kept indices, final masks,
kept-and-why), before any rewrite."""
from __future__ import annotations

import numpy as np
import pytest
import torch
from torch import nn

from helpers import ConvChain, build, mask_rows, stages, x_
from slimc.errors import PlanError


def _plan(model, masks, x=None, **kw):
    from slimc.masks import normalize
    from slimc.propagate import plan

    _, dg, _ = stages(model, None, (x if x is not None else x_(2, 3, 8, 8),))
    return plan(dg, normalize(masks, model), **kw)


def test_masked_filters_go_from_every_member():
    m = build(ConvChain, 2).eval()
    p = _plan(m, {"conv1.weight": mask_rows(m, "conv1.weight", [1, 5])})
    keep = [0, 2, 3, 4, 6, 7]
    for slot in [("p", "conv1.weight", 0), ("p", "conv1.bias", 0), ("p", "bn1.weight", 0),
                 ("p", "bn1.running_mean", 0), ("p", "conv2.weight", 1), ("v", "conv1", 1)]:
        assert np.asarray(p.kept_idx(slot)).tolist() == keep, slot
        assert p.new_size(slot) == 6
    assert p.kept_idx(("p", "conv2.weight", 0)) is None  # conv2's own filters are untouched
    # final masks zero the followers and sinks too (compact: they broadcast to the param)
    assert not bool(p.final_masks["bn1.bias"][[1, 5]].any())
    assert not bool(p.final_masks["conv2.weight"].expand(6, 8, 3, 3)[:, [1, 5]].any())
    assert p.n_groups_removed == 2


class Residual(nn.Module):
    def __init__(self):
        super().__init__()
        self.a = nn.Conv2d(3, 8, 1)
        self.b = nn.Conv2d(3, 8, 1)
        self.head = nn.Conv2d(8, 2, 1)

    def forward(self, x):
        return self.head(self.a(x) + self.b(x))


def test_a_channel_masked_on_one_side_of_an_add_is_kept_and_said_why():
    m = Residual().eval()
    p = _plan(m, {"a.weight": mask_rows(m, "a.weight", [0, 3])}, x_(1, 3, 4, 4))
    assert p.kept_idx(("p", "a.weight", 0)) is None
    assert p.kept_reasons and p.kept_reasons[0]["groups"] == 2
    both = {"a.weight": mask_rows(m, "a.weight", [0, 3]), "b.weight": mask_rows(m, "b.weight", [3])}
    p = _plan(m, {**both, "a.bias": torch.ones(8), "b.bias": mask_rows(m, "b.bias", [3])}, x_(1, 3, 4, 4))
    assert 3 not in np.asarray(p.kept_idx(("p", "a.weight", 0))).tolist()


def test_exact_mode_removes_only_what_is_zero_in_the_masked_model():
    m = build(ConvChain, 2).eval()
    masks = {"conv1.weight": mask_rows(m, "conv1.weight", [1, 5])}
    assert not _plan(m, masks, mode="exact").removed.any()  # BN β keeps the channels alive
    assert _plan(m, masks).removed.any()


def test_a_layer_with_no_channel_left_is_refused_unless_allowed():
    m = build(ConvChain, 2).eval()
    masks = {"conv1.weight": torch.zeros(8, 1, 1, 1)}
    with pytest.raises(PlanError):
        _plan(m, masks)
    assert _plan(m, masks, allow_empty=True).removed.any()


def test_unknown_mode():
    m = build(ConvChain, 2).eval()
    with pytest.raises(PlanError, match="unknown mode"):
        _plan(m, {}, mode="fast")
