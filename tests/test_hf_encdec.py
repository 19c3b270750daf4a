"""Encoder–decoder models (T5, BART; default configs, tiny widths), end to end: ``slimc prune``
→ ``slimc compile`` → ``slimc.load`` in a fresh process is the user's class, exact against the
masked model at three shapes (another batch; encoder and decoder lengths independent), greedy
``generate()`` (KV cache on: self- and cross-attention) equal, slim.onnx equal in onnxruntime."""
from __future__ import annotations

import pytest
import torch

pytest.importorskip("transformers")

from families import run_family  # noqa: E402

V = 120  # vocabulary: a size no width of the models shares

T5 = f"""
import torch, transformers as T
torch.manual_seed(0)
model = T.T5ForConditionalGeneration(T.T5Config(vocab_size={V}, d_model=64, d_kv=16, d_ff=128, num_layers=2,
                                                num_heads=4)).eval()
g = torch.Generator().manual_seed(0)
example_inputs = {{"input_ids": torch.randint(2, {V}, (2, 12), generator=g),
                  "decoder_input_ids": torch.randint(2, {V}, (2, 7), generator=g)}}
"""

BART = f"""
import torch, transformers as T
torch.manual_seed(0)
model = T.BartForConditionalGeneration(T.BartConfig(vocab_size={V}, d_model=64, encoder_layers=2, decoder_layers=2,
                                                    encoder_attention_heads=4, decoder_attention_heads=4,
                                                    encoder_ffn_dim=128, decoder_ffn_dim=128,
                                                    max_position_embeddings=64)).eval()
g = torch.Generator().manual_seed(0)
example_inputs = {{"input_ids": torch.randint(3, {V}, (2, 12), generator=g),
                  "decoder_input_ids": torch.randint(3, {V}, (2, 7), generator=g)}}
"""


def _pair(b: int, n: int, m: int, seed: int) -> dict:
    g = torch.Generator().manual_seed(seed)
    return {"input_ids": torch.randint(3, V, (b, n), generator=g),
            "decoder_input_ids": torch.randint(3, V, (b, m), generator=g)}


# another batch; the decoder longer than the encoder; equal lengths
SHAPES = [_pair(2, 12, 7, 1), _pair(3, 9, 13, 2), _pair(2, 5, 5, 3)]
PROMPT = _pair(2, 6, 1, 4)["input_ids"]
# random weights repeat one token (T5's tied embedding) or end at once (BART's EOS): no token
# twice and no early end, so every step follows the order of the logits
GENERATE = {"min_new_tokens": 6, "no_repeat_ngram_size": 1}


def _rows(report: dict, layer: str) -> tuple[int, int]:
    """(rows before, rows after) of a layer's weight, from the compile's report.json."""
    row = next(r for r in report["layers"] if r["layer"] == layer)
    return row["before"][0], row["after"][0]


def _heads_lost(report: dict, q: str, head_dim: int = 16) -> int:
    before, after = _rows(report, q)
    assert after % head_dim == 0, f"{q}: {after} rows are not whole heads of {head_dim}"
    return (before - after) // head_dim


def test_t5_end_to_end(tmp_path):
    """Heads of the encoder, the decoder's self-attention and its cross-attention, FFN of both;
    the config follows (num_heads with d_kv explicit, d_ff): from_pretrained rebuilds it."""
    run = run_family(tmp_path, T5, SHAPES, prompt=PROMPT, generate_kw=GENERATE)
    run.assert_exact()
    r = run.report
    for q in ("encoder.block.0.layer.0.SelfAttention.q", "decoder.block.1.layer.0.SelfAttention.q",
              "decoder.block.0.layer.1.EncDecAttention.q"):
        assert _heads_lost(r, q) == 1, q
    for ffn in ("encoder.block.0.layer.1.DenseReluDense.wi", "decoder.block.1.layer.2.DenseReluDense.wi"):
        assert _rows(r, ffn)[1] < _rows(r, ffn)[0], ffn
    for stack in ("encoder", "decoder"):  # the relative position bias table loses the pruned heads' columns
        bias = next(x for x in r["layers"] if x["layer"] == f"{stack}.block.0.layer.0.SelfAttention.relative_attention_bias")
        assert bias["before"][1] == 4 and bias["after"][1] == 3, bias
    hf = r["user_model"]["hf"]
    assert hf["expressible"], hf
    assert "num_heads: 4 → 3" in hf["config_changes"] and any(c.startswith("d_ff: 128 → ") for c in hf["config_changes"])
    assert (run.out / "hf" / "config.json").exists() and "EncDecAttention.n_heads: 4 → 3" in run.compile_stdout
    assert r["params"]["after"] < 0.8 * r["params"]["before"]


def test_bart_end_to_end(tmp_path):
    """FFN of encoder and decoder, heads of the encoder, the decoder's self- and cross-attention.
    BART's head size is d_model // heads: pruned heads are not expressible in its config, the
    report says why, and slimc.load rebuilds the class from layout.json."""
    run = run_family(tmp_path, BART, SHAPES, prompt=PROMPT, generate_kw=GENERATE)
    run.assert_exact()
    r = run.report
    for ffn in ("model.encoder.layers.0.fc1", "model.decoder.layers.1.fc1"):
        assert _rows(r, ffn)[1] < _rows(r, ffn)[0], ffn
    lost = [_heads_lost(r, f"model.{q}.q_proj") for q in ("encoder.layers.0.self_attn", "decoder.layers.1.self_attn",
                                                          "decoder.layers.0.encoder_attn")]
    hf = r["user_model"]["hf"]
    if any(lost):  # (a pruner may keep BART's heads whole, its config then expresses the model)
        assert all(lost), lost
        assert not hf["expressible"] and "num_heads" in hf["why_not"], hf
        assert (run.out / "layout.json").exists()
    assert r["params"]["after"] < 0.9 * r["params"]["before"]


def test_t5_ffn_config_follows_beside_a_vocabulary_of_the_same_size():
    """d_ff 128 and a vocabulary of 128: the embedding keeps its 128 rows, the FFN loses some;
    the config's d_ff follows the FFN (checked: the config builds the slim model)."""
    import transformers as T

    import slimc

    torch.manual_seed(0)
    m = T.T5ForConditionalGeneration(T.T5Config(vocab_size=128, d_model=32, d_kv=8, d_ff=128, num_layers=1,
                                                num_heads=4)).eval()
    rows = torch.ones(128, 1)
    rows[::4] = 0
    masks = {"encoder.block.0.layer.1.DenseReluDense.wi.weight": rows,
             "decoder.block.0.layer.2.DenseReluDense.wi.weight": rows}
    res = slimc.compile(m, masks, _pair(2, 6, 4, 0), front_end="export")
    hf = res.report["user_model"]["hf"]
    assert hf["expressible"] and "d_ff: 128 → 96" in hf["config_changes"], hf
    assert res.model.config.d_ff == 96 and res.model.config.vocab_size == 128


@pytest.mark.slow
def test_bart_bench_times_every_variant_in_both_runtimes(tmp_path):
    """slimc bench of an encoder–decoder model: the original and masked models run with their
    cache off (an EncoderDecoderCache is no ONNX output), slim.onnx takes the given tensors."""
    import runpy

    from slimc.bench import bench
    from slimc.prune import prune

    (tmp_path / "model.py").write_text(BART.replace("encoder_layers=2, decoder_layers=2",
                                                    "encoder_layers=1, decoder_layers=1"))
    ns = runpy.run_path(str(tmp_path / "model.py"))
    model, x = ns["model"], ns["example_inputs"]
    masks = prune(model, x, "l1", round_to=1, ratio=0.3)
    from slimc.inputs import bind

    res = bench(model, masks, bind(model, x), batches=(2,), runtimes=("torch", "ort"), min_time_s=0.01,
                warmup=1, workdir=tmp_path / "bench")
    assert not res["errors"], res["errors"]
    assert {(r["variant"], r["runtime"]) for r in res["rows"]} >= {("slim", "ort-cpu"), ("original", "ort-cpu")}
