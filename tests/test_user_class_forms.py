"""The user's class (``res.model``) for the forms libraries write (issue #21, points 4–6):

* layer norms measured, not assumed: channels-first (ConvNeXt's ``LayerNorm2d``, HF's
  ``ConvNextLayerNorm(data_format="channels_first")``), without weight (OLMo), computed in
  float32 and cast back (timm's ``*Fp32``, OLMo) — each made exact in its own class;
* ``nn.MultiheadAttention`` (torchvision's ViT): sizes from the kept heads; the standard
  module where it can hold them, ``SlimMultiheadAttention`` (still an
  ``nn.MultiheadAttention``) where its ``embed_dim // num_heads`` head size cannot;
* per-head attention-bias tables (LeViT, EfficientFormer): the table follows the heads,
  caches and ``train()``-made tensors are made again from the slim tensors.

Each claim is checked against the masked original, masked here (``helpers.masked_reference``,
not slimc's), at three shapes, one with another batch and where the model allows another
image size or length. End to end (``slimc prune`` → ``compile`` → ``slimc.load`` in a fresh
process, ONNX, ``generate()``): :mod:`test_user_class_forms_e2e`.
"""
from __future__ import annotations

import copy
import itertools

import pytest
import torch
import torch.nn.functional as F
from torch import nn

import slimc
from helpers import masked_reference, max_diff, randomize_norms, run_eval
from patterns import norm_forms as nf, torchvision_style as tv
from patterns import attention_biases as ab
from patterns.vit_mha import TokenEncoder, VisionTransformer
from slimc.prune import prune
from slimc.surgery.modules import SlimMultiheadAttention, exact_layernorm_class, original_scale
from slimc.surgery.norms import LayerNormForm, measure_layernorm

TOL = 1e-5


def _x(*shape, seed=0):
    return torch.randn(*shape, generator=torch.Generator().manual_seed(seed))


def _compile(model, x, ratio=0.3, **kw):
    """Complete masks from slimc's pruner, compiled; the slim class must be there."""
    masks = prune(model, x, "l1", round_to=1, ratio=ratio)
    res = slimc.compile(model, masks, x, **kw)
    assert res.model is not None, res.report["user_model"]["reason"]
    return res, masks


def _assert_exact(slim, ref, shapes):
    for x in shapes:
        d, s = max_diff(run_eval(slim, x), run_eval(ref, x))
        assert d <= TOL * max(1.0, s), f"{[tuple(t.shape) for t in x]}: diff {d:.3g}"


def _same_classes(slim, original):
    """Every module of the slim model is an instance of the original's class at that path."""
    mods = dict(slim.named_modules())
    for path, m0 in original.named_modules():
        assert isinstance(mods[path], type(m0)), (path, type(mods[path]), type(m0))


# --------------------------------------------------------------------------- norm forms, measured
def _convnext_ln(fmt):
    import transformers as T

    return T.models.convnext.modeling_convnext.ConvNextLayerNorm(8, eps=1e-6, data_format=fmt)


NORMS = {  # name: (module, input shape, form)
    "nn.LayerNorm": (lambda: nn.LayerNorm(8), (2, 3, 8), LayerNormForm(-1, "weight", "bias")),
    "nn.LayerNorm no bias": (lambda: nn.LayerNorm(8, bias=False), (2, 3, 8), LayerNormForm(-1, "weight", "")),
    "nn.LayerNorm no affine": (lambda: nn.LayerNorm(8, elementwise_affine=False), (2, 3, 8), LayerNormForm(-1, "", "")),
    "timm LayerNorm": (lambda: nf.LayerNorm(8), (2, 3, 8), LayerNormForm(-1, "weight", "bias")),
    "timm LayerNormFp32": (lambda: nf.LayerNormFp32(8), (2, 3, 8), LayerNormForm(-1, "weight", "bias")),
    "timm LayerNorm2d": (lambda: nf.LayerNorm2d(8), (2, 8, 4, 5), LayerNormForm(1, "weight", "bias")),
    "timm LayerNorm2dFp32": (lambda: nf.LayerNorm2dFp32(8), (2, 8, 4, 5), LayerNormForm(1, "weight", "bias")),
    "timm LayerNorm2d no affine": (lambda: nf.LayerNorm2d(8, affine=False), (2, 8, 4, 5), LayerNormForm(1, "", "")),
    "torchvision LayerNorm2d": (lambda: tv.LayerNorm2d(8), (2, 8, 4, 5), LayerNormForm(1, "weight", "bias")),
    "OLMo-style non-affine": (lambda: nf.NonAffineLayerNorm(8), (2, 3, 8), LayerNormForm(-1, "", "")),
    "HF ConvNextLayerNorm first": (lambda: _convnext_ln("channels_first"), (2, 8, 4, 5), LayerNormForm(1, "weight", "bias")),
    "HF ConvNextLayerNorm last": (lambda: _convnext_ln("channels_last"), (2, 4, 5, 8), LayerNormForm(-1, "weight", "bias")),
}


@pytest.mark.parametrize("name", list(NORMS))
def test_layer_norm_form_is_measured(name):
    """Which dim a norm normalizes and which of its tensors scale and shift, measured on random
    inputs (and random values in the norm's tensors: γ = 1, β = 0 at init hide nothing)."""
    if name.startswith("HF"):
        pytest.importorskip("transformers")
    make, shape, form = NORMS[name]
    m = make().eval()
    assert measure_layernorm(m, shape, 8, m.eps if hasattr(m, "eps") else 1e-5) == form


class ReversedWeightNorm(nn.LayerNorm):
    """Not a layer norm of its own weight: scales by the weight reversed."""

    def forward(self, x):
        return F.layer_norm(x, self.normalized_shape, None, None, self.eps) * self.weight.flip(0) + self.bias


class RMSLike(nn.Module):
    def __init__(self, n):
        super().__init__()
        self.weight = nn.Parameter(torch.ones(n))

    def forward(self, x):
        return x * torch.rsqrt(x.pow(2).mean(-1, keepdim=True) + 1e-6) * self.weight


@pytest.mark.parametrize("make", [lambda: ReversedWeightNorm(8), lambda: RMSLike(8)], ids=["reversed-weight", "rms"])
def test_what_is_not_a_layer_norm_does_not_measure_as_one(make):
    """A planted fault for the measurement: γ = 1 at init would make the reversed weight pass
    a check on the module's own values."""
    assert measure_layernorm(make().eval(), (2, 3, 8), 8, 1e-5) is None


def test_exact_subclass_keeps_the_class_and_normalizes_the_measured_dim():
    """The exact subclass of a channels-first norm over 5 of 8 channels equals the norm over
    all 8 with the other 3 zero, keeps the user's class and attributes, and in bfloat16
    stays within bfloat16's rounding of the float32 result (computed in float32, cast back)."""
    torch.manual_seed(0)
    m0 = randomize_norms(nf.LayerNorm2dFp32(8)).eval()
    kept = torch.tensor([0, 2, 3, 5, 7])
    m = copy.deepcopy(m0)
    with torch.no_grad():
        m.weight = nn.Parameter(m0.weight[kept].clone())
        m.bias = nn.Parameter(m0.bias[kept].clone())
    m.__class__ = exact_layernorm_class(type(m0))
    m.full_features, m.slimc_eps, m.slimc_dim, m.slimc_affine = 8, m0.eps, 1, ("weight", "bias")
    assert isinstance(m, nf.LayerNorm2dFp32)
    x = _x(2, 8, 3, 4)
    x[:, [1, 4, 6]] = 0
    want = m0(x)[:, kept]
    got = m(x[:, kept])
    assert (got - want).abs().max() < 1e-5
    got16 = m.to(torch.bfloat16)(x[:, kept].to(torch.bfloat16))
    assert got16.dtype == torch.bfloat16 and (got16.float() - want).abs().max() < 0.05
    m.slimc_dim = -1  # a fault the module check must see: the wrong dim
    with pytest.raises(Exception):
        torch.testing.assert_close(m(x[:, kept]), want)


# --------------------------------------------------------------------------- norm forms in models
def _randomized(model):
    with torch.no_grad():
        return randomize_norms(model).eval()


CONVNEXTS = {
    "torchvision ConvNeXt": lambda: nf.TorchvisionConvNeXt(),
    "timm ConvNeXt conv_mlp": lambda: nf.ConvNeXt(conv_mlp=True),
    "timm ConvNeXt Fp32 norms": lambda: nf.ConvNeXt(conv_mlp=True, stem_norm=nf.LayerNorm2dFp32,
                                                     head_norm=nf.LayerNormFp32, block_norm=nf.LayerNorm2dFp32),
    "timm ConvNeXt": lambda: nf.ConvNeXt(conv_mlp=False),
}


@pytest.mark.parametrize("name", list(CONVNEXTS))
def test_channels_first_norms_in_the_users_class(name):
    torch.manual_seed(0)
    model = _randomized(CONVNEXTS[name]())
    x = (_x(2, 3, 32, 32),)
    res, masks = _compile(model, x, ratio=0.5)
    exact = [n.split(":")[0] for n in res.report["user_model"]["notes"] if "made exact" in n]
    assert exact and any(n.startswith(("stem", "features.0", "downsample", "features.2")) for n in exact), exact
    _same_classes(res.model, model)
    ref = masked_reference(model, masks)
    _assert_exact(res.model, ref, [x, (_x(3, 3, 48, 48, seed=1),), (_x(1, 3, 16, 16, seed=2),)])


@pytest.mark.parametrize("norm", [nf.NonAffineLayerNorm, nf.LayerNormFp32, lambda n: nf.LayerNorm(n, affine=False)],
                         ids=["olmo-non-affine", "timm-fp32", "timm-no-affine"])
def test_non_affine_and_float32_norms_in_the_users_class(norm):
    torch.manual_seed(0)
    model = nf.TokenNorms(norm=norm).eval()
    x = (_x(2, 7, 12),)
    res, masks = _compile(model, x)
    slim_norm = res.model.norm
    assert res.model.embed.out_features < 32 and slim_norm.full_features == 32
    assert tuple(getattr(slim_norm, "normalized_shape")) == (res.model.embed.out_features,)
    ref = masked_reference(model, masks)
    _assert_exact(res.model, ref, [x, (_x(3, 11, 12, seed=1),), (_x(1, 2, 12, seed=2),)])
    # bfloat16 (the reason libraries cast): within bfloat16's rounding of the masked model's result
    with torch.no_grad():
        y16 = res.model.to(torch.bfloat16)(_x(2, 5, 12, seed=4).to(torch.bfloat16))
        y = ref(_x(2, 5, 12, seed=4))
    assert y16.dtype == torch.bfloat16 and (y16.float() - y).abs().max() < 0.1 * max(1.0, float(y.abs().max()))


# --------------------------------------------------------------------------- attention-bias tables
def _levit_like(cls):
    torch.manual_seed(0)
    model = cls(img_size=32, embed_dim=32, key_dim=8, depth=2, num_heads=4)
    with torch.no_grad():
        for name, t in model.named_parameters():
            if "attention_biases" in name:
                t.normal_()
        randomize_norms(model)
    return model.train().eval()  # the official LeViT makes its `ab` in train(False)


BIASED = {"timm LeViT": ab.Levit, "timm EfficientFormer": ab.EfficientFormer, "official LeViT": ab.LevitOfficial}


@pytest.mark.parametrize("name", list(BIASED))
def test_attention_bias_tables_follow_the_heads(name):
    model = _levit_like(BIASED[name])
    x = (_x(2, 3, 32, 32),)
    with torch.no_grad():
        model(*x)  # a model run before: caches hold full-size tables
    res, masks = _compile(model, x)
    ref = masked_reference(model, masks)
    shapes = [x, (_x(3, 3, 32, 32, seed=1),), (_x(1, 3, 32, 32, seed=2),)]
    _assert_exact(res.model, ref, shapes)
    attn = [m for m in res.model.modules() if hasattr(m, "attention_biases")]
    heads = {m.attention_biases.shape[0] for m in attn}
    assert heads == {m.num_heads for m in attn} and max(heads) < 4, heads  # the tables' rows are the kept heads
    assert all(not getattr(m, "attention_bias_cache", {}) or
               all(t.shape[0] == m.num_heads for t in m.attention_bias_cache.values()) for m in attn)
    # out of eval and back: what train() makes is made from the slim tables
    res.model.train()
    res.model.eval()
    _assert_exact(res.model, ref, shapes[:1])
    # in training mode (the tables, not a cache, and batch statistics): the same as the masked model
    torch.manual_seed(0)
    a = res.model.train()(shapes[1][0])
    b = ref.train()(shapes[1][0])
    assert (a - b).abs().max() <= TOL * max(1.0, float(b.abs().max()))


def test_official_levit_table_is_cut_like_its_eval_tensor():
    """The official LeViT's eval graph reads ``self.ab``, not the table: the table is cut along
    the dim measured to make ``ab``'s kept heads, and the report says so."""
    model = _levit_like(ab.LevitOfficial)
    res, _ = _compile(model, (_x(2, 3, 32, 32),))
    notes = " ".join(res.report["user_model"]["notes"])
    assert "attention_biases: cut along dim 0 like ab" in notes
    m = res.model.blocks[0].m
    assert m.attention_biases.shape[0] == m.ab.shape[0] == m.num_heads < 4


def test_linear_norm_reshape_as_prunes_through_export():
    """LeViT's ``LinearNorm``: ``bn(x.flatten(0, 1)).reshape_as(x)`` — through torch.export it is
    ATen's ``reshape_as`` (HF's LeViT traces that way), which passes channels like the method."""
    torch.manual_seed(0)
    model = randomize_norms(nn.Sequential(ab.LinearNorm(12, 24), nn.Hardswish(), ab.LinearNorm(24, 8))).eval()
    x = (_x(2, 5, 12),)
    res, masks = _compile(model, x, ratio=0.5, front_end="export")
    assert res.module.get_parameter("0.linear.weight").shape[0] < 24
    _assert_exact(res.model, masked_reference(model, masks), [x, (_x(3, 7, 12, seed=1),)])


def test_size_attributes_are_read_word_by_word():
    """``attention_ratio`` is no ``n_…`` count and ``hidden_dim`` holds no ``id``: a module's
    size attributes are found by whole words, spatial and input sizes left alone."""
    from slimc.surgery.leaves import size_named

    assert all(size_named(n) for n in ("hidden_dim", "num_heads", "embed_dim", "n_embd", "kdim", "normalized_shape"))
    assert not any(size_named(n) for n in ("attention_ratio", "image_size", "pad_token_id", "num_layers",
                                           "max_position_embeddings", "seq_length", "_qkv_same_embed_dim"))


# --------------------------------------------------------------------------- nn.MultiheadAttention
MHA_OPTIONS = list(itertools.product([True, False], [False, True], [False, True], [None, (12, 20)], [True, False],
                                     [None, "bool", "float"], [None, "bool"]))


@pytest.mark.parametrize("batch_first,bias_kv,zero_attn,kv,need_weights,mask,kpm",
                         MHA_OPTIONS[::3] + [MHA_OPTIONS[-1]])
def test_slim_multihead_attention_computes_what_torch_does(batch_first, bias_kv, zero_attn, kv, need_weights, mask,
                                                           kpm):
    """At full size (heads of embed_dim // num_heads) SlimMultiheadAttention gives what
    nn.MultiheadAttention gives (its fast path included), for its options and masks."""
    torch.manual_seed(0)
    kdim, vdim = kv or (None, None)
    m = nn.MultiheadAttention(16, 4, add_bias_kv=bias_kv, add_zero_attn=zero_attn, kdim=kdim, vdim=vdim,
                              batch_first=batch_first).eval()
    s = copy.deepcopy(m)
    s.__class__ = SlimMultiheadAttention
    s.slimc_v_head_dim, s.slimc_scale = s.head_dim, original_scale(s.head_dim)
    mk = (lambda n, w: _x(3, n, w, seed=n * w)) if batch_first else (lambda n, w: _x(n, 3, w, seed=n * w))
    q = mk(5, 16)
    k, v = (mk(7, kdim), mk(7, vdim)) if kv else (q, q)
    am = {None: None, "bool": torch.rand(5, 5 if not kv else 7) > 0.7,
          "float": torch.randn(5, 5 if not kv else 7)}[mask]
    kp = (torch.rand(3, k.shape[1] if batch_first else k.shape[0]) > 0.7) if kpm else None
    for avg in (True, False):
        kw = dict(key_padding_mask=kp, need_weights=need_weights, attn_mask=am, average_attn_weights=avg)
        with torch.no_grad():
            a, b = m(q, k, v, **kw), s(q, k, v, **kw)
        torch.testing.assert_close(b[0], a[0], atol=1e-5, rtol=1e-5, equal_nan=True)
        assert (a[1] is None) == (b[1] is None)
        if a[1] is not None:
            torch.testing.assert_close(b[1], a[1], atol=1e-5, rtol=1e-5, equal_nan=True)


def _stream_masks(model: TokenEncoder, channels, heads) -> dict:
    """Hidden channels removed from the whole residual stream (every source: the embedding,
    each block's attention output and MLP output) and whole heads from every attention."""
    d, masks = 8, {}
    masks["embed.weight"] = torch.ones(32, 16)
    masks["embed.weight"][channels] = 0
    for i, blk in enumerate(model.layers):
        for name in (f"layers.{i}.self_attention.out_proj.weight", f"layers.{i}.mlp.3.weight"):
            w = torch.ones(32, 1)
            w[channels] = 0
            masks[name] = w
        w = torch.ones(96, 1)
        for part, h in itertools.product(range(3), heads):
            w[part * 32 + h * d: part * 32 + (h + 1) * d] = 0
        masks[f"layers.{i}.self_attention.in_proj_weight"] = w
    return masks


@pytest.mark.parametrize("channels,heads,standard", [
    (list(range(8, 24)), [0, 3], True),  # 16 hidden channels left, 2 heads of 8: torch's own module holds it
    ([], [1], False),  # heads alone: 3 heads of 8 in 32 channels
    ([0, 5, 9, 30], [], False),  # the hidden size alone: 4 heads of 8 in 28 channels
], ids=["heads-and-hidden", "heads", "hidden"])
def test_multihead_attention_sizes_follow_the_kept_heads(channels, heads, standard):
    torch.manual_seed(0)
    model = randomize_norms(TokenEncoder()).eval()
    masks = _stream_masks(model, channels, heads)
    x = (_x(2, 9, 16),)
    res = slimc.compile(model, masks, x)
    assert res.model is not None, res.report["user_model"]["reason"]
    mha = res.model.layers[0].self_attention
    assert isinstance(mha, nn.MultiheadAttention)
    assert (type(mha) is nn.MultiheadAttention) == standard, type(mha)
    assert mha.num_heads == 4 - len(heads) and mha.embed_dim == 32 - len(channels)
    assert mha.in_proj_weight.shape == (3 * 8 * mha.num_heads, mha.embed_dim)
    if standard:
        assert mha.head_dim == mha.embed_dim // mha.num_heads == 8
    for name, m in masks.items():  # the final masks hold these (and extend them to the norms' γ, β …)
        assert bool(((m == 0) <= (res.masks[name] == 0)).all()), name
    ref = masked_reference(model, res.masks)
    shapes = [x, (_x(3, 17, 16, seed=1),), (_x(1, 4, 16, seed=2),)]
    _assert_exact(res.model, ref, shapes)
    with torch.enable_grad():  # out of torch's fast path (grad on, weights require grad) too
        d, s = max_diff([res.model(shapes[1][0])], [ref(shapes[1][0])])
    assert d <= TOL * max(1.0, s)


def test_vision_transformer_with_multihead_attention_in_the_users_class():
    """torchvision's ViT as pruned by `slimc prune` (heads and hidden size apart): the slim
    class runs at every batch; its image size is fixed by the model (position table)."""
    torch.manual_seed(0)
    model = VisionTransformer(image_size=32, patch_size=8, num_layers=2, num_heads=4, hidden_dim=32, mlp_dim=64,
                              num_classes=10).eval()
    x = (_x(2, 3, 32, 32),)
    res, masks = _compile(model, x)
    assert res.model.hidden_dim == res.model.conv_proj.out_channels < 32
    assert res.model.image_size == 32
    ref = masked_reference(model, masks)
    _assert_exact(res.model, ref, [x, (_x(3, 3, 32, 32, seed=1),), (_x(1, 3, 32, 32, seed=2),)])


def test_transformer_encoder_layer_runs_its_slim_modules():
    """nn.TransformerEncoderLayer's fused path (eval, no grad) reads its attention's and norms'
    tensors, not their forward: with an exact LayerNorm or a SlimMultiheadAttention inside, the
    path is switched off and the layer runs its modules, exact at every shape."""
    class Encoder(nn.Module):
        def __init__(self):
            super().__init__()
            self.emb = nn.Linear(16, 32)
            layer = nn.TransformerEncoderLayer(32, 4, 64, dropout=0.0, batch_first=True)
            self.enc = nn.TransformerEncoder(layer, 2, enable_nested_tensor=False)
            self.head = nn.Linear(32, 5)

        def forward(self, x):
            return self.head(self.enc(self.emb(x)))

    torch.manual_seed(0)
    model = randomize_norms(Encoder()).eval()
    x = (_x(2, 9, 16),)
    res, masks = _compile(model, x, ratio=0.5)
    layer = res.model.enc.layers[0]
    assert type(layer.norm1) is not nn.LayerNorm and layer.activation_relu_or_gelu == 0  # the exact subclass
    _assert_exact(res.model, masked_reference(model, masks), [x, (_x(3, 13, 16, seed=1),), (_x(1, 4, 16, seed=2),)])

