"""Mixture-of-experts decoders end to end (transformers' stacked experts): ``slimc prune`` →
``slimc compile`` → ``slimc.load`` in a fresh process is the user's class, exact against the
masked model at three shapes (another batch among them), greedy ``generate()`` equal, and
slim.onnx equal in onnxruntime. Each expert loses its own FFN channels (as many each); the
hidden size and the attention prune as in dense decoders; the experts themselves stay."""
from __future__ import annotations

import pytest
import torch

pytest.importorskip("transformers")

from families import run_family  # noqa: E402

MIXTRAL = """
import torch, transformers as T
torch.manual_seed(0)
model = T.MixtralForCausalLM(T.MixtralConfig(vocab_size=128, hidden_size=64, intermediate_size=128, num_hidden_layers=2,
                                             num_attention_heads=4, num_key_value_heads=2, num_local_experts=4,
                                             max_position_embeddings=64)).eval()
example_inputs = {"input_ids": torch.randint(0, 128, (2, 12), generator=torch.Generator().manual_seed(0))}
"""

QWEN2_MOE = """
import torch, transformers as T
torch.manual_seed(0)
model = T.Qwen2MoeForCausalLM(T.Qwen2MoeConfig(vocab_size=128, hidden_size=64, intermediate_size=128,
                                               moe_intermediate_size=64, shared_expert_intermediate_size=96,
                                               num_hidden_layers=2, num_attention_heads=4, num_key_value_heads=2,
                                               num_experts=4, num_experts_per_tok=2,
                                               max_position_embeddings=64)).eval()
example_inputs = {"input_ids": torch.randint(0, 128, (2, 12), generator=torch.Generator().manual_seed(0))}
"""


_SMALL = ("vocab_size=128, hidden_size=64, num_hidden_layers=2, num_attention_heads=4, num_key_value_heads=2, "
          "max_position_embeddings=64")
OTHERS = {  # more families the installed transformers ships, tiny widths (slow: the default suite runs two)
    "qwen3_moe": "Qwen3MoeForCausalLM(T.Qwen3MoeConfig({}, moe_intermediate_size=64, num_experts=4, num_experts_per_tok=2))",
    "olmoe": "OlmoeForCausalLM(T.OlmoeConfig({}, intermediate_size=64, num_experts=4, num_experts_per_tok=2))",
    "phimoe": "PhimoeForCausalLM(T.PhimoeConfig({}, intermediate_size=64, num_local_experts=4))",
    "granitemoe": "GraniteMoeForCausalLM(T.GraniteMoeConfig({}, intermediate_size=64, num_local_experts=4))",
}


def _source(build: str) -> str:
    return ("import torch, transformers as T\ntorch.manual_seed(0)\n"
            f"model = T.{build.format(_SMALL)}.eval()\n"
            'example_inputs = {"input_ids": torch.randint(0, 128, (2, 12), generator=torch.Generator().manual_seed(0))}\n')


def _ids(b: int, n: int, seed: int) -> dict:
    return {"input_ids": torch.randint(0, 128, (b, n), generator=torch.Generator().manual_seed(seed))}


SHAPES = [_ids(2, 12, 1), _ids(3, 20, 2), _ids(1, 5, 3)]


@pytest.mark.parametrize("source", [MIXTRAL, QWEN2_MOE, *[pytest.param(_source(b), marks=pytest.mark.slow, id=n)
                                                          for n, b in OTHERS.items()]],
                         ids=["mixtral", "qwen2_moe", *OTHERS])
def test_moe_end_to_end(tmp_path, source):
    run = run_family(tmp_path, source, SHAPES, prompt=_ids(1, 5, 4)["input_ids"])
    run.assert_exact()
    assert run.report["user_model"]["built"]
    assert run.report["params"]["after"] < run.report["params"]["before"]


# --------------------------------------------------------------------------- one MoE block, by hand
def _block(hidden: int = 32, inter: int = 16, experts: int = 4, seed: int = 0):
    import transformers as T

    cfg = T.MixtralConfig(hidden_size=hidden, intermediate_size=inter, num_local_experts=experts,
                          num_experts_per_tok=2)
    cfg._experts_implementation = "grouped_mm"  # what a PreTrainedModel sets (the default)
    torch.manual_seed(seed)
    block = T.models.mixtral.modeling_mixtral.MixtralSparseMoeBlock(cfg).eval()
    with torch.no_grad():
        for p in block.parameters():
            p.normal_(0, 0.3)
    return block


def _masked(model, masks):
    """The reference: the user's (or the final) masks applied by the test's own code."""
    import copy

    ref = copy.deepcopy(model)
    params = dict(ref.named_parameters())
    with torch.no_grad():
        for k, m in masks.items():
            params[k].mul_((torch.as_tensor(m) != 0).to(params[k].dtype).expand(params[k].shape))
    return ref


def _expert_masks(block, per_expert: dict[int, list[int]]) -> dict:
    """Gate rows of the FFN channels ``per_expert[e]`` of expert e masked (up and down left)."""
    e_, two_i, h = block.experts.gate_up_proj.shape
    m = torch.ones(e_, two_i, 1)
    for e, chans in per_expert.items():
        m[e, chans] = 0
    return {"experts.gate_up_proj": m}


@pytest.mark.parametrize("front_end", ["fx", "export"])
def test_each_expert_loses_its_own_channels_as_many_each(front_end):
    """Expert 0 masks channels {0..7}, expert 1 {4..11}, expert 2 {8..15} and {0..3}, expert 3
    {0..7}: each loses its own 8, gate rows only masked — the up rows and down columns go too
    (act(0)·up = 0), and the slim model equals the model with the final masks (applied here)
    at other batch sizes and lengths; the user's class is the same class, its sizes follow."""
    import slimc

    block = _block()
    masks = _expert_masks(block, {0: list(range(8)), 1: list(range(4, 12)), 2: [*range(8, 16), *range(4)],
                                  3: list(range(8))})
    x = torch.randn(2, 5, 32)
    res = slimc.compile(block, masks, (x,), front_end=front_end)
    gu, down = res.module.experts.gate_up_proj, res.module.experts.down_proj
    assert tuple(gu.shape) == (4, 16, 32) and tuple(down.shape) == (4, 32, 8)
    # the slim graph runs the experts as plain ops (inlined at their slim sizes): torch alone
    assert {type(m).__module__.split(".")[0] for m in res.module.modules()} == {"torch"}
    ops = {getattr(n.target, "_opname", "") for n in res.module.graph.nodes}
    assert "bmm" in ops and not ops & {"histc", "sort", "grouped_mm_fallback"}, ops  # batched, not grouped
    w0 = block.experts.gate_up_proj.detach()
    assert torch.equal(gu[1, :8], w0[1, [0, 1, 2, 3, 12, 13, 14, 15]])  # expert 1 kept its own gate rows
    assert torch.equal(gu[1, 8:], w0[1, [16, 17, 18, 19, 28, 29, 30, 31]])  # and the up rows that go with them
    ref = _masked(block, res.masks)
    for shape in ((2, 5, 32), (3, 9, 32), (1, 1, 32)):
        xs = torch.randn(*shape)
        with torch.no_grad():
            want = ref(xs)
            for slim in (res.module, res.model):
                assert (slim(xs) - want).abs().max() <= 1e-5 * max(1.0, float(want.abs().max()))
    assert type(res.model) is type(block) and res.model.experts.intermediate_dim == 8
    fm = res.masks["experts.down_proj"].expand(4, 32, 16)
    assert not fm[0, :, :8].any() and fm[0, :, 8:].all()  # the final masks reach the down columns


def test_experts_keep_as_many_channels_and_aligned_widths():
    """Experts masked unevenly (2, 5, 9 and 0 channels) lose as many each — none here: expert 3
    masks nothing, so every expert keeps all 16 — and a kept width stays a multiple of 4
    (transformers' grouped products need 16-byte strides in fp32): 6 masked of 16 keeps 12."""
    import slimc

    block = _block()
    uneven = _expert_masks(block, {0: [0, 1], 1: list(range(5)), 2: list(range(9))})
    res = slimc.compile(block, uneven, (torch.randn(2, 5, 32),))
    assert res.module.experts.down_proj.shape[2] == 16
    assert any("every expert keeps as many" in r["reason"] for r in res.report["kept"]), res.report["kept"]
    six = _expert_masks(block, {e: list(range(6)) for e in range(4)})
    res = slimc.compile(block, six, (torch.randn(2, 5, 32),))
    assert res.module.experts.down_proj.shape[2] == 12 and res.model.experts.intermediate_dim == 12
    assert any("16-byte strides" in r["reason"] for r in res.report["kept"]), res.report["kept"]
    ref = _masked(block, res.masks)
    xs = torch.randn(3, 7, 32)
    with torch.no_grad():
        assert (res.model(xs) - ref(xs)).abs().max() <= 1e-5 * max(1.0, float(ref(xs).abs().max()))


def test_the_expert_dim_stays_with_a_readable_reason():
    """Expert 2 masked whole (its router row, every FFN channel) is not removed: a masked router
    row gives logit 0, not -inf, so the masked model still routes tokens to it. The experts
    keep their number; the report says the softmax over the experts holds them."""
    import slimc

    block = _block()
    e_, two_i, h = block.experts.gate_up_proj.shape
    gu = torch.ones(e_, two_i, 1)
    gu[2] = 0
    router = torch.ones(e_, 1)
    router[2] = 0
    res = slimc.compile(block, {"experts.gate_up_proj": gu, "gate.weight": router}, (torch.randn(2, 5, 32),))
    assert res.module.experts.gate_up_proj.shape[0] == 4 and res.model.gate.weight.shape[0] == 4
    assert res.model.experts.num_experts == 4
    assert any("softmax over dim 1" in r["reason"] for r in res.report["kept"]), res.report["kept"]


def test_the_pruner_prunes_equal_aligned_counts_per_expert():
    """`slimc prune`'s L1 ranks each expert's channels on their own (a family per expert) and
    removes as many from each, a multiple of 4 kept: the masks are complete (compiling them
    removes exactly what they mask)."""
    import slimc
    from slimc.prune import prune

    block = _block()
    x = (torch.randn(2, 5, 32),)
    masks = prune(block, x, "l1", round_to=1, ratio=0.3)
    gu = torch.as_tensor(masks["experts.gate_up_proj"]).expand(4, 32, 32)
    lost = [(~gu[e, :16].bool().any(1)).sum().item() for e in range(4)]
    assert lost == [4, 4, 4, 4], lost  # 30 % of 16 = 4.8: 12 kept, a multiple of 4
    assert len({tuple((~gu[e, :16].bool().any(1)).nonzero().flatten().tolist()) for e in range(4)}) > 1
    res = slimc.compile(block, masks, x)
    assert res.module.experts.down_proj.shape[2] == 12
    assert not res.report["kept"], res.report["kept"]


def test_a_wrong_pairing_of_gate_and_up_rows_is_caught(monkeypatch):
    """Plant a fault in the rule: gate row i paired with up row I + i + 1. The built-in check
    (slim vs masked with the final masks) must refuse the result."""
    import slimc
    from slimc.errors import SlimcError
    from slimc.shape_rules import experts as rule

    block = _block()
    masks = _expert_masks(block, {e: list(range(8)) for e in range(4)})
    monkeypatch.setattr(rule, "gate_up_rows", lambda n, gated: [rule.arange(n), (rule.arange(n) + 1) % n + n])
    with pytest.raises(SlimcError):
        slimc.compile(block, masks, (torch.randn(2, 5, 32),), cache=False)


def test_heads_hidden_and_expert_channels_prune_together():
    """At ratio 0.5 a Mixtral loses a GQA group (a key/value head with its two query heads),
    half the hidden size and half of every expert's FFN; the config says so (from_pretrained
    rebuilds it: head_dim is written down, as hidden // heads no longer gives it) and the
    user's class equals the masked model (masked here) at another batch and length, greedy
    tokens too."""
    import runpy
    import tempfile
    from pathlib import Path

    import slimc
    from slimc.prune import prune

    with tempfile.TemporaryDirectory() as d:
        (Path(d) / "m.py").write_text(MIXTRAL)
        ns = runpy.run_path(str(Path(d) / "m.py"))
    model, x = ns["model"], ns["example_inputs"]
    masks = prune(model, x, "l1", round_to=1, ratio=0.5)
    res = slimc.compile(model, masks, x)
    cfg = res.model.config
    assert (cfg.num_attention_heads, cfg.num_key_value_heads, cfg.hidden_size, cfg.intermediate_size) == (2, 1, 32, 64)
    assert cfg.num_local_experts == 4 and res.report["user_model"]["hf"]["expressible"], res.report["user_model"]
    ref = _masked(model, masks)
    ids = _ids(3, 17, 5)["input_ids"]
    with torch.no_grad():
        want = ref(ids).logits
        assert (res.model(ids).logits - want).abs().max() <= 1e-5 * max(1.0, float(want.abs().max()))
    kw = dict(max_new_tokens=6, do_sample=False, pad_token_id=0)
    prompt = _ids(1, 5, 6)["input_ids"]
    assert torch.equal(res.model.generate(prompt, **kw), ref.generate(prompt, **kw))


class _Routed(torch.nn.Module):
    """A router's weights cast like the hidden states (GraniteMoE's ``softmax(…).type_as(h)``)
    scale a projection of them: type_as reads the hidden states for their dtype alone."""

    def __init__(self):
        super().__init__()
        self.up, self.router, self.down = torch.nn.Linear(8, 16), torch.nn.Linear(16, 2), torch.nn.Linear(16, 8)

    def forward(self, x):
        h = self.up(x)
        w = torch.softmax(self.router(h), -1).type_as(h)
        return self.down(h * w[..., :1])


@pytest.mark.parametrize("front_end", ["fx", "export"])
def test_type_as_leaves_the_tensor_it_reads_the_dtype_of_free(front_end):
    import slimc

    torch.manual_seed(0)
    m = _Routed().eval()
    rows = torch.ones(16, 1)
    rows[:6] = 0
    res = slimc.compile(m, {"up.weight": rows, "up.bias": rows[:, 0]}, (torch.randn(3, 8),), front_end=front_end)
    assert res.module.up.weight.shape[0] == 10 and res.module.router.weight.shape[1] == 10
    ref = _masked(m, res.masks)
    x = torch.randn(5, 8)
    with torch.no_grad():
        assert (res.module(x) - ref(x)).abs().max() <= 1e-5
