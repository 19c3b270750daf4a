"""Masks: validation (MaskError), loading (LoadError), the three formats, round-trips."""
from __future__ import annotations

import copy
import os
import pickle

import pytest
import torch
import torch.nn.utils.prune as torch_prune
from torch import nn

import slimc
from helpers import assert_contract, n_params, random_filter_masks, removed_idx, to_nni, torch_prune_masks
from slimc.errors import LoadError, MaskError
from slimc.masks import MaskSet, load_masks, normalize, save_masks


class Net(nn.Module):
    def __init__(self):
        super().__init__()
        self.conv1 = nn.Conv2d(3, 8, 3, padding=1)
        self.bn1 = nn.BatchNorm2d(8)
        self.conv2 = nn.Conv2d(8, 6, 3, padding=1)
        self.fc = nn.Linear(6, 4)

    def forward(self, x):
        x = torch.relu(self.bn1(self.conv1(x)))
        x = torch.relu(self.conv2(x))
        return self.fc(x.mean((2, 3)))


@pytest.fixture
def model():
    torch.manual_seed(0)
    return Net().eval()


X = torch.randn(2, 3, 6, 6, generator=torch.Generator().manual_seed(0))


def same_maskset(a: MaskSet, b: MaskSet) -> bool:
    return a.masks.keys() == b.masks.keys() and all(torch.equal(a.masks[k], b.masks[k]) for k in a.masks)


# --------------------------------------------------------------------------- MaskError
def test_unknown_name_close_match_suggests(model):
    with pytest.raises(MaskError) as e:
        normalize({"conv1.wieght": torch.ones(8, 3, 3, 3)}, model)
    msg = str(e.value)
    assert "conv1.wieght" in msg
    assert "did you mean" in msg and "conv1.weight" in msg


def test_unknown_name_far_from_everything(model):
    with pytest.raises(MaskError) as e:
        normalize({"decoder.attn.q_proj.weight": torch.ones(3)}, model)
    assert "decoder.attn.q_proj.weight" in str(e.value)
    assert "did you mean" not in str(e.value)


def test_unknown_module_nni_style(model):
    with pytest.raises(MaskError, match="conv3.weight"):
        normalize({"conv3": {"weight": torch.ones(8, 3, 3, 3)}}, model)


def test_buffer_is_not_a_parameter(model):
    with pytest.raises(MaskError, match="bn1.running_mean"):
        normalize({"bn1.running_mean": torch.ones(8)}, model)


def test_unknown_name_raised_by_compile_too(model):
    with pytest.raises(MaskError, match="did you mean"):
        slimc.compile(model, {"conv2.weigth": torch.ones(6, 8, 3, 3)}, X)


@pytest.mark.parametrize("shape", [(8, 3, 3), (3, 8, 3, 3), (8, 3, 3, 3, 1), (1,)])
def test_wrong_shape(model, shape):
    with pytest.raises(MaskError) as e:
        normalize({"conv1.weight": torch.ones(shape)}, model)
    assert "conv1.weight" in str(e.value) and "shape" in str(e.value)
    assert str(tuple(shape)) in str(e.value)


@pytest.mark.parametrize("bad", [
    torch.full((8, 3, 3, 3), 0.5),
    torch.full((8, 3, 3, 3), 2, dtype=torch.int64),
    torch.full((8, 3, 3, 3), -1.0),
    torch.full((8, 3, 3, 3), float("nan")),
], ids=["half", "two_int", "minus_one", "nan"])
def test_non_binary(model, bad):
    t = torch.ones(8, 3, 3, 3)
    t[0, 0, 0, 0] = bad[0, 0, 0, 0]
    t = t.to(bad.dtype)
    with pytest.raises(MaskError, match="binary"):
        normalize({"conv1.weight": t}, model)


def test_non_tensor_and_non_dict(model):
    with pytest.raises(MaskError):
        normalize({"conv1.weight": [[1, 0]]}, model)
    with pytest.raises(MaskError):
        normalize([torch.ones(8, 3, 3, 3)], model)
    with pytest.raises(MaskError):
        normalize({0: torch.ones(8, 3, 3, 3)}, model)


@pytest.mark.parametrize("dtype", [torch.bool, torch.uint8, torch.int32, torch.float16, torch.float32, torch.float64])
def test_binary_dtypes_accepted(model, dtype):
    t = torch.ones(8, 3, 3, 3)
    t[2] = 0
    ms = normalize({"conv1.weight": t.to(dtype)}, model)
    assert ms.get("conv1.weight").dtype == torch.bool
    assert ms.zero_slices("conv1.weight", 0).nonzero().flatten().tolist() == [2]


def test_masks_are_never_silently_skipped(model):
    """Every given name ends up in the MaskSet (or raises)."""
    flat = random_filter_masks(model, 0.5, 0, bias=True)
    assert normalize(flat, model).masks.keys() == flat.keys()


# --------------------------------------------------------------------------- the three formats
def test_three_formats_normalize_to_the_same_maskset(model):
    sd = torch_prune_masks(model, amount=0.5)
    flat = {k[: -len("_mask")]: v for k, v in sd.items() if k.endswith("_mask")}
    assert set(flat) == {"conv1.weight", "conv2.weight"}
    a = normalize(flat, model)
    b = normalize(to_nni(flat), model)
    c = normalize(sd, model)
    assert same_maskset(a, b) and same_maskset(a, c)
    # what ln_structured pruned is exactly what the MaskSet calls zero slices
    for k, v in flat.items():
        want = ((v != 0).flatten(1).sum(1) == 0)
        assert torch.equal(a.zero_slices(k, 0), want)
        assert int(want.sum()) == v.shape[0] // 2


def test_nni_with_bias_and_mixed_keys(model):
    m = random_filter_masks(model, 0.5, 1, bias=True)
    nni = to_nni(m)
    assert "bias" in nni["conv1"]
    assert same_maskset(normalize(m, model), normalize(nni, model))


def test_prune_state_dict_for_a_prunified_model(model):
    """Masks named after a model that still carries prune reparametrization (weight_orig)."""
    m2 = copy.deepcopy(model)
    torch_prune.ln_structured(m2.conv1, "weight", amount=0.25, n=1, dim=0)
    sd = m2.state_dict()
    ms = normalize(sd, m2)
    assert set(ms.masks) == {"conv1.weight"}
    assert int(ms.zero_slices("conv1.weight", 0).sum()) == 2


def test_unstructured_zeros_are_counted_and_kept(model):
    t = torch.ones(8, 3, 3, 3)
    t[1] = 0  # a whole filter: structured
    t[4, 0, 1, 1] = 0  # scattered: unstructured
    t[5, 2, 0, 0] = 0
    res = assert_contract(model, {"conv1.weight": t}, X)
    assert res.report["unstructured_zeros"] == {"conv1.weight": 2}
    assert res.module.get_submodule("conv1").out_channels == 7
    # the unstructured zeros stay zero in the slim weights (kept rows 4, 5 → slim rows 3, 4)
    w = res.module.get_submodule("conv1").weight
    assert w[3, 0, 1, 1] == 0 and w[4, 2, 0, 0] == 0


def test_follower_masks(model):
    """BN β alone masked: γ·x̂ keeps the channel alive, nothing may go. BN γ masked
    (network slimming): removing the channel is allowed, not required — if it goes, its
    β and its conv row are zeroed in the final masks (assert_contract checks that every
    removed slice is masked) and the slim model is exact."""
    g = torch.ones(8)
    g[[0, 1]] = 0
    res = assert_contract(model, {"bn1.bias": g}, X)
    assert n_params(res.module) == n_params(model)
    for masks in ({"bn1.weight": g}, {"bn1.weight": g, "bn1.bias": g.clone()}):
        res = assert_contract(model, masks, X)
        gone = removed_idx(res, model, "bn1.weight")
        assert gone in (set(), {0, 1})
        assert removed_idx(res, model, "conv1.weight") == gone


def test_mask_on_unused_parameter(model):
    model.unused = nn.Linear(4, 4)
    masks = {"unused.weight": torch.ones(4, 4), **random_filter_masks(model, 0.5, 0)}
    try:
        res = slimc.compile(model, masks, X)
    except MaskError as e:  # an explicit, named error is acceptable too
        assert "unused.weight" in str(e)
        return
    assert res.report["verify"]["ok"]


# --------------------------------------------------------------------------- files
def test_load_garbage_pth(tmp_path):
    p = tmp_path / "masks.pth"
    p.write_bytes(os.urandom(64) + b"not a torch file")
    with pytest.raises(LoadError) as e:
        load_masks(p)
    assert "masks.pth" in str(e.value)


def test_load_garbage_safetensors(tmp_path):
    p = tmp_path / "masks.safetensors"
    p.write_bytes(b"\xff" * 40)
    with pytest.raises(LoadError, match="masks.safetensors"):
        load_masks(p)


def test_load_empty_and_truncated(tmp_path, model):
    p = tmp_path / "empty.pth"
    p.write_bytes(b"")
    with pytest.raises(LoadError):
        load_masks(p)
    good = tmp_path / "good.pth"
    torch.save(random_filter_masks(model, 0.5, 0), good)
    bad = tmp_path / "truncated.pth"
    bad.write_bytes(good.read_bytes()[: good.stat().st_size // 2])
    with pytest.raises(LoadError):
        load_masks(bad)


def test_load_missing_file(tmp_path):
    with pytest.raises(LoadError, match="does not exist"):
        load_masks(tmp_path / "nope.pth")


class _Evil:
    def __reduce__(self):
        return (os.system, ("touch /tmp/slimc_test_pwned",))


def test_load_never_executes_pickles(tmp_path):
    if os.path.exists("/tmp/slimc_test_pwned"):
        os.remove("/tmp/slimc_test_pwned")
    p = tmp_path / "evil.pth"
    with open(p, "wb") as f:
        pickle.dump({"conv1.weight": _Evil()}, f)
    with pytest.raises(LoadError):
        load_masks(p)
    assert not os.path.exists("/tmp/slimc_test_pwned")


def test_load_non_dict(tmp_path):
    p = tmp_path / "list.pth"
    torch.save([torch.ones(3)], p)
    with pytest.raises(LoadError, match="list"):
        load_masks(p)


def test_pth_round_trip_and_wrapper(tmp_path, model):
    flat = random_filter_masks(model, 0.5, 2, bias=True)
    p = tmp_path / "m.pth"
    save_masks(flat, p)
    assert same_maskset(normalize(load_masks(p), model), normalize(flat, model))
    q = tmp_path / "wrapped.pth"
    torch.save({"masks": flat, "epoch": 3}, q)
    assert same_maskset(normalize(load_masks(q), model), normalize(flat, model))
    r = tmp_path / "prune_sd.pth"
    torch.save(torch_prune_masks(model), r)
    assert normalize(load_masks(r), model).masks.keys() == {"conv1.weight", "conv2.weight"}


@pytest.mark.parametrize("dtype", [torch.uint8, torch.bool, torch.float32])
def test_safetensors_round_trip(tmp_path, model, dtype):
    from safetensors.torch import save_file

    flat = random_filter_masks(model, 0.5, 3)
    p = tmp_path / "m.safetensors"
    save_file({k: v.to(dtype).contiguous() for k, v in flat.items()}, str(p))
    loaded = load_masks(p)
    assert loaded.keys() == flat.keys()
    assert same_maskset(normalize(loaded, model), normalize(flat, model))
    # and the loaded masks compile to the same slim model as the in-memory ones
    r1 = slimc.compile(model, loaded, X)
    r2 = slimc.compile(model, flat, X)
    assert n_params(r1.module) == n_params(r2.module) < n_params(model)


def test_final_masks_save_load_compile_again(tmp_path, model):
    """Final masks are a fixed point: compiling with them removes the same and nothing more."""
    res = assert_contract(model, random_filter_masks(model, 0.5, 4), X)
    p = tmp_path / "final.pth"
    save_masks(res.masks, p)
    res2 = assert_contract(model, load_masks(p), X)
    assert n_params(res2.module) == n_params(res.module)
    for k in res.masks:
        assert torch.equal(res2.masks[k] != 0, res.masks[k] != 0), k
