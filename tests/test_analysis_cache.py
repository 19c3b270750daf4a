"""The analysis kept between compiles (slimc.analysis): reused by any model of the same
structure (the same object after training, a deep copy, a new instance) with that
model's own values, by identity where the analysis read values; never rewritten; every
compile still meets the contract."""
from __future__ import annotations

import torch
from torch import nn

import slimc
from helpers import assert_contract, masked_reference, random_filter_masks, randomize_norms, run_eval
from slimc import analysis, zoo


def model_and_inputs(name: str):
    return zoo.build(name), zoo.example_inputs(name, batch=2)


def _compile(m, masks, x, **kw):
    return slimc.compile(m, masks, x, **kw)


def _the_kept() -> analysis.Analysis:
    (kept,) = [*analysis._by_structure.values(), *(an for d in analysis._kept.values() for an in d.values())]
    return kept


def test_a_sweep_reuses_the_analysis_and_each_point_meets_the_contract():
    m, x = model_and_inputs("resnet_tiny")
    analysis.clear()
    first = _compile(m, random_filter_masks(m, 0.3, seed=1), x)
    assert first.report["analysis"] == "fresh"
    for ratio, seed in [(0.5, 2), (0.7, 3), (0.3, 1)]:
        masks = random_filter_masks(m, ratio, seed=seed)
        res = assert_contract(m, masks, x)
        assert res.report["analysis"] == "reused"
    again = _compile(m, random_filter_masks(m, 0.3, seed=1), x)
    assert again.report["params"] == first.report["params"]
    assert again.report["flops"] == first.report["flops"]
    # results of two compiles share no tensor (and none with the original)
    ids = lambda mod: {id(t) for t in [*mod.parameters(), *mod.buffers()]}  # noqa: E731
    assert not ids(again.module) & ids(first.module)
    assert not ids(again.module) & ids(m)


def test_the_kept_traced_module_is_never_rewritten():
    m, x = model_and_inputs("resnet_tiny")
    analysis.clear()
    _compile(m, random_filter_masks(m, 0.5, seed=1), x)
    kept = _the_kept()
    code = kept.traced.gm.code
    shapes = {k: tuple(p.shape) for k, p in kept.traced.gm.named_parameters()}
    _compile(m, random_filter_masks(m, 0.6, seed=2), x)
    assert kept.traced.gm.code == code
    assert {k: tuple(p.shape) for k, p in kept.traced.gm.named_parameters()} == shapes


def _bn_net(seed: int = 0, width: int = 8) -> nn.Module:
    torch.manual_seed(seed)
    return randomize_norms(nn.Sequential(nn.Conv2d(3, width, 3), nn.BatchNorm2d(width), nn.ReLU(), nn.Conv2d(width, 4, 1)),
                           seed=seed)


def _mask(m: nn.Module) -> dict:
    w = torch.ones_like(m[0].weight)
    w[2:4] = 0
    return {"0.weight": w}


def _matches_masked(m, res, x) -> bool:
    ref = masked_reference(m, res.masks)
    return torch.allclose(run_eval(res.module, (x,))[0], run_eval(ref, (x,))[0], atol=1e-5)


def test_changes_of_values_reuse_the_analysis_with_the_new_values():
    x = torch.randn(2, 3, 10, 10)
    m = _bn_net().eval()
    analysis.clear()
    assert _compile(m, _mask(m), x).report["analysis"] == "fresh"
    m.train()(torch.randn(4, 3, 10, 10))  # running statistics updated in place
    m.eval()
    res = _compile(m, _mask(m), x, verify=False)
    assert res.report["analysis"] == "reused" and _matches_masked(m, res, x)
    with torch.no_grad():  # an optimizer step
        m[3].weight.add_(1.0)
    res = _compile(m, _mask(m), x, verify=False)
    assert res.report["analysis"] == "reused" and _matches_masked(m, res, x)
    with torch.no_grad():  # new tensors under the same names
        m[0].weight = nn.Parameter(torch.randn_like(m[0].weight))
        m[1].running_var = torch.rand(8) + 0.5
    res = _compile(m, _mask(m), x, verify=False)
    assert res.report["analysis"] == "reused" and _matches_masked(m, res, x)


def test_changes_of_structure_start_a_fresh_analysis():
    x = torch.randn(2, 3, 10, 10)
    m = _bn_net().eval()
    analysis.clear()
    assert _compile(m, _mask(m), x).report["analysis"] == "fresh"
    assert _compile(m, _mask(m), x).report["analysis"] == "reused"
    m[2] = nn.ReLU6()  # a module replaced
    assert _compile(m, _mask(m), x).report["analysis"] == "fresh"
    m[1].eps = 1e-3  # a plain attribute
    assert _compile(m, _mask(m), x).report["analysis"] == "fresh"
    m[1].momentum = 0.2
    assert _compile(m, _mask(m), x).report["analysis"] == "fresh"
    m[3].bias = None  # a parameter gone
    assert _compile(m, _mask(m), x).report["analysis"] == "fresh"
    m.train()
    assert _compile(m, _mask(m), x).report["analysis"] == "fresh"
    m.eval()
    assert _compile(m, _mask(m), torch.randn(1, 3, 12, 12)).report["analysis"] == "fresh"  # another input shape
    assert _compile(m, _mask(m), x, probe=False).report["analysis"] == "fresh"  # another key
    assert _compile(m, _mask(m), x, probe=False).report["analysis"] == "reused"


def test_copies_and_new_instances_reuse_the_analysis_with_their_own_weights():
    import copy

    x = torch.randn(2, 3, 10, 10)
    m = _bn_net().eval()
    analysis.clear()
    assert _compile(m, _mask(m), x).report["analysis"] == "fresh"
    for other in (copy.deepcopy(m), _bn_net(seed=3).eval(), randomize_norms(copy.deepcopy(m), seed=5)):
        with torch.no_grad():
            for p in other.parameters():
                p.add_(torch.randn_like(p))
        res = assert_contract(other, _mask(other), x)
        assert res.report["analysis"] == "reused"
        assert _matches_masked(other, res, x)
        assert not _matches_masked(m, res, x)  # the analysed model's values are not in it
    assert len(analysis._by_structure) == 1 and not analysis._kept


def test_the_export_front_end_reuses_by_structure_with_the_new_models_buffers():
    x = torch.randn(2, 3, 10, 10)
    analysis.clear()
    m = _bn_net().eval()
    assert _compile(m, _mask(m), x, front_end="export").report["front_end"] == "export"
    other = _bn_net(seed=5).eval()  # other weights and running statistics
    res = _compile(other, _mask(other), x, front_end="export", verify=False)
    assert res.report["analysis"] == "reused" and _matches_masked(other, res, x)


class _Act(nn.Module):
    def __init__(self, approximate: str):
        super().__init__()
        import functools

        self.conv, self.head = nn.Conv2d(3, 8, 3), nn.Conv2d(8, 4, 1)
        self.act = functools.partial(nn.functional.gelu, approximate=approximate)  # called in forward

    def forward(self, x):
        return self.head(self.act(self.conv(x)))


def test_what_an_attribute_holds_is_structure():
    x = torch.randn(2, 3, 10, 10)
    masks = {"conv.weight": torch.ones(8, 1, 1, 1).index_fill_(0, torch.tensor([1, 5]), 0)}
    analysis.clear()
    assert _compile(_Act("none").eval(), masks, x).report["analysis"] == "fresh"
    m = _Act("tanh").eval()
    res = _compile(m, masks, x, verify=False)
    assert res.report["analysis"] == "fresh" and _matches_masked(m, res, x)
    assert _compile(_Act("tanh").eval(), masks, x).report["analysis"] == "reused"


class _Tied(nn.Module):
    def __init__(self, tie: bool):
        super().__init__()
        self.a, self.b = nn.Linear(8, 8), nn.Linear(8, 8)
        if tie:
            self.b.weight = self.a.weight

    def forward(self, x):
        return self.b(torch.relu(self.a(x)))


def test_tied_and_untied_weights_are_different_structures():
    x = torch.randn(3, 8)
    analysis.clear()
    masks = {"a.weight": torch.ones(8, 1).index_fill_(0, torch.tensor([2]), 0)}
    assert _compile(_Tied(False), masks, x).report["analysis"] == "fresh"
    res = _compile(_Tied(True), masks, x)
    assert res.report["analysis"] == "fresh"
    assert _compile(_Tied(True), masks, x).report["analysis"] == "reused"


class _Unknown(nn.Module):
    """An op without a shape rule: probed on the example inputs (values read)."""

    def __init__(self):
        super().__init__()
        self.conv, self.head = nn.Conv2d(3, 8, 3), nn.Conv2d(8, 4, 1)

    def forward(self, x):
        return self.head(torch.special.expit(self.conv(x)))


def test_an_analysis_that_probed_an_op_is_kept_by_identity_only():
    import copy

    x = torch.randn(2, 3, 10, 10)
    m = _Unknown().eval()
    analysis.clear()
    masks = {"conv.weight": torch.ones(8, 1, 1, 1).index_fill_(0, torch.tensor([1, 5]), 0)}
    res = _compile(m, masks, x)
    assert res.report["probed"], "expit has a rule now: pick another op without one"
    assert _compile(m, masks, x).report["analysis"] == "reused"
    assert not analysis._by_structure
    assert _compile(copy.deepcopy(m), masks, x).report["analysis"] == "fresh"


def test_cache_off_keeps_nothing():
    m = _bn_net().eval()
    analysis.clear()
    x = torch.randn(2, 3, 10, 10)
    for _ in range(2):
        assert _compile(m, _mask(m), x, cache=False).report["analysis"] == "fresh"
    assert m not in analysis._kept


def test_kept_analyses_are_bounded_and_hold_no_weights_once_their_model_is_freed():
    import gc

    analysis.clear()
    x = torch.randn(1, 3, 10, 10)
    models = [_bn_net(width=4 + i).eval() for i in range(analysis.KEEP_MODELS + 2)]  # as many structures
    for m in models:
        _compile(m, _mask(m), x, verify=False)
    assert len(analysis._by_structure) == analysis.KEEP_MODELS
    kept = list(analysis._by_structure.values())
    assert all(an.bound for an in kept)
    del models, m
    gc.collect()
    for an in kept:  # shapes, dtypes and ties stay; the weights are gone
        assert all(t.is_meta for t in [*an.traced.gm.parameters(), *an.traced.gm.buffers()])
    again = _bn_net(width=4 + analysis.KEEP_MODELS + 1).eval()
    res = assert_contract(again, _mask(again), x)
    assert res.report["analysis"] == "reused" and _matches_masked(again, res, x)
    # the check still runs the traced graph at a second shape: on this model's weights, not the meta ones
    varied = _compile(again, _mask(again), x).report["verify"]["varied"]
    assert varied.startswith("varied input 0"), varied

    unbound = [_Scaled().eval() for _ in range(analysis.KEEP_MODELS + 2)]  # kept by identity
    masks = {"conv.weight": torch.ones(8, 1, 1, 1).index_fill_(0, torch.tensor([1, 5]), 0)}
    for m in unbound:
        _compile(m, masks, x, verify=False)
    assert len(analysis._kept) == analysis.KEEP_MODELS
    assert unbound[0] not in analysis._kept and unbound[-1] in analysis._kept
    del unbound, m
    gc.collect()
    assert len(analysis._kept) == 0


class _Scaled(nn.Module):
    def __init__(self):
        super().__init__()
        self.conv = nn.Conv2d(3, 8, 3)
        self.head = nn.Conv2d(8, 4, 1)
        self.scale = torch.ones(1, 8, 1, 1)  # a plain tensor attribute, not a buffer

    def forward(self, x):
        return self.head(self.conv(x) * self.scale)


def test_a_plain_tensor_attribute_changed_in_place_starts_a_fresh_analysis():
    m = _Scaled().eval()
    analysis.clear()
    x = torch.randn(2, 3, 10, 10)
    masks = {"conv.weight": torch.ones(8, 1, 1, 1).index_fill_(0, torch.tensor([1, 5]), 0)}
    assert _compile(m, masks, x).report["analysis"] == "fresh"
    assert not analysis._by_structure  # a traced constant may be that attribute: kept by identity
    m.scale.mul_(3.0)
    res = _compile(m, masks, x)
    assert res.report["analysis"] == "fresh"
    ref = masked_reference(m, res.masks)
    assert torch.allclose(run_eval(res.module, (x,))[0], run_eval(ref, (x,))[0], atol=1e-5)


def test_a_mask_read_before_is_read_again_once_changed_in_place():
    import pytest

    from slimc.errors import MaskError, PlanError
    from slimc.masks import normalize

    m = _bn_net()
    w = torch.ones_like(m[0].weight)
    w[2:4] = 0
    first = normalize({"0.weight": w}, m).masks["0.weight"]
    assert first.shape == (8, 1, 1, 1) and first.sum() == 6
    again = normalize({"0.weight": w}, m).masks["0.weight"]
    assert torch.equal(again, first) and again is not first  # a copy each time
    again[0] = False  # the caller's copy: the kept form is not touched
    assert normalize({"0.weight": w}, m).masks["0.weight"].sum() == 6
    w[5] = 0  # in place: read again
    assert normalize({"0.weight": w}, m).masks["0.weight"].sum() == 5
    w[0, 0, 0, 0] = 2
    with pytest.raises(MaskError, match="not binary"):
        normalize({"0.weight": w}, m)
    w.data = torch.zeros_like(w)  # new storage under the same object (no version bump): read again
    with pytest.raises(PlanError, match="every channel"):
        slimc.compile(m, {"0.weight": w}, torch.randn(1, 3, 8, 8))


def test_a_reused_generated_forward_stays_each_modules_own():
    """A sweep point runs the kept module's generated forward; editing and recompiling one
    result's graph changes that result only, and copies regenerate their code."""
    import copy
    import io

    m, x = model_and_inputs("resnet_tiny")
    analysis.clear()
    a = _compile(m, random_filter_masks(m, 0.3, seed=1), x, verify=False)
    b = _compile(m, random_filter_masks(m, 0.5, seed=2), x, verify=False)
    kept = _the_kept()
    code, forward = kept.traced.gm.code, type(kept.traced.gm).forward
    assert type(b.module).forward is forward  # the graph was left as it was: its code is reused
    graph = b.module.graph
    out = next(n for n in graph.nodes if n.op == "output")
    with graph.inserting_before(out):
        neg = graph.call_function(torch.neg, (out.args[0],))
    out.args = (neg,)
    b.module.recompile()
    assert kept.traced.gm.code == code and type(kept.traced.gm).forward is forward
    assert type(a.module).forward is forward
    again = _compile(m, random_filter_masks(m, 0.5, seed=2), x, verify=False)
    with torch.no_grad():
        assert torch.allclose(b.module(*x), -again.module(*x))
        buf = io.BytesIO()
        torch.save(a.module, buf)
        buf.seek(0)
        for c in (copy.deepcopy(a.module), torch.load(buf, weights_only=False)):
            assert torch.equal(c(*x), a.module(*x))
