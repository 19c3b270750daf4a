"""Any batch, whatever the example's: a batch-1 example traces a dynamic batch
(``torch.export`` specializes sizes 0 and 1, so the batch is traced as 2), the built-in check
and the ONNX check vary it, and window attention (HF Swin, Swinv2) exports to ONNX with a
dynamic batch and image size (:mod:`slimc.onnx.strides`). End to end with the family harness
(real CLI, fresh process, the user's masks applied by the test): the user's class, slim.pt and
slim.onnx at other batches and sizes."""
from __future__ import annotations

from pathlib import Path

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from families import run_family
from slimc.errors import ExportError
from slimc.inputs import batch_of_two
from slimc.onnx import check_onnx, export_onnx
from slimc.onnx.strides import RESHAPES, stride_free
from slimc.trace import trace_export

aten = torch.ops.aten


class Attention(nn.Module):
    """Multi-head self-attention as HF writes it: sizes read at run time, SDPA, heads merged
    after ``transpose(1, 2).contiguous()``."""

    def __init__(self, c: int = 16, heads: int = 2):
        super().__init__()
        self.qkv, self.o, self.heads = nn.Linear(c, 3 * c), nn.Linear(c, c), heads

    def forward(self, x):
        b, n, c = x.shape
        q, k, v = self.qkv(x).view(b, n, 3, self.heads, c // self.heads).permute(2, 0, 3, 1, 4)
        y = F.scaled_dot_product_attention(q, k, v)
        return self.o(y.transpose(1, 2).contiguous().reshape(b, n, -1))


def _seeded(*shape: int, seed: int = 0) -> torch.Tensor:
    return torch.randn(*shape, generator=torch.Generator().manual_seed(seed))


# --------------------------------------------------------------------------- units


def test_batch_of_two():
    ids, mask = torch.tensor([[5, 6, 7]]), torch.ones(1, 3, dtype=torch.long)
    wide = batch_of_two((ids, None, mask))
    assert wide[0].tolist() == [[5, 6, 7]] * 2 and wide[1] is None and wide[2].shape == (2, 3)
    assert batch_of_two((torch.zeros(2, 3),)) is None  # not a batch of 1
    assert batch_of_two((torch.zeros(1, 3), torch.zeros(4, 3))) is None  # dim 0 is not one batch
    assert batch_of_two((torch.tensor(3.0),)) is None  # nothing batched


def test_export_front_end_keeps_a_batch_of_one_dynamic(capfd):
    torch.manual_seed(0)
    m = Attention().eval()
    gm, dynamic = trace_export(m, (_seeded(1, 8, 16),))
    assert 0 in dynamic[0] and 1 in dynamic[0]
    assert "specialized" not in "".join(capfd.readouterr())  # torch's 0/1 warning is not provoked
    with torch.no_grad():
        for shape in [(1, 8, 16), (3, 5, 16)]:
            x = _seeded(*shape, seed=1)
            assert torch.allclose(gm(x)[0] if isinstance(gm(x), (tuple, list)) else gm(x), m(x), atol=1e-6)


def test_onnx_of_a_batch_one_example_has_a_dynamic_batch(tmp_path, monkeypatch):
    """The batch of 1 is exported as a symbol by torch.export itself (so the program is freed
    of stride decisions), not left to the ONNX exporter's own fallbacks."""
    given = []
    real = torch.onnx.export

    def spy(model, *a, **kw):
        given.append(type(model).__name__)
        return real(model, *a, **kw)

    monkeypatch.setattr(torch.onnx, "export", spy)
    torch.manual_seed(0)
    m = Attention().eval()
    info = export_onnx(m, (_seeded(1, 8, 16),), tmp_path / "a.onnx", dynamic_dims={0: [0, 1]})
    assert given == ["ExportedProgram"]
    assert info.exporter == "dynamo" and info.fallback_reason is None
    assert 3 in info.batch_sizes and info.dynamic_dims == {"input": [0, 1]}
    assert info.max_abs_diff <= 1e-5


class Merge(nn.Module):
    """A transposed copy made contiguous and reshaped, and a flatten: what the exporter
    decides with strides."""

    def forward(self, x):
        return x.transpose(1, 2).contiguous().reshape(x.shape[0], -1) + x.flatten(1)


def test_stride_free_copies_before_every_reshape():
    m, x = Merge(), _seeded(2, 3, 4)
    ep = torch.export.export(m, (x,), strict=False)
    assert any(n.target is aten.contiguous.default for n in ep.graph.nodes)
    assert stride_free(ep.graph_module) == 2  # the contiguous (a copy already for the reshape), the flatten's input
    nodes = list(ep.graph.nodes)
    assert not any(n.target is aten.contiguous.default for n in nodes)
    for n in nodes:
        if n.target in RESHAPES:
            src = n.args[0]
            assert src.target is aten.clone.default and src.kwargs["memory_format"] is torch.contiguous_format
    with torch.no_grad():
        assert torch.equal(ep.module()(x), m(x))
    assert stride_free(ep.graph_module) == 0  # nothing left to do


def test_onnxruntime_errors_the_check_provokes_are_not_printed(tmp_path, capfd):
    """A file with the example's batch written into a Reshape: the check at another batch must
    fail with an ExportError, and onnxruntime must not print its own error line."""
    import onnx
    import onnx.helper as h

    shape = h.make_tensor("s", onnx.TensorProto.INT64, [2], [2, 8])
    g = h.make_graph([h.make_node("Reshape", ["input", "s"], ["output"])], "g",
                     [h.make_tensor_value_info("input", onnx.TensorProto.FLOAT, ["batch", 8])],
                     [h.make_tensor_value_info("output", onnx.TensorProto.FLOAT, [2, 8])], [shape])
    onnx.save(h.make_model(g, opset_imports=[h.make_opsetid("", 17)]), tmp_path / "fixed.onnx")
    with pytest.raises(ExportError, match="at batch 3"):
        check_onnx(tmp_path / "fixed.onnx", nn.Identity(), (torch.zeros(2, 8),), batch_sizes=(2, 3))
    out, err = capfd.readouterr()
    assert "[E:" not in out + err and "onnxruntime" not in err


# --------------------------------------------------------------------------- families, end to end

GPT2_B1 = """
import torch, transformers as T
torch.manual_seed(0)
model = T.GPT2LMHeadModel(T.GPT2Config(vocab_size=128, n_embd=64, n_layer=2, n_head=4, n_positions=64)).eval()
example_inputs = {"input_ids": torch.randint(0, 128, (1, 16), generator=torch.Generator().manual_seed(0))}
"""

HF_SWIN = """
import torch, transformers as T
torch.manual_seed(0)
model = T.SwinForImageClassification(T.SwinConfig(image_size=32, patch_size=4, embed_dim=32, depths=[2],
                                                  num_heads=[2], window_size=4, num_labels=10)).eval()
example_inputs = (torch.randn(2, 3, 32, 32, generator=torch.Generator().manual_seed(0)),)
"""

TV_SWIN = f"""
import sys, torch
sys.path.insert(0, {str(Path(__file__).parent)!r})
from patterns.torchvision_swin import SwinTransformer
torch.manual_seed(0)
model = SwinTransformer([4, 4], 32, [1, 2], [2, 4], [4, 4], num_classes=10).eval()
example_inputs = (torch.randn(1, 3, 64, 64, generator=torch.Generator().manual_seed(0)),)
"""

CNN_B1 = """
import torch, torch.nn as nn
torch.manual_seed(0)

class Net(nn.Module):
    def __init__(self):
        super().__init__()
        self.stem = nn.Sequential(nn.Conv2d(3, 16, 3, padding=1), nn.BatchNorm2d(16), nn.ReLU())
        self.block = nn.Sequential(nn.Conv2d(16, 24, 3, padding=1), nn.BatchNorm2d(24), nn.ReLU(),
                                   nn.Conv2d(24, 16, 3, padding=1), nn.BatchNorm2d(16))
        self.head = nn.Linear(16, 10)

    def forward(self, x):
        x = self.stem(x)
        x = torch.relu(x + self.block(x))
        x = nn.functional.adaptive_avg_pool2d(x, 1)
        return self.head(x.view(x.size(0), -1))

model = Net().eval()
for m in model.modules():
    if isinstance(m, nn.BatchNorm2d):
        m.running_mean.uniform_(-0.5, 0.5)
        m.running_var.uniform_(0.5, 2.0)
example_inputs = (torch.randn(1, 3, 32, 32, generator=torch.Generator().manual_seed(0)),)
"""


def _ids(b: int, n: int, seed: int) -> dict:
    return {"input_ids": torch.randint(0, 128, (b, n), generator=torch.Generator().manual_seed(seed))}


def _images(*shapes: tuple) -> list[tuple]:
    return [(_seeded(*s, seed=k),) for k, s in enumerate(shapes)]


def _batch_varied(run, example_batch: int) -> None:
    """The built-in check and the ONNX check ran at another batch than the example's, and
    torch's 0/1-specialization warning was not printed."""
    v = run.report["verify"]
    assert "dims [0" in v["varied"], v["varied"]
    assert {int(s.strip("(").split(",")[0]) for s in v["shapes"]} - {example_batch}, v["shapes"]
    onnx = run.report["onnx"]
    assert set(onnx["batch_sizes"]) - {example_batch} and all(0 in d for d in onnx["dynamic_dims"].values()), onnx
    assert "specialized" not in run.prune_stdout + run.compile_stdout + run.compile_stderr


def test_gpt2_from_a_batch_one_example_runs_at_any_batch(tmp_path):
    run = run_family(tmp_path, GPT2_B1, [_ids(1, 16, 1), _ids(2, 16, 2), _ids(3, 24, 3)],
                     prompt=_ids(1, 5, 4)["input_ids"])
    run.assert_exact()
    _batch_varied(run, 1)
    assert run.report["front_end"] == "export"
    assert run.report["onnx"]["dynamic_dims"] == {"input": [0, 1]}
    assert run.report["params"]["after"] < run.report["params"]["before"]


def test_hf_swin_window_attention_exports_at_any_batch_and_size(tmp_path):
    """One stage of two blocks (the second shifted: the cyclic shift and its attention mask)."""
    run = run_family(tmp_path, HF_SWIN, _images((2, 3, 32, 32), (1, 3, 32, 32), (3, 3, 48, 48)),
                     prune=("--criterion", "l1", "--ratio", "0.3", "--round-to", "1", "--free-widths"))  # (SwinConfig: one embed_dim)
    run.assert_exact()
    _batch_varied(run, 2)
    onnx = run.report["onnx"]
    assert onnx["exporter"] == "dynamo" and onnx["dynamic_dims"] == {"input": [0, 2, 3]}, onnx
    assert run.report["user_model"]["built"]
    assert run.report["params"]["after"] < run.report["params"]["before"]


@pytest.mark.slow
def test_torchvision_style_swin_from_a_batch_one_example_runs_at_any_batch_and_size(tmp_path):
    """The fx front end (window attention inside a wrapped function, sizes read at run time)
    and a batch-1 example: slim.pt, the user's class and slim.onnx at other batches and sizes."""
    run = run_family(tmp_path, TV_SWIN, _images((1, 3, 64, 64), (2, 3, 64, 64), (3, 3, 96, 96)))
    run.assert_exact()
    _batch_varied(run, 1)
    assert run.report["front_end"] == "fx" and run.report["onnx"]["exporter"] == "dynamo"
    assert run.report["onnx"]["dynamic_dims"] == {"input": [0, 2, 3]}
    assert run.report["params"]["after"] < run.report["params"]["before"]


@pytest.mark.slow
def test_cnn_from_a_batch_one_example_runs_at_any_batch(tmp_path):
    run = run_family(tmp_path, CNN_B1, _images((1, 3, 32, 32), (2, 3, 32, 32), (3, 3, 24, 24)))
    run.assert_exact()
    _batch_varied(run, 1)
    assert run.report["onnx"]["exporter"] == "dynamo"
    assert run.report["params"]["after"] < run.report["params"]["before"]
