"""The tests' own contract helper (``helpers.assert_contract``, which compiles with the built-in
check off) against the faults of test_planted_faults.py, and against one no built-in check can
see: a plan that removes more than the masks ask for, consistently."""
from __future__ import annotations

import importlib

import pytest

import slimc
from helpers import assert_contract
from test_planted_faults import GRAPH_FAULTS, X, chain, chain_masks, plant_in_graph


@pytest.mark.parametrize("fault", GRAPH_FAULTS)
def test_the_contract_helper_catches_a_fault_in_the_slim_graph(fault, monkeypatch):
    m = chain()
    assert_contract(m, chain_masks(m), X, complete=True, cache=False)  # faultless: passes
    plant_in_graph(monkeypatch, GRAPH_FAULTS[fault])
    with pytest.raises(AssertionError, match="is not the masked original sliced at kept indices|slim differs from"):
        assert_contract(m, chain_masks(m), X, complete=True, cache=False)
    with pytest.raises(AssertionError, match="slim differs from"):  # the values left unchecked: the outputs say it
        assert_contract(m, chain_masks(m), X, complete=True, cache=False, check_values=False)


def test_a_plan_that_removes_a_group_nobody_asked_for_fails_the_contract_helper(monkeypatch):
    """The plan removes one more channel group (conv2's row 1) than the masks ask for, and does
    so consistently (the slim model is exactly the model with its own final masks): compile's
    check cannot see it; the contract helper's reference made from the user's complete masks can."""
    plan_mod = importlib.import_module("slimc.propagate.plan")  # (the package's ``plan`` is the function)

    real = plan_mod._grow_by_liveness

    def grow(prop, removed_g, *args):
        out = real(prop, removed_g, *args).copy()
        out[prop.group[prop.dg.ids(("p", "conv2.weight", 0))[1]]] = True
        return out

    monkeypatch.setattr(plan_mod, "_grow_by_liveness", grow)
    m = chain()
    res = slimc.compile(m, chain_masks(m), X, cache=False)  # its own check passes: consistent
    assert res.module.conv2.out_channels == 3
    with pytest.raises(AssertionError, match="the test says the user's masks are complete, but the final masks "
                                             "zero 52 entries more"):  # conv2's row 1 (5·9 live) + bias + γ + β + conv3's column (4)
        assert_contract(m, chain_masks(m), X, complete=True, cache=False)
