"""The parts of an encoder–decoder model, written from scratch the way T5 and BART write them
(no transformers needed), each checked with the DESIGN.md contract:

* cross-attention: q from the decoder stream, k and v from the encoder's, an additive
  position bias of zeros ``(1, H, Nq, Nk)`` made once and shared by every layer (T5's
  EncDecAttention has no relative bias), given to SDPA as its ``attn_mask``: a mask of zeros
  is a *term* of the scores, never a factor of the output, so it kills no head;
* a learned per-head bias (T5's ``relative_attention_bias``): a head whose q alone is masked
  still outputs ``softmax(bias)·v`` and stays; with its bias column masked too it goes;
* the decoder's and the encoder's lengths are independent: the built-in check varies them
  apart even where the example gives them equal;
* ``torch.zeros`` of sizes read at run time, through the export front end, saved and loaded;
* ``torch.minimum`` / ``maximum`` (T5's bucket arithmetic) have a rule.
"""
from __future__ import annotations

import io
import re

import torch
import torch.nn.functional as F
from torch import nn

import slimc
from helpers import assert_contract, masked_reference, outputs_diff

H, D, DIM = 4, 8, 32


def _head_rows(head: int, n: int = DIM) -> torch.Tensor:
    m = torch.ones(n, 1)
    m[head * D:(head + 1) * D] = 0
    return m


class CrossAttention(nn.Module):
    """Two decoder layers attending to an encoder output, T5-style: the zeros bias is made in
    the first layer and reused by the next; the context goes sdpa → reshape → transpose →
    contiguous → reshape, as HF's attention interface leaves it."""

    def __init__(self, layers: int = 2, learned_bias: bool = False, buckets: int = 6):
        super().__init__()
        self.q, self.k, self.v, self.o = (nn.ModuleList(nn.Linear(DIM, DIM, bias=False) for _ in range(layers))
                                          for _ in range(4))
        self.bias = nn.Embedding(buckets, H) if learned_bias else None
        self.buckets = buckets

    def position_bias(self, n: int, m: int, like: torch.Tensor) -> torch.Tensor:
        if self.bias is None:
            return torch.zeros(1, H, n, m, dtype=like.dtype)
        rel = torch.arange(m)[None, :] - torch.arange(n)[:, None]
        bucket = torch.minimum(rel.abs(), torch.full_like(rel, self.buckets - 1))
        return self.bias(bucket).permute(2, 0, 1).unsqueeze(0)

    def forward(self, x: torch.Tensor, enc: torch.Tensor) -> torch.Tensor:
        B, N, _ = x.shape
        M = enc.shape[1]
        bias = None
        for q_, k_, v_, o_ in zip(self.q, self.k, self.v, self.o):
            q = q_(x).view(B, N, -1, D).transpose(1, 2)
            k = k_(enc).view(B, M, -1, D).transpose(1, 2)
            v = v_(enc).view(B, M, -1, D).transpose(1, 2)
            if bias is None:
                bias = self.position_bias(N, M, x)
            y = F.scaled_dot_product_attention(q, k, v, attn_mask=bias, scale=1.0)
            y = y.reshape(B, -1, N, D).transpose(1, 2).contiguous().reshape(B, N, -1)
            x = x + o_(y)
        return x


def _inputs(n: int = 5, m: int = 7, b: int = 2):
    g = torch.Generator().manual_seed(0)
    return torch.randn(b, n, DIM, generator=g), torch.randn(b, m, DIM, generator=g)


def _head_masks(model: CrossAttention, head: int, parts=("q", "k", "v")) -> dict:
    return {f"{p}.{i}.weight": _head_rows(head) for p in parts for i in range(len(model.q))}


def test_cross_attention_zeros_bias_kills_no_head():
    """One head masked in every layer's q, k and v: that head goes, and only it (the shared
    zeros bias loses its column too). Before, the zeros made every head's output dead and the
    plan removed them all."""
    torch.manual_seed(0)
    m = CrossAttention().eval()
    for fe in ("fx", "export"):
        res = assert_contract(m, _head_masks(m, 1), _inputs(), front_end=fe)
        for i in range(2):
            assert res.model.q[i].out_features == 24 and res.model.o[i].in_features == 24, fe


def test_head_with_a_learned_bias_goes_only_with_its_bias():
    """q's rows of head 2 alone: scores = bias, the head outputs softmax(bias)·v ≠ 0, so it
    stays (and the slim model equals the user's masked model); the bias column masked too:
    the head's scores are dead, the whole head goes."""
    torch.manual_seed(0)
    m = CrossAttention(learned_bias=True).eval()
    x = _inputs(n=6, m=6)
    masks = _head_masks(m, 2, parts=("q",))
    res = assert_contract(m, masks, x)
    assert res.model.o[0].in_features == DIM
    diff, scale = outputs_diff(res.module, masked_reference(m, masks), x)
    assert diff <= 1e-5 * max(1.0, scale)
    col = torch.ones(1, H)
    col[0, 2] = 0
    res = assert_contract(m, {**masks, "bias.weight": col}, x)
    assert res.model.o[0].in_features == DIM - D and res.model.bias.weight.shape == (6, H - 1)
    assert not res.report["barriers"], res.report["barriers"]  # torch.minimum has a rule


def test_check_varies_encoder_and_decoder_lengths_apart():
    """The example gives both lengths as 6: export keeps them two symbols, and the built-in
    check runs them at different sizes (a graph that tied them would fail there)."""
    torch.manual_seed(0)
    m = CrossAttention().eval()
    res = slimc.compile(m, _head_masks(m, 0), _inputs(6, 6), front_end="export")
    dec, enc = [tuple(int(v) for v in t.split(", "))
                for t in re.findall(r"\(([\d, ]+)\)", res.report["verify"]["shapes"][-1])]
    assert dec[1] != 6 and enc[1] != 6 and dec[1] != enc[1], res.report["verify"]


def test_export_graph_with_run_time_sized_zeros_saves_and_loads():
    """torch.zeros(1, H, N, M) with N, M read at run time: slim.pt is traced again from its
    code when it loads; the factory is lowered to new_zeros of the tensor the sizes come from."""
    torch.manual_seed(0)
    m = CrossAttention().eval()
    res = slimc.compile(m, _head_masks(m, 3), _inputs(), front_end="export")
    buf = io.BytesIO()
    torch.save(res.module, buf)
    buf.seek(0)
    loaded = torch.load(buf, weights_only=False)
    x = _inputs(4, 9, b=3)
    assert torch.allclose(loaded(*x), res.module(*x), atol=1e-6)
    assert torch.allclose(loaded(*x), masked_reference(m, res.masks)(*x), atol=1e-5)


def test_elementwise_minimum_and_maximum_join_channels():
    class MinMax(nn.Module):
        def __init__(self):
            super().__init__()
            self.a, self.b, self.out = nn.Linear(8, 16), nn.Linear(8, 16), nn.Linear(16, 4)

        def forward(self, x):
            return self.out(torch.maximum(self.a(x), self.b(x)) + torch.minimum(self.a(x), self.b(x)))

    torch.manual_seed(0)
    m = MinMax().eval()
    rows = torch.ones(16, 1)
    rows[[1, 5, 9]] = 0
    for fe in ("fx", "export"):
        res = assert_contract(m, {"a.weight": rows, "a.bias": rows[:, 0], "b.weight": rows, "b.bias": rows[:, 0]},
                              (torch.randn(3, 8),), front_end=fe)
        assert res.model.out.in_features == 13 and res.model.out.weight.shape == (4, 13), fe  # the user's class
        assert not res.report["barriers"], (fe, res.report["barriers"])
