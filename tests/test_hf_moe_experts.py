"""Whole experts of mixture-of-experts decoders removed exactly.

Masks that zero every weight of an expert (index e of the stacked ``gate_up_proj`` and
``down_proj``) *and* its router row (row e of ``gate.weight``) say that the expert does not
exist: the model they describe is the original whose router gives that expert a logit of −∞.
The slim model has fewer experts in that layer (router rows and stacked slices gone, the same
classes, ``num_experts`` and the config following) and equals that model exactly.

The references here are the tests' own: the masks zeroed by the test, and a hook on each
router (a ``TorchFunctionMode`` entered by a forward pre-hook, left by a forward hook) that
sets the removed experts' logits to −∞ — no code shared with ``slimc.rerouted``.
"""
from __future__ import annotations

import copy

import pytest
import torch

pytest.importorskip("transformers")

import torch.nn.functional as F  # noqa: E402
from torch.overrides import TorchFunctionMode  # noqa: E402

from families import run_family  # noqa: E402

TOL = 1e-5

# -------------------------------------------------------------------- the tests' own reference
ROUTE_AROUND = r'''
import torch
import torch.nn.functional as F
from torch.overrides import TorchFunctionMode


class _MinusInf(TorchFunctionMode):
    """F.linear with the router's weight: the removed experts' logits at -inf."""

    def __init__(self, weight, gone):
        super().__init__()
        self.weight, self.gone = weight, gone

    def __torch_function__(self, func, types, args=(), kwargs=None):
        out = func(*args, **(kwargs or {}))
        if func is F.linear and args[1] is self.weight:
            out = out.clone()
            out[..., self.gone] = float("-inf")
        return out


def route_around(model):
    """Hooks on every router whose experts the (already applied) masks remove whole: all
    stacked slices and the router row zero. Returns {block name: removed experts}."""
    found = {}
    for name, block in model.named_modules():
        gate, experts = getattr(block, "gate", None), getattr(block, "experts", None)
        if gate is None or not hasattr(experts, "gate_up_proj"):
            continue
        w = gate.weight
        stacked = [p for p in experts.parameters(recurse=False)]
        gone = [e for e in range(w.shape[0]) if not w[e].any() and not any(p[e].any() for p in stacked)]
        if not gone:
            continue
        found[name] = gone
        modes = []

        def enter(mod, args, gate=gate, gone=gone, modes=modes):
            modes.append(_MinusInf(mod.weight, gone))
            modes[-1].__enter__()

        def leave(mod, args, out, modes=modes):
            modes.pop().__exit__(None, None, None)

        gate.register_forward_pre_hook(enter)
        gate.register_forward_hook(leave)
    return found


def reference(masked):
    assert route_around(masked), "the masks remove no expert whole"
    return masked
'''
_ns: dict = {}
exec(ROUTE_AROUND, _ns)
route_around = _ns["route_around"]


def _block(experts: int = 4, seed: int = 0):
    from test_hf_moe import _block as moe_block  # (one Mixtral block maker for both files)

    return moe_block(experts=experts, seed=seed)


def _whole(n: int, gone: list[int], prefix: str = "") -> dict:
    """Masks removing experts ``gone`` whole: their router rows and every stacked slice."""
    rows, slices = torch.ones(n, 1), torch.ones(n, 1, 1)
    rows[gone], slices[gone] = 0, 0
    return {f"{prefix}gate.weight": rows, f"{prefix}experts.gate_up_proj": slices,
            f"{prefix}experts.down_proj": slices.clone()}


def _masked(model, masks: dict, minus_inf: bool = True):
    """The test's reference: ``model`` with ``masks`` zeroed, its routers skipping the experts
    removed whole (``minus_inf``; without it, the plain zero-masked model)."""
    ref = copy.deepcopy(model).eval()
    params = dict(ref.named_parameters())
    with torch.no_grad():
        for k, m in masks.items():
            params[k].mul_(m)
    if minus_inf:
        route_around(ref)
    return ref


def _diff(a, b) -> float:
    return float((a - b).abs().max())


def _close(a, b) -> float:
    d = _diff(a, b)
    assert d <= TOL * max(1.0, float(b.abs().max())), d
    return d


@pytest.mark.parametrize("front_end", ["fx", "export"])
def test_a_whole_expert_goes_exactly(front_end):
    """Expert 2 of 4 masked whole goes: router (3, 32), experts (3, …), num_experts 3 on the
    router and the experts module, the same classes. The graph and the user's class equal the
    test's reference (masks zeroed, logit −∞) at three shapes; the plain zero-masked model is
    another function (logit 0 still routes tokens to expert 2)."""
    import slimc

    block = _block()
    masks = _whole(4, [2])
    res = slimc.compile(block, masks, (torch.randn(2, 5, 32),), front_end=front_end, vs_user_masks=True)
    assert tuple(res.module.experts.gate_up_proj.shape) == (3, 32, 32)
    assert tuple(res.model.gate.weight.shape) == (3, 32) and type(res.model) is type(block)
    assert res.model.gate.num_experts == res.model.experts.num_experts == 3
    assert res.report["experts"] == {"experts": {"removed": [2], "before": 4, "after": 3}}, res.report.get("experts")
    ref, plain = _masked(block, masks), _masked(block, masks, minus_inf=False)
    far = 0.0
    for shape in ((2, 5, 32), (3, 9, 32), (1, 1, 32)):
        x = torch.randn(*shape)
        with torch.no_grad():
            want = ref(x)
            for slim in (res.module, res.model):
                _close(slim(x), want)
            far = max(far, _diff(res.model(x), plain(x)))
    assert far > 1e-2, far  # the −∞ is what the masks mean: zero logits would be another model
    assert res.report["verify"]["vs_user_masked"] <= TOL * res.report["verify"]["output_scale"]


def test_partly_masked_experts_stay():
    """Only the router row, or only the expert's weights: the masks mean zeros, the expert
    stays (4 experts), exact against the plain masked model."""
    import slimc

    block = _block()
    whole = _whole(4, [1])
    for masks in ({"gate.weight": whole["gate.weight"]},
                  {k: v for k, v in whole.items() if k != "gate.weight"}):
        res = slimc.compile(block, masks, (torch.randn(2, 5, 32),))
        assert res.model.gate.weight.shape[0] == 4 and res.model.experts.num_experts == 4
        assert "experts" not in res.report
        x = torch.randn(3, 7, 32)
        with torch.no_grad():
            _close(res.model(x), _masked(block, masks, minus_inf=False)(x))


def test_keep_experts_reads_the_masks_as_zeros():
    import slimc

    block = _block()
    masks = _whole(4, [1])
    res = slimc.compile(block, masks, (torch.randn(2, 5, 32),), experts="keep")
    assert res.model.gate.weight.shape[0] == 4
    assert any("stay, zero" in n for n in res.report["notes"]), res.report["notes"]
    x = torch.randn(3, 7, 32)
    with torch.no_grad():
        _close(res.model(x), _masked(block, masks, minus_inf=False)(x))


def test_the_router_keeps_its_top_k():
    """3 of 4 experts removed whole where the router picks 2 per token: one line naming the layer."""
    import slimc

    block = _block()
    with pytest.raises(slimc.PlanError, match=r"3 of the 4 experts of 'experts'.*picks 2") as e:
        slimc.compile(block, _whole(4, [0, 1, 3]), (torch.randn(2, 5, 32),))
    assert "\n" not in str(e.value)


def test_a_reference_without_minus_inf_is_caught(monkeypatch):
    """Planted fault: the check's reference reads the masks as plain zeros (no −∞ for the
    removed expert): the slim model differs from it, and compile says so."""
    import slimc
    import slimc.compiler

    monkeypatch.setattr(slimc.compiler, "routed_away", lambda plan: None)
    block = _block()
    with pytest.raises(slimc.VerifyError, match="differs from the masked model"):
        slimc.compile(block, _whole(4, [2]), (torch.randn(2, 5, 32),), cache=False)


def test_removing_the_wrong_expert_is_caught(monkeypatch):
    """Planted fault: the slim model loses expert 2, the check's reference routes around expert
    1 instead (as if the wrong expert had been removed): compile says the models differ."""
    import numpy as np

    import slimc
    import slimc.rerouted

    real = slimc.rerouted.router_rows

    def shifted(plan):
        return {k: np.roll(v, -1) for k, v in real(plan).items()}  # expert 2 → expert 1

    monkeypatch.setattr(slimc.rerouted, "router_rows", shifted)
    block = _block()
    with pytest.raises(slimc.VerifyError, match="differs from the masked model"):
        slimc.compile(block, _whole(4, [2]), (torch.randn(2, 5, 32),), cache=False)


def test_a_router_it_cannot_follow_keeps_its_experts_and_says_why():
    """PhiMoE routes by sparsemixer, not top-k of a softmax: an expert masked whole stays (4
    experts), exact against the plain masked model, and the report says why."""
    import transformers as T

    import slimc

    torch.manual_seed(0)
    model = T.PhimoeForCausalLM(T.PhimoeConfig(vocab_size=128, hidden_size=64, num_hidden_layers=1,
                                               num_attention_heads=4, num_key_value_heads=2, intermediate_size=64,
                                               num_local_experts=4, max_position_embeddings=64)).eval()
    masks = {k.replace("gate.", "router."): v for k, v in _whole(4, [1], "model.layers.0.mlp.").items()}
    ids = {"input_ids": torch.randint(0, 128, (2, 12), generator=torch.Generator().manual_seed(0))}
    res = slimc.compile(model, masks, ids)
    assert res.model.model.layers[0].mlp.experts.gate_up_proj.shape[0] == 4 and "experts" not in res.report
    assert any("experts [1]" in n and "stay" in n and "topk" in n for n in res.report["notes"]), res.report["notes"]


# -------------------------------------------------------------------- whole decoders, end to end
MIXTRAL = """
import torch, transformers as T
torch.manual_seed(0)
model = T.MixtralForCausalLM(T.MixtralConfig(vocab_size=128, hidden_size=64, intermediate_size=64, num_hidden_layers=2,
                                             num_attention_heads=4, num_key_value_heads=2, num_local_experts={n},
                                             num_experts_per_tok=2, max_position_embeddings=64)).eval()
example_inputs = {{"input_ids": torch.randint(0, 128, (2, 12), generator=torch.Generator().manual_seed(0))}}
"""

OLMOE = """
import torch, transformers as T
torch.manual_seed(0)
model = T.OlmoeForCausalLM(T.OlmoeConfig(vocab_size=128, hidden_size=64, intermediate_size=64, num_hidden_layers=2,
                                         num_attention_heads=4, num_key_value_heads=2, num_experts={n},
                                         num_experts_per_tok=2, max_position_embeddings=64)).eval()
example_inputs = {{"input_ids": torch.randint(0, 128, (2, 12), generator=torch.Generator().manual_seed(0))}}
"""

QWEN2_MOE = """
import torch, transformers as T
torch.manual_seed(0)
model = T.Qwen2MoeForCausalLM(T.Qwen2MoeConfig(vocab_size=128, hidden_size=64, intermediate_size=128,
                                               moe_intermediate_size=64, shared_expert_intermediate_size=96,
                                               num_hidden_layers=2, num_attention_heads=4, num_key_value_heads=2,
                                               num_experts={n}, num_experts_per_tok=2,
                                               max_position_embeddings=64)).eval()
example_inputs = {{"input_ids": torch.randint(0, 128, (2, 12), generator=torch.Generator().manual_seed(0))}}
"""


def _ids(b: int, n: int, seed: int) -> dict:
    return {"input_ids": torch.randint(0, 128, (b, n), generator=torch.Generator().manual_seed(seed))}


SHAPES = [_ids(2, 12, 1), _ids(3, 20, 2), _ids(1, 5, 3)]


def _layer_masks(per_layer: dict[int, list[int]], n: int) -> dict:
    out = {}
    for layer, gone in per_layer.items():
        out.update(_whole(n, gone, f"model.layers.{layer}.mlp."))
    return out


def _experts_of(run) -> dict:
    return {k.split(".")[2]: v["after"] for k, v in run.report["experts"].items()}


@pytest.mark.parametrize("family,n,gone", [
    ("mixtral", 4, {0: [1]}),
    ("mixtral", 6, {0: [0, 4], 1: [3]}),
    ("olmoe", 4, {1: [2]}),
    pytest.param("qwen2_moe", 6, {0: [5], 1: [1, 2]}, marks=pytest.mark.slow),
], ids=["mixtral-one-layer", "mixtral-two-layers-differ", "olmoe", "qwen2_moe"])
def test_decoder_end_to_end(tmp_path, family, n, gone):
    """The user's masks remove experts whole (one layer; or different counts in two layers):
    ``slimc compile`` → ``slimc.load`` in a fresh process is the user's class with fewer
    experts, exact against the test's reference (masks zeroed, routers hooked to −∞) at three
    shapes, the graph and slim.onnx too, greedy ``generate()`` equal."""
    source = {"mixtral": MIXTRAL, "olmoe": OLMOE, "qwen2_moe": QWEN2_MOE}[family].format(n=n)
    run = run_family(tmp_path, source, SHAPES, prompt=_ids(1, 5, 4)["input_ids"], masks=_layer_masks(gone, n),
                     reference=ROUTE_AROUND)
    run.assert_exact()
    assert _experts_of(run) == {str(k): n - len(v) for k, v in gone.items()}, run.report["experts"]
    assert run.report["params"]["after"] < run.report["params"]["before"]
    assert run.report["user_model"]["built"]


def test_the_pruner_removes_whole_experts_on_request(tmp_path):
    """``slimc prune --experts 0.25`` (with FFN channels and heads, l1): one of 4 experts per layer,
    masked whole with its router row; compiled exactly, reloaded by ``from_pretrained`` (the
    layers agree: ``num_local_experts`` 3)."""
    run = run_family(tmp_path, MIXTRAL.format(n=4), SHAPES, prompt=_ids(1, 5, 4)["input_ids"],
                     prune=("--criterion", "l1", "--ratio", "0.3", "--round-to", "1", "--experts", "0.25"), reference=ROUTE_AROUND)
    run.assert_exact()
    assert _experts_of(run) == {"0": 3, "1": 3}, run.report["experts"]
    cfg = (run.out / "hf" / "config.json")
    assert cfg.exists() and '"num_local_experts": 3' in cfg.read_text()
