"""slimc/graph.py: the dependency graph of (value, dim) slots, the networkx slot graph
``slimc inspect --graph`` writes, and the barrier facts."""
from __future__ import annotations

import networkx as nx
import numpy as np
import pytest
import torch
from torch import nn

from helpers import ConvChain, build, stages, x_
from slimc.graph import slot_name, unsupported_table, write_graph


def _dg(model=None, x=None):
    model = model or build(ConvChain, 2).eval()
    return stages(model, None, (x if x is not None else x_(2, 3, 8, 8),))[1]


def test_every_dim_is_a_slot_with_its_own_elements():
    dg = _dg()
    assert dg.size[("p", "conv1.weight", 0)] == 8 and dg.size[("v", "conv1", 1)] == 8
    ids = dg.ids(("v", "conv1", 1))
    assert len(ids) == 8 and not ids.flags.writeable
    slots, starts, sizes = dg.slot_table()
    assert sizes.sum() == dg.n and (np.diff(starts) >= 0).all()  # elements numbered slot after slot


def test_slot_graph_holds_the_couplings():
    dg = _dg()
    g = dg.nx
    kinds = {(a, b): d["kind"] for a, b, d in g.edges(data=True)}
    assert kinds[(("p", "conv1.weight", 0), ("v", "conv1", 1))] == "source"
    assert kinds[(("p", "conv2.weight", 1), ("v", "relu", 1))] == "sink"
    assert g.nodes[("v", "conv1", 1)]["size"] == 8
    assert "graph input" in g.nodes[("v", "x", 1)]["barrier"]


def test_graph_inputs_and_outputs_are_barriers():
    dg = _dg()
    assert all(dg.barrier_reasons[("v", "x", d)].startswith("graph input") for d in range(4))
    assert dg.barrier_reasons[("v", "conv3", 1)] == "graph output"


class Mix(nn.Module):
    def __init__(self):
        super().__init__()
        self.conv = nn.Conv2d(3, 8, 1)

    def forward(self, x):
        return torch.fft.fft(self.conv(x), dim=1).real


def test_an_op_without_a_rule_is_reported_with_its_line():
    dg = stages(Mix().eval(), None, (x_(1, 3, 4, 4),))[1]
    rows = unsupported_table(dg)
    assert rows and "fft" in rows[0]["op"] and "test_graph.py" in rows[0]["source"]


@pytest.mark.parametrize("suffix", [".graphml", ".dot"])
def test_write_graph(tmp_path, suffix):
    dg = _dg()
    fam = {("v", "conv1", 1): {"families": "0"}}
    path = write_graph(dg, tmp_path / f"g{suffix}", fam)
    text = path.read_text()
    if suffix == ".graphml":
        g = nx.read_graphml(path)
        assert g.number_of_edges() == dg.nx.number_of_edges()
        assert g.nodes[slot_name(("v", "conv1", 1))]["families"] == "0"
    else:
        assert text.startswith("digraph slimc {") and f'"{slot_name(("v", "conv1", 1))}"' in text
        assert text.count(" -> ") == dg.nx.number_of_edges()
    with pytest.raises(ValueError, match="graphml or .dot"):
        write_graph(dg, tmp_path / "g.png")


def test_cli_inspect_writes_the_graph(tmp_path, capsys):
    from pathlib import Path

    from slimc.cli import main

    demo = Path(__file__).resolve().parents[1] / "examples" / "demo"
    out = tmp_path / "families.graphml"
    assert main(["inspect", str(demo / "model.py"), "--masks", str(demo / "masks.pth"), "--graph", str(out)]) == 0
    g = nx.read_graphml(out)
    with_family = [n for n, d in g.nodes(data=True) if d.get("families")]
    assert with_family and any(d.get("barrier") for _, d in g.nodes(data=True))
    assert f"wrote {out}" in capsys.readouterr().out
