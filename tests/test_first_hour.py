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


MODEL = '''
import torch
from torch import nn

class Net(nn.Module):
    def __init__(self):
        super().__init__()
        self.a_convolution_with_a_name_longer_than_eighty_columns_would_allow_in_a_table_cell = nn.Conv2d(3, 8, 3)
        self.b = nn.Conv2d(8, 8, 3)
        self.head = nn.Linear(8, 4)

    def forward(self, x):
        x = self.a_convolution_with_a_name_longer_than_eighty_columns_would_allow_in_a_table_cell(x).relu()
        return self.head(self.b(x).relu().mean((2, 3)))

torch.manual_seed(0)
model = Net().eval()
example_inputs = torch.randn(2, 3, 16, 16)
_x = torch.randn(4, 3, 16, 16)

def evaluate(m):
    with torch.no_grad():
        return float(m(_x).mean())
'''


def test_piped_output_is_complete(tmp_path, capsys):
    """stdout is not a terminal under pytest, as in a CI log: tables keep full layer names, and
    long commands print plain progress lines on stdout instead of silence (stderr: errors)."""
    p = tmp_path / "model.py"
    p.write_text(MODEL)
    long_name = "a_convolution_with_a_name_longer_than_eighty_columns_would_allow_in_a_table_cell"
    assert main(["flops", str(p)]) == 0
    out = capsys.readouterr().out
    assert long_name in out, out
    assert main(["sensitivity", str(p), "-o", str(tmp_path / "sens")]) == 0
    err = capsys.readouterr().out.splitlines()
    lines = [ln for ln in err if ln.startswith("sensitivity: ")]
    assert lines and lines[0].endswith(" 0/6") and lines[-1].startswith("sensitivity: 2 families") \
        and " 6/6 done (" in lines[-1], err


def test_progress_lines_only_when_asked_and_piped(capsys):
    from slimc import progress as pg

    pg.plain_lines(False)
    try:
        assert list(pg.progress(range(3), "quiet")) == [0, 1, 2]
        pg.say("nothing")
        assert capsys.readouterr() == ("", "")
        pg.plain_lines(True)
        assert list(pg.progress(range(3), "loud")) == [0, 1, 2]
        pg.say("a step")
        out, err = capsys.readouterr()
        assert out.splitlines() == ["loud: 0/3", "loud: 3/3 done (0 s)", "a step"] and err == ""
        assert main(["rules"]) == 0  # the CLI called in-process leaves the API quiet after it
        capsys.readouterr()
        assert list(pg.progress(range(3), "after")) == [0, 1, 2] and capsys.readouterr() == ("", "")
    finally:
        pg.plain_lines(False)


def test_an_output_folder_that_is_an_input_or_a_file_is_refused(tmp_path, capsys):
    """-o naming the masks file (or any existing file) is refused before any work: one line,
    exit 2, the file untouched — for every command that writes a folder."""
    import torch

    p = tmp_path / "model.py"
    p.write_text(MODEL)
    masks = tmp_path / "m.pth"
    torch.save({}, masks)
    other = tmp_path / "notes.txt"
    other.write_text("mine")
    before = masks.read_bytes()
    for out, needle in ((masks, "would overwrite the input"), (other, "is a file")):
        for cmd in (["compile", str(p), "--masks", str(masks), "-o", str(out)],
                    ["sensitivity", str(p), "-o", str(out)],
                    ["bench", str(p), "--masks", str(masks), "-o", str(out)]):
            assert main(cmd) == 2, cmd
            line = _err_line(capsys)
            takes_masks = "--masks" in cmd
            assert (needle if takes_masks else "is a file") in line and str(out) in line, line
    assert masks.read_bytes() == before and other.read_text() == "mine"


def test_every_criterion_name_from_one_source(tmp_path, capsys):
    """The message, the help and the names --criterion accepts agree (automatic pruners included)."""
    from slimc.prune.auto import auto_names
    from slimc.prune.criteria import choices, names

    p = tmp_path / "model.py"
    p.write_text(MODEL)
    assert main(["prune", str(p), "--criterion", "fpmg", "-o", str(tmp_path / "m.pth")]) == 2
    line = _err_line(capsys)
    assert "did you mean 'fpgm'" in line and choices() in line
    for n in [*names(), *auto_names()]:
        assert n in choices()
    with pytest.raises(SystemExit):
        main(["prune", "--help"])
    help_text = " ".join(capsys.readouterr().out.split())
    for n in auto_names():
        assert n in help_text
    assert not (tmp_path / "m.pth").exists()


def test_saving_and_loading_an_hf_model_draws_no_bars_of_transformers(tmp_path, capfd):
    """transformers' "Writing model shards" / "Loading weights" bars are not slimc's output:
    a successful save and load print nothing (#24.4)."""
    T = pytest.importorskip("transformers")
    import torch

    import slimc

    torch.manual_seed(0)
    model = T.GPT2LMHeadModel(T.GPT2Config(vocab_size=64, n_embd=32, n_layer=1, n_head=2, n_positions=32)).eval()
    ids = torch.randint(0, 64, (2, 8))
    masks = {"transformer.h.0.mlp.c_fc.weight": (torch.arange(128) % 4 != 0).float().view(1, 128)}
    res = slimc.compile(model, masks, (ids,))
    capfd.readouterr()
    res.save(tmp_path / "out", onnx=False)
    back = slimc.load(tmp_path / "out")
    err = capfd.readouterr().err
    assert "Writing model shards" not in err and "Loading weights" not in err, err
    assert type(back) is T.GPT2LMHeadModel
