"""The end-to-end family harness (:mod:`families`) on a family that works, and a planted fault
it must catch: the harness is a checker too."""
from __future__ import annotations

import pytest
import torch

pytest.importorskip("transformers")

from families import run_family  # noqa: E402

NEOX = """
import torch, transformers as T
torch.manual_seed(0)
model = T.GPTNeoXForCausalLM(T.GPTNeoXConfig(vocab_size=128, hidden_size=64, intermediate_size=128, num_hidden_layers=2,
                                         num_attention_heads=4, max_position_embeddings=64)).eval()
example_inputs = {"input_ids": torch.randint(0, 128, (2, 12), generator=torch.Generator().manual_seed(0))}
"""


def _ids(b: int, n: int, seed: int) -> dict:
    return {"input_ids": torch.randint(0, 128, (b, n), generator=torch.Generator().manual_seed(seed))}


SHAPES = [_ids(2, 12, 1), _ids(3, 20, 2), _ids(1, 5, 3)]


def test_gpt_neox_end_to_end(tmp_path):
    run = run_family(tmp_path, NEOX, SHAPES, prompt=_ids(1, 5, 4)["input_ids"])
    run.assert_exact()
    assert run.report["user_model"]["built"]
    assert run.report["params"]["after"] < run.report["params"]["before"]


def test_the_harness_catches_a_wrong_model(tmp_path):
    """Plant a fault after the compile: one more channel masked in the user's masks the fresh
    process applies. The slim model no longer equals that masked model: the harness must say so."""
    import json
    import subprocess
    import sys

    from families import FRESH, FamilyRun

    run = run_family(tmp_path, NEOX, SHAPES[:1], prompt=None, onnx=False)
    masks = torch.load(tmp_path / "masks.pth", weights_only=True)
    name = "gpt_neox.layers.0.mlp.dense_4h_to_h.weight"
    m = torch.as_tensor(masks.get(name, torch.ones(64, 128))).expand(64, 128).clone()
    kept = m.any(0).nonzero().flatten()
    m[:, kept[0]] = 0  # one more FFN channel, seen only by the reference
    masks[name] = m
    torch.save(masks, tmp_path / "masks.pth")
    f = subprocess.run([sys.executable, "-c", FRESH, str(tmp_path), json.dumps({"onnx": False, "generate": False,
                                                                               "new_tokens": 0})],
                       capture_output=True, text=True, timeout=300)
    line = next(ln for ln in f.stdout.splitlines() if ln.startswith("FAMILY-RESULT "))
    bad = FamilyRun(run.out, run.report, json.loads(line[len("FAMILY-RESULT "):]))
    with pytest.raises(AssertionError, match="diff"):
        bad.assert_exact(onnx=False)
