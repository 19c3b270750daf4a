"""Models that carry state from earlier runs compile like fresh ones (slimc/copying.py):
cached non-leaf tensors (timm's LeViT / EfficientFormer attention-bias cache), the old
weight_norm / spectral_norm hooks, parametrizations, forward hooks, prune hooks."""
from __future__ import annotations

import pytest
import torch
from torch import nn
from torch.nn.utils import parametrizations

import slimc
from helpers import n_params
from slimc.copying import safe_copy


class CachedBias(nn.Module):
    """timm LeViT's attention-bias cache: filled on an eval run, with grad enabled."""

    def __init__(self):
        super().__init__()
        self.conv = nn.Conv2d(3, 8, 3, padding=1)
        self.head = nn.Conv2d(8, 4, 1)
        self.attention_biases = nn.Parameter(torch.randn(8, 4))
        self.register_buffer("attention_bias_idxs", torch.tensor([0, 1, 2, 3, 0, 1]), persistent=False)
        self.attention_bias_cache = {}

    @torch.no_grad()
    def train(self, mode=True):
        super().train(mode)
        if mode and self.attention_bias_cache:
            self.attention_bias_cache = {}
        return self

    def get_attention_biases(self, device):
        if torch.jit.is_tracing() or self.training:
            return self.attention_biases[:, self.attention_bias_idxs]
        key = str(device)
        if key not in self.attention_bias_cache:
            self.attention_bias_cache[key] = self.attention_biases[:, self.attention_bias_idxs]
        return self.attention_bias_cache[key]

    def forward(self, x):
        y = self.conv(x) * self.get_attention_biases(x.device).mean(1).view(1, 8, 1, 1)
        return self.head(y)


def _plain() -> nn.Module:
    return nn.Sequential(nn.Conv2d(3, 8, 3), nn.BatchNorm2d(8), nn.ReLU(), nn.Conv2d(8, 4, 1))


def _with(kind: str) -> nn.Module:
    torch.manual_seed(0)
    if kind == "bias_cache":
        return CachedBias().eval()
    m = _plain().eval()
    if kind == "weight_norm":
        parametrizations.weight_norm(m[0])
    elif kind == "spectral_norm":
        parametrizations.spectral_norm(m[3])
    elif kind == "old_weight_norm":
        torch.nn.utils.weight_norm(m[0])
    elif kind == "old_spectral_norm":
        torch.nn.utils.spectral_norm(m[3])
    elif kind == "forward_hooks":
        seen = []
        m[2].register_forward_hook(lambda mod, i, o: seen.append(o))
        m[0].register_forward_pre_hook(lambda mod, i: None)
    return m


KINDS = ["bias_cache", "weight_norm", "spectral_norm", "old_weight_norm", "old_spectral_norm", "forward_hooks"]
MASK = {"0.weight": torch.ones(8, 3, 3, 3).index_fill_(0, torch.tensor([0, 5, 6]), 0)}


def _masks(kind):
    return {("conv.weight" if kind == "bias_cache" else "0.weight"): MASK["0.weight"]}


@pytest.mark.parametrize("front_end", ["fx", "export"])
@pytest.mark.parametrize("kind", KINDS)
def test_model_run_before_compiles_like_a_fresh_one(kind, front_end):
    fresh = slimc.compile(_with(kind), _masks(kind), torch.randn(2, 3, 6, 6), front_end=front_end)
    m = _with(kind)
    m(torch.randn(1, 3, 6, 6))  # an eval run with grad enabled leaves computed tensors behind
    before = {k: v.clone() for k, v in m.state_dict().items()}
    res = slimc.compile(m, _masks(kind), torch.randn(2, 3, 6, 6), front_end=front_end)
    assert res.report["verify"]["ok"]
    assert res.report["params"] == fresh.report["params"]
    assert res.report["params"]["after"] < res.report["params"]["before"]
    for k, v in m.state_dict().items():  # the user's model is untouched and still runs
        assert torch.equal(v, before[k]), k
    m(torch.randn(1, 3, 6, 6))


def test_cache_is_recomputed_not_frozen():
    """The copy leaves the cache out: the traced graph reads the bias table, a parameter."""
    m = _with("bias_cache")
    m(torch.randn(1, 3, 6, 6))
    res = slimc.compile(m, _masks("bias_cache"), torch.randn(2, 3, 6, 6))
    assert "attention_biases" in dict(res.module.named_parameters())
    assert res.report["params"]["unused_dropped"] == 0
    assert m.attention_bias_cache  # the user's own cache is left as it was


def test_safe_copy_makes_reparametrizations_plain_and_drops_hooks():
    m = _with("weight_norm")
    m[2].register_forward_hook(lambda mod, i, o: o * 2)
    c = safe_copy(m)
    assert isinstance(c[0].weight, nn.Parameter) and type(c[0]) is nn.Conv2d
    assert not c[2]._forward_hooks and m[2]._forward_hooks
    assert type(m[0]).__name__.startswith("Parametrized") and hasattr(m[0], "weight")
    x = torch.randn(1, 3, 6, 6)
    with torch.no_grad():
        assert torch.allclose(c[0](x), m[0](x), atol=1e-6)


def test_forward_hooks_are_reported():
    m = _with("forward_hooks")
    res = slimc.compile(m, _masks("forward_hooks"), torch.randn(2, 3, 6, 6))
    assert any("hook" in n for n in res.report["notes"])


def test_prune_hooks_still_made_permanent():
    import torch.nn.utils.prune as prune

    torch.manual_seed(0)
    m = _plain().eval()
    prune.ln_structured(m[0], "weight", amount=0.5, n=1, dim=0)
    m(torch.randn(1, 3, 6, 6))
    res = slimc.compile(m, m.state_dict(), torch.randn(2, 3, 6, 6))
    assert res.report["verify"]["ok"] and n_params(res.module) < n_params(_plain())
