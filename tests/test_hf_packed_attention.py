"""Attention projections packed in other layouts (issue #21, point 3): q, k, v interleaved per
head in one Linear (Bloom, GPT-NeoX), fused multi-query / grouped QKV (Falcon), per-head ALiBi
slopes (Bloom); the FFN of parallel-attention blocks (Falcon).

End to end (``families.run_family``: ``slimc prune`` → ``slimc compile`` → ``slimc.load`` in a
fresh process, exact against the masked model at three shapes, another batch among them, greedy
``generate()`` equal, ``slim.onnx`` in onnxruntime), and the rules and passes underneath on
small hand-written modules (checked with ``helpers.assert_contract``).
"""
from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from torch import nn

import slimc
from helpers import assert_contract, mask_rows, n_params
from test_families import NEOX, SHAPES, _ids  # (GPT-NeoX: q, k, v interleaved per head; three shapes)

V = 128  # vocabulary

BLOOM = """
import torch, transformers as T
torch.manual_seed(0)
model = T.BloomForCausalLM(T.BloomConfig(vocab_size=128, hidden_size=64, n_layer=2, n_head=4)).eval()
example_inputs = {"input_ids": torch.randint(0, 128, (2, 12), generator=torch.Generator().manual_seed(0))}
"""

FALCON = """
import torch, transformers as T
torch.manual_seed(0)
model = T.FalconForCausalLM(T.FalconConfig(vocab_size=128, hidden_size=64, num_hidden_layers=2,
                                           num_attention_heads=4{extra})).eval()
example_inputs = {{"input_ids": torch.randint(0, 128, (2, 12), generator=torch.Generator().manual_seed(0))}}
"""


def _family(tmp_path, source: str, ratio: float = 0.3):
    pytest.importorskip("transformers")
    from families import run_family

    run = run_family(tmp_path, source, SHAPES, prompt=_ids(1, 5, 4)["input_ids"],
                     prune=("--criterion", "l1", "--ratio", str(ratio), "--round-to", "1", "--free-widths"))
    run.assert_exact()
    assert run.report["user_model"]["built"], run.report["user_model"]
    assert run.report["params"]["after"] < run.report["params"]["before"]
    return run, slimc.load(run.out)


def _ffn_pruned(blocks) -> bool:
    return any(b.mlp.dense_h_to_4h.out_features < 4 * 64 for b in blocks)


# --------------------------------------------------------------------------- end to end
def test_falcon_multi_query_parallel_attention_end_to_end(tmp_path):
    """Default Falcon: one shared key/value head (multi-query), attention and MLP in parallel on
    one LayerNorm, ``input @ self.weight.T`` layers. Query heads go on their own (the split
    sizes and n_rep follow); the key/value head stays; the parallel FFN is pruned."""
    run, slim = _family(tmp_path, FALCON.format(extra=""))
    attn = [b.self_attention for b in slim.transformer.h]
    assert any(a.num_heads < 4 for a in attn), "no query head was pruned"
    for a in attn:
        assert a.num_kv_heads == 1 and a.num_key_value_groups == a.num_heads
        assert a.query_key_value.out_features == (a.num_heads + 2) * a.head_dim
    assert _ffn_pruned(slim.transformer.h), "the parallel-attention FFN was not pruned"


def test_bloom_alibi_heads_stay_ffn_and_hidden_go(tmp_path):
    """Bloom: q, k, v interleaved per head, ALiBi slopes computed from the head count. A head
    cannot go (its slope is a position of ``arange(1, 1 + heads)``; the class would compute
    other slopes for fewer heads), and ``slimc prune`` says so; head dims, FFN and hidden go."""
    run, slim = _family(tmp_path, BLOOM)
    assert "attention heads stay whole" in run.prune_stdout and "alibi" in run.prune_stdout, run.prune_stdout
    assert all(b.self_attention.num_heads == 4 for b in slim.transformer.h)
    assert _ffn_pruned(slim.transformer.h)
    assert slim.transformer.word_embeddings.embedding_dim < 64  # hidden size


@pytest.mark.slow
def test_gpt_neox_interleaved_heads_end_to_end(tmp_path):
    """GPT-NeoX: ``query_key_value`` viewed as (B, T, H, 3·D) and chunked: whole heads go."""
    run, slim = _family(tmp_path, NEOX)
    qkv = [b.attention.query_key_value for b in slim.gpt_neox.layers]
    head = 64 // 4  # the original head size (the slim config's hidden // heads is not it)
    assert any(q.out_features < 3 * 64 and q.out_features % (3 * head) == 0 for q in qkv), \
        [q.out_features for q in qkv]


@pytest.mark.slow
def test_falcon_grouped_kv_new_decoder_architecture_end_to_end(tmp_path):
    """Falcon's new decoder architecture (grouped KV: [q…, k, v] per key/value group, k and v
    read by int indices): a key/value group goes with its query heads (half of the two groups:
    ratio 0.5); the FFN goes."""
    run, slim = _family(tmp_path, FALCON.format(extra=", new_decoder_architecture=True, num_kv_heads=2"), 0.5)  # 1 of 2
    attn = [b.self_attention for b in slim.transformer.h]
    assert any(a.num_kv_heads < 2 for a in attn), "no key/value group was pruned"
    for a in attn:
        assert a.num_heads == 2 * a.num_kv_heads and a.num_key_value_groups == 2
        assert a.query_key_value.out_features == (a.num_heads + 2 * a.num_kv_heads) * a.head_dim
    assert _ffn_pruned(slim.transformer.h)


# --------------------------------------------------------------------------- passes
class TwoNorms(nn.Module):
    """Bloom's embedding LayerNorm feeding the first block's: a LayerNorm whose input is the
    output of another one that ``exact_layernorm`` replaces."""

    def __init__(self):
        super().__init__()
        self.fc = nn.Linear(8, 16)
        self.ln1, self.ln2 = nn.LayerNorm(16), nn.LayerNorm(16)
        self.out = nn.Linear(16, 4)

    def forward(self, x):
        return self.out(self.ln2(self.ln1(self.fc(x))))


@pytest.mark.parametrize("front_end", ["fx", "export"])
def test_a_layernorm_reads_the_node_that_replaced_the_previous_one(front_end):
    torch.manual_seed(0)
    m = TwoNorms().eval()
    rows = [1, 6, 9]
    masks = {"fc.weight": mask_rows(m, "fc.weight", rows), "fc.bias": mask_rows(m, "fc.bias", rows)}
    masks.update({f"ln1.{p}": mask_rows(m, f"ln1.{p}", rows) for p in ("weight", "bias")})
    res = assert_contract(m, masks, (torch.randn(2, 5, 8),), front_end=front_end)
    notes = " ".join(res.report["notes"])
    assert notes.count("exact LayerNorm over 13 of 16") == 2, notes


def test_a_node_a_pass_made_for_no_traced_node_has_no_shape():
    """A pass that makes a node and does not say which traced node it stands for gets an
    error naming that node, not a silently skipped rewrite."""
    from helpers import stages
    from slimc.errors import PlanError
    from slimc.passes import RewriteContext

    m = TwoNorms().eval()
    gm, _, p = stages(m, {}, (torch.randn(2, 5, 8),))
    ctx = RewriteContext(p)
    ln1 = next(n for n in gm.graph.nodes if n.target == "ln1")
    old = ctx.shapes.old(ln1)
    with gm.graph.inserting_after(ln1):
        made = gm.graph.call_function(torch.neg, (ln1,))
    with pytest.raises(PlanError, match=made.name):
        ctx.shapes.old(made)
    with gm.graph.inserting_before(ln1):
        stand_in = gm.graph.call_function(torch.clone, (ln1.args[0],))
    ctx.replace(ln1, stand_in)  # (a pass's rewrite: stand_in computes what ln1 did)
    assert ctx.shapes.old(stand_in) == old == (2, 5, 16)
    assert ctx.shapes.traced_name(stand_in) == "ln1"


# --------------------------------------------------------------------------- transposed parameters
TRANSPOSES = {
    "T": lambda w: w.T, "t": lambda w: w.t(), "mT": lambda w: w.mT, "H": lambda w: w.H,
    "adjoint": lambda w: w.adjoint(), "permute": lambda w: w.permute(1, 0), "swapdims": lambda w: w.swapdims(0, 1),
    "movedim": lambda w: w.movedim(0, 1), "torch.t": torch.t, "T.T.T": lambda w: w.T.T.T,
}


class TransposedLinear(nn.Module):
    """Falcon's ``FalconLinear``: ``input @ self.weight.T + self.bias``."""

    def __init__(self, how: str):
        super().__init__()
        self.how = how
        self.w1, self.b1 = nn.Parameter(torch.randn(16, 8)), nn.Parameter(torch.randn(16))
        self.w2 = nn.Parameter(torch.randn(4, 16))

    def forward(self, x):
        t = TRANSPOSES[self.how]
        return torch.relu(x @ t(self.w1) + self.b1) @ t(self.w2)


@pytest.mark.parametrize("how, front_end", [*((h, "fx") for h in TRANSPOSES),
                                            *((h, "export") for h in ("T", "mT", "t", "movedim"))])
def test_a_transposed_weight_is_a_linear_layer(how, front_end):
    torch.manual_seed(0)
    m = TransposedLinear(how).eval()
    rows = [1, 5, 7]
    masks = {"w1": mask_rows(m, "w1", rows), "b1": mask_rows(m, "b1", rows)}
    res = assert_contract(m, masks, (torch.randn(3, 8),), front_end=front_end)
    assert n_params(res.module) == n_params(m) - 3 * (8 + 1 + 4)
    assert not res.report["barriers"], res.report["barriers"]


def test_movedim_order_matches_torch():
    from slimc.shape_rules.permute import _moved

    class View:
        def __init__(self, *args):
            self.args = args

        def arg(self, i, name=None, default=None):
            return self.args[i] if i < len(self.args) else default

    x = torch.zeros(2, 3, 4, 5)
    for src, dst in [(0, 2), (-1, 0), ((0, 1), (3, 2)), ([2], [0])]:
        perm = _moved(View(x, src, dst), 4)
        assert tuple(x.shape[p] for p in perm) == tuple(torch.movedim(x, src, dst).shape), (src, dst)


# --------------------------------------------------------------------------- int indices
class Grouped(nn.Module):
    """Falcon's grouped [q, q, k, v] per key/value group, read by int indices and a slice
    counted from the end: ``g[..., :-2, :]``, ``g[..., -2, :]``, ``g[..., -1, :]``."""

    def __init__(self):
        super().__init__()
        self.qkv = nn.Linear(16, 2 * 4 * 8)
        self.q_out, self.kv_out = nn.Linear(2 * 2 * 8, 16), nn.Linear(2 * 8, 16)

    def forward(self, x):
        g = self.qkv(x).view(x.shape[0], x.shape[1], 2, -1, 8)
        q, k, v = g[..., :-2, :].flatten(-3), g[..., -2, :].flatten(-2), g[..., -1, :].flatten(-2)
        return self.q_out(q) + self.kv_out(k * v)


@pytest.mark.parametrize("front_end", ["fx", "export"])
def test_int_indices_read_a_group_that_goes_whole(front_end):
    torch.manual_seed(0)
    m = Grouped().eval()
    x = (torch.randn(2, 5, 16),)
    g1 = list(range(32, 64))  # key/value group 1: its two queries, its key and its value
    masks = {"qkv.weight": mask_rows(m, "qkv.weight", g1), "qkv.bias": mask_rows(m, "qkv.bias", g1),
             "q_out.weight": mask_rows(m, "q_out.weight", list(range(16, 32)), dim=1),
             "kv_out.weight": mask_rows(m, "kv_out.weight", list(range(8, 16)), dim=1)}
    res = assert_contract(m, masks, x, front_end=front_end)
    assert tuple(res.module.get_parameter("qkv.weight").shape) == (32, 16)
    assert (tuple(res.module.get_parameter("q_out.weight").shape), tuple(res.module.get_parameter("kv_out.weight").shape)) \
        == ((16, 16), (16, 8))
    k0 = [16 + d for d in range(8)]  # group 0's key alone: read by the int index, it stays
    res = assert_contract(m, {"qkv.weight": mask_rows(m, "qkv.weight", k0), "qkv.bias": mask_rows(m, "qkv.bias", k0)},
                          x, front_end=front_end)
    assert tuple(res.module.get_parameter("qkv.weight").shape) == (64, 16)


class Picks(nn.Module):
    def __init__(self, at: int):
        super().__init__()
        self.at, self.fc, self.head = at, nn.Linear(8, 6), nn.Linear(6, 3)

    def forward(self, x):
        h = self.fc(x)
        return self.head(h) * h[:, self.at].unsqueeze(-1)


@pytest.mark.parametrize("front_end", ["fx", "export"])
@pytest.mark.parametrize("at", [4, -1])
def test_an_int_index_holds_its_position_only(at, front_end):
    """``h[:, i]`` reads one channel: the others may go, the index moves with them."""
    torch.manual_seed(0)
    m = Picks(at).eval()
    x = (torch.randn(5, 8),)
    rows = [1, 2]
    res = assert_contract(m, {"fc.weight": mask_rows(m, "fc.weight", rows), "fc.bias": mask_rows(m, "fc.bias", rows)},
                          x, front_end=front_end)
    assert tuple(res.module.get_parameter("fc.weight").shape) == (4, 8)
    picked = [at % 6]
    res = assert_contract(m, {"fc.weight": mask_rows(m, "fc.weight", picked),
                              "fc.bias": mask_rows(m, "fc.bias", picked)}, x, front_end=front_end)
    assert tuple(res.module.get_parameter("fc.weight").shape) == (6, 8)


def test_a_size_after_a_starred_one_is_found():
    from slimc.surgery.provenance import Attribute, classify, size_argument

    src = "m.py:3: g = x.view(*input_shape, self.num_kv_heads, -1, self.head_dim)"
    assert classify(size_argument(src, "view", 2, 5)) == Attribute(("num_kv_heads",))
    assert classify(size_argument(src, "view", 4, 5)) == Attribute(("head_dim",))
    assert size_argument(src, "view", 1, 5) is None  # one of *input_shape


# --------------------------------------------------------------------------- multi-query attention
class MultiQuery(nn.Module):
    """Falcon's multi-query attention, written as Falcon writes it: one fused Linear of
    (heads + 2) · head_dim outputs, ``split([self.num_heads, 1, 1])``, ``repeat_kv``'s expand
    of the one key/value head to every query head."""

    def __init__(self, dim=32, heads=4):
        super().__init__()
        self.num_heads, self.num_kv_heads, self.head_dim = heads, 1, dim // heads
        self.num_key_value_groups = heads // self.num_kv_heads
        self.qkv = nn.Linear(dim, (heads + 2) * self.head_dim, bias=False)
        self.dense = nn.Linear(heads * self.head_dim, dim, bias=False)

    def forward(self, x):
        b, t, _ = x.shape
        q, k, v = self.qkv(x).view(b, t, -1, self.head_dim).split([self.num_heads, 1, 1], dim=-2)
        q, k, v = q.transpose(1, 2), k.transpose(1, 2), v.transpose(1, 2)
        n = self.num_key_value_groups
        k = k[:, :, None].expand(b, 1, n, t, self.head_dim).reshape(b, n, t, self.head_dim)
        v = v[:, :, None].expand(b, 1, n, t, self.head_dim).reshape(b, n, t, self.head_dim)
        y = F.scaled_dot_product_attention(q, k, v, is_causal=True)
        return self.dense(y.transpose(1, 2).reshape(b, t, -1))


@pytest.mark.parametrize("front_end", ["fx", "export"])
def test_multi_query_a_query_head_goes_alone_and_the_class_follows(front_end):
    torch.manual_seed(0)
    m = MultiQuery().eval()
    rows = [2 * 8 + d for d in range(8)]  # query head 2: its q rows and its output columns (complete masks)
    masks = {"qkv.weight": mask_rows(m, "qkv.weight", rows), "dense.weight": mask_rows(m, "dense.weight", rows, dim=1)}
    res = assert_contract(m, masks, (torch.randn(2, 6, 32),), front_end=front_end)
    assert tuple(res.module.get_parameter("qkv.weight").shape) == (40, 32)  # 3 query heads + k + v
    assert tuple(res.module.get_parameter("dense.weight").shape) == (32, 24)
    res = slimc.compile(m, masks, (torch.randn(2, 6, 32),), front_end=front_end)
    slim = res.model  # the user's class: split sizes and n_rep follow
    assert slim is not None, res.report["user_model"]
    assert (slim.num_heads, slim.num_kv_heads, slim.num_key_value_groups) == (3, 1, 3)
    x = torch.randn(3, 9, 32)  # another batch and length
    ref = MultiQuery().eval()
    ref.load_state_dict(m.state_dict())
    with torch.no_grad():
        ref.qkv.weight[rows] = 0
        ref.dense.weight[:, rows] = 0
        assert torch.allclose(slim(x), ref(x), atol=1e-5)


def test_the_key_value_head_of_multi_query_stays_with_query_heads():
    """Masking the shared key/value head's rows: every query head reads it, so it stays (only
    with all query heads could it go: the layer would be empty)."""
    torch.manual_seed(0)
    m = MultiQuery().eval()
    kv_rows = list(range(32, 48))
    res = assert_contract(m, {"qkv.weight": mask_rows(m, "qkv.weight", kv_rows[:8])}, (torch.randn(2, 6, 32),))
    assert tuple(res.module.get_parameter("qkv.weight").shape)[0] in (48, 40)  # k's rows stay (v may lose some)
    assert tuple(res.module.get_parameter("dense.weight").shape) == (32, 32)


# --------------------------------------------------------------------------- ALiBi
class Alibi(nn.Module):
    """Bloom's attention pattern: fused per-head [q, k, v] rows, heads merged into the batch
    (``baddbmm`` onto ALiBi slopes ``base ** arange(1, 1 + heads)`` tiled by ``repeat``)."""

    def __init__(self, dim=32, heads=4):
        super().__init__()
        self.num_heads, self.head_dim = heads, dim // heads
        self.qkv = nn.Linear(dim, 3 * dim)
        self.dense = nn.Linear(dim, dim)
        self.fc1, self.fc2 = nn.Linear(dim, 2 * dim), nn.Linear(2 * dim, dim)

    def forward(self, x):
        b, t, c = x.shape
        h, d = self.num_heads, self.head_dim
        slopes = torch.pow(torch.full((), 0.5, device=x.device), torch.arange(1, 1 + h, device=x.device))
        alibi = (slopes[:, None, None] * torch.arange(t, device=x.device)[None, None, :]).repeat(b, 1, 1)
        qkv = self.qkv(x).view(b, t, h, 3, d)
        q = qkv[..., 0, :].transpose(1, 2).reshape(b * h, t, d)
        k = qkv[..., 1, :].transpose(1, 2).reshape(b * h, t, d)
        v = qkv[..., 2, :].transpose(1, 2).reshape(b * h, t, d)
        scores = alibi.baddbmm(q, k.transpose(-1, -2), beta=1.0, alpha=d ** -0.5)
        y = torch.bmm(scores.softmax(-1), v).view(b, h, t, d).permute(0, 2, 1, 3).reshape(b, t, h * d)
        y = x + self.dense(y)
        return y + self.fc2(self.fc1(y).relu())


@pytest.mark.parametrize("front_end", ["fx", "export"])
def test_alibi_slopes_hold_the_heads_head_dims_go(front_end):
    torch.manual_seed(0)
    m = Alibi().eval()
    x = (torch.randn(2, 6, 32),)
    head1 = [s * 8 + d for s in range(3) for d in range(8)]  # q, k, v rows of head 1 (layout h, 3, d)
    head1 = [24 + r for r in head1]
    res = assert_contract(m, {"qkv.weight": mask_rows(m, "qkv.weight", head1)}, x, front_end=front_end)
    assert tuple(res.module.get_parameter("qkv.weight").shape) == (96, 32), "a head with its own slope went"
    dims = [h * 24 + s * 8 + 5 for h in range(4) for s in range(3)]  # dim 5 of q, k, v in every head
    res = assert_contract(m, {"qkv.weight": mask_rows(m, "qkv.weight", dims)}, x, front_end=front_end)
    assert tuple(res.module.get_parameter("qkv.weight").shape) == (84, 32)


def test_alibi_heads_are_named_by_the_pruner():
    from slimc.prune import make_pruner

    torch.manual_seed(0)
    m = Alibi().eval()
    pruned = make_pruner(m, (torch.randn(2, 6, 32),), "l1", ratio=0.3).prune()
    assert any("attention heads stay whole" in n and "repeat" in n for n in pruned.notes), pruned.notes


def test_repeat_tiles_a_channel_dim():
    """``h.repeat(1, 2)``: a channel goes from both tiles; the tiles stay."""

    class M(nn.Module):
        def __init__(self):
            super().__init__()
            self.a, self.b = nn.Linear(8, 4), nn.Linear(8, 3)

        def forward(self, x):
            return self.b(self.a(x).relu().repeat(1, 2))

    torch.manual_seed(0)
    m = M().eval()
    res = assert_contract(m, {"a.weight": mask_rows(m, "a.weight", [1]), "a.bias": mask_rows(m, "a.bias", [1])},
                          (torch.randn(5, 8),))
    assert tuple(res.module.b.weight.shape) == (3, 6)


# --------------------------------------------------------------------------- HF configs
def test_a_config_its_class_refuses_keeps_the_old_values():
    T = pytest.importorskip("transformers")
    from slimc.surgery.hf import _kept_valid

    cfg0 = T.FalconConfig(vocab_size=V, hidden_size=64, num_hidden_layers=2, num_attention_heads=4)
    cfg = T.FalconConfig(vocab_size=V, hidden_size=64, num_hidden_layers=2, num_attention_heads=4)
    cfg.hidden_size = 45  # head dim 45 // 4 = 11: RoPE refuses an odd one
    kept = _kept_valid(cfg, cfg0, ["hidden_size: 64 → 45"])
    assert cfg.hidden_size == 64 and kept and "RoPE" in kept[0]
    cfg.hidden_size = 48  # 12: fine
    assert _kept_valid(cfg, cfg0, ["hidden_size: 64 → 48"]) == [] and cfg.hidden_size == 48


def test_user_code_in_the_summary_is_printed_as_written():
    """A reason quoting ``split([self.num_heads, 1, 1], dim=-2)`` is not rich markup: the
    brackets stay (they were dropped from the summary, leaving ``split(, dim=-2)``)."""
    import io

    from rich.console import Console

    from slimc.report import render

    line = "m.py:9: q, k, v = fused.split([self.num_heads, 1, 1], dim=-2)"
    report = {"params": {"before": 10, "after": 8}, "flops": {}, "layers": [], "barriers": [{"node": "split", "reason": "r",
                                                                              "source": line}],
              "kept": [{"groups": 1, "reason": f"held at {line}"}], "notes": [f"note at {line}"],
              "user_model": {"built": False, "class": "M", "reason": f"{line}: not followed"}}
    buf = io.StringIO()
    render(report, Console(file=buf, width=400, highlight=False))
    out = buf.getvalue()
    assert out.count("[self.num_heads, 1, 1]") >= 3, out
