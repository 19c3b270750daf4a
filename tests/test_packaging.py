"""Packaging without path tricks: passes/ and shape_rules/ are importable only as
slimc.passes and slimc.shape_rules, nothing else of the repo leaks into slimc, and the
package list setup.py finds covers every subpackage (a new slimc/<stage>/ needs no edit)."""
from __future__ import annotations

import runpy
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]

PROBE = """
import importlib
import slimc.passes, slimc.shape_rules
print(slimc.passes.__file__)
for name in ("slimc.tests", "slimc.benchmarks", "slimc.slimc", "passes", "shape_rules"):
    try:
        importlib.import_module(name)
    except ImportError:
        continue
    print("LEAK", name)
"""


def test_only_the_mapped_folders_are_importable(tmp_path):
    # outside the repo, so that the current directory adds nothing to sys.path
    out = subprocess.run([sys.executable, "-c", PROBE], cwd=tmp_path, capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr
    assert "LEAK" not in out.stdout, out.stdout
    assert Path(out.stdout.splitlines()[0]).parent.name == "passes"


def test_setup_finds_every_subpackage(monkeypatch):
    monkeypatch.chdir(ROOT)
    found = set(runpy.run_path(str(ROOT / "setup.py"), run_name="setup")["slimc_packages"]())
    expected = {".".join(p.parent.relative_to(ROOT).parts) for p in (ROOT / "slimc").rglob("__init__.py")}
    expected |= {"slimc." + ".".join(p.parent.relative_to(ROOT).parts)
                 for folder in ("passes", "shape_rules") for p in (ROOT / folder).rglob("__init__.py")}
    expected = {e for e in expected if "__pycache__" not in e}
    assert {"slimc", "slimc.onnx", "slimc.bench", "slimc.zoo", "slimc.passes", "slimc.shape_rules"} <= found
    assert found == expected
