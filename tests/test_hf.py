"""HF `transformers` models built from small configs (no download): heads, FFN and hidden
size removed exactly through the export front end. Optional: skipped without the `hf` extra."""
from __future__ import annotations

import pytest
import torch

transformers = pytest.importorskip("transformers")

from helpers import assert_contract, n_params  # noqa: E402
from slimc.prune import group_masks  # noqa: E402


def _bert():
    cfg = transformers.BertConfig(vocab_size=100, hidden_size=64, num_hidden_layers=2, num_attention_heads=4,
                                  intermediate_size=128, max_position_embeddings=32)
    return transformers.BertForSequenceClassification(cfg)


def _gpt2():
    cfg = transformers.GPT2Config(vocab_size=100, n_embd=64, n_layer=2, n_head=4, n_positions=32,
                                  bos_token_id=0, eos_token_id=0, use_cache=False)
    return transformers.GPT2LMHeadModel(cfg)


def _llama():
    cfg = transformers.LlamaConfig(vocab_size=100, hidden_size=64, num_hidden_layers=2, num_attention_heads=4,
                                   num_key_value_heads=2, intermediate_size=128, max_position_embeddings=32,
                                   use_cache=False)
    return transformers.LlamaForCausalLM(cfg)


def _vit():
    cfg = transformers.ViTConfig(image_size=32, patch_size=4, hidden_size=64, num_hidden_layers=2,
                                 num_attention_heads=4, intermediate_size=128, num_labels=10)
    return transformers.ViTForImageClassification(cfg)


class Logits(torch.nn.Module):
    """HF models return a ModelOutput; slimc compares tensors: take the logits."""

    def __init__(self, m):
        super().__init__()
        self.m = m

    def forward(self, x):
        return self.m(x).logits


@pytest.mark.parametrize("build,kind", [(_bert, "ids"), (_gpt2, "ids"), (_llama, "ids"), (_vit, "image")],
                         ids=["bert", "gpt2", "llama_gqa", "vit"])
def test_hf_model_heads_ffn_and_hidden(build, kind):
    torch.manual_seed(0)
    m = Logits(build()).eval()
    g = torch.Generator().manual_seed(0)
    x = (torch.randint(0, 100, (2, 12), generator=g),) if kind == "ids" else (torch.randn(2, 3, 32, 32, generator=g),)
    res = assert_contract(m, group_masks(m, x, 0.5), x)
    assert res.report["front_end"] == "export"
    assert n_params(res.module) * 2.5 < n_params(m), res.report["kept"]
