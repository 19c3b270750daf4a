"""Recurrent layers lose hidden units exactly (shape_rules/recurrent.py): nn.LSTM / GRU / RNN
(multi-layer, bidirectional, batch_first, proj_size, a given zero initial state) and
LSTMCell / GRUCell / RNNCell in a loop over time, through fx and export."""
from __future__ import annotations

import pytest
import torch
from torch import nn

from helpers import assert_contract, kept_reasons, n_params, removed_idx

GATES = {"LSTM": 4, "GRU": 3, "RNN": 1, "LSTMCell": 4, "GRUCell": 3, "RNNCell": 1}


class Tagger(nn.Module):
    """Embedding → recurrent layer → per-token classifier (a sequence tagger)."""

    def __init__(self, kind="LSTM", layers=2, bidirectional=True, batch_first=True, proj_size=0, zero_state=False):
        super().__init__()
        self.emb = nn.Embedding(50, 12)
        extra = {"proj_size": proj_size} if proj_size else {}
        self.rnn = getattr(nn, kind)(12, 10, num_layers=layers, bidirectional=bidirectional,
                                     batch_first=batch_first, **extra)
        self.dirs = 2 if bidirectional else 1
        self.head = nn.Linear((proj_size or 10) * self.dirs, 5)
        self.kind, self.zero_state, self.batch_first = kind, zero_state, batch_first

    def forward(self, tokens):
        x = self.emb(tokens)
        if not self.batch_first:
            x = x.transpose(0, 1)
        if self.zero_state:  # as tutorials write it: literal sizes
            b = x.size(0 if self.batch_first else 1)
            h0 = torch.zeros(self.rnn.num_layers * self.dirs, b, self.rnn.proj_size or self.rnn.hidden_size)
            hx = (h0, torch.zeros(self.rnn.num_layers * self.dirs, b, self.rnn.hidden_size)) \
                if self.kind == "LSTM" else h0
            y, _ = self.rnn(x, hx)
        else:
            y, _ = self.rnn(x)
        if not self.batch_first:
            y = y.transpose(0, 1)
        return self.head(y)


class CellTagger(nn.Module):
    """A cell stepped over time in Python (the export front end traces the loop)."""

    def __init__(self, kind="LSTMCell", init="zeros"):
        super().__init__()
        self.emb = nn.Embedding(50, 12)
        self.cell = getattr(nn, kind)(12, 10)
        self.head = nn.Linear(10, 5)
        self.kind, self.init = kind, init

    def forward(self, tokens):
        x = self.emb(tokens)
        b, t = tokens.shape
        h = c = None
        if self.init == "zeros":
            h, c = torch.zeros(b, 10), torch.zeros(b, 10)
        elif self.init == "new_zeros":
            h, c = x.new_zeros(b, self.cell.hidden_size), x.new_zeros((b, self.cell.hidden_size))
        outs = []
        for i in range(t):
            if self.kind == "LSTMCell":
                h, c = self.cell(x[:, i], None if h is None else (h, c))
            else:
                h = self.cell(x[:, i], h)
            outs.append(h)
        return self.head(torch.stack(outs, 1))


def unit_masks(module: nn.Module, prefix: str, ratio: float = 0.4, seed: int = 0) -> dict:
    """Mask every gate row of ``ratio`` of the hidden units, different units per layer and
    direction (as a per-layer pruner would)."""
    g = torch.Generator().manual_seed(seed)
    gates = GATES[type(module).__name__]
    hidden = module.hidden_size
    masks, units = {}, None
    for name, p in module.named_parameters():
        if name.startswith("weight_ih"):
            units = torch.randperm(hidden, generator=g)[: int(hidden * ratio)]
        if name.startswith(("weight_ih", "weight_hh")):
            rows = torch.cat([gate * hidden + units for gate in range(gates)])
            masks[f"{prefix}.{name}"] = torch.ones_like(p).index_fill_(0, rows, 0.0)
    return masks


def _tokens(seed=0):
    return torch.randint(0, 50, (3, 7), generator=torch.Generator().manual_seed(seed))


LAYERS = {
    "lstm_2layer_bidir": dict(),
    "gru_2layer_bidir": dict(kind="GRU"),
    "rnn_2layer_bidir": dict(kind="RNN"),
    "lstm_1layer": dict(layers=1, bidirectional=False),
    "lstm_seq_first": dict(batch_first=False),
    "gru_3layer_zero_state": dict(kind="GRU", layers=3, zero_state=True),
    "lstm_zero_state": dict(zero_state=True),
}


@pytest.mark.parametrize("front_end", ["fx", "export"])
@pytest.mark.parametrize("name", sorted(LAYERS))
def test_recurrent_layer_loses_hidden_units(name, front_end):
    torch.manual_seed(0)
    m = Tagger(**LAYERS[name]).eval()
    res = assert_contract(m, unit_masks(m.rnn, "rnn"), _tokens(), front_end=front_end)
    assert not res.report["kept"], kept_reasons(res)
    assert n_params(res.module) < n_params(m)
    if front_end == "fx":  # a smaller instance of the same class, its sizes updated
        rnn = res.module.rnn
        assert type(rnn) is type(m.rnn) and rnn.hidden_size == 6
        assert rnn(torch.randn(2, 7, 12) if rnn.batch_first else torch.randn(7, 2, 12))[0].shape[-1] == 6 * m.dirs


def test_units_masked_in_different_numbers_keep_one_hidden_size():
    """Layers that lose different numbers of units keep as many each (one hidden_size)."""
    torch.manual_seed(0)
    m = Tagger(layers=2, bidirectional=False).eval()
    masks = unit_masks(m.rnn, "rnn")
    keep_two = torch.ones(40, 10)
    for gate in range(4):
        keep_two[gate * 10: gate * 10 + 2] = 0
    masks["rnn.weight_ih_l1"] = keep_two
    masks["rnn.weight_hh_l1"] = torch.ones(40, 10).index_fill_(0, torch.tensor(
        [gate * 10 + u for gate in range(4) for u in (0, 1)]), 0)
    res = assert_contract(m, masks, _tokens())
    assert res.module.rnn.hidden_size == 8
    assert len(removed_idx(res, m, "rnn.weight_hh_l0", 1)) == len(removed_idx(res, m, "rnn.weight_hh_l1", 1)) == 2
    assert "one hidden_size" in kept_reasons(res)


@pytest.mark.parametrize("front_end", ["fx", "export"])
def test_lstm_projection_units_and_projected_state(front_end):
    torch.manual_seed(0)
    m = Tagger(proj_size=6).eval()
    masks = unit_masks(m.rnn, "rnn", ratio=0.3)
    for d in ("", "_reverse"):
        for layer in (0, 1):
            masks[f"rnn.weight_hr_l{layer}{d}"] = torch.ones(6, 10).index_fill_(0, torch.tensor([1, 4]), 0)
    res = assert_contract(m, masks, _tokens(), front_end=front_end)
    if front_end == "fx":
        assert (res.module.rnn.hidden_size, res.module.rnn.proj_size) == (7, 4)


def test_projection_stays_below_hidden_size():
    torch.manual_seed(0)
    m = Tagger(proj_size=6, layers=1, bidirectional=False).eval()
    res = assert_contract(m, unit_masks(m.rnn, "rnn", ratio=0.6), _tokens())
    assert res.module.rnn.hidden_size == 7 and res.module.rnn.proj_size == 6
    assert "proj_size must stay below hidden_size" in kept_reasons(res)


CELLS = {"lstm_cell_zeros": dict(), "lstm_cell_no_state": dict(init="none"),
         "lstm_cell_new_zeros": dict(init="new_zeros"), "gru_cell": dict(kind="GRUCell"),
         "rnn_cell": dict(kind="RNNCell", init="none")}


@pytest.mark.parametrize("name", sorted(CELLS))
def test_cell_in_a_loop_loses_hidden_units(name):
    torch.manual_seed(0)
    m = CellTagger(**CELLS[name]).eval()
    res = assert_contract(m, unit_masks(m.cell, "cell"), _tokens())  # fx cannot loop over T: export
    assert res.report["front_end"] == "export"
    assert not res.report["kept"], kept_reasons(res)
    assert res.module.get_parameter("cell.weight_hh").shape == (GATES[type(m.cell).__name__] * 6, 6)


def test_cell_module_fx_and_its_resizer():
    """One step through fx: the cell is a leaf, resized in place of the original."""

    class Step(nn.Module):
        def __init__(self):
            super().__init__()
            self.cell = nn.LSTMCell(12, 10)
            self.head = nn.Linear(10, 3)

        def forward(self, x, h, c):
            h2, c2 = self.cell(x, (h, c))
            return self.head(h2), c2

    torch.manual_seed(0)
    m = Step().eval()
    x = (torch.randn(2, 12), torch.zeros(2, 10), torch.zeros(2, 10))
    masks = unit_masks(m.cell, "cell")
    res = assert_contract(m, masks, x, front_end="fx")
    assert res.module.cell.hidden_size == 10  # h and c are graph inputs: their width is fixed
    assert "barrier" in kept_reasons(res)
