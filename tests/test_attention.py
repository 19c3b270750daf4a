"""Attention: matmul / softmax / SDPA rules, heads as rectangles, GQA, patched constants.

Each fragment is written the way a reference implementation writes it (timm, nanoGPT,
HF BERT / LLaMA) and checked with the DESIGN.md contract (``assert_contract``).
"""
from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F
from torch import nn

import slimc
from helpers import assert_contract, kept_reasons, n_params
from slimc import zoo
from slimc.zoo import transformer
from slimc.prune import group_masks

D = 8  # head dim of the fragments below


def _rows(n: int, rows, cols: int = 32) -> torch.Tensor:
    m = torch.ones(n, cols)
    m[list(rows)] = 0
    return m


def head_rows(heads, parts: int = 1, dim: int = 32) -> list[int]:
    """Rows of heads ``heads`` in each of ``parts`` stacked projections (fused qkv: 3)."""
    return [p * dim + h * D + d for p in range(parts) for h in heads for d in range(D)]


class TimmAttention(transformer.Attention):
    """The zoo's timm ViT attention: fused qkv, reshape + permute, unbind, q @ kᵀ · scale."""

    def __init__(self, dim=32, heads=4):
        super().__init__(dim, heads)


class NanoGPTAttention(nn.Module):
    def __init__(self, dim=32, heads=4):
        super().__init__()
        self.n_head, self.n_embd = heads, dim
        self.c_attn = nn.Linear(dim, 3 * dim)
        self.c_proj = nn.Linear(dim, dim)

    def forward(self, x):
        B, T, C = x.size()
        q, k, v = self.c_attn(x).split(self.n_embd, dim=2)
        k = k.view(B, T, self.n_head, C // self.n_head).transpose(1, 2)
        q = q.view(B, T, self.n_head, C // self.n_head).transpose(1, 2)
        v = v.view(B, T, self.n_head, C // self.n_head).transpose(1, 2)
        y = F.scaled_dot_product_attention(q, k, v, attn_mask=None, dropout_p=0.0, is_causal=True)
        y = y.transpose(1, 2).contiguous().view(B, T, C)
        return self.c_proj(y)


class BertAttention(nn.Module):
    """Separate q/k/v, explicit matmuls, a causal mask made in forward."""

    def __init__(self, dim=32, heads=4, scale_from_size=False):
        super().__init__()
        self.h, self.d, self.all = heads, dim // heads, dim
        self.query, self.key, self.value = nn.Linear(dim, dim), nn.Linear(dim, dim), nn.Linear(dim, dim)
        self.dense = nn.Linear(dim, dim)
        self.scale_from_size = scale_from_size

    def split(self, x):
        B, T, _ = x.shape
        return x.view(B, T, self.h, self.d).permute(0, 2, 1, 3)

    def forward(self, x):
        B, T, _ = x.shape
        q, k, v = self.split(self.query(x)), self.split(self.key(x)), self.split(self.value(x))
        s = torch.matmul(q, k.transpose(-1, -2))
        s = s * q.size(-1) ** -0.5 if self.scale_from_size else s / math.sqrt(self.d)
        s = s.masked_fill(torch.tril(x.new_ones(T, T)) == 0, float("-inf"))
        p = F.softmax(s, dim=-1)
        c = torch.matmul(p, v).permute(0, 2, 1, 3).contiguous()
        return self.dense(c.view(B, T, self.all))


class GQA(nn.Module):
    """LLaMA-style grouped-query attention: 4 query heads share 2 key/value heads."""

    def __init__(self, dim=32, heads=4, kv_heads=2, repeat="repeat_kv"):
        super().__init__()
        self.h, self.kv, self.d, self.repeat = heads, kv_heads, dim // heads, repeat
        self.q_proj = nn.Linear(dim, heads * self.d, bias=False)
        self.k_proj = nn.Linear(dim, kv_heads * self.d, bias=False)
        self.v_proj = nn.Linear(dim, kv_heads * self.d, bias=False)
        self.o_proj = nn.Linear(heads * self.d, dim, bias=False)

    @staticmethod
    def repeat_kv(h, n_rep):
        b, nkv, s, d = h.shape
        return h[:, :, None, :, :].expand(b, nkv, n_rep, s, d).reshape(b, nkv * n_rep, s, d)

    def forward(self, x):
        b, t, _ = x.size()
        q = self.q_proj(x).view(b, t, self.h, self.d).transpose(1, 2)
        k = self.k_proj(x).view(b, t, self.kv, self.d).transpose(1, 2)
        v = self.v_proj(x).view(b, t, self.kv, self.d).transpose(1, 2)
        if self.repeat == "repeat_kv":
            k, v = self.repeat_kv(k, self.h // self.kv), self.repeat_kv(v, self.h // self.kv)
            y = F.scaled_dot_product_attention(q, k, v, is_causal=True)
        else:
            y = F.scaled_dot_product_attention(q, k, v, is_causal=True, enable_gqa=True)
        return self.o_proj(y.transpose(1, 2).reshape(b, t, -1))


def _model(cls, seed=0, **kw):
    torch.manual_seed(seed)
    return cls(**kw).eval()


def _x(seed=0, t=10):
    return (torch.randn(2, t, 32, generator=torch.Generator().manual_seed(seed)),)


def _widths(res, *names):
    sd = dict(res.module.named_parameters())
    return tuple(tuple(sd[f"{n}.weight"].shape) for n in names)


# --------------------------------------------------------------------------- matmul
def test_matmul_with_parameter_is_a_linear():
    class M(nn.Module):
        def __init__(self):
            super().__init__()
            self.w1 = nn.Parameter(torch.randn(16, 24) / 4)
            self.w2 = nn.Parameter(torch.randn(24, 8) / 5)

        def forward(self, x):
            return torch.relu(x @ self.w1) @ self.w2

    m = M().eval()
    mask = torch.ones(16, 24)
    mask[:, [1, 5, 7]] = 0
    res = assert_contract(m, {"w1": mask}, (torch.randn(3, 5, 16),))
    assert tuple(res.module.w1.shape) == (16, 21) and tuple(res.module.w2.shape) == (21, 8)


def test_single_head_contraction_needs_both_sides():
    class M(nn.Module):
        def __init__(self):
            super().__init__()
            self.q, self.k, self.v = nn.Linear(32, 16), nn.Linear(32, 16), nn.Linear(32, 16)

        def forward(self, x):
            a = torch.softmax(self.q(x) @ self.k(x).transpose(-1, -2), dim=-1)
            return a @ self.v(x)

    m = _model(M)
    both = assert_contract(m, {"q.weight": _rows(16, [2, 3]), "k.weight": _rows(16, [2, 3])}, _x())
    assert _widths(both, "q", "k") == ((14, 32), (14, 32))
    one = assert_contract(m, {"q.weight": _rows(16, [2, 3])}, _x())
    assert _widths(one, "q", "k") == ((16, 32), (16, 32))
    assert "held by unmasked source" in kept_reasons(one)


# --------------------------------------------------------------------------- heads
@pytest.mark.parametrize("cls,qkv,proj,parts", [
    (TimmAttention, "qkv", "proj", 3), (NanoGPTAttention, "c_attn", "c_proj", 3)], ids=["timm", "nanogpt"])
def test_whole_heads_go(cls, qkv, proj, parts):
    m = _model(cls)
    res = assert_contract(m, {f"{qkv}.weight": _rows(96, head_rows([1, 3], parts))}, _x())
    assert _widths(res, qkv, proj) == ((48, 32), (32, 16))
    y = res.module(torch.randn(5, 7, 32))  # batch and sequence stay free
    assert y.shape == (5, 7, 32)


def test_bert_style_heads_and_view_with_int_sizes():
    m = _model(BertAttention)
    rows = _rows(32, head_rows([0]))
    res = assert_contract(m, {"query.weight": rows, "key.weight": rows, "value.weight": rows}, _x(t=12))
    assert _widths(res, "query", "key", "value", "dense") == ((24, 32),) * 3 + ((32, 24),)


def test_o_proj_columns_alone_remove_the_head():
    """Nothing reads head 2's output, so nothing reads its q·k either: the whole head goes
    (backward liveness through the head axis and the contraction)."""
    m = _model(NanoGPTAttention)
    cols = torch.ones(32, 32)
    cols[:, 2 * D:3 * D] = 0
    res = assert_contract(m, {"c_proj.weight": cols}, _x())
    assert _widths(res, "c_attn", "c_proj") == ((72, 32), (32, 24))
    cols[:, 2 * D + 1:3 * D] = 1  # one column of the head still read: everything stays
    res = assert_contract(m, {"c_proj.weight": cols}, _x())
    assert n_params(res.module) == n_params(m)


def test_same_dims_of_every_head_go_and_sdpa_scale_is_kept():
    m = _model(NanoGPTAttention)
    qk = [p * 32 + h * D + d for p in (0, 1) for h in range(4) for d in (0, 5)]
    res = assert_contract(m, {"c_attn.weight": _rows(96, qk)}, _x())
    assert _widths(res, "c_attn") == ((80, 32),)
    sdpa = [n for n in res.module.graph.nodes if n.target is F.scaled_dot_product_attention]
    assert sdpa and sdpa[0].kwargs["scale"] == pytest.approx(1 / math.sqrt(D))


def test_mixed_head_masks_keep_a_rectangle():
    m = _model(NanoGPTAttention)
    qkv_rows = head_rows([1], 3) + [2 * 32 + 0 * D + 3]  # head 1 everywhere, one stray v channel
    res = assert_contract(m, {"c_attn.weight": _rows(96, qkv_rows)}, _x())
    assert _widths(res, "c_attn") == ((72, 32),)
    assert "rectangle" in kept_reasons(res)


def test_masked_v_channels_do_not_take_q_and_k_along_in_a_shared_view():
    """timm views q, k and v as (3, heads, head_dim) at once, so channel d of the three is one
    group. Masking v's channel d in every head made its output channels dead, and the group
    went — q's and k's channel d too, though they still add to every head's scores: final
    masks beyond the user's that changed the function (property draws with the shared
    layout, e.g. seed 33). A contraction reads them: they are kept, and say why."""
    m = _model(TimmAttention)
    v_dim3 = [2 * 32 + h * D + 3 for h in range(4)]
    res = assert_contract(m, {"qkv.weight": _rows(96, v_dim3)}, _x())
    assert _widths(res, "qkv", "proj") == ((96, 32), (32, 32))
    assert "held by unmasked source 'qkv.weight'" in kept_reasons(res)
    # with q's and k's channel 3 masked too, it goes from all three (and from proj's columns)
    qkv_dim3 = [p * 32 + h * D + 3 for p in range(3) for h in range(4)]
    res = assert_contract(m, {"qkv.weight": _rows(96, qkv_dim3)}, _x())
    assert _widths(res, "qkv", "proj") == ((84, 32), (32, 28))


@pytest.mark.parametrize("seed", range(4))
def test_random_head_and_dim_masks_are_exact(seed):
    g = torch.Generator().manual_seed(seed)
    for cls, qkv in ((TimmAttention, "qkv"), (NanoGPTAttention, "c_attn")):
        m = _model(cls, seed)
        heads = torch.randperm(4, generator=g)[: int(torch.randint(0, 4, (1,), generator=g))].tolist()
        dims = torch.randperm(D, generator=g)[:2].tolist()
        rows = head_rows(heads, 3) + [p * 32 + h * D + d for p in range(3) for h in range(4) for d in dims
                                      if torch.rand(1, generator=g) < 0.7]
        assert_contract(m, {f"{qkv}.weight": _rows(96, rows)}, _x(seed))


def test_size_used_as_a_scale_fixes_the_head_dim():
    m = _model(BertAttention, scale_from_size=True)
    dims = [h * D + d for h in range(4) for d in (1, 2)]
    rows = _rows(32, dims)
    res = assert_contract(m, {"query.weight": rows, "key.weight": rows}, _x(t=12))
    assert _widths(res, "query", "key") == ((32, 32), (32, 32))
    assert any("used as a value" in why for why in res.plan.dg.barrier_reasons.values())
    heads = _rows(32, head_rows([2]))  # whole heads still go: the head dim is unchanged
    res = assert_contract(m, {"query.weight": heads, "key.weight": heads, "value.weight": heads}, _x(t=12))
    assert _widths(res, "query") == ((24, 32),)


@pytest.mark.parametrize("repeat", ["repeat_kv", "enable_gqa"])
def test_gqa_kv_head_goes_with_its_query_heads(repeat):
    m = _model(GQA, repeat=repeat)
    q = _rows(32, head_rows([2, 3]))
    kv = _rows(16, head_rows([1]))
    res = assert_contract(m, {"q_proj.weight": q, "k_proj.weight": kv, "v_proj.weight": kv}, _x())
    assert _widths(res, "q_proj", "k_proj", "v_proj", "o_proj") == ((16, 32), (8, 32), (8, 32), (32, 16))
    # one query head of a pair is not enough: the pair shares its key/value head
    res = assert_contract(m, {"q_proj.weight": _rows(32, head_rows([3]))}, _x())
    assert _widths(res, "q_proj", "k_proj") == ((32, 32), (16, 32))
    # a masked key/value head: the query heads that read it output zeros, so all of them go
    res = assert_contract(m, {"k_proj.weight": kv, "v_proj.weight": kv}, _x())
    assert _widths(res, "q_proj", "k_proj", "o_proj") == ((16, 32), (8, 32), (32, 16))


@pytest.mark.parametrize("repeat", ["repeat_kv", "enable_gqa"])
def test_exact_mode_keeps_a_query_head_whose_rows_alone_are_masked(repeat):
    """Multi-query attention, q rows of head 2 masked: its scores are zero, its softmax
    uniform, its output the mean of v — not zero. Exact mode removed the head's o columns
    along with its q rows (the head axis had no other source to hold it; property draws
    seeds 75, 111); the slim model then differed from the user's masked model."""
    m = _model(GQA, kv_heads=1, repeat=repeat)
    masks = {"q_proj.weight": _rows(32, head_rows([2]))}
    res = assert_contract(m, masks, _x(), mode="exact")
    assert _widths(res, "o_proj") == ((32, 32),)
    ref = m.__class__(kv_heads=1, repeat=repeat).eval()
    ref.load_state_dict(m.state_dict())
    with torch.no_grad():
        ref.q_proj.weight.mul_(masks["q_proj.weight"])
        x = torch.randn(3, 7, 32)
        assert (res.module(x) - ref(x)).abs().max() <= 1e-5 * max(1.0, float(ref(x).abs().max()))
    # channel mode: the head goes (its q rows are a factor of its output), o columns too
    assert _widths(assert_contract(m, masks, _x()), "q_proj", "o_proj") == ((24, 32), (32, 24))


# --------------------------------------------------------------------------- stream ops
def test_cls_token_pos_embed_and_functional_layer_norm():
    class M(nn.Module):
        def __init__(self):
            super().__init__()
            self.embed = nn.Linear(16, 32)
            self.cls_token = nn.Parameter(torch.randn(1, 1, 32))
            self.pos_embed = nn.Parameter(torch.randn(1, 9, 32) * 0.1)
            self.w, self.b = nn.Parameter(torch.rand(32) + 0.5), nn.Parameter(torch.randn(32) * 0.2)
            self.head = nn.Linear(32, 4)

        def forward(self, x):
            x = self.embed(x)
            x = torch.cat((self.cls_token.expand(x.shape[0], -1, -1), x), dim=1) + self.pos_embed
            x = F.layer_norm(x, self.w.shape, self.w, self.b, 1e-5)
            return self.head(x[:, 0])

    m = _model(M)
    cols = [1, 4, 9]
    masks = {"embed.weight": _rows(32, cols, 16), "cls_token": torch.ones(1, 1, 32), "pos_embed": torch.ones(1, 9, 32)}
    masks["cls_token"][..., cols] = 0
    masks["pos_embed"][..., cols] = 0
    res = assert_contract(m, masks, (torch.randn(2, 8, 16),))
    assert tuple(res.module.cls_token.shape) == (1, 1, 29) and tuple(res.module.head.weight.shape) == (4, 29)
    # the cls token is a source: a channel it still writes is kept
    del masks["cls_token"]
    res = assert_contract(m, masks, (torch.randn(2, 8, 16),))
    assert tuple(res.module.head.weight.shape) == (4, 32)


def test_masked_fill_where_and_tril_pass_heads():
    class M(nn.Module):
        def __init__(self):
            super().__init__()
            self.attn = NanoGPTAttention()

        def forward(self, x):
            y = self.attn(x)
            keep = torch.tril(torch.ones(x.shape[1], x.shape[1])) > 0
            y = torch.where(keep[:, :1], y, torch.zeros_like(y))
            return y.masked_fill(y > 3.0, 0.0)

    m = _model(M)
    res = assert_contract(m, {"attn.c_attn.weight": _rows(96, head_rows([0], 3))}, _x())
    assert _widths(res, "attn.c_attn") == ((72, 32),)


def test_export_front_end_prunes_heads_too():
    m = _model(BertAttention)
    rows = _rows(32, head_rows([3]))
    masks = {"query.weight": rows, "key.weight": rows, "value.weight": rows}
    res = assert_contract(m, masks, _x(t=12), front_end="export")
    assert res.report["front_end"] == "export"
    assert _widths(res, "query", "dense") == ((24, 32), (32, 24))


# --------------------------------------------------------------------------- pruner
@pytest.mark.parametrize("unit", ["heads", "dims"])
def test_pruner_removes_whole_heads_or_head_dims(unit):
    m, x = zoo.build("vit_tiny"), zoo.example_inputs("vit_tiny")
    masks = group_masks(m, x, 0.5, attention=unit)
    res = assert_contract(m, masks, x)
    assert kept_reasons(res) == ""
    qkv = dict(res.module.named_parameters())["blocks.0.attn.qkv.weight"]
    assert qkv.shape[0] == 96  # 3 × (2 heads × 16) or 3 × (4 heads × 8), of 3 × (4 × 16)
    shapes = [n.args[4:6] for n in res.module.graph.nodes if n.target == "reshape" and len(n.args) == 6]
    assert shapes and all(s == ((2, 16) if unit == "heads" else (4, 8)) for s in shapes), shapes


def test_pruner_rejects_unknown_unit():
    with pytest.raises(ValueError, match="heads or dims"):
        group_masks(_model(TimmAttention), _x(), attention="rows")


def test_torch_transformer_encoder_is_seen_through():
    """torch.nn modules without a rule are traced into (here: via torch.export, as the
    encoder's fast-path checks are not fx-traceable) instead of being one opaque barrier."""
    class M(nn.Module):
        def __init__(self):
            super().__init__()
            layer = nn.TransformerEncoderLayer(32, 4, 64, dropout=0.0, batch_first=True)
            self.enc = nn.TransformerEncoder(layer, 2, enable_nested_tensor=False)

        def forward(self, x):
            return self.enc(x)

    m = _model(M)
    masks = {f"enc.layers.{i}.linear1.weight": _rows(64, range(0, 64, 2)) for i in range(2)}
    res = assert_contract(m, masks, _x())
    assert _widths(res, "enc.layers.0.linear1", "enc.layers.1.linear2") == ((32, 32), (32, 32))
    f = res.report["flops"]
    assert f["after"] < f["before"] < 2 * f["after"]  # the fused fast path is not counted as free


def test_multihead_attention_module_loses_whole_heads(tmp_path):
    """nn.MultiheadAttention (seen through via torch.export): views that merge the batch
    with the heads (``view(L, B * H, D)``) are split into a common refinement, and the
    ``bsz * num_heads`` size stays dynamic."""
    class M(nn.Module):
        def __init__(self):
            super().__init__()
            self.mha = nn.MultiheadAttention(32, 4, batch_first=True)

        def forward(self, x):
            return self.mha(x, x, x, need_weights=False)[0]

    m = _model(M)
    res = assert_contract(m, {"mha.in_proj_weight": _rows(96, head_rows([1, 2], 3))}, _x())
    p = dict(res.module.named_parameters())
    assert tuple(p["mha.in_proj_weight"].shape) == (48, 32) and tuple(p["mha.out_proj.weight"].shape) == (32, 16)
    res.save(tmp_path, onnx=False)
    slim = torch.load(tmp_path / "slim.pt", weights_only=False)  # an export-traced module reloads
    x5 = torch.randn(5, 10, 32)  # export keeps the batch dynamic (the sequence length is traced)
    d = (slim(x5) - res.module(x5)).abs().max()
    assert d == 0


def test_common_refinement_of_regrouped_dims():
    from slimc.shape_rules.reshape import refinement

    assert refinement([2, 32], [8, 8]) == [2, 4, 8]
    assert refinement([10, 6], [60]) == [10, 6]
    assert refinement([4, 6], [6, 4]) is None


def test_llama_hidden_size_goes_through_rmsnorm():
    """HF's RMSNorm is x * rsqrt(x.pow(2).mean(-1) + eps): the mean over removed (zero)
    hidden channels is rewritten to sum / C, so the hidden size shrinks exactly."""
    m, x = zoo.build("llama_tiny"), zoo.example_inputs("llama_tiny")
    res = assert_contract(m, group_masks(m, x, 0.5), x)
    p = dict(res.module.named_parameters())
    assert tuple(p["model.embed_tokens.weight"].shape) == (128, 32)
    assert tuple(p["model.layers.0.self_attn.k_proj.weight"].shape) == (16, 32)  # 1 of 2 kv heads
    assert any("sum / 64" in n for n in res.report["notes"])


def test_tied_embedding_read_under_its_second_name():
    """torch.export reads a tied weight under one name (here lm_head.weight, also for the
    embedding): the pruner and the masks must treat both names as one tensor."""
    m, x = zoo.build("gpt_tiny"), zoo.example_inputs("gpt_tiny")
    masks = group_masks(m, x, 0.5, front_end="export")
    res = assert_contract(m, masks, x, front_end="export")
    p = dict(res.module.named_parameters(remove_duplicate=False))
    assert tuple(p["lm_head.weight"].shape) == (128, 32)
    assert res.report["params"]["after"] * 3 < res.report["params"]["before"]
    # a mask given under one name of a tied pair masks the shared tensor
    only = {"lm_head.weight": torch.ones(128, 64)}
    only["lm_head.weight"][:, :4] = 0
    res = assert_contract(m, only, x)
    assert all((res.masks[n][:, :4] == 0).all() for n in ("lm_head.weight", "transformer.wte.weight"))


def test_one_sided_head_mask_removes_the_head():
    """Only q's rows of head 1 masked: the head's scores are dead, so is its output, so its
    v rows and output columns go; then nothing reads its k either — the whole head goes
    (a contraction may drop a channel masked on one side)."""
    m = _model(NanoGPTAttention)
    res = assert_contract(m, {"c_attn.weight": _rows(96, head_rows([1], 1))}, _x())
    assert _widths(res, "c_attn", "c_proj") == ((72, 32), (32, 24))


def _fused_head_mask(head: int, dim: int = 32, head_dim: int = 8) -> torch.Tensor:
    """Rows of one head in each of q, k and v of a fused (3·dim, dim) projection masked."""
    w = torch.ones(3 * dim, dim)
    for part in range(3):
        w[part * dim + head * head_dim: part * dim + (head + 1) * head_dim] = 0
    return w


class FusedSlicedQKV(nn.Module):
    """Phi-3's attention: one projection for q, k and v, sliced apart by static bounds."""

    def __init__(self, dim=32, heads=4):
        super().__init__()
        self.num_heads, self.head_dim = heads, dim // heads
        self.qkv_proj = nn.Linear(dim, 3 * dim, bias=False)
        self.o_proj = nn.Linear(dim, dim, bias=False)

    def forward(self, x):
        B, N, _ = x.shape
        qkv = self.qkv_proj(x)
        q_pos = self.num_heads * self.head_dim
        q = qkv[..., :q_pos].view(B, N, -1, self.head_dim).transpose(1, 2)
        k = qkv[..., q_pos: 2 * q_pos].view(B, N, -1, self.head_dim).transpose(1, 2)
        v = qkv[..., 2 * q_pos:].view(B, N, -1, self.head_dim).transpose(1, 2)
        y = F.scaled_dot_product_attention(q, k, v)
        return self.o_proj(y.transpose(1, 2).reshape(B, N, -1))


def test_fused_qkv_sliced_apart_loses_whole_heads():
    torch.manual_seed(0)
    m = FusedSlicedQKV().eval()
    x = (torch.randn(2, 5, 32),)
    res = assert_contract(m, {"qkv_proj.weight": _fused_head_mask(head=1)}, x)
    assert res.module.qkv_proj.out_features == 72 and res.module.o_proj.in_features == 24
    assert res.model is not None and res.model.num_heads == 3  # the class's own slicing follows num_heads


class RelativeBiasAttention(nn.Module):
    """Swin's window attention: a learned bias per head, gathered from a table by an index buffer."""

    def __init__(self, dim=32, heads=4, window=3):
        super().__init__()
        self.num_heads, n = heads, window * window
        self.qkv = nn.Linear(dim, 3 * dim)
        self.proj = nn.Linear(dim, dim)
        self.relative_position_bias_table = nn.Parameter(torch.randn((2 * window - 1) ** 2, heads))
        self.register_buffer("relative_position_index", torch.randint(0, (2 * window - 1) ** 2, (n, n)))

    def forward(self, x):
        B, N, C = x.shape
        qkv = self.qkv(x).reshape(B, N, 3, self.num_heads, -1).permute(2, 0, 3, 1, 4)
        q, k, v = qkv.unbind(0)
        bias = self.relative_position_bias_table[self.relative_position_index.view(-1)].view(N, N, -1)
        attn = (q @ k.transpose(-2, -1)) * 0.25 + bias.permute(2, 0, 1).contiguous().unsqueeze(0)
        x = (attn.softmax(dim=-1) @ v).transpose(1, 2).reshape(B, N, -1)
        return self.proj(x)


def test_relative_position_bias_table_loses_the_heads_columns():
    torch.manual_seed(0)
    m = RelativeBiasAttention().eval()
    x = (torch.randn(2, 9, 32),)
    res = assert_contract(m, {"qkv.weight": _fused_head_mask(head=2)}, x)
    assert res.module.relative_position_bias_table.shape == (25, 3)
    assert res.model is not None and res.model.num_heads == 3
