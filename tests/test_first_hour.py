"""What a newcomer meets in the first hour (#24): every message true and on one line."""
from __future__ import annotations

import pytest

from slimc.cli import main


def _err_line(capsys) -> str:
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1, err
    return err[0]


def test_an_import_failure_inside_model_py_names_its_real_cause(tmp_path, capsys, monkeypatch):
    """Libraries import lazily and wrap the failure (transformers: ``Could not import module
    'Qwen2ForCausalLM'``); the one line must name what actually failed to import."""
    lib = tmp_path / "lazylib"
    lib.mkdir()
    (lib / "__init__.py").write_text(
        "def __getattr__(name):\n"
        "    try:\n"
        "        import flash_attn_missing_for_test  # noqa: F401\n"
        "    except ImportError as e:\n"
        "        raise ModuleNotFoundError(f\"Could not import module '{name}'\") from e\n"
    )
    model = tmp_path / "model.py"
    model.write_text("from lazylib import Net\nmodel = Net()\nexample_inputs = ()\n")
    monkeypatch.syspath_prepend(str(tmp_path))
    for cmd in (["compile", str(model), "-o", str(tmp_path / "out")], ["prune", str(model), "-o", str(tmp_path / "m.pth")],
                ["inspect", str(model)]):
        assert main(cmd) == 2
        line = _err_line(capsys)
        assert "Could not import module 'Net'" in line and "flash_attn_missing_for_test" in line, line
    assert not (tmp_path / "out").exists() and not (tmp_path / "m.pth").exists()


def test_with_cause_reads_the_chain():
    from slimc.errors import with_cause

    try:
        try:
            raise KeyError("inner")
        except KeyError as e:
            raise RuntimeError("outer") from e
    except RuntimeError as e:
        assert with_cause(e) == "RuntimeError: outer (caused by KeyError: 'inner')"
    try:
        raise ValueError("alone")
    except ValueError as e:
        assert with_cause(e) == "ValueError: alone"
    try:
        try:
            raise OSError("first")
        except OSError:
            raise ValueError("second") from None  # the context suppressed: not shown
    except ValueError as e:
        assert with_cause(e) == "ValueError: second"
