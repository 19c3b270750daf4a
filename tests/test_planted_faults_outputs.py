"""Planted faults in what slimc writes: the ONNX check (``slimc.onnx.check_onnx`` and the
check inside ``export_onnx``), the CLI (``slimc compile``: exit status, one line, nothing
half-written) and the reload (``slimc.load`` of a folder with a damaged file).

As in test_planted_faults.py, the ONNX faults are also run with a check that always passes: the
test's own onnxruntime run then sees the corrupted file differ from torch, so the fault is real
and only the check stops it.
"""
from __future__ import annotations

import json
import os
from pathlib import Path

import numpy as np
import pytest
import torch

import slimc
import slimc.compiler
import slimc.onnx.check
import slimc.onnx.export
from slimc.cli import main
from slimc.errors import DamagedOutput, ExportError, LoadError
from helpers import TOL, masked_reference, max_diff, run_eval
from test_planted_faults import X, chain, chain_masks, checker_always_passes, permuted_channel, plant_in_graph

TESTS = Path(__file__).resolve().parent


# --------------------------------------------------------------------------- ONNX
def swap_rows(arr: np.ndarray) -> np.ndarray:
    out = arr.copy()
    out[[0, 1]] = arr[[1, 0]]
    return out


def nudge_first(arr: np.ndarray) -> np.ndarray:
    out = arr.copy()
    out.flat[0] += 0.05
    return out


def corrupt_initializer(path: Path, change, ndim: int) -> str:
    """The first float initializer of rank ``ndim`` (a conv weight: 4; a bias: 1) changed in
    place in the file; its name."""
    import onnx
    from onnx import numpy_helper

    model = onnx.load(str(path))
    init = next(i for i in model.graph.initializer
                if i.data_type == onnx.TensorProto.FLOAT and len(i.dims) == ndim and i.dims[0] > 1)
    init.CopyFrom(numpy_helper.from_array(change(numpy_helper.to_array(init)), init.name))
    onnx.save(model, str(path))
    return init.name


def ort_vs_torch(path: Path, module: torch.nn.Module, x: torch.Tensor) -> tuple[float, float]:
    """The test's own onnxruntime run: (max |onnxruntime - torch|, max |torch|) at ``x``."""
    import onnxruntime as ort

    sess = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    got = sess.run(None, {sess.get_inputs()[0].name: x.numpy()})[0]
    want = run_eval(module, (x,))[0].numpy()
    return float(np.abs(got - want).max()), float(np.abs(want).max())


ONNX_FAULTS = {"weight_rows_swapped": (swap_rows, 4), "bias_nudged": (nudge_first, 1)}


@pytest.fixture(scope="module")
def slim_chain():
    m = chain()
    return slimc.compile(m, chain_masks(m), X, user_model=False).module


@pytest.fixture(scope="module")
def good_onnx(slim_chain, tmp_path_factory) -> Path:
    path = tmp_path_factory.mktemp("onnx") / "slim.onnx"
    slimc.onnx.export_onnx(slim_chain, (X,), path)
    return path


@pytest.fixture
def onnx_copy(good_onnx, tmp_path) -> Path:
    import shutil

    return Path(shutil.copy(good_onnx, tmp_path / "slim.onnx"))


def test_onnx_check_passes_the_right_file(slim_chain, onnx_copy):
    ok = slimc.onnx.check_onnx(onnx_copy, slim_chain, (X,))
    assert ok.checked and ok.batch_sizes == [1, 3]
    assert ok.max_abs_diff <= ok.tolerance == pytest.approx(1e-4 * max(1.0, ok.output_scale))


@pytest.mark.parametrize("fault", ONNX_FAULTS)
def test_onnx_check_catches_a_changed_initializer(fault, slim_chain, onnx_copy):
    corrupt_initializer(onnx_copy, *ONNX_FAULTS[fault])
    with pytest.raises(ExportError, match=r"^onnxruntime output 'output' diverges from torch at batch 1: "
                                          r"max \|diff\| = [0-9.e-]+ > tolerance [0-9.e-]+") as e:
        slimc.onnx.check_onnx(onnx_copy, slim_chain, (X,))
    assert "\n" not in str(e.value)


@pytest.mark.parametrize("fault", ONNX_FAULTS)
def test_an_onnx_check_that_always_passes_lets_the_changed_initializer_through(fault, slim_chain, onnx_copy,
                                                                               monkeypatch):
    corrupt_initializer(onnx_copy, *ONNX_FAULTS[fault])
    monkeypatch.setattr(slimc.onnx.check, "_max_abs_diff", lambda ref, got: 0.0)
    assert slimc.onnx.check_onnx(onnx_copy, slim_chain, (X,)).checked
    d, s = ort_vs_torch(onnx_copy, slim_chain, X)
    assert d > 1e-3 * max(1.0, s), f"{fault} changes nothing onnxruntime computes ({d:.3g})"


def plant_in_onnx(monkeypatch, change=swap_rows, ndim: int = 4) -> None:
    """Every file the exporter writes gets one initializer changed before the check reads it."""
    real = slimc.onnx.export._finalize_file

    def finalize(dest: str) -> None:
        real(dest)
        corrupt_initializer(Path(dest), change, ndim)

    monkeypatch.setattr(slimc.onnx.export, "_finalize_file", finalize)


def test_export_onnx_catches_a_planted_initializer_and_writes_nothing(slim_chain, tmp_path, monkeypatch):
    out = tmp_path / "sub" / "net.onnx"
    plant_in_onnx(monkeypatch)
    with pytest.raises(ExportError, match=r"^onnxruntime output 'output' diverges from torch at batch 1") as e:
        slimc.onnx.export_onnx(slim_chain, (X,), out)
    assert "\n" not in str(e.value)
    assert not out.exists() and not (tmp_path / "sub").exists()
    assert not list(tmp_path.iterdir())


# --------------------------------------------------------------------------- the CLI
@pytest.fixture
def chain_files(tmp_path):
    model_py = tmp_path / "model.py"
    model_py.write_text(f"import sys\nsys.path.insert(0, {str(TESTS)!r})\n"
                        "from test_planted_faults import X, chain\nmodel = chain()\nexample_inputs = X\n")
    masks = tmp_path / "masks.pth"
    torch.save(chain_masks(chain()), masks)
    return model_py, masks


def one_line(capsys) -> str:
    err = capsys.readouterr().err.strip()
    assert "Traceback" not in err and len(err.splitlines()) == 1, err
    return err


def test_cli_compile_with_a_wrong_slim_model_exits_2_and_writes_nothing(chain_files, tmp_path, capsys, monkeypatch):
    model_py, masks = chain_files
    plant_in_graph(monkeypatch, permuted_channel)
    out = tmp_path / "out"
    assert main(["compile", str(model_py), "--masks", str(masks), "-o", str(out)]) == 2
    assert one_line(capsys).startswith("error: the slim model differs from the masked model by ")
    assert not out.exists()
    assert {p.name for p in tmp_path.iterdir()} == {"model.py", "masks.pth"}
    with checker_always_passes():  # the sensitivity: without the check the wrong model is written
        assert main(["compile", str(model_py), "--masks", str(masks), "-o", str(out), "--no-onnx"]) == 0
    m = chain()
    d, s = max_diff(run_eval(torch.load(out / "slim.pt", weights_only=False), (X,)),
                    run_eval(masked_reference(m, chain_masks(m)), (X,)))
    assert d > 100 * TOL * max(1.0, s)


def test_cli_compile_with_a_wrong_onnx_file_exits_3_without_slim_onnx(chain_files, tmp_path, capsys, monkeypatch):
    model_py, masks = chain_files
    plant_in_onnx(monkeypatch)
    out = tmp_path / "out"
    assert main(["compile", str(model_py), "--masks", str(masks), "-o", str(out)]) == 3
    err = one_line(capsys)
    assert err.startswith("error: no slim.onnx") and "diverges from torch" in err, err
    assert not (out / "slim.onnx").exists()
    assert "diverges from torch" in json.loads((out / "report.json").read_text())["onnx"]["error"]
    assert {"slim.pt", "masks.pth", "inputs.pt", "report.json"} <= {p.name for p in out.iterdir()}
    assert not [p for p in out.iterdir() if p.name.startswith(".") or "tmp" in p.name]  # no staging left


# --------------------------------------------------------------------------- the reload
@pytest.fixture(scope="module")
def saved(tmp_path_factory):
    m = chain()
    out = tmp_path_factory.mktemp("saved")
    slimc.compile(m, chain_masks(m), X).save(out, onnx=False)
    return out


def truncate(path: Path) -> None:
    path.write_bytes(path.read_bytes()[: path.stat().st_size // 2])


def reshaped_weight(path: Path) -> None:
    from safetensors.torch import load_file, save_file

    st = load_file(str(path))
    st["conv1.weight"] = torch.zeros(6, *st["conv1.weight"].shape[1:])  # another compile's width
    save_file(st, str(path))


def weight_left_out(path: Path) -> None:
    from safetensors.torch import load_file, save_file

    st = load_file(str(path))
    del st["bn1.bias"]
    save_file(st, str(path))


DAMAGES = {  # (file, damage, the error and its message)
    "weights_cut_short": ("model.safetensors", truncate, DamagedOutput, r"^cannot read '.*model\.safetensors' "),
    "weight_of_another_width": ("model.safetensors", reshaped_weight, LoadError,
                                r"^the saved weight 'conv1\.weight' has shape \(6, 3, 3, 3\), the slim structure "
                                r"\(5, 3, 3, 3\)"),
    "weight_left_out": ("model.safetensors", weight_left_out, LoadError,
                        r"^the saved weights have no 'bn1\.bias' \(and 0 more\): the folder is incomplete"),
    "layout_cut_short": ("layout.json", truncate, DamagedOutput, r"^cannot read '.*layout\.json' \(JSONDecodeError"),
    "structure_cut_short": ("structure.pt", truncate, DamagedOutput, r"^cannot read '.*structure\.pt' "),
}


def test_the_undamaged_folder_reloads_exact(saved):
    m = chain()
    d, s = max_diff(run_eval(slimc.load(saved), (X,)), run_eval(masked_reference(m, chain_masks(m)), (X,)))
    assert d <= TOL * max(1.0, s)


@pytest.mark.parametrize("damage", DAMAGES)
def test_reload_of_a_damaged_folder_names_the_file(damage, saved, tmp_path):
    import shutil

    out = tmp_path / "copy"
    shutil.copytree(saved, out)
    name, spoil, err, why = DAMAGES[damage]
    spoil(out / name)
    with pytest.raises(err, match=why) as e:
        slimc.load(out)
    assert "\n" not in str(e.value)


def test_cli_reading_a_damaged_slim_pt_exits_2_naming_it(saved, tmp_path, capsys):
    import shutil

    out = tmp_path / "copy"
    shutil.copytree(saved, out)
    truncate(out / "slim.pt")
    assert main(["export", str(out), "-o", str(tmp_path / "x.onnx")]) == 2
    err = one_line(capsys)
    assert err.startswith("error: cannot read '") and "slim.pt" in err, err
    assert not (tmp_path / "x.onnx").exists()
    assert sorted(os.listdir(out)) == sorted(os.listdir(saved))
