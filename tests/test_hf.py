"""Hugging Face ``transformers`` models from small configs (no download), with their default
settings (KV cache on): heads, FFN and hidden size removed; the graph and the user's own
class exact at three input shapes; greedy ``generate`` identical to the masked model; the
saved folder reloads in a fresh process (``from_pretrained`` where the config can express
the slim widths, ``slimc.load`` always)."""
from __future__ import annotations

import json
import subprocess
import sys

import pytest
import torch

transformers = pytest.importorskip("transformers")

import slimc  # noqa: E402
from helpers import max_diff, n_params, random_inputs_like, run_eval, user_masked  # noqa: E402
from slimc.prune import group_masks  # noqa: E402

T = transformers
V = 100


def _bert():
    return T.BertForSequenceClassification(T.BertConfig(vocab_size=V, hidden_size=64, num_hidden_layers=2,
                                                        num_attention_heads=4, intermediate_size=128,
                                                        max_position_embeddings=64))


def _gpt2():
    return T.GPT2LMHeadModel(T.GPT2Config(vocab_size=V, n_embd=64, n_layer=2, n_head=4, n_positions=64,
                                          bos_token_id=0, eos_token_id=0))


def _llama():
    return T.LlamaForCausalLM(T.LlamaConfig(vocab_size=V, hidden_size=64, num_hidden_layers=2, num_attention_heads=4,
                                            num_key_value_heads=2, intermediate_size=128, max_position_embeddings=64))


def _qwen2():
    return T.Qwen2ForCausalLM(T.Qwen2Config(vocab_size=V, hidden_size=64, num_hidden_layers=2, num_attention_heads=4,
                                            num_key_value_heads=2, intermediate_size=128, max_position_embeddings=64))


def _vit():
    return T.ViTForImageClassification(T.ViTConfig(image_size=32, patch_size=4, hidden_size=64, num_hidden_layers=2,
                                                   num_attention_heads=4, intermediate_size=128, num_labels=10))


def _distilbert():
    return T.DistilBertForSequenceClassification(T.DistilBertConfig(vocab_size=V, dim=64, n_layers=2, n_heads=4,
                                                                    hidden_dim=128, max_position_embeddings=64))


def _t5_encoder():
    return T.T5EncoderModel(T.T5Config(vocab_size=V, d_model=64, d_kv=16, d_ff=128, num_layers=2, num_heads=4))


MODELS = {  # name: (builder, input kind, config expresses the slim widths when hidden is pruned too)
    "bert": (_bert, "ids", False), "gpt2": (_gpt2, "ids", False), "llama_gqa": (_llama, "ids", True),
    "qwen2": (_qwen2, "ids", True), "vit": (_vit, "image", False), "distilbert": (_distilbert, "ids", False),
    "t5_encoder": (_t5_encoder, "ids", True),
}


def _inputs(kind: str, batch: int, size: int, seed: int = 0) -> tuple:
    g = torch.Generator().manual_seed(seed)
    if kind == "ids":
        return (torch.randint(0, V, (batch, size), generator=g),)
    return (torch.randn(batch, 3, size, size, generator=g),)


def _other_shapes(kind: str) -> list[tuple]:
    return [_inputs(kind, 3, 20, 1), _inputs(kind, 1, 7, 2)] if kind == "ids" else [_inputs(kind, 3, 32, 1)]


FRESH = """
import json, sys, torch, slimc, transformers
out, cls_name, expressible = sys.argv[1], sys.argv[2], sys.argv[3] == "1"
xs, want = torch.load(out + "/check.pt")
def logits(m):
    with torch.no_grad():
        y = m(*xs)
    return y.logits if hasattr(y, "logits") else y.last_hidden_state
m = slimc.load(out)
res = {"class": type(m).__name__, "load": float((logits(m) - want).abs().max())}
if expressible:
    m2 = getattr(transformers, cls_name).from_pretrained(out + "/hf")
    res["from_pretrained"] = float((logits(m2) - want).abs().max())
print(json.dumps(res))
"""


@pytest.mark.parametrize("name", list(MODELS))
def test_hf_model_is_slim_and_stays_an_hf_model(name, tmp_path):
    build, kind, expressible = MODELS[name]
    torch.manual_seed(0)
    m = build().eval()
    x = _inputs(kind, 2, 12 if kind == "ids" else 32)
    masks = group_masks(m, x, 0.5)
    res = slimc.compile(m, masks, x)
    assert res.report["front_end"] == "export"
    assert n_params(res.module) * 1.8 < n_params(m), res.report["kept"]  # T5EncoderModel returns the hidden states: only heads and FFN go

    # the user's own class, slim: same class, the graph's parameters, exact at every shape
    assert res.model is not None, res.report["user_model"]
    assert type(res.model) is type(m)
    assert n_params(res.model) == n_params(res.module)
    ref = user_masked(m, masks, res.masks)  # the pruner's masks are complete: the masks as given
    for xs in [x, *_other_shapes(kind)]:
        want = run_eval(ref, xs)
        for slim in (res.module, res.model):
            d, s = max_diff(run_eval(slim, xs), want)
            assert d <= 1e-5 * max(1.0, s), f"{type(slim).__name__} at {xs[0].shape}: diff {d:.3g}"

    # greedy generation with the KV cache on: the same tokens as the masked model
    generates = name in ("gpt2", "llama_gqa", "qwen2")  # the causal LMs: generate() must be compared
    assert (hasattr(res.model, "generate") and res.model.can_generate()) == generates, name
    if generates:
        prompt = _inputs(kind, 1, 5, 3)[0]
        kw = dict(max_new_tokens=6, do_sample=False, pad_token_id=0)
        assert torch.equal(res.model.generate(prompt, **kw), ref.generate(prompt, **kw))

    # saved, then reloaded in a fresh process
    hf = res.report["user_model"]["hf"]
    assert hf["expressible"] is expressible, hf
    out = tmp_path / "out"
    res.save(out, onnx=False)
    assert (out / "hf" / "config.json").is_file() and (out / "layout.json").is_file()
    check = _other_shapes(kind)[0]
    with torch.no_grad():
        y = res.model(*check)
    torch.save((check, y.logits if hasattr(y, "logits") else y.last_hidden_state), out / "check.pt")
    proc = subprocess.run([sys.executable, "-c", FRESH, str(out), type(m).__name__, "1" if expressible else "0"],
                          capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-2000:]
    got = json.loads(proc.stdout.strip().splitlines()[-1])
    assert got["class"] == type(m).__name__
    assert got["load"] <= 1e-5, got
    if expressible:
        assert got["from_pretrained"] <= 1e-5, got


def _bert_masks(heads: bool) -> dict:
    """Complete masks, by hand: heads 1 and 2 of every layer (their query, key and value rows
    and biases, their columns of the attention output) and every other FFN channel (the
    intermediate row and bias, the output column)."""
    masks = {}
    for i in range(2):
        pre = f"bert.encoder.layer.{i}"
        if heads:
            for proj in ("query", "key", "value"):
                w, b = torch.ones(64, 64), torch.ones(64)
                w[16:48] = b[16:48] = 0  # heads 1 and 2 of every layer
                masks[f"{pre}.attention.self.{proj}.weight"], masks[f"{pre}.attention.self.{proj}.bias"] = w, b
            w = torch.ones(64, 64)
            w[:, 16:48] = 0
            masks[f"{pre}.attention.output.dense.weight"] = w
        w, b, out = torch.ones(128, 64), torch.ones(128), torch.ones(64, 128)
        w[::2] = b[::2] = out[:, ::2] = 0
        masks[f"{pre}.intermediate.dense.weight"], masks[f"{pre}.intermediate.dense.bias"] = w, b
        masks[f"{pre}.output.dense.weight"] = out
    return masks


def test_what_a_standard_bert_config_can_and_cannot_express(tmp_path):
    """FFN channels alike in every layer: the standard config expresses it and plain
    ``from_pretrained`` reloads it. Heads pruned: BERT's head size is hidden // heads, so it
    cannot — the report says why, and slimc.load rebuilds it."""
    torch.manual_seed(0)
    m = _bert().eval()
    x = _inputs("ids", 2, 12)
    xs = _inputs("ids", 3, 9, 5)
    res = slimc.compile(m, _bert_masks(heads=False), x)
    hf = res.report["user_model"]["hf"]
    assert hf["expressible"] and hf["config_changes"] == ["intermediate_size: 128 → 64"], hf
    res.save(tmp_path / "ffn", onnx=False)
    m2 = T.BertForSequenceClassification.from_pretrained(tmp_path / "ffn" / "hf")
    d, s = max_diff(run_eval(m2, xs), run_eval(user_masked(m, _bert_masks(heads=False), res.masks), xs))
    assert d <= 1e-5 * max(1.0, s)

    res = slimc.compile(m, _bert_masks(heads=True), x)
    hf = res.report["user_model"]["hf"]
    assert not hf["expressible"] and "attention_head_size" in hf["why_not"], hf
    res.save(tmp_path / "heads", onnx=False)
    m3 = slimc.load(tmp_path / "heads")
    assert type(m3) is type(m) and m3.bert.encoder.layer[0].attention.self.num_attention_heads == 2
    d, s = max_diff(run_eval(m3, xs), run_eval(user_masked(m, _bert_masks(heads=True), res.masks), xs))
    assert d <= 1e-5 * max(1.0, s)


def test_attention_mask_and_position_ids_as_the_hf_forward_takes_them():
    torch.manual_seed(0)
    m = _llama().eval()
    ids = _inputs("ids", 2, 10)[0]
    mask = torch.ones_like(ids)
    mask[0, :3] = 0  # left padding
    example = {"input_ids": ids, "attention_mask": mask}
    masks = group_masks(m, (ids,), 0.5)
    res = slimc.compile(m, masks, example)
    assert res.model is not None, res.report["user_model"]
    ref = user_masked(m, masks, res.masks)
    pos = (mask.cumsum(-1) - 1).clamp(min=0)
    with torch.no_grad():
        want = ref(input_ids=ids, attention_mask=mask, position_ids=pos).logits
        got = res.model(input_ids=ids, attention_mask=mask, position_ids=pos).logits
    assert float((got - want).abs().max()) <= 1e-5 * max(1.0, float(want.abs().max()))


def test_slim_llama_runs_with_a_cache_from_a_prompt():
    """past_key_values: the slim model's own cache (fewer kv heads) continues a prompt."""
    torch.manual_seed(0)
    m = _llama().eval()
    x = _inputs("ids", 1, 8)
    masks = group_masks(m, x, 0.5)
    res = slimc.compile(m, masks, x)
    ref = user_masked(m, masks, res.masks)
    with torch.no_grad():
        a = res.model(x[0][:, :5], use_cache=True)
        b = ref(x[0][:, :5], use_cache=True)
        y1 = res.model(x[0][:, 5:], past_key_values=a.past_key_values).logits
        y0 = ref(x[0][:, 5:], past_key_values=b.past_key_values).logits
    assert float((y1 - y0).abs().max()) <= 1e-5 * max(1.0, float(y0.abs().max()))


def test_meta_plan_of_an_hf_model_loads_with_the_sliced_checkpoint(tmp_path):
    """A plan from shapes (parameters on meta), the checkpoint sliced shard by shard, then
    slimc.load: the HF class again, the RMSNorms made exact when the weights are filled in."""
    from slimc.shards import empty_weights

    torch.manual_seed(0)
    real = _llama().eval()
    real.save_pretrained(tmp_path / "ckpt")
    x = _inputs("ids", 2, 12)
    masks = group_masks(real, x, 0.5)
    with empty_weights():
        meta = T.LlamaForCausalLM(real.config)
    res = slimc.compile(meta, masks, x)
    assert res.model is not None and next(res.model.parameters()).is_meta
    res.save(tmp_path / "out", weights=tmp_path / "ckpt")
    m = slimc.load(tmp_path / "out")
    assert type(m) is T.LlamaForCausalLM and m.config.hidden_size == 32
    ref = user_masked(real, masks, res.masks)
    for xs in [x, _inputs("ids", 3, 20, 1)]:
        d, s = max_diff(run_eval(m, xs), run_eval(ref, xs))
        assert d <= 1e-5 * max(1.0, s)
