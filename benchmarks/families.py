"""Architecture families end to end, as a new user meets them: for each Hugging Face family
(a tiny config, every other value at its default), ``slimc prune --criterion l1 --ratio 0.3``
→ ``slimc compile`` → a fresh process that ``slimc.load``s the output and compares the user's
class, ``slim.pt`` and ``slim.onnx`` with the model masked by the user's masks (applied by the
test harness's own code, tests/families.py) at three shapes including another batch, and
greedy ``generate()`` for generative models.

    python benchmarks/families.py [--only llama,t5] [--no-onnx] [--free-widths] [--stem families_cpu]

Writes ``benchmarks/results/<stem>.json`` and ``.md``: per family, what went through, params
before → after, the largest differences, how the output reloads, and why anything failed.
This is a survey, not a test: the tests (tests/test_hf_*.py, tests/test_families.py) assert.
"""
from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
import traceback
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "tests"))

V = 128
DECODER = dict(vocab_size=V, hidden_size=64, intermediate_size=128, num_hidden_layers=2, num_attention_heads=4,
               max_position_embeddings=64)
ENCODER = dict(vocab_size=V, hidden_size=64, intermediate_size=128, num_hidden_layers=2, num_attention_heads=4,
               max_position_embeddings=64)
VISION = dict(image_size=32, patch_size=4, hidden_size=64, intermediate_size=128, num_hidden_layers=2,
              num_attention_heads=4, num_labels=10)

# family: (model type, auto class, input kind, config overrides)
FAMILIES: dict[str, tuple[str, str, str, dict]] = {
    # decoder-only language models
    "gpt2": ("gpt2", "AutoModelForCausalLM", "lm", dict(vocab_size=V, n_embd=64, n_layer=2, n_head=4, n_positions=64)),
    "gpt_neo": ("gpt_neo", "AutoModelForCausalLM", "lm", dict(vocab_size=V, hidden_size=64, num_layers=2, num_heads=4,
                                                              attention_types=[[["global", "local"], 1]],
                                                              max_position_embeddings=64)),
    "gptj": ("gptj", "AutoModelForCausalLM", "lm", dict(vocab_size=V, n_embd=64, n_layer=2, n_head=4, n_positions=64,
                                                        rotary_dim=8)),
    "gpt_neox": ("gpt_neox", "AutoModelForCausalLM", "lm", DECODER),
    "gpt_bigcode": ("gpt_bigcode", "AutoModelForCausalLM", "lm", dict(vocab_size=V, n_embd=64, n_layer=2, n_head=4,
                                                                      n_positions=64)),
    "codegen": ("codegen", "AutoModelForCausalLM", "lm", dict(vocab_size=V, n_embd=64, n_layer=2, n_head=4,
                                                              n_positions=64, rotary_dim=8)),
    "bloom": ("bloom", "AutoModelForCausalLM", "lm", dict(vocab_size=V, hidden_size=64, n_layer=2, n_head=4)),
    "falcon": ("falcon", "AutoModelForCausalLM", "lm", dict(vocab_size=V, hidden_size=64, num_hidden_layers=2,
                                                            num_attention_heads=4)),
    "opt": ("opt", "AutoModelForCausalLM", "lm", dict(vocab_size=V, hidden_size=64, ffn_dim=128, num_hidden_layers=2,
                                                      num_attention_heads=4, max_position_embeddings=64,
                                                      word_embed_proj_dim=64)),
    "llama": ("llama", "AutoModelForCausalLM", "lm", {**DECODER, "num_key_value_heads": 2}),
    "mistral": ("mistral", "AutoModelForCausalLM", "lm", {**DECODER, "num_key_value_heads": 2}),
    "qwen2": ("qwen2", "AutoModelForCausalLM", "lm", {**DECODER, "num_key_value_heads": 2}),
    "qwen3": ("qwen3", "AutoModelForCausalLM", "lm", {**DECODER, "num_key_value_heads": 2, "head_dim": 16}),
    "gemma": ("gemma", "AutoModelForCausalLM", "lm", {**DECODER, "num_key_value_heads": 2, "head_dim": 16}),
    "gemma2": ("gemma2", "AutoModelForCausalLM", "lm", {**DECODER, "num_key_value_heads": 2, "head_dim": 16}),
    "phi": ("phi", "AutoModelForCausalLM", "lm", DECODER),
    "phi3": ("phi3", "AutoModelForCausalLM", "lm", {**DECODER, "num_key_value_heads": 2, "pad_token_id": 0}),
    "stablelm": ("stablelm", "AutoModelForCausalLM", "lm", {**DECODER, "num_key_value_heads": 2}),
    "starcoder2": ("starcoder2", "AutoModelForCausalLM", "lm", {**DECODER, "num_key_value_heads": 2}),
    "olmo": ("olmo", "AutoModelForCausalLM", "lm", DECODER),
    "olmo2": ("olmo2", "AutoModelForCausalLM", "lm", {**DECODER, "num_key_value_heads": 2}),
    "granite": ("granite", "AutoModelForCausalLM", "lm", {**DECODER, "num_key_value_heads": 2}),
    "cohere": ("cohere", "AutoModelForCausalLM", "lm", {**DECODER, "num_key_value_heads": 2}),
    "biogpt": ("biogpt", "AutoModelForCausalLM", "lm", DECODER),
    "mixtral": ("mixtral", "AutoModelForCausalLM", "lm", {**DECODER, "num_key_value_heads": 2, "num_local_experts": 4}),
    "qwen2_moe": ("qwen2_moe", "AutoModelForCausalLM", "lm", {**DECODER, "num_key_value_heads": 2, "num_experts": 4,
                                                              "moe_intermediate_size": 64,
                                                              "shared_expert_intermediate_size": 64}),
    "olmoe": ("olmoe", "AutoModelForCausalLM", "lm", {**DECODER, "num_key_value_heads": 2, "num_experts": 4,
                                                      "num_experts_per_tok": 2}),
    # encoders
    "bert": ("bert", "AutoModelForSequenceClassification", "enc", ENCODER),
    "roberta": ("roberta", "AutoModelForSequenceClassification", "enc", {**ENCODER, "max_position_embeddings": 66}),
    "distilbert": ("distilbert", "AutoModelForSequenceClassification", "enc",
                   dict(vocab_size=V, dim=64, n_layers=2, n_heads=4, hidden_dim=128, max_position_embeddings=64)),
    "albert": ("albert", "AutoModelForSequenceClassification", "enc", {**ENCODER, "embedding_size": 32}),
    "electra": ("electra", "AutoModelForSequenceClassification", "enc", {**ENCODER, "embedding_size": 32}),
    "deberta_v2": ("deberta-v2", "AutoModelForSequenceClassification", "enc", ENCODER),
    "mpnet": ("mpnet", "AutoModelForSequenceClassification", "enc", {**ENCODER, "max_position_embeddings": 66}),
    "modernbert": ("modernbert", "AutoModelForSequenceClassification", "enc", {**ENCODER, "pad_token_id": 0}),
    # encoder–decoders
    "t5": ("t5", "AutoModelForSeq2SeqLM", "s2s", dict(vocab_size=V, d_model=64, d_kv=16, d_ff=128, num_layers=2,
                                                      num_heads=4)),
    "bart": ("bart", "AutoModelForSeq2SeqLM", "s2s", dict(vocab_size=V, d_model=64, encoder_layers=2, decoder_layers=2,
                                                          encoder_attention_heads=4, decoder_attention_heads=4,
                                                          encoder_ffn_dim=128, decoder_ffn_dim=128,
                                                          max_position_embeddings=64)),
    "mbart": ("mbart", "AutoModelForSeq2SeqLM", "s2s", dict(vocab_size=V, d_model=64, encoder_layers=2, decoder_layers=2,
                                                            encoder_attention_heads=4, decoder_attention_heads=4,
                                                            encoder_ffn_dim=128, decoder_ffn_dim=128,
                                                            max_position_embeddings=64)),
    "marian": ("marian", "AutoModelForSeq2SeqLM", "s2s", dict(vocab_size=V, decoder_vocab_size=V, d_model=64,
                                                              encoder_layers=2, decoder_layers=2,
                                                              encoder_attention_heads=4, decoder_attention_heads=4,
                                                              encoder_ffn_dim=128, decoder_ffn_dim=128,
                                                              max_position_embeddings=64, pad_token_id=V - 1,
                                                              decoder_start_token_id=V - 1)),
    "pegasus": ("pegasus", "AutoModelForSeq2SeqLM", "s2s", dict(vocab_size=V, d_model=64, encoder_layers=2,
                                                                decoder_layers=2, encoder_attention_heads=4,
                                                                decoder_attention_heads=4, encoder_ffn_dim=128,
                                                                decoder_ffn_dim=128, max_position_embeddings=64)),
    # vision
    "vit": ("vit", "AutoModelForImageClassification", "image", VISION),
    "deit": ("deit", "AutoModelForImageClassification", "image", {**VISION, "architectures": ["DeiTForImageClassification"]}),
    "beit": ("beit", "AutoModelForImageClassification", "image", VISION),
    "dinov2": ("dinov2", "AutoModelForImageClassification", "image", {**VISION, "image_size": 32}),
    "swin": ("swin", "AutoModelForImageClassification", "image64", dict(image_size=64, patch_size=4, embed_dim=32,
                                                                        depths=[1, 2], num_heads=[2, 4], window_size=4,
                                                                        num_labels=10)),
    "swinv2": ("swinv2", "AutoModelForImageClassification", "image64", dict(image_size=64, patch_size=4, embed_dim=32,
                                                                            depths=[1, 2], num_heads=[2, 4],
                                                                            window_size=4, num_labels=10)),
    "convnext": ("convnext", "AutoModelForImageClassification", "image64",
                 dict(hidden_sizes=[16, 32, 64, 128], depths=[1, 1, 2, 1], num_labels=10)),
    "convnextv2": ("convnextv2", "AutoModelForImageClassification", "image64",
                   dict(hidden_sizes=[16, 32, 64, 128], depths=[1, 1, 2, 1], num_labels=10)),
    "resnet": ("resnet", "AutoModelForImageClassification", "image64",
               dict(embedding_size=16, hidden_sizes=[16, 32, 64, 128], depths=[1, 1, 1, 1], num_labels=10)),
    "regnet": ("regnet", "AutoModelForImageClassification", "image64",
               dict(embedding_size=16, hidden_sizes=[16, 32, 64, 128], depths=[1, 1, 1, 1], groups_width=8,
                    num_labels=10)),
    "mobilenet_v2": ("mobilenet_v2", "AutoModelForImageClassification", "image64",
                     dict(depth_multiplier=0.35, image_size=64, num_labels=10)),
    "efficientnet": ("efficientnet", "AutoModelForImageClassification", "image64",
                     dict(image_size=64, width_coefficient=0.25, depth_coefficient=0.25, num_labels=10,
                          hidden_dim=320)),  # (the default 2560 is B7's head: 1280 × its width 2.0)
    "levit": ("levit", "AutoModelForImageClassification", "image64",
              dict(image_size=64, hidden_sizes=[32, 48, 64], num_attention_heads=[2, 3, 4], depths=[1, 1, 1],
                   key_dim=[8, 8, 8], num_labels=10, architectures=["LevitForImageClassification"])),
    "poolformer": ("poolformer", "AutoModelForImageClassification", "image64",
                   dict(hidden_sizes=[16, 32, 64, 128], depths=[1, 1, 1, 1], num_labels=10)),
}

MODEL_PY = """
import torch, transformers as T
torch.manual_seed(0)
config = T.AutoConfig.for_model({model_type!r}, **{overrides!r})
model = T.{auto}.from_config(config).eval()
g = torch.Generator().manual_seed(0)
example_inputs = {example}
"""


def _ids(b: int, n: int, seed: int) -> torch.Tensor:
    return torch.randint(3, V, (b, n), generator=torch.Generator().manual_seed(seed))


def _example(kind: str) -> str:
    return {
        "lm": '{"input_ids": torch.randint(3, %d, (2, 12), generator=g)}' % V,
        "enc": '{"input_ids": torch.randint(3, %d, (2, 12), generator=g)}' % V,
        "s2s": '{"input_ids": torch.randint(3, %d, (2, 12), generator=g), '
               '"decoder_input_ids": torch.randint(3, %d, (2, 7), generator=g)}' % (V, V),
        "image": "(torch.randn(2, 3, 32, 32, generator=g),)",
        "image64": "(torch.randn(2, 3, 64, 64, generator=g),)",
    }[kind]


def _shapes(kind: str) -> list:
    if kind in ("lm", "enc"):
        return [{"input_ids": _ids(2, 12, 1)}, {"input_ids": _ids(3, 20, 2)}, {"input_ids": _ids(1, 5, 3)}]
    if kind == "s2s":
        return [{"input_ids": _ids(2, 12, 1), "decoder_input_ids": _ids(2, 7, 2)},
                {"input_ids": _ids(3, 9, 3), "decoder_input_ids": _ids(3, 15, 4)},
                {"input_ids": _ids(1, 5, 5), "decoder_input_ids": _ids(1, 3, 6)}]
    n = 32 if kind == "image" else 64
    g = torch.Generator().manual_seed(1)
    return [(torch.randn(2, 3, n, n, generator=g),), (torch.randn(3, 3, n, n, generator=g),),
            (torch.randn(1, 3, n, n, generator=g),)]


def run_one(name: str, workdir: Path, onnx: bool, free_widths: bool = False) -> dict:
    from families import run_family

    model_type, auto, kind, overrides = FAMILIES[name]
    src = MODEL_PY.format(model_type=model_type, overrides=overrides, auto=auto, example=_example(kind))
    prompt = _ids(1, 5, 9) if kind in ("lm", "s2s") else None
    gen_kw = {"no_repeat_ngram_size": 1, "min_new_tokens": 6} if kind == "s2s" else None
    t0 = time.perf_counter()
    row: dict = {"family": name, "model_type": model_type, "kind": kind}
    try:
        kw = {"generate_kw": gen_kw} if gen_kw else {}
        if free_widths:
            kw["prune"] = ("--criterion", "l1", "--ratio", "0.3", "--free-widths")
        run = run_family(workdir / name, src, _shapes(kind), prompt=prompt, onnx=onnx, **kw)
    except AssertionError as e:  # the command's own error line, not a library's warning before it
        lines = str(e).strip().splitlines()
        why = next((ln for ln in lines if "error:" in ln), lines[0] if lines else "")
        row.update(status="failed", why=why[:400])
        return {**row, "seconds": round(time.perf_counter() - t0, 1)}
    except Exception as e:  # the survey goes on
        row.update(status="error", why=f"{type(e).__name__}: {e}"[:400], trace=traceback.format_exc()[-1500:])
        return {**row, "seconds": round(time.perf_counter() - t0, 1)}
    c, rep = run.check, run.report
    worst = {k: max((r["diff"] / max(1.0, r["scale"]) for r in c.get(k, [])), default=None)
             for k in ("model", "graph", "onnx")}
    try:
        run.assert_exact(onnx=onnx)
        status = "ok"
        why = ""
    except AssertionError as e:
        status, why = "inexact", str(e)[:400]
    um = rep.get("user_model", {})
    row.update(status=status, why=why, params_before=rep["params"]["before"], params_after=rep["params"]["after"],
               worst_rel_diff=worst, generate=(c.get("generate") or {}).get("equal"),
               reloads_as=c.get("class"), hf_expressible=(um.get("hf") or {}).get("expressible"),
               onnx_error=(rep.get("onnx") or {}).get("error"), front_end=rep.get("front_end"),
               prune_notes=[ln for ln in run.prune_stdout.splitlines() if ln.startswith("note")][:4])
    return {**row, "seconds": round(time.perf_counter() - t0, 1)}


def to_markdown(rows: list[dict]) -> str:
    out = ["| family | status | params before → after | worst rel. diff (class / graph / ONNX) | generate "
           "| reloads as | HF config expresses it | note |",
           "|---|---|---:|---|---|---|---|---|"]
    for r in rows:
        w = r.get("worst_rel_diff") or {}
        diffs = " / ".join("—" if w.get(k) is None else f"{w[k]:.1e}" for k in ("model", "graph", "onnx"))
        pb, pa = r.get("params_before"), r.get("params_after")
        params = f"{pb:,} → {pa:,} ({pa / pb:.2f}×)" if pb else "—"
        gen = {True: "equal", False: "DIFFERS", None: "—"}[r.get("generate")]
        note = (r.get("why") or r.get("onnx_error") or "").replace("|", "\\|").replace("\n", " ")[:160]
        out.append(f"| {r['family']} | {r['status']} | {params} | {diffs} | {gen} | {r.get('reloads_as') or '—'} "
                   f"| {r.get('hf_expressible')} | {note} |")
    ok = sum(r["status"] == "ok" for r in rows)
    out.append("")
    out.append(f"{ok} of {len(rows)} families end to end exact (the user's class, slim.pt"
               f"{', slim.onnx' if any(r.get('worst_rel_diff', {}).get('onnx') is not None for r in rows) else ''}"
               f" at three shapes; greedy generate where generative).")
    return "\n".join(out) + "\n"


def main(argv: list[str] | None = None) -> int:
    from slimc.bench.machine import machine_info
    from slimc.progress import plain_lines, progress

    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--only", default="", help="comma-separated family names (default: all)")
    ap.add_argument("--no-onnx", action="store_true", help="skip slim.onnx (faster)")
    ap.add_argument("--free-widths", action="store_true",
                    help="prune widths the HF config cannot express too (slimc prune --free-widths)")
    ap.add_argument("--stem", default="families_cpu")
    ap.add_argument("--update", action="store_true", help="rerun --only's families in an existing record")
    ap.add_argument("--out", default=str(ROOT / "benchmarks" / "results"))
    a = ap.parse_args(argv)
    plain_lines()
    names = [n for n in a.only.split(",") if n] or list(FAMILIES)
    unknown = [n for n in names if n not in FAMILIES]
    if unknown:
        print(f"unknown families {unknown}: choose from {', '.join(FAMILIES)}", file=sys.stderr)
        return 2
    out = Path(a.out)
    out.mkdir(parents=True, exist_ok=True)
    import transformers

    def write(rows: list[dict]) -> None:  # after every family: a long survey cut short keeps what it ran
        record = {"machine": machine_info(), "transformers": transformers.__version__, "torch": torch.__version__,
                  "onnx": not a.no_onnx, "free_widths": a.free_widths, "rows": rows}
        (out / f"{a.stem}.json").write_text(json.dumps(record, indent=2, default=str))
        how = ("slimc prune --criterion l1 --ratio 0.3" + (" --free-widths" if a.free_widths else "")
               + ("; no ONNX" if a.no_onnx else ""))
        (out / f"{a.stem}.md").write_text(f"# Architecture families end to end (transformers "
                                          f"{transformers.__version__}, torch {torch.__version__})\n\n"
                                          f"`{how}`\n\n" + to_markdown(rows))

    rows: list[dict] = []
    old = out / f"{a.stem}.json"
    kept = json.loads(old.read_text())["rows"] if a.update and old.exists() else []

    def merged() -> list[dict]:
        done = {r["family"]: r for r in rows}
        return [done.pop(r["family"], r) for r in kept] + list(done.values())

    with tempfile.TemporaryDirectory(prefix="slimc-families-") as tmp:
        for name in progress(names, "families"):
            rows.append(run_one(name, Path(tmp), onnx=not a.no_onnx, free_widths=a.free_widths))
            r = rows[-1]
            print(f"{name}: {r['status']} ({r['seconds']} s){' — ' + r['why'][:200] if r.get('why') else ''}",
                  flush=True)
            write(merged())
    print(f"wrote {out / (a.stem + '.json')}, {out / (a.stem + '.md')}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
