"""Whole experts of mixture-of-experts decoders removed, as an explicit approximate opt-in:
``slimc prune --prune-experts F`` masks a fraction of every MoE layer's experts with their
router rows, ``slimc compile --approximate-experts`` (``experts="drop"``) removes them.

What is claimed, and checked here against references the tests build themselves:

* the result is *not* the masked model (a masked router row gives logit 0, not −∞: the masked
  model still routes tokens to that expert), and the report says so with the measured diff;
* it *is*, exactly, the masked model without those experts: a fresh instance of the class
  from a config with fewer experts, the kept experts' weights copied — the graph, the user's
  class reloaded in a fresh process, slim.onnx in onnxruntime, at three shapes (another batch
  among them), greedy ``generate()`` too;
* without the opt-in, such masks compile exactly as before (the experts stay, zero) and the
  report says that ``--approximate-experts`` would drop them.
"""
from __future__ import annotations

import copy
import runpy

import pytest
import torch

pytest.importorskip("transformers")

from families import run_family  # noqa: E402
from test_hf_moe import MIXTRAL, QWEN2_MOE, SHAPES, _ids, _source  # noqa: E402

TOL = 1e-5

# The tests' own reference (run in the fresh process of run_family): the masked model with the
# experts its masks remove whole deleted from the router and the experts module — a fresh
# instance of its class from a config with fewer experts, the kept weights copied.
REFERENCE = r'''
def reference(masked):
    import copy, torch
    blocks = [(n, m) for n, m in masked.named_modules()
              if hasattr(m, "gate") and hasattr(getattr(m, "experts", None), "gate_up_proj")]
    kept = {}
    for name, b in blocks:
        w, stacked = b.gate.weight, list(b.experts.parameters(recurse=False))
        kept[name] = [e for e in range(w.shape[0]) if w[e].any() and any(p[e].any() for p in stacked)]
    counts = {len(k) for k in kept.values()}
    assert len(counts) == 1, kept
    n, old = counts.pop(), blocks[0][1].gate.weight.shape[0]
    assert n < old, "the masks remove no expert whole"
    cfg = copy.deepcopy(masked.config)
    for key in ("num_local_experts", "num_experts"):
        if getattr(cfg, key, None) == old:
            setattr(cfg, key, n)
    fresh = type(masked)(cfg)
    state = masked.state_dict()
    for name, _ in blocks:
        idx = torch.tensor(kept[name])
        for k in list(state):
            if k.startswith((name + ".gate.", name + ".experts.")):
                state[k] = state[k].index_select(0, idx)
    fresh.load_state_dict(state)
    return fresh
'''


def _block(experts: int = 4, seed: int = 0):
    import transformers as T

    cfg = T.MixtralConfig(hidden_size=32, intermediate_size=16, num_local_experts=experts, num_experts_per_tok=2)
    cfg._experts_implementation = "grouped_mm"  # what a PreTrainedModel sets (the default)
    torch.manual_seed(seed)
    block = T.models.mixtral.modeling_mixtral.MixtralSparseMoeBlock(cfg).eval()
    with torch.no_grad():
        for p in block.parameters():
            p.normal_(0, 0.3)
    return block


def _without(block, gone: list[int]):
    """The test's reference for one block: a fresh block built for fewer experts, the kept
    experts' weights (router rows, stacked slices) copied."""
    cfg = copy.deepcopy(block.gate.__dict__.get("config") or block.experts.config)
    n = block.gate.weight.shape[0]
    keep = torch.tensor([e for e in range(n) if e not in gone])
    cfg.num_local_experts = len(keep)
    fresh = type(block)(cfg).eval()
    fresh.load_state_dict({k: v.index_select(0, keep) if k.startswith(("gate.", "experts.")) else v
                           for k, v in block.state_dict().items()})
    return fresh


def _whole(block, e: int, how: str) -> dict:
    """Masks removing expert ``e`` whole: its router row, or its every stacked slice, or both."""
    n, two_i, _ = block.experts.gate_up_proj.shape
    rows, slices = torch.ones(n, 1), torch.ones(n, 1, 1)
    rows[e], slices[e] = 0, 0
    out = {}
    if how in ("router", "both"):
        out["gate.weight"] = rows
    if how in ("slices", "both"):
        out.update({"experts.gate_up_proj": slices, "experts.down_proj": slices})
    return out


def _close(a, b) -> float:
    d = float((a - b).abs().max())
    assert d <= TOL * max(1.0, float(b.abs().max())), d
    return d


@pytest.mark.parametrize("front_end", ["fx", "export"])
@pytest.mark.parametrize("how", ["router", "slices"])
def test_a_whole_expert_goes_with_its_router_row(front_end, how):
    """Expert 2 masked whole (its router row, or every stacked slice) goes with
    experts="drop": router (3, 32), experts (3, …), num_experts 3 on both modules. The slim
    graph and the user's class equal the test's block built for 3 experts at three shapes;
    the masked model is another function, and the report measures by how much."""
    import slimc

    block = _block()
    res = slimc.compile(block, _whole(block, 2, how), (torch.randn(2, 5, 32),), front_end=front_end,
                        experts="drop")
    assert tuple(res.module.experts.gate_up_proj.shape) == (3, 32, 32) and tuple(res.model.gate.weight.shape) == (3, 32)
    assert type(res.model) is type(block) and res.model.gate.num_experts == res.model.experts.num_experts == 3
    ref = _without(block, [2])
    for shape in ((2, 5, 32), (3, 9, 32), (1, 1, 32)):
        x = torch.randn(*shape)
        with torch.no_grad():
            want = ref(x)
            for slim in (res.module, res.model):
                _close(slim(x), want)
    v = res.report["verify"]
    assert v["approximate"] and v["experts"]["dropped"] == {"experts": [2]}, v
    assert v["experts"]["vs_masked"]["max_abs_diff"] > 1e-3, v  # really another function than the masked model
    assert any("--approximate-experts" in n and "approximate" in n for n in res.report["notes"]), res.report["notes"]
    assert tuple(res.masks["gate.weight"].shape)[0] == 4 and not res.masks["gate.weight"][2].any()


def test_without_the_opt_in_whole_experts_stay_exact_and_the_report_says_so():
    import slimc

    block = _block()
    res = slimc.compile(block, _whole(block, 1, "both"), (torch.randn(2, 5, 32),))
    assert res.module.experts.gate_up_proj.shape[0] == 4 and res.model.gate.weight.shape[0] == 4
    assert not res.report["verify"]["approximate"]
    note = [n for n in res.report["notes"] if "--approximate-experts" in n]
    assert note and "experts: [1]" in note[0], res.report["notes"]
    masked = copy.deepcopy(block)
    with torch.no_grad():  # the masks applied by the test: the slim model is this one, exactly
        masked.gate.weight[1] = 0
        masked.experts.gate_up_proj[1] = 0
        masked.experts.down_proj[1] = 0
        x = torch.randn(3, 7, 32)
        _close(res.model(x), masked(x))


def test_the_router_keeps_its_top_k():
    """3 of 4 experts dropped where the router picks 2 per token: one line naming the layer."""
    import slimc
    from slimc.errors import SlimcError

    block = _block()
    rows = torch.ones(4, 1)
    rows[:3] = 0
    with pytest.raises(SlimcError, match=r"3 of the 4 experts of 'experts'.*picks 2 per token") as e:
        slimc.compile(block, {"gate.weight": rows}, (torch.randn(2, 5, 32),), experts="drop")
    assert "\n" not in str(e.value)


class _RouterOut(torch.nn.Module):
    """A MoE block that also returns its router logits (a graph output: the expert dim is the
    model's interface there, and no mode may shrink it)."""

    def __init__(self, block):
        super().__init__()
        self.gate, self.experts = block.gate, block.experts

    def forward(self, x):
        logits, w, idx = self.gate(x)
        return self.experts(x, idx, w), logits


def test_an_expert_dim_held_by_another_op_stays():
    import slimc

    m = _RouterOut(_block()).eval()
    res = slimc.compile(m, _whole(m, 0, "both"), (torch.randn(6, 32),), experts="drop", front_end="fx")
    assert res.module.experts.gate_up_proj.shape[0] == 4 and not res.plan.dropped_experts
    assert any("graph output" in r["reason"] for r in res.report["kept"]), res.report["kept"]


def test_a_check_routing_around_the_wrong_expert_is_caught(monkeypatch):
    """Plant faults in the exact reference: it routes around expert 1 while the plan drops
    expert 2, or it never meets the router; the built-in check must refuse both."""
    import slimc
    from slimc import rerouted
    from slimc.errors import VerifyError

    block = _block()
    masks = _whole(block, 2, "both")
    real = rerouted.router_rows

    def shifted(plan):
        return {k: v[[0, 2, 1, 3]] for k, v in real(plan).items()}

    monkeypatch.setattr(rerouted, "router_rows", shifted)
    with pytest.raises(VerifyError, match="skip the dropped experts"):
        slimc.compile(block, masks, (torch.randn(2, 5, 32),), experts="drop", cache=False)
    monkeypatch.setattr(rerouted, "router_rows", lambda plan: {"gate.weight": real(plan)["gate.weight"][:3]})
    with pytest.raises(VerifyError, match="cannot route around"):
        slimc.compile(block, masks, (torch.randn(2, 5, 32),), experts="drop", cache=False)


def _mixtral():
    ns = runpy.run_path(_write(MIXTRAL))
    return ns["model"], ns["example_inputs"]


def _write(source: str) -> str:
    import tempfile

    f = tempfile.NamedTemporaryFile("w", suffix=".py", delete=False)
    f.write(source)
    f.close()
    return f.name


def test_the_pruner_masks_the_lowest_l1_experts_as_many_in_every_layer():
    """Layer 0's expert 3 and layer 1's expert 0 are made small: experts=0.25 (1 of 4) masks
    exactly those, router rows and every stacked slice, and the plan's params are the compile's."""
    import slimc
    from slimc.prune import Pruner

    model, x = _mixtral()
    with torch.no_grad():
        for layer, e in ((0, 3), (1, 0)):
            ex = model.model.layers[layer].mlp.experts
            ex.gate_up_proj[e] *= 0.01
            ex.down_proj[e] *= 0.01
    pruned = Pruner(model, x, "l1", ratio=0.3, experts=0.25).prune()
    for layer, e in ((0, 3), (1, 0)):
        pre = f"model.layers.{layer}.mlp."
        for fqn in ("gate.weight", "experts.gate_up_proj", "experts.down_proj"):
            m = torch.as_tensor(pruned.masks[pre + fqn]).expand_as(model.get_parameter(pre + fqn))
            gone = [i for i in range(4) if not m[i].any()]
            assert gone == [e], (fqn, gone)
    assert any("--approximate-experts" in n for n in pruned.notes), pruned.notes
    res = slimc.compile(model, pruned.masks, x, experts="drop", user_model=False)
    assert res.report["params"]["after"] == pruned.params_after()
    assert not res.report["kept"], res.report["kept"]  # complete masks: nothing kept because coupled


def test_the_frequency_criterion_drops_the_experts_routed_to_least():
    """The test counts the router's choices on the calibration batches itself (hooks on the
    user's model): experts=0.5 masks the two least chosen experts of each layer."""
    from slimc.prune import Pruner

    model, x = _mixtral()
    batches = [(torch.randint(0, 128, (3, 16), generator=torch.Generator().manual_seed(s)),) for s in range(3)]
    counts = {i: torch.zeros(4) for i in range(2)}

    def counter(i):
        def count(module, args):
            counts[i].add_(torch.bincount(args[1].flatten(), minlength=4))  # (returns None: args unchanged)
        return count

    hooks = [model.model.layers[i].mlp.experts.register_forward_pre_hook(counter(i)) for i in range(2)]
    with torch.no_grad():
        for (ids,) in batches:
            model(ids)
    for h in hooks:
        h.remove()
    pruned = Pruner(model, x, "l1", ratio=0.3, experts=0.5, expert_criterion="frequency", data=batches).prune()
    for i in range(2):
        m = torch.as_tensor(pruned.masks[f"model.layers.{i}.mlp.gate.weight"]).expand(4, 64)
        gone = sorted(e for e in range(4) if not m[e].any())
        assert len(gone) == 2 and counts[i][gone].max() <= counts[i][[e for e in range(4) if e not in gone]].min(), \
            (gone, counts[i])


def test_uneven_counts_reload_from_the_layout(tmp_path):
    """Layer 0 loses one expert, layer 1 two: no config says that, so the result is rebuilt by
    slimc.load from the recorded layout, and equals the user's class and the test's reference
    (the masked model with those experts zeroed and routed away: the layers built for fewer
    experts one by one)."""
    import slimc

    model, x = _mixtral()
    masks = {}
    for layer, gone in ((0, [1]), (1, [0, 3])):
        rows = torch.ones(4, 1)
        rows[gone] = 0
        masks[f"model.layers.{layer}.mlp.gate.weight"] = rows
    res = slimc.compile(model, masks, x, experts="drop")
    assert not res.report["user_model"]["hf"]["expressible"], res.report["user_model"]
    res.save(tmp_path, onnx=False)
    again = slimc.load(tmp_path)
    ref = copy.deepcopy(model)
    for layer, gone in ((0, [1]), (1, [0, 3])):
        ref.model.layers[layer].mlp = _without(ref.model.layers[layer].mlp, gone)
    ids = _ids(3, 9, 7)["input_ids"]
    assert type(again) is type(model)
    with torch.no_grad():
        want = ref(ids).logits
        for m in (res.model, again, res.module):
            out = m(ids)
            _close(out.logits if hasattr(out, "logits") else out[0], want)


E2E = [pytest.param(MIXTRAL, id="mixtral"), pytest.param(QWEN2_MOE, id="qwen2_moe"),
       pytest.param(_source("OlmoeForCausalLM(T.OlmoeConfig({}, intermediate_size=64, num_experts=4, "
                            "num_experts_per_tok=2))"), id="olmoe", marks=pytest.mark.slow)]


@pytest.mark.parametrize("source", E2E)
def test_experts_removed_end_to_end(tmp_path, source):
    """slimc prune (FFN channels, heads, hidden and a quarter of the experts) → slimc compile
    --approximate-experts → a fresh process: slimc.load (from_pretrained of out/hf: the config
    has 3 experts), slim.pt and slim.onnx equal the test's reference — the masked model built
    for 3 experts — at three shapes, greedy generate() too; the report calls it approximate."""
    run = run_family(tmp_path, source, SHAPES, prompt=_ids(1, 5, 4)["input_ids"],
                     prune=("--criterion", "l1", "--ratio", "0.3", "--prune-experts", "0.25"),
                     compile_args=("--approximate-experts",), reference=REFERENCE)
    run.assert_exact()
    assert "--approximate-experts" in run.prune_stdout, run.prune_stdout
    v, um = run.report["verify"], run.report["user_model"]
    assert v["approximate"] and v["experts"]["vs_masked"]["max_abs_diff"] > 0, v
    assert all(len(g) == 1 for g in v["experts"]["dropped"].values()), v["experts"]
    assert um["hf"]["expressible"], um
    assert any(c.endswith("4 → 3") and "experts" in c for c in um["hf"]["config_changes"]), um["hf"]
