#!/usr/bin/env python
"""An LLM-size plan: a LLaMA-7B-shaped config (hidden 4096, FFN 11008, 32 heads) built
under ``slimc.shards.empty_weights()`` (parameters on the meta device: no memory), compact
masks on a quarter of the heads (q, k, v rows) and half the FFN channels (gate, up rows)
of every layer, and ``slimc.compile`` — the plan, the slim graph and the user's class,
from shapes alone.

Each size runs in a fresh process (``python benchmarks/compile_llm.py --layers 32``
prints one JSON line), so that its peak RSS is its own: wall time of ``compile``, peak
resident memory of the process (torch and transformers imported, the model built), and
the stage times. ``scaling()`` runs 1, 4, 16, 32 layers and fits time ≈ c · layers^k.
"""
from __future__ import annotations

import argparse
import json
import resource
import subprocess
import sys
import time
from pathlib import Path

HIDDEN, FFN, HEADS, VOCAB = 4096, 11008, 32, 32000


def plan(layers: int, seq: int = 16) -> dict:
    import torch
    from transformers import LlamaConfig, LlamaForCausalLM

    import slimc
    from slimc.masks import structured_mask
    from slimc.shards import empty_weights

    torch.set_num_threads(1)
    cfg = LlamaConfig(hidden_size=HIDDEN, intermediate_size=FFN, num_attention_heads=HEADS, num_key_value_heads=HEADS,
                      num_hidden_layers=layers, vocab_size=VOCAB, max_position_embeddings=2048)
    with empty_weights():
        model = LlamaForCausalLM(cfg).eval()
    g = torch.Generator().manual_seed(0)
    hd, masks = HIDDEN // HEADS, {}
    for i in range(layers):
        heads = torch.ones(HEADS, dtype=torch.bool)
        heads[torch.randperm(HEADS, generator=g)[: HEADS // 4]] = False
        for p in ("q_proj", "k_proj", "v_proj"):
            masks[f"model.layers.{i}.self_attn.{p}.weight"] = structured_mask((HIDDEN, HIDDEN), 0, heads.repeat_interleave(hd))
        keep = torch.randperm(FFN, generator=g)[: FFN // 2]
        for p in ("gate_proj", "up_proj"):
            masks[f"model.layers.{i}.mlp.{p}.weight"] = structured_mask((FFN, HIDDEN), 0, keep)
    rss_before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024
    t0 = time.perf_counter()
    res = slimc.compile(model, masks, torch.randint(0, VOCAB, (1, seq)))
    wall = time.perf_counter() - t0
    return {"layers": layers, "wall_s": wall, "peak_rss_bytes": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024,
            "rss_before_compile_bytes": rss_before, "stages_s": dict(res.report["times_s"]),
            "params": res.report["params"], "notes": res.report["notes"][:3]}


def scaling(layer_counts: list[int], log=print) -> list[dict]:
    """One fresh process per size."""
    out = []
    for n in layer_counts:
        proc = subprocess.run([sys.executable, str(Path(__file__).resolve()), "--layers", str(n)],
                              capture_output=True, text=True)
        line = next((ln for ln in reversed(proc.stdout.splitlines()) if ln.startswith("{")), None)
        if proc.returncode or line is None:
            log(f"[llama {n} layers] failed: {(proc.stderr.strip().splitlines() or ['?'])[-1]}")
            continue
        r = json.loads(line)
        log(f"[llama {n} layers] {r['wall_s']:.2f} s, peak RSS {r['peak_rss_bytes'] / 2**30:.2f} GiB")
        out.append(r)
    return out


def markdown(points: list[dict], fit: dict | None) -> list[str]:
    if not points:
        return []
    stages = list(dict.fromkeys(s for p in points for s in p["stages_s"] if s != "total"))
    out = [f"LLaMA-7B-shaped config (hidden {HIDDEN}, FFN {FFN}, {HEADS} heads, vocab {VOCAB}) on the meta device; "
           "compact masks on a quarter of the heads and half the FFN channels of every layer; one process per "
           "size (peak RSS includes torch and transformers); one thread.", "",
           "| layers | params | compile s | peak RSS GiB | " + " | ".join(stages) + " |",
           "|---:|---:|---:|---:|" + "---:|" * len(stages)]
    for p in points:
        out.append(f"| {p['layers']} | {p['params']['before'] / 1e9:.2f} B | {p['wall_s']:.2f} | "
                   f"{p['peak_rss_bytes'] / 2**30:.2f} | " + " | ".join(f"{p['stages_s'].get(s, 0.0):.2f}" for s in stages)
                   + " |")
    if fit:
        from slimc.blocks import MIN_BLOCKS

        out += ["", f"Fitted exponent of compile time vs layers (time ≈ c·layers^k, least squares on log-log): "
                f"k = {fit['exponent']:.2f} (R² {fit['r2']:.3f}). From {MIN_BLOCKS} layers on, the identical "
                "decoder blocks are traced first and last and the others copied (`slimc.blocks`)."]
    return out + [""]


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--layers", type=int, required=True)
    a = ap.parse_args(argv)
    print(json.dumps(plan(a.layers), default=str))
    return 0


if __name__ == "__main__":
    sys.exit(main())
