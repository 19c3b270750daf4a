"""Bad inputs for every command (#24.10): each is refused in one line on stderr (``error: …``,
naming the culprit and what to do), exit status 2, and nothing written — the output absent or
as it was, the inputs untouched. A case is a command line and what is wrong with its files;
a save cut short (the disk full, Ctrl-C) leaves nothing half-written either."""
from __future__ import annotations

import errno
import hashlib
import os
import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

import pytest
import torch

from slimc.cli import main
from test_cli import _err  # one line on stderr, no traceback
from test_prune_cli import DATA, MODEL  # features.0/.3 + classifier; calibration_batches, loss_fn, evaluate

SEQ_MODEL = '''
import torch, torch.nn as nn
torch.manual_seed(0)
model = nn.Sequential(nn.Conv2d(3, 8, 3, padding=1), nn.ReLU(), nn.Conv2d(8, 4, 3, padding=1)).eval()
example_inputs = torch.randn(2, 3, 8, 8)
'''  # classes that import by name: its compile output has structure.pt
WRONG_CALIBRATION = (DATA.split("def evaluate")[0]  # no evaluate(): sensitivity runs the loss on the batches
                     + "def calibration_batches():\n    return [(torch.randn(4, 5, 8, 8), torch.zeros(4).long())]\n")
ARGS = {"MODEL": "model.py", "SEQ": "seq.py", "MASKS": "m.pth", "GOOD": "good.pth", "DIR": "dir", "OUT": "out"}


@dataclass
class Case:
    argv: list[str]  # the command line; the words of ARGS (and OUT/…) name the case's files
    needles: tuple[str, ...]  # what the one line must say: the culprit, and what to do
    files: dict[str, Callable[[Path], None]] = field(default_factory=dict)  # file → writes it, bad
    compiled: str | None = None  # "MODEL" or "SEQ": compiled into DIR first, then damaged
    damage: Callable[[Path], None] = lambda d: None  # what is done to DIR


def _text(s: str) -> Callable[[Path], None]:
    return lambda p: p.write_text(s)


def _saved(obj) -> Callable[[Path], None]:
    return lambda p: torch.save(obj, p)


def _truncate(*names: str) -> Callable[[Path], None]:
    def cut(d: Path) -> None:
        for n in names:
            (d / n).write_bytes((d / n).read_bytes()[: (d / n).stat().st_size // 2])
    return cut


def _remove(*names: str) -> Callable[[Path], None]:
    return lambda d: [(d / n).unlink() for n in names]


def _garble(name: str) -> Callable[[Path], None]:
    return lambda d: (d / name).write_text("{ not json")


BAD_MASKS = {
    "corrupt": (lambda p: p.write_bytes(b"not a torch file at all"), ("m.pth", "not a torch.save file of tensors")),
    "not-a-dict": (_saved([torch.ones(3)]), ("m.pth", "holds a list", "torch.save")),
    "other-model": (_saved({"conv1.weight": torch.ones(8, 3, 3, 3), "conv2.weight": torch.ones(4, 8, 3, 3)}),
                    ("conv1.weight", "matches no parameter", "key masks by parameter FQN")),
}
MASKS_READERS = {"compile": ["-o", "OUT"], "export": ["-o", "OUT/slim.onnx"], "inspect": [], "flops": [],
                 "bench": ["-o", "OUT", "--batch", "1", "--min-time", "0.01"],
                 "quantize": ["-o", "OUT", "--method", "dynamic"]}

PRUNE_CFG = ["prune", "MODEL", "--config", "CFG", "-o", "OUT/m.pth"]
QUANT_CFG = ["quantize", "MODEL", "--config", "CFG", "-o", "OUT", "--method", "weight"]
CONFIGS = {  # name → command, config file, what the line says
    "prune-config-yaml-does-not-parse": (PRUNE_CFG, "cfg.yaml", "- sparsity: [0.5\n", ("cfg.yaml", "not valid YAML")),
    "prune-config-json-does-not-parse": (PRUNE_CFG, "cfg.json", '[{"sparsity": 0.5,}', ("cfg.json", "not valid JSON")),
    "prune-config-not-a-list": (PRUNE_CFG, "cfg.yaml", "sparsity: 0.5\n", ("cfg.yaml", "list of entries like")),
    "prune-config-names-no-layer": (PRUNE_CFG, "cfg.yaml", "- sparsity: 0.5\n  op_names: [nope]\n",
                                    ("'nope' names no module", "named_modules")),
    "prune-config-sparsity-too-high": (PRUNE_CFG, "cfg.yaml", "- sparsity: 1.5\n  op_types: [Conv2d]\n",
                                       ("'sparsity'", "1.5", "[0, 1)")),
    "prune-config-sparsity-negative": (PRUNE_CFG, "cfg.yaml", "- sparsity: -0.25\n  op_types: [Conv2d]\n",
                                       ("'sparsity'", "-0.25", "[0, 1)")),
    "prune-config-sparsity-not-a-number": (PRUNE_CFG, "cfg.yaml", "- sparsity: half\n  op_types: [Conv2d]\n",
                                           ("'sparsity'", "'half'", "number")),
    "quantize-config-yaml-does-not-parse": (QUANT_CFG, "cfg.yaml", "- quant_bits: [8\n", ("cfg.yaml", "not valid YAML")),
    "quantize-config-not-a-list": (QUANT_CFG, "cfg.json", '{"quant_bits": 8}', ("cfg.json", "list of entries like")),
    "quantize-config-names-no-layer": (QUANT_CFG, "cfg.yaml", "- quant_types: [weight]\n  op_names: [nope]\n",
                                       ("'nope' names no module", "named_modules")),
    "quantize-config-bits-too-high": (QUANT_CFG, "cfg.yaml",
                                      "- quant_types: [weight]\n  quant_bits: 16\n  op_types: [Conv2d]\n",
                                      ("quant_bits.weight 16", "2 to 8 bit")),
    "quantize-config-bits-zero": (QUANT_CFG, "cfg.yaml", "- quant_types: [weight]\n  quant_bits: 0\n  op_types: [Conv2d]\n",
                                  ("'quant_bits'", "integer ≥ 1", "got 0")),
}
OPTIONS = {  # numbers out of range given on the command line
    "prune-ratio-out-of-range": (["prune", "MODEL", "--ratio", "-0.5", "-o", "OUT/m.pth"], ("ratio", "-0.5", "[0, 1)")),
    "quantize-bits-out-of-range": (["quantize", "MODEL", "-o", "OUT", "--method", "weight", "--bits", "9"],
                                   ("--bits 9", "2 to 8 bit")),
    "sensitivity-sparsities-out-of-range": (["sensitivity", "MODEL", "--sparsities", "0.5,1.5", "-o", "OUT"],
                                            ("sparsity 1.5 is out of range", "between 0 and 1")),
}
CALIBRATING = {  # the commands that run calibration_batches()
    "prune": ["prune", "MODEL", "--criterion", "apoz", "-o", "OUT/m.pth"],
    "sensitivity": ["sensitivity", "MODEL", "--sparsities", "0.5", "-o", "OUT"],
    "quantize": ["quantize", "MODEL", "-o", "OUT", "--method", "static"],
    "compile-quantize": ["compile", "MODEL", "--masks", "GOOD", "-o", "OUT", "--quantize", "static", "--no-onnx"],
}

FOLDER_DAMAGE = {  # how a compile output was edited or cut short, and the file the line must name
    "slim-pt-truncated": (_truncate("slim.pt"), "slim.pt"),
    "slim-pt-missing": (_remove("slim.pt"), "slim.pt"),
    "inputs-pt-missing": (_remove("inputs.pt"), "inputs.pt"),
    "inputs-pt-corrupt": (_garble("inputs.pt"), "inputs.pt"),
    "report-json-missing": (_remove("report.json"), "report.json"),
    "report-json-corrupt": (_garble("report.json"), "report.json"),
}
FOLDER_READERS = {  # each command that takes a compile output, and the damage to the files it reads
    "export": (["export", "DIR", "-o", "OUT/slim.onnx"],
               ("slim-pt-truncated", "slim-pt-missing", "inputs-pt-missing", "inputs-pt-corrupt")),
    "bench": (["bench", "DIR", "-o", "OUT", "--batch", "1", "--min-time", "0.01"],
              ("slim-pt-truncated", "slim-pt-missing", "report-json-missing", "report-json-corrupt")),
    "quantize": (["quantize", "DIR", "-o", "OUT", "--method", "dynamic"],  # report.json: for the model's data
                 ("slim-pt-truncated", "slim-pt-missing", "inputs-pt-missing", "inputs-pt-corrupt", "report-json-corrupt")),
}
LOADS = {  # slimc.load: the user's class from layout.json + weights (+ structure.pt), else the graph
    "layout-json-corrupt": ("MODEL", _garble("layout.json"), "layout.json"),
    "weights-truncated": ("MODEL", _truncate("model.safetensors"), "model.safetensors"),
    "weights-missing": ("MODEL", _remove("model.safetensors"), "model.safetensors"),
    "structure-pt-missing": ("SEQ", _remove("structure.pt"), "structure.pt"),
    "structure-pt-truncated": ("SEQ", _truncate("structure.pt"), "structure.pt"),
    "graph-only-slim-pt-truncated": ("MODEL", lambda d: (_remove("layout.json")(d), _truncate("slim.pt")(d)), "slim.pt"),
    "graph-only-slim-pt-missing": ("MODEL", _remove("layout.json", "slim.pt"), "slim.pt"),
}

CASES: dict[str, Case] = {
    **{f"{cmd}-masks-{kind}": Case([cmd, "MODEL", "--masks", "MASKS", *extra], needles, {"m.pth": write})
       for cmd, extra in MASKS_READERS.items() for kind, (write, needles) in BAD_MASKS.items()},
    **{name: Case([a.replace("CFG", cfg) for a in argv], needles, {cfg: _text(text)})
       for name, (argv, cfg, text, needles) in CONFIGS.items()},
    **{name: Case(argv, needles) for name, (argv, needles) in OPTIONS.items()},
    **{f"{name}-calibration-of-the-wrong-shape": Case(argv, ("calibration", "4, 5, 8, 8", "like example_inputs"),
                                                      {"model.py": _text(MODEL + WRONG_CALIBRATION)})
       for name, argv in CALIBRATING.items()},
    **{f"{cmd}-folder-{kind}": Case(argv, (FOLDER_DAMAGE[kind][1], "compile"), compiled="MODEL",
                                    damage=FOLDER_DAMAGE[kind][0])
       for cmd, (argv, kinds) in FOLDER_READERS.items() for kind in kinds},
    **{f"load-folder-{kind}": Case(["load", "DIR"], (culprit, "compile"), compiled=src, damage=damage)
       for kind, (src, damage, culprit) in LOADS.items()},
}


def _tree(root: Path) -> dict[str, str]:
    """Every file below ``root`` (hidden ones too), with a digest of its bytes; bytecode caches aside."""
    return {str(p.relative_to(root)): hashlib.sha1(p.read_bytes()).hexdigest()
            for p in sorted(root.rglob("*")) if p.is_file() and "__pycache__" not in p.parts}


def _files(d: Path, capsys, compiled: str | None = None) -> None:
    """The case's good files in ``d``: the model files, empty and complete masks, a compile output."""
    (d / "model.py").write_text(MODEL + DATA)
    (d / "seq.py").write_text(SEQ_MODEL)
    torch.save({}, d / "m.pth")
    torch.save({"features.0.weight": (torch.arange(16) % 2).float().view(16, 1, 1, 1)}, d / "good.pth")
    if compiled:
        masks = "m.pth" if compiled == "SEQ" else "good.pth"
        assert main(["compile", str(d / ARGS[compiled]), "--masks", str(d / masks), "-o", str(d / "dir"),
                     "--no-onnx"]) == 0
    capsys.readouterr()


def _argv(argv: list[str], d: Path) -> list[str]:
    return [str(d / ARGS[a]) if a in ARGS else str(d / "out" / a[4:]) if a.startswith("OUT/") else
            str(d / a) if a.startswith("cfg.") else a for a in argv]


def _slimc(argv: list[str]) -> int:
    """``slimc ARGV`` in process; ``load DIR`` is the Python API's ``slimc.load(DIR)`` (no command
    of its own), its error reported as the command line reports one."""
    if argv[0] != "load":
        return main(argv)
    import slimc
    from slimc.errors import SlimcError

    try:
        slimc.load(argv[1])
    except SlimcError as e:
        print(f"error: {e}", file=sys.stderr)
        return e.exit_code
    return 0


@pytest.mark.parametrize("name", sorted(CASES))
def test_bad_input_is_one_line_exit_2_and_writes_nothing(name, tmp_path, capsys):
    case = CASES[name]
    _files(tmp_path, capsys, case.compiled)
    case.damage(tmp_path / "dir")
    for f, write in case.files.items():
        write(tmp_path / f)
    before = _tree(tmp_path)
    assert _slimc(_argv(case.argv, tmp_path)) == 2, capsys.readouterr()
    line = _err(capsys)
    assert line.startswith("error: ") and "internal error" not in line, line
    for needle in case.needles:
        assert needle in line, (needle, line)
    assert _tree(tmp_path) == before and not (tmp_path / "out").exists()


SAVES = {  # a command, and the output whose rename into place fails after the others' (the last one)
    "compile": (["compile", "MODEL", "--masks", "GOOD", "-o", "OUT", "--no-onnx"], "report.json"),
    "prune": (["prune", "MODEL", "-o", "OUT/m.pth"], "m.pth"),
    "sensitivity": (["sensitivity", "MODEL", "--sparsities", "0.5", "-o", "OUT"], "config.yaml"),
    "quantize": (["quantize", "MODEL", "-o", "OUT", "--method", "dynamic"], "report.json"),
    "export": (["export", "MODEL", "--masks", "GOOD", "-o", "OUT/slim.onnx", "--original"], "slim.original.onnx"),
    "bench": (["bench", "MODEL", "--masks", "GOOD", "-o", "OUT", "--batch", "1", "--min-time", "0.01",
               "--runtimes", "torch"], "bench.md"),
}


def _rename_fails_once(monkeypatch, target: Path, exc: BaseException) -> None:
    """``os.replace`` raises ``exc`` the first time it would rename a file onto ``target``."""
    real = os.replace
    armed = [True]

    def fake(src, dst, *a, **kw):
        if armed[0] and Path(dst) == target:
            armed[0] = False
            raise exc
        return real(src, dst, *a, **kw)

    monkeypatch.setattr(os, "replace", fake)


@pytest.mark.parametrize("name", sorted(SAVES))
def test_a_save_cut_short_leaves_nothing_half_written(name, tmp_path, capsys, monkeypatch):
    argv, last = SAVES[name]
    _files(tmp_path, capsys)
    before = _tree(tmp_path)
    _rename_fails_once(monkeypatch, tmp_path / "out" / last, OSError(errno.ENOSPC, os.strerror(errno.ENOSPC)))
    assert main(_argv(argv, tmp_path)) == 2, capsys.readouterr()
    line = _err(capsys)
    assert line.startswith(f"error: cannot write '{tmp_path / 'out'}") and last in line and "free space" in line, line
    assert _tree(tmp_path) == before and not (tmp_path / "out").exists()


def test_a_compile_cut_short_over_an_earlier_one_leaves_it_as_it_was(tmp_path, capsys, monkeypatch):
    _files(tmp_path, capsys)
    out = tmp_path / "out"
    assert main(["compile", str(tmp_path / "model.py"), "--masks", str(tmp_path / "m.pth"), "-o", str(out),
                 "--no-onnx"]) == 0
    capsys.readouterr()
    before = _tree(tmp_path)
    argv = ["compile", str(tmp_path / "model.py"), "--masks", str(tmp_path / "good.pth"), "-o", str(out), "--no-onnx"]
    _rename_fails_once(monkeypatch, out / "report.json", KeyboardInterrupt())  # Ctrl-C at the last rename
    assert main(argv) == 130
    assert capsys.readouterr().err.strip() == "interrupted"
    assert _tree(tmp_path) == before


def test_a_write_that_fails_half_way_leaves_no_partial_file(tmp_path, capsys, monkeypatch):
    """The disk fills while inputs.pt is written (after slim.pt and masks.pth are in place)."""
    _files(tmp_path, capsys)
    before = _tree(tmp_path)
    real = torch.save

    def half_then_full(obj, f, *a, **kw):
        if os.path.basename(os.fspath(f)).startswith(".inputs.pt."):
            Path(f).write_bytes(b"PK\x03\x04 half a file")
            raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))
        return real(obj, f, *a, **kw)

    monkeypatch.setattr(torch, "save", half_then_full)
    assert main(_argv(["compile", "MODEL", "--masks", "GOOD", "-o", "OUT", "--no-onnx"], tmp_path)) == 2
    line = _err(capsys)
    assert f"cannot write '{tmp_path / 'out' / 'inputs.pt'}'" in line and "No space left" in line, line
    assert _tree(tmp_path) == before and not (tmp_path / "out").exists()
