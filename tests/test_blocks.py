"""Repeated blocks traced first and last, the rest copied: the same graph, the same plan,
the same slim model as tracing every block — and no reuse where blocks differ."""
from __future__ import annotations

import pytest
import torch
from torch import nn

import slimc
from helpers import assert_contract, n_params
from slimc import blocks
from slimc.compact import structured_mask
from slimc.trace import trace


class Block(nn.Module):
    def __init__(self, d: int, layer_idx: int, ffn: int = 12):
        super().__init__()
        self.layer_idx = layer_idx  # an index, as HF layers keep one
        self.norm = nn.LayerNorm(d)
        self.up = nn.Linear(d, ffn)
        self.down = nn.Linear(ffn, d)

    def forward(self, x):
        return x + self.down(torch.relu(self.up(self.norm(x))))


class Stack(nn.Module):
    def __init__(self, n: int = 7, d: int = 8, block=Block):
        super().__init__()
        self.embed = nn.Linear(4, d)
        self.layers = nn.ModuleList([block(d, i) for i in range(n)])
        self.head = nn.Linear(d, 3)

    def forward(self, x):
        x = self.embed(x)
        for layer in self.layers:
            x = layer(x)
        return self.head(x)


class Branchy(Block):
    """Code that branches on the index: the blocks are not one computation."""

    def __init__(self, d: int, layer_idx: int):
        super().__init__(d, layer_idx)
        self.depth = layer_idx

    def forward(self, x):
        y = super().forward(x)
        return y * 2 if self.depth == 3 else y


X = torch.randn(2, 5, 4, generator=torch.Generator().manual_seed(0))


def ffn_masks(m: Stack) -> dict[str, torch.Tensor]:
    g = torch.Generator().manual_seed(1)
    out = {}
    for i, layer in enumerate(m.layers):
        keep = torch.randperm(layer.up.out_features, generator=g)[: layer.up.out_features // 2]
        out[f"layers.{i}.up.weight"] = structured_mask(layer.up.weight.shape, 0, keep)
    return out


def _whole(monkeypatch):
    monkeypatch.setattr(blocks, "MIN_BLOCKS", 10_000)


def test_identical_blocks_are_found_and_short_lists_are_not():
    assert blocks.find_blocks(Stack(7)) == blocks.Blocks("layers", 7)
    assert blocks.find_blocks(Stack(blocks.MIN_BLOCKS - 1)) is None
    odd = Stack(7)
    odd.layers[4].up = nn.Linear(8, 13)  # one wider block
    assert blocks.find_blocks(odd) is None
    other = Stack(7)
    other.layers[2].eps_like = 0.5  # an attribute the others lack
    assert blocks.find_blocks(other) is None


def test_an_index_that_is_not_named_as_one_makes_blocks_different():
    assert blocks.find_blocks(Stack(7, block=Branchy)) is None


def test_copied_blocks_give_the_graph_of_the_whole_trace(monkeypatch):
    torch.manual_seed(0)
    m = Stack(8).eval()
    t = trace(m, (X,))
    assert any("first and last traced" in n for n in t.notes), t.notes
    _whole(monkeypatch)
    w = trace(m, (X,))
    assert [n.op for n in t.gm.graph.nodes] == [n.op for n in w.gm.graph.nodes]
    assert [str(n.target) for n in t.gm.graph.nodes if n.op == "call_module"] == \
        [str(n.target) for n in w.gm.graph.nodes if n.op == "call_module"]
    assert torch.equal(t.gm(X), w.gm(X))
    shapes = {n.name: n.meta["shape"] for n in w.gm.graph.nodes}
    assert [n.meta["shape"] for n in t.gm.graph.nodes] == [shapes[n.name] for n in w.gm.graph.nodes]


def test_same_plan_and_slim_model_as_tracing_every_block(monkeypatch):
    torch.manual_seed(0)
    m = Stack(8).eval()
    masks = ffn_masks(m)
    a = assert_contract(m, masks, X)
    assert any("first and last traced" in n for n in a.report["notes"])
    _whole(monkeypatch)
    b = assert_contract(m, masks, X)
    assert n_params(a.module) == n_params(b.module) < n_params(m)
    pa = {k: v for k, v in a.plan.kept.items() if k[0] == "p"}
    pb = {k: v for k, v in b.plan.kept.items() if k[0] == "p"}
    assert pa.keys() == pb.keys() and len(a.plan.kept) == len(b.plan.kept)
    for k in pa:
        assert (pa[k] == pb[k]).all(), k
    assert {n.name for n in a.module.graph.nodes if n.op == "call_module"} == \
        {n.name for n in b.module.graph.nodes if n.op == "call_module"}
    assert torch.equal(a.module(X), b.module(X))
    assert slimc.compile(m, masks, X).report["verify"]["ok"]


def test_a_per_layer_config_list_keeps_the_whole_trace():
    m = Stack(7).eval()
    m.config = type("Cfg", (), {})()
    m.config.layer_types = ["full", "sliding"] * 3 + ["full"]
    assert blocks.find_blocks(m) is None


transformers = pytest.importorskip("transformers")


def test_llama_blocks_copied_with_compact_head_and_ffn_masks(monkeypatch):
    cfg = transformers.LlamaConfig(hidden_size=32, intermediate_size=48, num_attention_heads=4, num_key_value_heads=4,
                                   num_hidden_layers=6, vocab_size=50, max_position_embeddings=64)
    torch.manual_seed(0)
    m = transformers.LlamaForCausalLM(cfg).eval()
    ids = torch.randint(0, 50, (1, 7))
    masks, hd = {}, 8
    for i in range(6):
        heads = torch.ones(4, dtype=torch.bool)
        heads[i % 4] = False
        for p in ("q_proj", "k_proj", "v_proj"):
            masks[f"model.layers.{i}.self_attn.{p}.weight"] = heads.repeat_interleave(hd).view(-1, 1)
        masks[f"model.layers.{i}.mlp.up_proj.weight"] = structured_mask((48, 32), 0, range(0, 48, 2))
    res = slimc.compile(m, masks, ids)
    assert res.report["verify"]["ok"] and any("first and last traced" in n for n in res.report["notes"])
    assert res.model is not None and res.model.config.intermediate_size == 24
    _whole(monkeypatch)
    whole = slimc.compile(m, masks, ids)
    assert res.report["params"] == whole.report["params"]
    assert torch.allclose(res.module(ids)[0], whole.module(ids)[0], atol=1e-6)
