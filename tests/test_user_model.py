"""``res.model``: the user's own class, physically slim — same class, smaller leaf modules of
the same classes, size attributes updated, verified like the graph, at other input shapes,
reloadable in a fresh process; ``None`` with the line where the code holds a literal size."""
from __future__ import annotations

import io
import subprocess
import sys
import textwrap

import pytest
import torch
import torch.nn.functional as F
from torch import nn

import slimc
from slimc.inputs import as_tuple
from slimc.verify import shape_text
from helpers import masked_reference, max_diff, n_params, random_filter_masks, run_eval, user_masked
from slimc import zoo
from slimc.prune import group_masks


def _exact(a: nn.Module, b: nn.Module, x: tuple) -> None:
    d, s = max_diff(run_eval(a, x), run_eval(b, x))
    assert d <= 1e-5 * max(1.0, s), d


@pytest.mark.parametrize("name", ["resnet_tiny", "densenet_small", "senet_small", "vit_tiny", "bert_tiny",
                                  "gpt_tiny", "llama_tiny"])
def test_zoo_model_of_its_own_class(name):
    torch.manual_seed(0)
    m = zoo.build(name).eval()
    x = zoo.example_inputs(name)
    masks = group_masks(m, x, 0.5)
    res = slimc.compile(m, masks, x)
    assert res.model is not None, res.report["user_model"]
    assert type(res.model) is type(m)
    assert n_params(res.model) == n_params(res.module) < n_params(m)
    for (p0, m0), (p1, m1) in zip(m.named_modules(), res.model.named_modules()):
        assert p0 == p1 and isinstance(m1, type(m0)), p0  # leaf modules: the same classes (or exact subclasses)
    assert res.report["user_model"]["built"] and "checked like the graph" in " ".join(res.report["user_model"]["notes"])
    _exact(res.model, user_masked(m, masks, res.masks), x)


class Attention(nn.Module):
    """timm's Attention: sizes from attributes, an optional mask passed on to SDPA."""

    def __init__(self, dim=32, num_heads=4):
        super().__init__()
        self.num_heads, self.head_dim = num_heads, dim // num_heads
        self.attn_dim = num_heads * self.head_dim
        self.scale = self.head_dim ** -0.5
        self.qkv = nn.Linear(dim, self.attn_dim * 3)
        self.proj = nn.Linear(self.attn_dim, dim)

    def forward(self, x, attn_mask=None, is_causal: bool = False):
        B, N, C = x.shape
        qkv = self.qkv(x).reshape(B, N, 3, self.num_heads, self.head_dim).permute(2, 0, 3, 1, 4)
        q, k, v = qkv.unbind(0)
        x = F.scaled_dot_product_attention(q, k, v, attn_mask=attn_mask, is_causal=is_causal)
        return self.proj(x.transpose(1, 2).reshape(B, N, self.attn_dim))


class Tagger(nn.Module):
    def __init__(self):
        super().__init__()
        self.embed = nn.Linear(8, 32)
        self.attn = Attention()
        self.norm = nn.LayerNorm(32)
        self.head = nn.Linear(32, 5)

    def forward_features(self, x, attn_mask=None):
        x = self.embed(x)
        return self.norm(x + self.attn(x, attn_mask=attn_mask))

    def forward(self, x, attn_mask=None):
        return self.head(self.forward_features(x, attn_mask))


def test_optional_mask_argument_loses_heads_and_attributes_follow():
    torch.manual_seed(0)
    m = Tagger().eval()
    x = (torch.randn(2, 7, 8),)
    masks = group_masks(m, x, 0.5)
    res = slimc.compile(m, masks, x)
    assert res.module.attn.qkv.out_features == 48  # 2 of 4 heads left (plus hidden 32 → 16)
    slim = res.model
    assert slim is not None and type(slim) is Tagger
    assert (slim.attn.num_heads, slim.attn.head_dim, slim.attn.attn_dim) == (2, 8, 16)
    assert slim.attn.scale == m.attn.scale
    ref = user_masked(m, masks, res.masks).eval()
    mask = torch.randn(1, 1, 11, 11)
    for xs in [(torch.randn(3, 11, 8), mask), (torch.randn(1, 4, 8),)]:
        _exact(slim, ref, xs)
    with torch.no_grad():  # the class's other methods work on the slim model
        got, want = slim.forward_features(x[0]), ref.forward_features(x[0])
    assert got.shape[-1] == 16 and torch.allclose(got[..., :], want[..., res.plan.kept_idx(("p", "norm.weight", 0))], atol=1e-5)


def test_fine_tune_step_and_hooks_on_the_slim_model():
    torch.manual_seed(0)
    m = Tagger()
    seen = []
    m.head.register_forward_hook(lambda mod, inp, out: seen.append(out.shape))
    x = (torch.randn(2, 7, 8),)
    res = slimc.compile(m, group_masks(m, x, 0.5), x)
    slim = res.model
    assert slim.training  # same train/eval mode as the original
    opt = torch.optim.SGD(slim.parameters(), lr=0.1)
    loss = slim(*x).square().mean()
    loss.backward()
    opt.step()
    assert all(p.grad is not None for p in slim.parameters())
    assert seen and seen[-1] == (2, 7, 5)


class LiteralView(nn.Module):
    def __init__(self):
        super().__init__()
        self.conv = nn.Conv2d(3, 32, 3, padding=1)
        self.pool = nn.AdaptiveAvgPool2d(4)
        self.fc = nn.Linear(32 * 4 * 4, 10)

    def forward(self, x):
        x = self.pool(torch.relu(self.conv(x)))
        x = x.view(-1, 32 * 4 * 4)
        return self.fc(x)


def test_a_literal_size_in_the_code_names_the_line():
    torch.manual_seed(0)
    m = LiteralView().eval()
    x = (torch.randn(2, 3, 16, 16),)
    res = slimc.compile(m, random_filter_masks(m, 0.5, linear=False), x)
    assert res.model is None
    why = res.report["user_model"]["reason"]
    assert "test_user_model.py" in why and "x.view(-1, 32 * 4 * 4)" in why and "512 → 256" in why, why
    _exact(res.module, masked_reference(m, res.masks), x)  # the graph output is still there and exact


class ScaleFromHeadDim(nn.Module):
    """Causal attention whose forward reads ``self.d`` for the views and for its scale."""

    def __init__(self, c=8, heads=2, d=4):
        super().__init__()
        self.h, self.d = heads, d
        self.q, self.k, self.v = (nn.Linear(c, heads * d) for _ in range(3))
        self.o = nn.Linear(heads * d, c)

    def forward(self, x):
        b, t, _ = x.shape
        q, k, v = (p(x).view(b, t, self.h, self.d).transpose(1, 2) for p in (self.q, self.k, self.v))
        s = torch.matmul(q, k.transpose(-2, -1)) * self.d ** -0.5
        s = s.masked_fill(torch.ones(t, t, dtype=torch.bool).triu(1), float("-inf"))
        return self.o(torch.matmul(F.softmax(s, dim=-1), v).transpose(1, 2).reshape(b, t, self.h * self.d))


def test_an_attribute_read_for_a_value_as_well_names_the_line():
    """Setting ``self.d`` for the views also changes the scale ``self.d ** -0.5`` (the graph
    keeps the original's constant). Only the class's check could catch it, at its small second
    shape: property draw seed 189 came back wrong by 5e-4 at the example, its check (batch 1,
    length 2, causal) passing. The line that reads the attribute is a blocker, named."""
    torch.manual_seed(0)
    m = ScaleFromHeadDim().eval()
    rows = torch.ones(8, 8)
    rows[[1, 2, 3, 5, 6, 7]] = 0  # channels 1-3 of both heads: q·k, and v with its o columns
    cols = torch.ones(8, 8)
    cols[:, [1, 2, 3, 5, 6, 7]] = 0
    x = (torch.randn(2, 6, 8),)
    res = slimc.compile(m, {"q.weight": rows, "k.weight": rows, "v.weight": rows, "o.weight": cols}, x)
    assert tuple(res.module.q.weight.shape) == (2, 8)
    assert res.model is None
    why = res.report["user_model"]["reason"]
    assert "test_user_model.py" in why and "* self.d ** -0.5" in why and "(4 → 1)" in why, why
    _exact(res.module, masked_reference(m, res.masks), x)


def test_checked_at_a_second_shape_said_in_the_report():
    m = zoo.build("resnet_tiny").eval()
    x = zoo.example_inputs("resnet_tiny")
    res = slimc.compile(m, group_masks(m, x, 0.5), x)
    v = res.report["verify"]  # float inputs: random ones at the second shape stand for the example's
    assert v["shapes"] == ["(1, 3, 32, 32)"] != [shape_text(as_tuple(x))] and not v["example"]
    assert "varied input 0 dims [0, 2, 3]" in v["varied"]


def test_the_reference_leaves_the_original_as_it_was_and_needs_no_private_torch_api(monkeypatch):
    from slimc.verify import Masked, Reference

    m = zoo.build("resnet_tiny").eval()
    x = zoo.example_inputs("resnet_tiny")
    res = slimc.compile(m, group_masks(m, x, 0.5), x)
    before = {k: t.clone() for k, t in m.state_dict().items()}
    ids = {k: id(p) for k, p in m.named_parameters()}
    with_context = Reference(m, res.masks, as_tuple(x), {0: [0, 2, 3]})
    monkeypatch.setattr(Masked, "applied", lambda self: None)  # a torch without _reparametrize_module
    without = Reference(m, res.masks, as_tuple(x), {0: [0, 2, 3]})
    for a, b in zip(with_context.outputs, without.outputs):
        assert all(torch.equal(u, v) for u, v in zip(a, b))
    assert {k: id(p) for k, p in m.named_parameters()} == ids  # the model's own parameters are back
    assert all(torch.equal(t, before[k]) for k, t in m.state_dict().items())
    assert with_context.check(res.module).ok


def test_inputs_whose_values_matter_are_checked_as_given_too():
    m = zoo.build("gpt_tiny").eval()
    x = zoo.example_inputs("gpt_tiny")
    res = slimc.compile(m, {}, x)
    v = res.report["verify"]
    assert v["example"] and len(v["shapes"]) == 2 and v["shapes"][0] == shape_text(as_tuple(x))


def test_exact_layernorm_subclass_of_a_user_class_pickles():
    m = zoo.build("gpt_tiny").eval()  # nanoGPT's own LayerNorm class, hidden size pruned
    x = zoo.example_inputs("gpt_tiny")
    res = slimc.compile(m, group_masks(m, x, 0.5), x)
    ln = res.model.transformer.ln_f
    assert isinstance(ln, type(m.transformer.ln_f)) and ln.full_features == 64
    buf = io.BytesIO()
    torch.save(res.model, buf)
    buf.seek(0)
    again = torch.load(buf, weights_only=False)
    _exact(again, res.model, x)


MODEL_PY = textwrap.dedent('''
    import torch
    from torch import nn

    class Net(nn.Module):
        def __init__(self):
            super().__init__()
            self.body = nn.Sequential(nn.Conv2d(3, 16, 3, padding=1), nn.BatchNorm2d(16), nn.ReLU(),
                                      nn.Conv2d(16, 16, 3, padding=1), nn.BatchNorm2d(16), nn.ReLU())
            self.norm = nn.GroupNorm(4, 16)
            self.fc = nn.Linear(16, 4)

        def forward(self, x):
            return self.fc(self.norm(self.body(x)).mean((2, 3)))

    torch.manual_seed(0)
    model = Net().eval()
    example_inputs = torch.randn(2, 3, 8, 8)
''')

FRESH = """
import sys, torch, slimc
m = slimc.load(sys.argv[1])
x, want = torch.load(sys.argv[1] + '/check.pt')
with torch.no_grad():
    print(type(m).__name__, float((m(x) - want).abs().max()))
"""


def test_cli_output_reloads_as_the_users_class_in_a_fresh_process(tmp_path):
    (tmp_path / "model.py").write_text(MODEL_PY)
    masks = {"body.0.weight": torch.ones(16, 3, 3, 3), "body.3.weight": torch.ones(16, 16, 3, 3)}
    masks["body.0.weight"][:8] = 0  # 2 GroupNorm groups' worth
    masks["body.3.weight"][4:12] = 0
    torch.save(masks, tmp_path / "m.pth")
    out = tmp_path / "out"
    cli = [sys.executable, "-m", "slimc.cli", "compile", str(tmp_path / "model.py"), "--masks", str(tmp_path / "m.pth"),
           "-o", str(out), "--no-onnx"]
    proc = subprocess.run(cli, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr
    assert "slim model built" in proc.stdout
    assert (out / "layout.json").is_file() and (out / "model.safetensors").is_file()
    sys.path.insert(0, str(tmp_path))
    try:
        from slimc.loading import load_model

        model, x = load_model(str(tmp_path / "model.py"))
        res = slimc.compile(model, masks, x)
        with torch.no_grad():
            want = res.model(*x)
        torch.save((x[0], want), out / "check.pt")
    finally:
        sys.path.pop(0)
    proc = subprocess.run([sys.executable, "-c", FRESH, str(out)], capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr
    cls, diff = proc.stdout.split()
    assert cls == "Net" and float(diff) <= 1e-6
