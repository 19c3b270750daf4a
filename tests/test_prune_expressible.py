"""`slimc prune` keeps a Hugging Face model to widths its config can express by default, so
plain ``from_pretrained(out/hf)`` rebuilds the slim model in a fresh process; ``--free-widths``
prunes freely, says why the config cannot express the result, and ``slimc.load`` still
rebuilds the class. Every reference here is the test's own: the original rebuilt from the
model file, the masks in ``masks.pth`` applied by hand."""
from __future__ import annotations

import copy
import json
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
import torch

T = pytest.importorskip("transformers")

import slimc  # noqa: E402
from families import CLI, TOL, run_family  # noqa: E402
from slimc.prune import Pruner  # noqa: E402
from slimc.surgery import hf  # noqa: E402

V = 128
SOURCES = {  # tiny widths, every other config value at its default
    "gpt2": ("GPT2LMHeadModel", "T.GPT2LMHeadModel(T.GPT2Config(vocab_size=128, n_embd=64, n_layer=2, n_head=4, "
                                "n_positions=64, bos_token_id=0, eos_token_id=0))"),
    "llama": ("LlamaForCausalLM", "T.LlamaForCausalLM(T.LlamaConfig(vocab_size=128, hidden_size=64, num_hidden_layers=2, "
                                  "num_attention_heads=4, num_key_value_heads=2, intermediate_size=128, "
                                  "max_position_embeddings=64))"),
    "bert": ("BertForSequenceClassification",
             "T.BertForSequenceClassification(T.BertConfig(vocab_size=128, hidden_size=64, num_hidden_layers=2, "
             "num_attention_heads=4, intermediate_size=128, max_position_embeddings=64))"),
}


def _source(name: str) -> str:
    return textwrap.dedent(f"""
        import torch, transformers as T
        torch.manual_seed(0)
        model = {SOURCES[name][1]}.eval()
        example_inputs = {{"input_ids": torch.randint(0, 128, (2, 12), generator=torch.Generator().manual_seed(0))}}
    """)


def _ids(b: int, n: int, seed: int) -> dict:
    return {"input_ids": torch.randint(0, V, (b, n), generator=torch.Generator().manual_seed(seed))}


SHAPES = [_ids(2, 12, 1), _ids(3, 20, 2), _ids(1, 5, 3)]

# the fresh process: the original from model.py, the masks applied by hand; the slim model
# from_pretrained(out/hf) and/or slimc.load(out), compared at every shape (greedy generate too)
FRESH = """
import json, runpy, sys, warnings, torch, transformers
d, cls_name, loaders = sys.argv[1], sys.argv[2], sys.argv[3].split(",")
ref = runpy.run_path(d + "/model.py")["model"].eval()
raw = torch.load(d + "/masks.pth", weights_only=True)
params = dict(ref.named_parameters(remove_duplicate=False))
with torch.no_grad():
    for k, m in raw.items():
        params[k].mul_((torch.as_tensor(m) != 0).to(params[k].dtype))
shapes, prompt = torch.load(d + "/shapes.pt", weights_only=True)
res = {}
for how in loaders:
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        if how == "from_pretrained":
            slim = getattr(transformers, cls_name).from_pretrained(d + "/out/hf").eval()
        else:
            import slimc
            slim = slimc.load(d + "/out").eval()
    r = {"class": type(slim).__name__, "config": slim.config.to_dict(), "diffs": [],
         "shapes": {n: list(t.shape) for n, t in slim.named_parameters()}}
    for x in shapes:
        with torch.no_grad():
            a, b = slim(**x).logits, ref(**x).logits
        r["diffs"].append([list(x["input_ids"].shape), float((a - b).abs().max()), float(b.abs().max())])
    if prompt is not None:
        kw = dict(max_new_tokens=6, do_sample=False, pad_token_id=0)
        with torch.no_grad():
            r["generate"] = torch.equal(slim.generate(prompt, **kw), ref.generate(prompt, **kw))
    res[how] = r
print("FRESH " + json.dumps(res))
"""


def _cli(args: list[str], d: Path) -> subprocess.CompletedProcess:
    p = subprocess.run([sys.executable, "-c", CLI, *args], cwd=d, capture_output=True, text=True, timeout=900)
    assert p.returncode == 0 and "Traceback" not in p.stderr, f"slimc {args[0]}: {p.stderr[-3000:]}"
    return p


def _fresh(d: Path, name: str, loaders: str, prompt: torch.Tensor | None = None) -> dict:
    torch.save((SHAPES, prompt), d / "shapes.pt")
    p = subprocess.run([sys.executable, "-c", FRESH, str(d), SOURCES[name][0], loaders], capture_output=True,
                       text=True, timeout=900)
    line = next((ln for ln in p.stdout.splitlines() if ln.startswith("FRESH ")), None)
    assert p.returncode == 0 and line, p.stderr[-3000:]
    return json.loads(line[len("FRESH "):])


def _assert_exact(r: dict) -> None:
    assert len(r["diffs"]) == len(SHAPES)
    for shape, diff, scale in r["diffs"]:
        assert diff <= TOL * max(1.0, scale), f"{r['class']} at {shape}: diff {diff:.3g} (scale {scale:.3g})"
    assert r.get("generate", True), "greedy tokens differ from the masked model's"


@pytest.mark.parametrize("name", ["gpt2", pytest.param("bert", marks=pytest.mark.slow)])
def test_default_prune_of_an_hf_model_reloads_with_from_pretrained(name, tmp_path):
    """GPT-2 and BERT: the head size is hidden // heads and the hidden size runs through
    LayerNorm, so the config can express the FFN width alone; the default prune says so and
    prunes the FFN (alike in every layer), and from_pretrained rebuilds the slim model."""
    (tmp_path / "model.py").write_text(_source(name))
    p = _cli(["prune", "model.py", "-o", "masks.pth"], tmp_path)
    assert "heads of" in p.stdout and "cannot express it" in p.stdout and "--free-widths" in p.stdout, p.stdout
    _cli(["compile", "model.py", "--masks", "masks.pth", "-o", "out", "--no-onnx"], tmp_path)
    report = json.loads((tmp_path / "out" / "report.json").read_text())
    info = report["user_model"]["hf"]
    assert info["expressible"], info
    assert report["params"]["after"] < report["params"]["before"]
    got = _fresh(tmp_path, name, "from_pretrained")["from_pretrained"]
    _assert_exact(got)
    field, width = ("n_inner", 256) if name == "gpt2" else ("intermediate_size", 128)  # GPT-2's FFN: 4 × 64
    assert got["config"][field] == width // 2, got["config"]  # half, in every layer


def test_llama_gqa_end_to_end_default_prune_is_expressible(tmp_path):
    """The tiny LLaMA (hidden 64, 4 heads, 2 kv heads, FFN 128) of issue #21 through the real
    CLI at L1 0.3: the hidden size went to 45 (not a multiple of 4 heads) and the compile
    crashed saving the config. Now the hidden size keeps a multiple of the head count (48),
    the config expresses every width, and from_pretrained rebuilds the slim model."""
    run = run_family(tmp_path, _source("llama"), SHAPES, prompt=_ids(1, 5, 4)["input_ids"])
    run.assert_exact()
    info = run.report["user_model"]["hf"]
    assert info["expressible"] and "hidden_size: 64 → 48" in info["config_changes"], info
    assert "multiple of the number of heads" in run.prune_stdout
    got = _fresh(tmp_path, "llama", "from_pretrained", _ids(1, 5, 4)["input_ids"])["from_pretrained"]
    _assert_exact(got)
    assert got["config"]["hidden_size"] == 48 and got["config"]["intermediate_size"] == 90, got["config"]


def test_free_widths_prunes_what_the_config_cannot_say_and_slimc_load_rebuilds_it(tmp_path):
    """--free-widths with global ranking on the tiny LLaMA: layers of different FFN widths and a
    hidden size that is not a multiple of the head count. prune and the report say why the
    config cannot express it; the compile saves it (no crash); slimc.load rebuilds LLaMA."""
    (tmp_path / "model.py").write_text(_source("llama"))
    p = _cli(["prune", "model.py", "--free-widths", "--ranking", "global", "--ratio", "0.3", "--round-to", "1",
              "-o", "masks.pth"],
             tmp_path)
    assert "LlamaConfig cannot express these widths" in p.stdout, p.stdout
    _cli(["compile", "model.py", "--masks", "masks.pth", "-o", "out", "--no-onnx"], tmp_path)
    report = json.loads((tmp_path / "out" / "report.json").read_text())
    info = report["user_model"]["hf"]
    assert not info["expressible"] and info["why_not"], info
    got = _fresh(tmp_path, "llama", "slimc.load", _ids(1, 5, 4)["input_ids"])["slimc.load"]
    assert got["class"] == "LlamaForCausalLM", got
    _assert_exact(got)
    ffn = [got["shapes"][f"model.layers.{i}.mlp.gate_proj.weight"][0] for i in range(2)]
    hidden = got["shapes"]["model.embed_tokens.weight"][1]
    assert ffn[0] != ffn[1] or hidden % 4, (ffn, hidden)  # what the config cannot say


# --- fast, in-process ---------------------------------------------------------------------------

def _llama():
    torch.manual_seed(0)
    return eval(SOURCES["llama"][1], {"T": T}).eval()


def test_expressible_catches_a_config_that_fails_its_own_validation():
    m = _llama()
    m.config.hidden_size = 45  # transformers 5 validates hidden % heads when the config is saved
    ok, why = hf.expressible(m)
    assert not ok and "not a multiple" in why and "validate" in why, why
    g = T.GPT2LMHeadModel(T.GPT2Config(vocab_size=V, n_embd=64, n_layer=1, n_head=4, n_positions=32))
    g.config.n_embd = 63
    ok, why = hf.expressible(g)
    assert not ok and "divisible" in why, why


def test_pruner_keeps_llama_widths_expressible_and_its_check_catches_free_ones():
    """Default: hidden 64 → 48 (45 rounded up to a multiple of the 4 heads), FFN 90 in both
    layers; the pruner's own check agrees. expressible=False gives 45, and the same check
    must catch it (the config's validation: not a multiple of the head count)."""
    m = _llama()
    x = (_ids(2, 12, 0)["input_ids"],)
    pr = Pruner(m, x, "l1", round_to=1, ratio=0.3)
    got = pr.prune()

    def kept(masks, name, dim):
        t = torch.as_tensor(masks[name]) != 0
        return int(t.any(1 - dim).sum())

    assert kept(got.masks, "model.embed_tokens.weight", 1) == 48
    ffn = [kept(got.masks, f"model.layers.{i}.mlp.gate_proj.weight", 0) for i in range(2)]
    assert ffn == [90, 90], ffn
    assert pr.expressible(got) == (True, "")
    free = Pruner(m, x, "l1", round_to=1, ratio=0.3, expressible=False)
    got = free.prune()
    assert kept(got.masks, "model.embed_tokens.weight", 1) == 45
    ok, why = free.expressible(got)
    assert not ok and "multiple" in why, why


def test_inexpressible_config_saves_and_reloads_in_process(tmp_path):
    """Masks that make the hidden size 45: the config would fail its own validation, so it keeps
    hidden 64 (reported, with the validation's reason); res.save writes it (no crash), and
    slimc.load rebuilds LLaMA with hidden 45 from the layout, exact."""
    m = _llama()
    x = (_ids(2, 12, 0)["input_ids"],)
    masks = Pruner(m, x, "l1", round_to=1, ratio=0.3, expressible=False).masks()
    res = slimc.compile(m, masks, x)
    info = res.report["user_model"]["hf"]
    assert not info["expressible"] and "multiple" in info["why_not"], info
    res.save(tmp_path / "out", onnx=False)
    assert json.loads((tmp_path / "out" / "hf" / "config.json").read_text())["hidden_size"] == 64
    back = slimc.load(tmp_path / "out")
    assert type(back) is T.LlamaForCausalLM and back.model.embed_tokens.embedding_dim == 45
    y = _ids(3, 9, 7)["input_ids"]
    with torch.no_grad():
        assert torch.allclose(back(y).logits, res.model(y).logits, atol=1e-6)


def test_hf_models_skip_the_fx_attempt(monkeypatch):
    """auto on an HF model goes straight to export: fx is never tried, nothing is said about it."""
    import slimc.trace as tr

    calls = []
    real = tr.trace_fx
    monkeypatch.setattr(tr, "trace_fx", lambda *a, **k: calls.append(1) or real(*a, **k))
    m = _llama()
    x = (_ids(2, 12, 0)["input_ids"],)
    traced = tr.trace(copy.deepcopy(m), x, "auto")
    assert traced.front_end == "export" and not calls
    assert not any("front end" in n for n in traced.notes), traced.notes


def test_a_check_that_cannot_tell_does_not_stop_pruning(monkeypatch):
    """Where slimc cannot make the user's class slim to check it (surgery fails), the default
    does not silently prune nothing: every family is pruned and the note says it is not known."""
    import slimc.surgery as surgery

    def broken(*a, **k):
        raise RuntimeError("surgery broke")

    monkeypatch.setattr(surgery, "build", broken)
    m = _llama()
    pr = Pruner(m, (_ids(2, 12, 0)["input_ids"],), "l1", round_to=1, ratio=0.5)
    got = pr.prune()
    assert not pr.fit.frozen and len(got.sparsity) == 5, got.sparsity  # FFN ×2, hidden, heads ×2
    assert any("is not known" in n and "surgery broke" in n for n in got.notes), got.notes


def test_default_prune_leaves_what_the_users_class_cannot_follow():
    """GPT-BigCode splits c_attn by (embed_dim, kv_dim, kv_dim): a value head size smaller
    than the key's is a graph the class cannot say with its one kv_dim. The default prune
    keeps such widths (a note says why), so the masks it hands describe the user's class;
    --free-widths prunes them and the compile says why the class could not be built."""
    m = T.GPTBigCodeForCausalLM(T.GPTBigCodeConfig(vocab_size=128, n_embd=64, n_layer=2, n_head=4,
                                                   n_positions=64)).eval()
    x = (_ids(2, 12, 0)["input_ids"],)
    pr = Pruner(m, x, "l1", round_to=1, ratio=0.3)
    got = pr.prune()
    assert any("c_attn" in n and "not pruned" in n for n in got.notes), got.notes
    res = slimc.compile(m, got.masks, x)
    assert res.model is not None and type(res.model) is T.GPTBigCodeForCausalLM, res.report["user_model"]
    free = slimc.compile(m, Pruner(m, x, "l1", round_to=1, ratio=0.3, expressible=False).masks(), x)
    assert free.model is None and "failed to run" in free.report["user_model"]["reason"]


def test_a_norm_whose_form_needs_values_is_measured_on_the_pruners_weights():
    """ConvNeXt-V2's channels run through LayerNorms and GRNs, whose form the check cannot tell
    on the meta device: it asks again with the weights the pruner holds, so the default prune
    keeps what the config cannot say (the notes say why) instead of pruning on "not known",
    and the compile of its masks reloads with from_pretrained."""
    cfg = T.ConvNextV2Config(hidden_sizes=[16, 24, 32, 40], depths=[1, 1, 2, 1], num_labels=5)
    torch.manual_seed(0)
    m = T.ConvNextV2ForImageClassification(cfg).eval()
    x = (torch.randn(2, 3, 64, 64),)
    got = Pruner(m, x, "l1", round_to=1, ratio=0.3).prune()
    assert not any("is not known" in n for n in got.notes), got.notes
    assert any("cannot express it" in n for n in got.notes), got.notes
    grn = [n for n in got.notes if "GRN" in n]  # no class can be made slim with the GRN's channels pruned
    assert grn and all("the graph (slim.pt), not your class" in n for n in grn), grn
    res = slimc.compile(m, got.masks, x)
    assert res.report["user_model"]["hf"]["expressible"], res.report["user_model"]["hf"]
