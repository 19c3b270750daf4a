"""Optional ``forward`` arguments the example gives as None (what binding a dict of keyword
inputs puts between ``input_ids`` and ``decoder_input_ids``) are absent in every front end and
every later stage: the slim graph takes the given inputs alone (by keyword too), slim.pt loads
(and leaves later fx traces in the process working), and slim.onnx takes the tensors only."""
from __future__ import annotations

import pytest
import torch
from torch import nn

import slimc
from helpers import masked_reference


class Optional(nn.Module):
    """forward(x, mask=None, y=None): the example gives x and y, not the mask."""

    def __init__(self):
        super().__init__()
        self.a, self.b = nn.Linear(8, 16), nn.Linear(16, 4)

    def forward(self, x, mask=None, y=None):
        h = torch.relu(self.a(x))
        if mask is not None:
            h = h * mask
        return self.b(h) + y


def _example(b: int = 2, n: int = 5) -> dict:
    return {"x": torch.randn(b, n, 8), "y": torch.randn(b, n, 4)}


def _masks() -> dict:
    rows = torch.ones(16, 1)
    rows[[0, 3, 7]] = 0
    return {"a.weight": rows, "a.bias": rows[:, 0]}


@pytest.mark.parametrize("front_end", ["fx", "export"])
def test_a_skipped_argument_is_no_input_of_the_graph(tmp_path, front_end):
    torch.manual_seed(0)
    m = Optional().eval()
    res = slimc.compile(m, _masks(), _example(), front_end=front_end)
    ref = masked_reference(m, res.masks)
    x = _example(3, 7)
    want = ref(**x)
    assert torch.allclose(res.module(**x), want, atol=1e-5)  # by keyword, without the mask
    assert torch.allclose(res.module(x["x"], None, x["y"]), want, atol=1e-5)  # positionally, as bound
    paths = res.save(tmp_path)  # slim.onnx takes the two tensors
    import onnxruntime as ort

    sess = ort.InferenceSession(paths["slim.onnx"], providers=["CPUExecutionProvider"])
    assert len(sess.get_inputs()) == 2
    got = sess.run(None, {i.name: t.numpy() for i, t in zip(sess.get_inputs(), (x["x"], x["y"]))})[0]
    assert torch.allclose(torch.from_numpy(got), want, atol=1e-5)
    loaded = torch.load(tmp_path / "slim.pt", weights_only=False)  # torch alone
    assert torch.allclose(loaded(**x), want, atol=1e-5)
    torch.fx.symbolic_trace(Optional(), concrete_args={"mask": None})  # the load left fx working


def test_export_onnx_takes_absent_inputs(tmp_path):
    """export_onnx itself accepts an input tuple with None in it: the file takes the tensors,
    the dynamic dims keyed by the tuple's positions follow them."""
    from slimc.onnx import export_onnx

    torch.manual_seed(0)
    m = Optional().eval()
    x = _example()
    info = export_onnx(m, (x["x"], None, x["y"]), tmp_path / "m.onnx", dynamic_dims={0: [0, 1], 2: [0, 1]})
    assert len(info.input_names) == 2 and info.checked
    assert list(info.dynamic_dims.values()) == [[0, 1], [0, 1]]


def test_onnxruntime_timer_feeds_the_given_tensors(tmp_path):
    """slimc bench times slim.onnx with the bound inputs, None in them: the file takes the tensors."""
    from slimc.bench.ort_timer import time_ort
    from slimc.onnx import export_onnx

    torch.manual_seed(0)
    m = Optional().eval()
    x = _example()
    export_onnx(m, (x["x"], None, x["y"]), tmp_path / "m.onnx", check=False)
    t = time_ort(tmp_path / "m.onnx", (x["x"], None, x["y"]), warmup=1, repeats=3, threads=1)
    assert t.median_ms > 0
