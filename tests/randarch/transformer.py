"""Transformer blocks for the random architectures: plain torch, each with its ``channels``
account (see :mod:`randarch.cnn`). Pre-norm blocks on a residual stream: LayerNorm or
RMSNorm, multi-head / grouped-query / multi-query attention written three ways (fused SDPA
with ``enable_gqa``, LLaMA's ``repeat_kv`` then SDPA, explicit matmul + softmax), and a
plain or gated (SwiGLU, GeGLU) FFN.
"""
from __future__ import annotations

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from .heads import AttentionHeads


class RMSNorm(nn.Module):
    """LLaMA's RMSNorm, written out."""

    def __init__(self, c: int, eps: float = 1e-6):
        super().__init__()
        self.weight = nn.Parameter(torch.ones(c))
        self.eps = eps

    def forward(self, x):
        return x * torch.rsqrt(x.pow(2).mean(-1, keepdim=True) + self.eps) * self.weight


NORMS = {"layernorm": lambda c: nn.LayerNorm(c), "layernorm_nobias": lambda c: nn.LayerNorm(c, bias=False),
         "rmsnorm": RMSNorm, "torch_rmsnorm": lambda c: nn.RMSNorm(c, eps=1e-6)}


def norm_channels(ir, name: str, norm: nn.Module, x: np.ndarray) -> np.ndarray:
    return ir.norm(name, x, beta=getattr(norm, "bias", None) is not None)


def repeat_kv(h: torch.Tensor, n_rep: int) -> torch.Tensor:
    b, nkv, s, d = h.shape
    return h[:, :, None, :, :].expand(b, nkv, n_rep, s, d).reshape(b, nkv * n_rep, s, d)


class Attention(nn.Module):
    """q, k, v from three Linears (``layout`` "separate"), from one split in three and each
    viewed as (heads, head_dim) on its own (nanoGPT: "split"), or from one viewed as
    (3, heads, head_dim) at once (timm: "shared", multi-head only)."""

    def __init__(self, c: int, heads: int, kv_heads: int, head_dim: int, bias: bool, out_bias: bool, style: str,
                 causal: bool, flat_minus_one: bool, layout: str):
        super().__init__()
        assert layout != "shared" or heads == kv_heads
        self.h, self.kv, self.d = heads, kv_heads, head_dim
        self.sizes = [heads * head_dim, kv_heads * head_dim, kv_heads * head_dim]
        if layout == "separate":
            self.q, self.k, self.v = (nn.Linear(c, n, bias=bias) for n in self.sizes)
        else:
            self.qkv = nn.Linear(c, sum(self.sizes), bias=bias)
        self.o = nn.Linear(heads * head_dim, c, bias=out_bias)
        self.style, self.causal, self.flat_minus_one, self.layout = style, causal, flat_minus_one, layout

    def forward(self, x):
        b, t, _ = x.shape
        if self.layout == "shared":
            q, k, v = self.qkv(x).reshape(b, t, 3, self.h, self.d).permute(2, 0, 3, 1, 4).unbind(0)
        else:
            if self.layout == "split":
                q, k, v = self.qkv(x).split(self.sizes, dim=-1)
            else:
                q, k, v = self.q(x), self.k(x), self.v(x)
            q = q.view(b, t, self.h, self.d).transpose(1, 2)
            k = k.view(b, t, self.kv, self.d).transpose(1, 2)
            v = v.view(b, t, self.kv, self.d).transpose(1, 2)
        if self.style == "sdpa":
            y = F.scaled_dot_product_attention(q, k, v, is_causal=self.causal, enable_gqa=self.kv != self.h)
        else:
            if self.kv != self.h:
                k, v = repeat_kv(k, self.h // self.kv), repeat_kv(v, self.h // self.kv)
            if self.style == "repeat_kv":
                y = F.scaled_dot_product_attention(q, k, v, is_causal=self.causal)
            else:  # explicit: the scale a constant of the original head dim
                s = torch.matmul(q, k.transpose(-2, -1)) * self.d ** -0.5
                if self.causal:
                    s = s.masked_fill(torch.ones(t, t, dtype=torch.bool, device=x.device).triu(1), float("-inf"))
                y = torch.matmul(F.softmax(s, dim=-1), v)
        y = y.transpose(1, 2).reshape(b, t, -1 if self.flat_minus_one else self.h * self.d)
        return self.o(y)

    def channels(self, ir, p: str, x: np.ndarray) -> np.ndarray:
        if self.layout == "separate":
            for proj in ("q", "k", "v"):
                ir.sinks(f"{p}{proj}.weight", x)
            q, k, v = ((f"{p}{proj}", 0) for proj in "qkv")
        else:
            ir.sinks(f"{p}qkv.weight", x)
            q, k, v = ((f"{p}qkv", start) for start in (0, self.sizes[0], self.sizes[0] + self.sizes[1]))
        bias = (self.q if self.layout == "separate" else self.qkv).bias is not None
        ir.heads.append(AttentionHeads(q, k, v, f"{p}o", self.h, self.kv, self.d, bias, self.layout == "shared"))
        return ir.sources(f"{p}o", self.o.out_features, self.o.bias is not None)


class FFN(nn.Module):
    """down(act(up(x))), or gated: down(act(gate(x)) · up(x)) (SwiGLU: SiLU, GeGLU: GELU)."""

    def __init__(self, c: int, hidden: int, kind: str, bias: bool):
        super().__init__()
        self.kind = kind
        self.up = nn.Linear(c, hidden, bias=bias)
        self.gate = nn.Linear(c, hidden, bias=bias) if kind != "mlp" else None
        self.down = nn.Linear(hidden, c, bias=bias)

    def forward(self, x):
        if self.kind == "mlp":
            return self.down(F.gelu(self.up(x)))
        act = F.silu if self.kind == "swiglu" else F.gelu
        return self.down(act(self.gate(x)) * self.up(x))

    def channels(self, ir, p: str, x: np.ndarray) -> np.ndarray:
        bias = self.up.bias is not None
        h = ir.linear(f"{p}up", x, self.up.out_features, bias)
        if self.gate is not None:
            h = ir.mul(ir.linear(f"{p}gate", x, self.gate.out_features, bias), h)
        return ir.linear(f"{p}down", h, self.down.out_features, bias)


class Block(nn.Module):
    """x + attn(norm1(x)), then + ffn(norm2(x)); each branch scaled per channel by a learned
    layer scale where ``layer_scale`` (CaiT, ConvNeXt)."""

    def __init__(self, c: int, norm: str, attn: Attention, ffn: FFN, layer_scale: bool):
        super().__init__()
        self.norm1, self.attn = NORMS[norm](c), attn
        self.norm2, self.ffn = NORMS[norm](c), ffn
        self.ls1 = nn.Parameter(torch.rand(c) + 0.5) if layer_scale else None
        self.ls2 = nn.Parameter(torch.rand(c) + 0.5) if layer_scale else None

    def forward(self, x):
        y = self.attn(self.norm1(x))
        x = x + (y if self.ls1 is None else self.ls1 * y)
        y = self.ffn(self.norm2(x))
        return x + (y if self.ls2 is None else self.ls2 * y)

    def channels(self, ir, p: str, x: np.ndarray) -> np.ndarray:
        y = self.attn.channels(ir, f"{p}attn.", norm_channels(ir, f"{p}norm1", self.norm1, x))
        x = ir.add(x, y if self.ls1 is None else ir.scale(f"{p}ls1", y))
        y = self.ffn.channels(ir, f"{p}ffn.", norm_channels(ir, f"{p}norm2", self.norm2, x))
        return ir.add(x, y if self.ls2 is None else ir.scale(f"{p}ls2", y))


class TransformerNet(nn.Module):
    """embed (a Linear on features, a token table, or 4×4 patches of an image) → blocks →
    norm → Linear head, per token or on the mean token."""

    def __init__(self, embed: str, n_in: int, c: int, blocks: list[Block], norm: str, n_out: int, mean: bool):
        super().__init__()
        self.kind = embed
        if embed == "linear":
            self.embed = nn.Linear(n_in, c)
        elif embed == "tokens":
            self.embed = nn.Embedding(n_in, c)
        else:
            self.embed = nn.Conv2d(3, c, 4, stride=4)
        self.blocks = nn.ModuleList(blocks)
        self.norm = NORMS[norm](c)
        self.head = nn.Linear(c, n_out)
        self.mean = mean

    def forward(self, x):
        x = self.embed(x)
        if self.kind == "patch":
            x = x.flatten(2).transpose(1, 2)
        for b in self.blocks:
            x = b(x)
        x = self.norm(x)
        return self.head(x.mean(1) if self.mean else x)

    def channels(self, ir) -> None:
        c = self.head.in_features
        if self.kind == "tokens":
            x = ir.embedding("embed", c)
        elif self.kind == "linear":
            x = ir.linear("embed", ir.input(self.embed.in_features), c, True)
        else:
            x = ir.conv("embed", ir.input(3), self.embed)
        for i, b in enumerate(self.blocks):
            x = b.channels(ir, f"blocks.{i}.", x)
        ir.barrier(ir.linear("head", norm_channels(ir, "norm", self.norm, x), self.head.out_features, True))


def draw_transformer(rng: np.random.Generator) -> tuple[TransformerNet, list[str]]:
    """A random pre-norm transformer (1–3 blocks, widths 4–32) and a word per block."""
    c = int(rng.integers(4, 33))
    norm = str(rng.choice(list(NORMS)))
    blocks, kinds = [], []
    for _ in range(int(rng.integers(1, 4))):
        heads = int(rng.choice([1, 2, 4]))
        kv = int(rng.choice([k for k in (1, 2, 4) if heads % k == 0]))
        style = str(rng.choice(["sdpa", "repeat_kv", "explicit"]))
        layout = str(rng.choice(["separate", "separate", "split", "shared"]))
        if layout == "shared":
            kv = heads
        attn = Attention(c, heads, kv, int(rng.choice([2, 4, 6, 8])), bool(rng.random() < 0.5), bool(rng.random() < 0.5),
                         style, bool(rng.random() < 0.5), bool(rng.random() < 0.5), layout)
        ffn_kind = str(rng.choice(["mlp", "swiglu", "geglu"]))
        ls = bool(rng.random() < 0.25)
        blocks.append(Block(c, norm, attn, FFN(c, int(rng.integers(4, 33)), ffn_kind, bool(rng.random() < 0.5)), ls))
        kinds.append(f"{style}/{layout}(h{heads}/kv{kv})+{ffn_kind}{'+ls' * ls}")
    embed = str(rng.choice(["linear", "tokens", "patch"]))
    n_in = {"linear": int(rng.integers(3, 9)), "tokens": 16, "patch": 3}[embed]
    return TransformerNet(embed, n_in, c, blocks, norm, 5, bool(rng.random() < 0.5)), [embed, norm, *kinds]
