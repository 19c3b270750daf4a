"""Planted faults: a correct compile result corrupted one fault at a time, and the checker that
must catch it — ``slimc.compile``'s built-in check (the graph) and the user's-class check.

Each fault is planted where a compiler bug would put it: in the slim graph right after the
rewrite (``slimc.compiler._rewritten``), in a rewrite pass, or in the user's class right after
surgery (``slimc.surgery.build``). Every fault is shown twice:

- with the real checker, the compile raises (or drops ``res.model``) with a one-line message
  naming the difference;
- with a checker that always passes (its diff forced to 0), the same compile goes through and
  the test's *own* reference — the original masked with the test's hand-made complete masks,
  by the test's own code — sees the slim model differ. So the fault is real, and the only thing
  between it and the user is the checker: a checker that always passed fails these tests.
"""
from __future__ import annotations

import contextlib
import re

import pytest
import torch
import torch.nn.functional as F
from torch import nn

import slimc
import slimc.compiler
import slimc.passes
import slimc.surgery
import slimc.surgery.consistent
import slimc.verify
from helpers import ConvChain, TOL, assert_same_masks, build, masked_reference, max_diff, run_eval, x_

X = x_(2, 3, 12, 12)
R1, R2 = [1, 4, 6], [0, 3]  # conv1's removed rows (of 8), conv2's (of 6)


def chain() -> nn.Module:
    return build(ConvChain, seed=0).eval()


def rows(n: int, removed, *, shape=None, dim: int = 0) -> torch.Tensor:
    """A 0/1 mask of ``shape`` (default ``(n,)``) with ``removed`` zero along ``dim``."""
    m = torch.ones(shape or (n,))
    m.index_fill_(dim, torch.as_tensor(removed), 0.0)
    return m


def chain_masks(m: ConvChain) -> dict[str, torch.Tensor]:
    """Complete masks, by hand: each removed channel's whole group — the conv's row and bias,
    the BN's γ and β, the next conv's column."""
    w1, w2, w3 = m.conv1.weight.shape, m.conv2.weight.shape, m.conv3.weight.shape
    return {
        "conv1.weight": rows(8, R1, shape=w1), "conv1.bias": rows(8, R1),
        "bn1.weight": rows(8, R1), "bn1.bias": rows(8, R1),
        "conv2.weight": rows(6, R2, shape=w2) * rows(8, R1, shape=w2, dim=1), "conv2.bias": rows(6, R2),
        "bn2.weight": rows(6, R2), "bn2.bias": rows(6, R2),
        "conv3.weight": rows(6, R2, shape=w3, dim=1),
    }


def kept(n: int, removed) -> list[int]:
    return [i for i in range(n) if i not in removed]


def own_diff(slim: nn.Module, m: nn.Module, masks: dict) -> tuple[float, float]:
    """slim vs the original masked by the test's own code, at the example and a second shape."""
    return own_diff_at(slim, m, masks, X)


def own_diff_at(slim: nn.Module, m: nn.Module, masks: dict, x: torch.Tensor) -> tuple[float, float]:
    """slim vs the original masked by the test's own code, at ``x``'s shape and another batch
    and size (every dim but the channels: dim 1 of an image, the last of a sequence)."""
    ref = masked_reference(m, masks)
    other = (3, 3, 8, 8) if x.dim() == 4 else (3, 5, x.shape[-1])
    d, s = 0.0, 0.0
    for x in (x, x_(*other, seed=5)):
        dd, ss = max_diff(run_eval(slim, (x,)), run_eval(ref, (x,)))
        d, s = max(d, dd), max(s, ss)
    return d, s


@contextlib.contextmanager
def checker_always_passes():
    """The built-in check's difference forced to 0 (graph and user's class alike)."""
    real = slimc.verify.max_diff
    slimc.verify.max_diff = lambda a, b: (0.0, real(a, b)[1])
    try:
        yield
    finally:
        slimc.verify.max_diff = real


# --------------------------------------------------------------------------- faults in the slim graph
@torch.no_grad()
def sliced_index_off(gm: nn.Module, m: nn.Module) -> None:
    """conv1's group sliced with one kept index replaced by a removed one (2 → 1), consistently:
    conv1's row and bias, bn1's γ, β and running stats, conv2's column."""
    wrong = torch.as_tensor([1 if i == 2 else i for i in kept(8, R1)])
    k2 = torch.as_tensor(kept(6, R2))
    for name in ("conv1.weight", "conv1.bias", "bn1.weight", "bn1.bias", "bn1.running_mean", "bn1.running_var"):
        gm.get_parameter(name).copy_(m.get_parameter(name)[wrong]) if "running" not in name else \
            gm.get_buffer(name).copy_(m.get_buffer(name)[wrong])
    gm.conv2.weight.copy_(m.conv2.weight[k2][:, wrong])


@torch.no_grad()
def beta_left_alive(gm: nn.Module, m: nn.Module) -> None:
    """Removed channel 4's BN β left alive: its constant (relu(β₄)) reaches conv2 through conv2's
    bias, where the masked model has a zero channel."""
    k2 = torch.as_tensor(kept(6, R2))
    gm.conv2.bias += m.conv2.weight[k2][:, 4].sum((-1, -2)) * F.relu(m.bn1.bias[4])


@torch.no_grad()
def running_mean_misaligned(gm: nn.Module, m: nn.Module) -> None:
    """bn1's running mean sliced at the wrong channels (a removed one, 6, for kept 7)."""
    gm.bn1.running_mean.copy_(m.bn1.running_mean[[0, 2, 3, 5, 6]])


@torch.no_grad()
def permuted_channel(gm: nn.Module, m: nn.Module) -> None:
    """Two kept output rows of conv1 swapped (weight and bias), nothing else."""
    for t in (gm.conv1.weight, gm.conv1.bias):
        t[[0, 1]] = t[[1, 0]].clone()


GRAPH_FAULTS = {f.__name__: f for f in (sliced_index_off, beta_left_alive, running_mean_misaligned, permuted_channel)}


def plant_in_graph(monkeypatch, fault) -> None:
    real = slimc.compiler._rewritten

    def rewritten(model, an, ctx, cache):
        slim, notes = real(model, an, ctx, cache)
        fault(slim, model)
        return slim, notes

    monkeypatch.setattr(slimc.compiler, "_rewritten", rewritten)


def test_the_faultless_compile_is_exact_against_the_tests_own_reference():
    m = chain()
    masks = chain_masks(m)
    res = slimc.compile(m, masks, X, cache=False)
    assert_same_masks(res.masks, masks)  # the hand-made masks are complete: compile adds nothing
    d, s = own_diff(res.module, m, masks)
    assert d <= TOL * max(1.0, s)
    assert res.model is not None and own_diff(res.model, m, masks)[0] <= TOL * max(1.0, s)


@pytest.mark.parametrize("fault", GRAPH_FAULTS)
def test_compile_check_catches_a_fault_in_the_slim_graph(fault, monkeypatch):
    m = chain()
    plant_in_graph(monkeypatch, GRAPH_FAULTS[fault])
    with pytest.raises(slimc.VerifyError, match=r"^the slim model differs from the masked model by [0-9.e-]+ "
                                                r"\(tolerance 1e-05\)") as e:
        slimc.compile(m, chain_masks(m), X, cache=False)
    assert "\n" not in str(e.value)


@pytest.mark.parametrize("fault", GRAPH_FAULTS)
def test_a_check_that_always_passes_lets_the_graph_fault_through(fault, monkeypatch):
    """The sensitivity of the test above: without the check, the fault reaches the user, and
    the test's own reference sees it."""
    m = chain()
    masks = chain_masks(m)
    plant_in_graph(monkeypatch, GRAPH_FAULTS[fault])
    with checker_always_passes():
        res = slimc.compile(m, masks, X, cache=False, user_model=False)
    d, s = own_diff(res.module, m, masks)
    assert d > 100 * TOL * max(1.0, s), f"{fault} changes nothing the test can see ({d:.3g})"


# --------------------------------------------------------------------------- a stale reshape constant
class Grouped(nn.Module):
    """A softmax over rows of a reshape whose channel count is a literal: a stale literal
    still runs on the slim tensor (``-1`` takes up the rest) and computes something else."""

    def __init__(self):
        super().__init__()
        self.conv1 = nn.Conv2d(3, 8, 3, padding=1)
        self.conv2 = nn.Conv2d(8, 4, 1)

    def forward(self, x):
        y = self.conv1(x)
        n, c, h, w = y.shape
        return self.conv2(y.reshape(n, 8, -1).softmax(-1).reshape(n, -1, h, w))


def grouped_masks(m: Grouped) -> dict[str, torch.Tensor]:
    return {"conv1.weight": rows(8, R1, shape=m.conv1.weight.shape), "conv1.bias": rows(8, R1),
            "conv2.weight": rows(8, R1, shape=m.conv2.weight.shape, dim=1)}


def without_pass(monkeypatch, name: str) -> None:
    """The rewrite pass ``name`` does nothing (the constants it patches stay stale)."""
    stub = lambda gm, ctx: slimc.passes.PassResult(gm, False)  # noqa: E731
    monkeypatch.setattr(slimc.passes, "PIPELINE", [(n, stub if n == name else f) for n, f in slimc.passes.PIPELINE])


def test_compile_check_catches_a_stale_reshape_constant(monkeypatch):
    torch.manual_seed(0)
    m = Grouped().eval()
    res = slimc.compile(m, grouped_masks(m), X, cache=False)  # faultless: the literal follows (8 → 5)
    assert "reshape(getitem, 5, -1)" in res.module.code
    without_pass(monkeypatch, "patch_constants")
    with pytest.raises(slimc.VerifyError, match="^the slim model differs from the masked model by"):
        slimc.compile(m, grouped_masks(m), X, cache=False)
    with checker_always_passes():
        res = slimc.compile(m, grouped_masks(m), X, cache=False, user_model=False)
    assert "reshape(getitem, 8, -1)" in res.module.code
    d, s = own_diff(res.module, m, grouped_masks(m))
    assert d > 100 * TOL * max(1.0, s)


def test_compile_check_catches_a_slim_model_that_does_not_run(monkeypatch):
    """A stale literal that makes the slim model fail: one line naming the error."""

    class Literal(Grouped):
        def forward(self, x):
            y = self.conv1(x)
            n, c, h, w = y.shape
            return self.conv2(y.reshape(n, 8, h * w).reshape(n, 8, h, w))

    torch.manual_seed(0)
    m = Literal().eval()
    without_pass(monkeypatch, "patch_constants")
    with pytest.raises(slimc.VerifyError, match=r"^the slim model failed to run: RuntimeError: shape '\[1, 8, "):
        slimc.compile(m, grouped_masks(m), X, cache=False)


def test_compile_check_catches_params_the_kept_indices_do_not_imply(monkeypatch):
    """A slim conv1 with one row too many (its output cut back to size before bn1, so the
    outputs agree): the parameter count check names both numbers."""

    @torch.no_grad()
    def one_row_too_many(gm, m):
        conv = gm.conv1
        conv.weight = nn.Parameter(torch.cat([conv.weight, m.conv1.weight[1:2] * 0]))
        conv.bias = nn.Parameter(torch.cat([conv.bias, conv.bias[:1] * 0]))
        real = conv.forward
        conv.forward = lambda x: real(x)[:, :-1]

    m = chain()
    plant_in_graph(monkeypatch, one_row_too_many)
    with pytest.raises(slimc.VerifyError, match=r"^the slim model has 390 params, the kept indices imply 362$"):
        slimc.compile(m, chain_masks(m), X, cache=False, user_model=False)  # 362 = 140 + 10 + 184 + 8 + 20


# --------------------------------------------------------------------------- faults in the user's class
def plant_in_users_class(monkeypatch, fault) -> None:
    real = slimc.surgery.build

    def build_(original, plan, gm, events, **kw):
        um = real(original, plan, gm, events, **kw)
        if um.model is not None:
            fault(um.model)
        return um

    monkeypatch.setattr(slimc.surgery, "build", build_)


class Attention(nn.Module):
    """timm's form: the head count and size are attributes the forward reads."""

    def __init__(self, dim: int = 32, num_heads: int = 4):
        super().__init__()
        self.num_heads, self.head_dim = num_heads, dim // num_heads
        self.attn_dim = num_heads * self.head_dim
        self.qkv = nn.Linear(dim, 3 * self.attn_dim)
        self.proj = nn.Linear(self.attn_dim, dim)

    def forward(self, x):
        B, N, _ = x.shape
        q, k, v = self.qkv(x).reshape(B, N, 3, self.num_heads, self.head_dim).permute(2, 0, 3, 1, 4).unbind(0)
        y = F.scaled_dot_product_attention(q, k, v)
        return self.proj(y.transpose(1, 2).reshape(B, N, self.attn_dim))


HEADS_GONE = [1, 3]


def attention_masks(m: Attention) -> dict[str, torch.Tensor]:
    """Heads 1 and 3 whole, by hand: their q, k and v rows (weight and bias), their proj columns."""
    gone = [part * 32 + h * 8 + i for part in range(3) for h in HEADS_GONE for i in range(8)]
    return {"qkv.weight": rows(96, gone, shape=(96, 32)), "qkv.bias": rows(96, gone),
            "proj.weight": rows(32, [h * 8 + i for h in HEADS_GONE for i in range(8)], shape=(32, 32), dim=1)}


def heads_regrouped(model: Attention) -> None:
    model.num_heads, model.head_dim = 4, 4  # 16 features still, cut into 4 heads of 4, not 2 of 8


def heads_left_at_four(model: Attention) -> None:
    model.num_heads = 4


@torch.no_grad()
def rows_swapped(model: ConvChain) -> None:
    w = model.conv1.weight
    w[[0, 1]] = w[[1, 0]].clone()


def out_channels_stale(model: ConvChain) -> None:
    model.conv1.out_channels = 8


def num_features_stale(model: ConvChain) -> None:
    model.bn2.num_features = 6


ATTN_X = x_(2, 7, 32)
CLASS_FAULTS = {  # fault → (model, masks, input, the reason the check must give)
    "rows_swapped": (rows_swapped, chain, chain_masks, X, r"^the slim ConvChain differs from the masked model by"),
    "heads_regrouped": (heads_regrouped, lambda: build(Attention).eval(), attention_masks, ATTN_X,
                        r"^the slim Attention differs from the masked model by"),
    "heads_left_at_four": (heads_left_at_four, lambda: build(Attention).eval(), attention_masks, ATTN_X,
                           r"^the slim Attention failed to run: RuntimeError: shape '\[\d+, \d+, 3, 4, 8\]' is invalid"),
}


def test_the_faultless_attention_loses_two_heads_exactly():
    m = build(Attention).eval()
    res = slimc.compile(m, attention_masks(m), ATTN_X, cache=False)
    assert (res.model.num_heads, res.model.head_dim, res.model.attn_dim) == (2, 8, 16)
    ref = masked_reference(m, attention_masks(m))
    for x in (ATTN_X, x_(3, 5, 32, seed=1)):
        d, s = max_diff(run_eval(res.model, (x,)), run_eval(ref, (x,)))
        assert d <= TOL * max(1.0, s)


@pytest.mark.parametrize("fault", CLASS_FAULTS)
def test_users_class_check_catches_a_fault(fault, monkeypatch):
    plant, make, masks, x, why = CLASS_FAULTS[fault]
    m = make()
    plant_in_users_class(monkeypatch, plant)
    res = slimc.compile(m, masks(m), x, cache=False)
    assert res.model is None and res.report["user_model"]["built"] is False
    reason = res.report["user_model"]["reason"]
    assert re.match(why, reason) and "\n" not in reason, reason
    assert own_diff_at(res.module, m, masks(m), x)[0] <= TOL * 10  # the graph (no fault planted) is still exact


@pytest.mark.parametrize("fault", [f for f in CLASS_FAULTS if f != "heads_left_at_four"])  # (that one cannot run)
def test_a_check_that_always_passes_lets_the_class_fault_through(fault, monkeypatch):
    plant, make, masks, x, _ = CLASS_FAULTS[fault]
    m = make()
    plant_in_users_class(monkeypatch, plant)
    with checker_always_passes():
        res = slimc.compile(m, masks(m), x, cache=False)
    assert res.model is not None
    d, s = own_diff_at(res.model, m, masks(m), x)
    assert d > 100 * TOL * max(1.0, s), f"{fault} changes nothing the test can see ({d:.3g})"


@pytest.mark.parametrize("plant, attr", [(out_channels_stale, "conv1.out_channels is 8, its weight has 5 rows"),
                                         (num_features_stale, "bn2.num_features is 6, its weight has 4 entries")])
def test_users_class_check_catches_a_size_attribute_its_weights_contradict(plant, attr, monkeypatch):
    """A stale size attribute changes no output (the forward reads the weight): the output
    check cannot see it; the size check can, and names the layer, the attribute and both sizes."""
    m = chain()
    plant_in_users_class(monkeypatch, plant)
    res = slimc.compile(m, chain_masks(m), X, cache=False)
    assert res.model is None
    assert res.report["user_model"]["reason"] == f"the slim ConvChain's sizes contradict its weights: {attr}"
    monkeypatch.setattr(slimc.surgery.consistent, "size_mismatches", lambda model: [])  # a size check that always passes
    res = slimc.compile(m, chain_masks(m), X, cache=False)
    assert res.model is not None  # the stale attribute reaches the user:
    layer, name = attr.split(" ")[0].split(".")
    assert getattr(res.model.get_submodule(layer), name) != res.model.get_submodule(layer).weight.shape[0]

