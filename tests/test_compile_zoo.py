"""slimc.compile over the whole model zoo × mask patterns, each checked against the
DESIGN.md contract by ``helpers.assert_contract`` (independently of slimc's verify).

The full-size models (vgg16, resnet18, resnet50, mobilenetv2) and the ResNet-50 pipeline
run under ``-m slow`` (``make test-all``); ``make test`` runs the small ones.
"""
from __future__ import annotations

import copy
import functools
import math

import pytest
import torch
from torch import nn

import slimc
from helpers import (
    CONV_TYPES,
    FULL_SIZE,
    assert_contract,
    assert_same_masks,
    dense,
    flat_user_masks,
    kept_reasons,
    masked_idx,
    masked_reference,
    max_diff,
    n_params,
    outputs_diff,
    random_filter_masks,
    removed_idx,
    sink_masks,
    to_nni,
    run_eval,
    torch_prune_masks,
    user_masked,
    zoo_params,
)
from slimc import zoo
from slimc.errors import PlanError
from slimc.prune import Pruner, group_masks
from slimc.prune.emit import source_masks

BIG = FULL_SIZE
ALL = zoo.names()

# CNNs whose every channel family group_masks(ratio=0.5) halves (their widths are even): the
# params after follow from the architecture alone (halved_params); ShuffleNet's shuffle keeps
# rectangles, UNet's transposed convs are not counted here
HALVED = ("vgg16", "resnet18", "resnet50", "mobilenetv2", "vgg11_small", "resnet_tiny", "mobilenetv2_small",
          "densenet_small", "senet_small")


def halved_params(model: nn.Module, image: int = 3, classes: int = 10) -> int:
    """Params of ``model`` with every channel family at half its width, derived by hand: each
    conv keeps half its output channels and half its input channels (all of the image's 3),
    a depthwise conv half its groups; each BN half its γ and β; each linear half its inputs
    and half its outputs (all of the 10 classes)."""
    total = 0
    for m in model.modules():
        if isinstance(m, nn.Conv2d):
            cin = m.in_channels if m.in_channels == image else m.in_channels // 2
            cout, groups = m.out_channels // 2, 1 if m.groups == 1 else m.groups // 2
            total += cout * (cin // groups) * math.prod(m.kernel_size) + (cout if m.bias is not None else 0)
        elif isinstance(m, nn.BatchNorm2d):
            total += 2 * (m.num_features // 2)
        elif isinstance(m, nn.Linear):
            cout = m.out_features if m.out_features == classes else m.out_features // 2
            total += (m.in_features // 2) * cout + (cout if m.bias is not None else 0)
        else:
            assert not list(m.parameters(recurse=False)), f"halved_params does not count {type(m).__name__}"
    return total


@functools.lru_cache(maxsize=None)
def _model(name: str) -> nn.Module:
    return zoo.build(name)


def model_and_inputs(name: str) -> tuple[nn.Module, tuple]:
    """Cached model (assert_contract proves compile never mutates it) and example inputs."""
    return _model(name), zoo.example_inputs(name, batch=2)


@functools.lru_cache(maxsize=None)
def _group_masks(name: str, ratio: float, criterion: str) -> dict:
    m, x = model_and_inputs(name)
    return group_masks(m, x, ratio=ratio, criterion=criterion)


# --------------------------------------------------------------------------- mask patterns
@pytest.mark.parametrize("ratio", [0.3, 0.5])
@pytest.mark.parametrize("name", zoo_params(ALL))
def test_random_filter_masks(name, ratio):
    m, x = model_and_inputs(name)
    res = assert_contract(m, random_filter_masks(m, ratio, seed=int(ratio * 10)), x)
    assert n_params(res.module) < n_params(m)
    assert res.report["params"]["after"] == n_params(res.module)
    assert res.report["flops"]["after"] < res.report["flops"]["before"]


@pytest.mark.parametrize("name", zoo_params(ALL))
def test_group_masks_l1(name):
    m, x = model_and_inputs(name)
    masks = _group_masks(name, 0.5, "l1")
    res = assert_contract(m, masks, x, complete=True)
    p = res.report["params"]
    print(f"{name}: group_masks l1 0.5 params {p['before']:,} -> {p['after']:,}; "
          f"flops {res.report['flops']['before']:,} -> {res.report['flops']['after']:,}")
    if name in BIG:
        assert p["after"] < 0.45 * p["before"]
    if name in HALVED:
        assert p["after"] == halved_params(m)
    # complete masks: nothing is kept because coupled (a shuffle's rectangle is left unmasked),
    # and compile adds nothing to them — the masked model is the slim model
    assert res.report["kept"] == [], res.report["kept"]
    assert_same_masks(res.masks, masks)
    # every masked source row is physically gone
    for fqn, mk in masks.items():
        assert masked_idx(mk, 0) <= removed_idx(res, m, fqn, 0), fqn
    # the slim model is not tied to the example batch size
    x3 = zoo.example_inputs(name, batch=3, seed=7)
    d, scale = outputs_diff(res.module, user_masked(m, masks, res.masks), x3, n=1)
    assert d <= 1e-5 * max(1.0, scale)


@pytest.mark.parametrize("name", zoo_params(BIG))
def test_group_masks_golden_params(name):
    m, x = model_and_inputs(name)
    res = slimc.compile(m, _group_masks(name, 0.5, "l1"), x, verify=False)
    after = res.report["params"]["after"]
    print(f"{name}: params after group_masks l1 0.5 = {after:,} (before {res.report['params']['before']:,})")
    assert after == n_params(res.module) == res.report["params"]["expected_after"]
    assert after == halved_params(m)


@pytest.mark.parametrize("criterion", ["l2", "random"])
def test_group_masks_other_criteria(criterion):
    m, x = model_and_inputs("resnet_tiny")
    masks = group_masks(m, x, ratio=0.5, criterion=criterion, seed=3)
    res = assert_contract(m, masks, x)
    assert res.report["kept"] == []
    assert n_params(res.module) < 0.45 * n_params(m)


def _residual_branch_tails(m: nn.Module) -> list[str]:
    """The conv whose output is added into the residual stream, in every block."""
    tails = []
    for name, mod in m.named_modules():
        if hasattr(mod, "shortcut"):
            tails.append(f"{name}.conv3" if hasattr(mod, "conv3") else f"{name}.conv2")
    return tails


@pytest.mark.parametrize("name", zoo_params(["resnet_tiny", "resnet18", "resnet50"]))
def test_residual_branch_only_is_held(name):
    """Masks on one branch of a residual add only: channels stay (held by the other
    writer), reported with a 'held by' reason, masked weights stay zero, still exact."""
    m, x = model_and_inputs(name)
    tails = _residual_branch_tails(m)
    assert tails
    params = dict(m.named_parameters())
    g = torch.Generator().manual_seed(0)
    masks = {}
    for t in tails:
        w = params[f"{t}.weight"]
        mk = torch.ones_like(w)
        mk[torch.randperm(w.shape[0], generator=g)[: w.shape[0] // 2]] = 0
        masks[f"{t}.weight"] = mk
    res = assert_contract(m, masks, x)
    assert n_params(res.module) == n_params(m)
    assert "held by" in kept_reasons(res), res.report["kept"]
    for fqn, mk in masks.items():
        assert removed_idx(res, m, fqn) == set()
        assert torch.equal(dense(res.masks[fqn], mk.shape), mk != 0), f"{fqn}: final masks must equal the user's here"


@pytest.mark.parametrize("name", zoo_params(ALL))
def test_sink_masks_only(name):
    m, x = model_and_inputs(name)
    res = assert_contract(m, sink_masks(m, 0.5, seed=0, types=(*CONV_TYPES, nn.Linear)), x)
    assert n_params(res.module) < n_params(m)


@pytest.mark.parametrize("masks", [None, {}], ids=["None", "empty"])
@pytest.mark.parametrize("name", zoo_params(ALL))
def test_empty_masks_change_nothing(name, masks):
    m, x = model_and_inputs(name)
    res = assert_contract(m, masks, x)
    assert res.report["params"]["after"] == res.report["params"]["before"] == n_params(m)
    assert all(bool(v.all()) for v in res.masks.values())
    assert res.report["barriers"] == []
    assert res.report["kept"] == []
    slim_shapes = {k: tuple(v.shape) for k, v in res.module.named_parameters()}
    assert slim_shapes == {k: tuple(v.shape) for k, v in m.named_parameters()}
    d, _ = outputs_diff(res.module, m, x)
    assert d <= 1e-5


# --------------------------------------------------------------------------- exact mode
SMALL = [n for n in ALL if n not in BIG]


@pytest.mark.parametrize("name", SMALL)
def test_exact_mode_on_zoo(name):
    """exact: masks on the filters alone remove nothing (BN β keeps the channels alive in the
    user-masked model); the pruner's complete masks are provably zero, and exact mode
    reaches channel mode's size. Both times the slim model equals the model with the
    USER's masks."""
    m, x = model_and_inputs(name)
    pruner = Pruner(m, x, "l1", ratio=0.5)
    pruned = pruner.prune()
    filters = source_masks(pruner.space, pruner.space.groups_of(pruned.units))
    r_exact = assert_contract(m, filters, x, mode="exact")
    d, s = outputs_diff(r_exact.module, masked_reference(m, filters), x, n=2)
    assert d <= 1e-5 * max(1.0, s)
    if name in zoo.names("cnn"):  # masked filters there all have a bias or BN β; the LLaMA-style
        assert n_params(r_exact.module) == n_params(m)  # projections have none and go in exact mode too
    r_channel = slimc.compile(m, pruned.masks, x, verify=False)
    r2 = assert_contract(m, pruned.masks, x, mode="exact")
    d, s = outputs_diff(r2.module, user_masked(m, pruned.masks, r2.masks), x, n=2)
    assert d <= 1e-5 * max(1.0, s)
    assert n_params(r2.module) == n_params(r_channel.module)


# --------------------------------------------------------------------------- empty layers
def test_whole_layer_masked_needs_allow_empty():
    m, x = model_and_inputs("vgg11_small")
    conv = "features.4"  # Conv2d(16, 32)
    w = dict(m.named_parameters())[f"{conv}.weight"]
    masks = {f"{conv}.weight": torch.zeros_like(w)}
    with pytest.raises(PlanError, match="every channel"):
        slimc.compile(m, masks, x)
    res = assert_contract(m, masks, x, allow_empty=True)
    assert res.module.get_submodule(conv).out_channels == 1
    assert res.module.get_submodule("features.8").in_channels == 1
    assert any("empty" in r["reason"] for r in res.report["kept"]), res.report["kept"]


# --------------------------------------------------------------------------- BN β
@pytest.mark.parametrize("name", ["vgg11_small", "resnet_tiny", "mobilenetv2_small"])
def test_bn_beta_behind_pruned_filters(name):
    """Zoo BNs have non-zero β: a removed filter's channel is a non-zero constant in the
    user-masked model. The slim model equals the model with the FINAL masks, which zero
    the BN γ and β of every removed channel."""
    m, x = model_and_inputs(name)
    bns = {n: mod for n, mod in m.named_modules() if isinstance(mod, nn.BatchNorm2d)}
    assert all(float(b.bias.detach().abs().min()) > 0 for b in bns.values())
    user = random_filter_masks(m, 0.5, seed=4)
    res = assert_contract(m, user, x)
    # conv → BN pairs: the BN's removed channels are zero in the final masks, both γ and β
    checked = 0
    mods = dict(m.named_modules())
    for cname, conv in mods.items():
        if not isinstance(conv, nn.Conv2d):
            continue
        bn_name = _bn_after(cname, mods)
        if bn_name is None:
            continue
        gone = removed_idx(res, m, f"{bn_name}.weight")
        assert gone == removed_idx(res, m, f"{bn_name}.bias") == removed_idx(res, m, f"{cname}.weight")
        if gone:
            checked += 1
            for p in ("weight", "bias"):
                assert gone <= masked_idx(res.masks[f"{bn_name}.{p}"])
    assert checked > 0
    # β matters: the user-masked model differs from the final-masked one
    d, _ = outputs_diff(masked_reference(m, user), masked_reference(m, res.masks), x, n=1)
    assert d > 1e-3


def _bn_after(conv_name: str, mods: dict) -> str | None:
    parent, _, leaf = conv_name.rpartition(".")
    candidates = []
    if leaf.startswith("conv"):
        candidates.append(f"{parent}.bn{leaf[4:]}".lstrip("."))
    if leaf.isdigit():
        candidates.append(f"{parent}.{int(leaf) + 1}")
    for c in candidates:
        if isinstance(mods.get(c), nn.BatchNorm2d):
            return c
    return None


def test_bn_beta_exact_with_explicit_model():
    """A hand-built conv → BN(β ≠ 0) → ReLU → conv: removed BN channels carry β."""
    torch.manual_seed(0)
    m = nn.Sequential(nn.Conv2d(3, 8, 3, padding=1), nn.BatchNorm2d(8), nn.ReLU(), nn.Conv2d(8, 4, 3)).eval()
    with torch.no_grad():
        m[1].bias.copy_(torch.linspace(0.5, 1.5, 8))
        m[1].running_mean.uniform_(-0.5, 0.5)
    mk = torch.ones(8, 3, 3, 3)
    mk[[1, 6]] = 0
    x = torch.randn(2, 3, 6, 6)
    res = assert_contract(m, {"0.weight": mk}, x)
    assert removed_idx(res, m, "1.bias") == {1, 6}
    assert masked_idx(res.masks["1.bias"]) == {1, 6}
    assert masked_idx(res.masks["1.weight"]) == {1, 6}
    assert masked_idx(res.masks["3.weight"], 1) == {1, 6}
    assert res.module.get_submodule("1").num_features == 6


# --------------------------------------------------------------------------- mask formats
def test_three_mask_formats_agree_on_resnet_tiny():
    m, x = model_and_inputs("resnet_tiny")
    sd = torch_prune_masks(m, amount=0.5)
    assert any(k.endswith("weight_orig") for k in sd)
    flat = {k[: -len("_mask")]: v for k, v in sd.items() if k.endswith("_mask")}
    nni = to_nni(flat)
    results = {}
    for label, masks in [("flat", flat), ("nni", nni), ("torch_prune", sd)]:
        results[label] = assert_contract(m, masks, x)
    base = results["flat"]
    assert flat_user_masks(sd).keys() == flat.keys()
    for label, res in results.items():
        assert res.masks.keys() == base.masks.keys(), label
        for k in base.masks:
            assert torch.equal(res.masks[k] != 0, base.masks[k] != 0), (label, k)
        assert n_params(res.module) == n_params(base.module) < n_params(m)


def test_compile_accepts_a_prunified_model():
    """A model still carrying torch.nn.utils.prune reparametrization compiles (its
    ``weight_orig`` params are addressed by the plain name)."""
    import torch.nn.utils.prune as P

    m = copy.deepcopy(_model("vgg11_small"))
    x = zoo.example_inputs("vgg11_small")
    for mod in m.modules():
        if isinstance(mod, nn.Conv2d):
            P.ln_structured(mod, "weight", amount=0.5, n=2, dim=0)
    sd = m.state_dict()
    res = slimc.compile(m, sd, x, verify=True)
    assert res.report["verify"]["ok"]
    assert n_params(res.module) < n_params(m)


# --------------------------------------------------------------------------- pipeline
@pytest.mark.slow
def test_resnet50_pipeline_times():
    """The whole pipeline (verify included) on ResNet-50; stage times are recorded, not asserted."""
    m, x = model_and_inputs("resnet50")
    res = slimc.compile(m, random_filter_masks(m, 0.5, seed=1), x, verify=True)
    assert res.report["verify"]["ok"]
    assert res.report["params"]["after"] == res.report["params"]["expected_after"] < res.report["params"]["before"]
    times = res.report["times_s"]
    print("resnet50 times_s:", {k: round(v, 3) for k, v in times.items()})
    assert {"trace", "graph", "propagate", "rewrite", "verify", "total"} <= times.keys()


@pytest.mark.parametrize("verify", [True, False])
def test_stage_times_add_up_to_the_wall_time(verify, tmp_path):
    """times_s names every stage of compile and they sum to its wall time (``total``);
    save adds its own stages (export, save) after it."""
    import time

    m, x = model_and_inputs("resnet_tiny")
    masks = random_filter_masks(m, 0.5, seed=1)
    t0 = time.perf_counter()
    res = slimc.compile(m, masks, x, verify=verify)
    wall = time.perf_counter() - t0
    times = dict(res.report["times_s"])
    total = times.pop("total")
    want = {"masks", "copy", "trace", "graph", "flops", "propagate", "rewrite", "report", "model"}
    assert want | ({"verify"} if verify else set()) == times.keys()
    assert sum(times.values()) == pytest.approx(total, rel=0.01, abs=1e-3)
    assert 0 < total <= wall  # (how close to the wall time is a matter for benchmarks/compile_time.py)
    res.save(tmp_path, onnx=True)
    assert {"export", "save"} <= res.report["times_s"].keys()


def test_report_shape():
    m, x = model_and_inputs("resnet_tiny")
    user = random_filter_masks(m, 0.5, seed=1)
    res = slimc.compile(m, user, x, vs_user_masks=True)
    r = res.report
    assert r["verify"]["ok"] and r["verify"]["max_abs_diff"] <= r["verify"]["tolerance"]
    # vs_user_masked: slim against the model masked with the masks as given, at the check's first
    # inputs (random, seed 1, at its first shape): what the test measures there with its own masking.
    # These filter masks leave BN β alive in the user-masked model: far from it
    assert _vs_user(res, m, user) == pytest.approx(r["verify"]["vs_user_masked"], rel=1e-5, abs=1e-6)
    assert r["verify"]["vs_user_masked"] > 1e-2
    assert slimc.compile(m, random_filter_masks(m, 0.5, seed=1), x).report["verify"]["vs_user_masked"] is None
    assert r["params"]["before"] > r["params"]["after"] == r["params"]["expected_after"]
    assert r["flops"]["before"] > r["flops"]["after"] > 0
    changed = [row for row in r["layers"] if row["changed"]]
    assert changed and all(row["after"] != row["before"] for row in changed)
    slim_mods = dict(res.module.named_modules())
    for row in changed:
        assert list(slim_mods[row["layer"]].weight.shape) == row["after"]
    for k in r["kept"]:
        assert set(k) >= {"reason", "groups"} and k["groups"] > 0


@pytest.mark.parametrize("name", ["mobilenetv2_small", "resnet_tiny", "vit_tiny"])
def test_group_masks_round_to_keeps_multiples(name):
    m, x = model_and_inputs(name)
    res = assert_contract(m, group_masks(m, x, 0.5, round_to=8), x)
    pruned = [layer["after"][0] for layer in res.report["layers"] if layer["after"][0] != layer["before"][0]]
    assert pruned and all(w % 8 == 0 for w in pruned), pruned
    with pytest.raises(ValueError, match="round_to"):
        group_masks(m, x, 0.5, round_to=0)


def _vs_user(res, m: nn.Module, user) -> float:
    """slim vs the user-masked model (masked by the test) at the inputs the built-in check
    drew first: its first shape, random with seed 1 (slimc.inputs.random_like: the draw only)."""
    from slimc.inputs import random_like

    shape = tuple(int(v) for v in res.report["verify"]["shapes"][0].strip("()").split(","))
    xs = random_like(res.example_inputs, 1, {0: shape})
    return max_diff(run_eval(res.module, xs), run_eval(masked_reference(m, user), xs))[0]


def test_vs_user_masked_of_complete_masks_is_zero():
    """The pruner's complete masks: the masked model is the slim model, vs_user_masked is 0."""
    m, x = model_and_inputs("resnet_tiny")
    masks = _group_masks("resnet_tiny", 0.5, "l1")
    res = slimc.compile(m, masks, x, vs_user_masks=True, user_model=False)
    v = res.report["verify"]
    assert v["vs_user_masked"] <= v["tolerance"] and _vs_user(res, m, masks) <= v["tolerance"]


@pytest.mark.parametrize("name", ["resnet_tiny", "mobilenetv2_small"])
def test_cnn_at_other_image_sizes_and_batches(name):
    """Traced at 16×16 (resnet_tiny) or 32×32, batch 2: the slim graph and the slim class equal
    the model masked with the pruner's (complete) masks, by the test's own masking, at other
    image sizes, square or not, and other batches."""
    m, x = model_and_inputs(name)
    masks = _group_masks(name, 0.5, "l1")
    res = slimc.compile(m, masks, x)
    ref = user_masked(m, masks, res.masks)
    h = x[0].shape[-1]
    g = torch.Generator().manual_seed(3)
    for shape in [(3, 3, 2 * h, 2 * h), (1, 3, h + 8, h - 8 + 1), (5, 3, h // 2, h // 2)]:
        xs = (torch.randn(shape, generator=g),)
        want = run_eval(ref, xs)
        for slim in (res.module, res.model):
            d, s = max_diff(run_eval(slim, xs), want)
            assert d <= 1e-5 * max(1.0, s), f"{type(slim).__name__} at {shape}: {d:.3g}"
