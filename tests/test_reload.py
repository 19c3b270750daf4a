"""``slimc.load`` gives the user's class back in a fresh process, wherever the folder can say
how to build it: a library's class built in code (no model.py: ``structure.pt``, the slim
objects pickled, loads wherever the library imports), a model.py class (rebuilt from the
model file). Where it cannot (the model file moved), it warns in one line naming ``base=``
and returns the graph; ``base=`` then rebuilds the class.

The reference in every fresh process is the test's own: the original rebuilt from the same
code and seed, the masks in ``masks.pth`` applied by hand (never slimc's code)."""
from __future__ import annotations

import json
import shutil
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
import torch

import slimc
from slimc.surgery import structure

TOL = 1e-5
CLI = "import sys; from slimc.cli import main; sys.exit(main())"

# a tiny library laid out as an installed package: a model class, a builder with options
# (timm's create_model, torchvision's builders: the constructor's arguments are not known
# from the class), a functools.partial in the model's attributes
LIBRARY = {
    "tinylib/__init__.py": "from tinylib.models import create_model\n",
    "tinylib/models.py": '''
        import functools
        import torch
        from torch import nn


        class Block(nn.Module):
            def __init__(self, c, expand, act_layer):
                super().__init__()
                self.conv = nn.Conv2d(c, c * expand, 3, padding=1)
                self.bn = nn.BatchNorm2d(c * expand)
                self.act = act_layer()
                self.proj = nn.Conv2d(c * expand, c, 1)

            def forward(self, x):
                return x + self.proj(self.act(self.bn(self.conv(x))))


        class TinyNet(nn.Module):
            def __init__(self, width, depth=2, expand=2, num_classes=5, act_layer=nn.ReLU):
                super().__init__()
                self.act_layer = act_layer  # held as timm holds it: a class or a partial
                self.stem = nn.Conv2d(3, width, 3, padding=1)
                self.blocks = nn.Sequential(*[Block(width, expand, act_layer) for _ in range(depth)])
                self.head = nn.Linear(width, num_classes)

            def forward(self, x):
                return self.head(self.blocks(self.stem(x)).mean((2, 3)))


        def create_model(name, **kw):
            width = {"tiny": 8, "small": 16}[name]
            return TinyNet(width, **kw)


        def build():  # what the compiling and the checking process both call
            torch.manual_seed(0)
            m = create_model("small", depth=3, act_layer=functools.partial(nn.LeakyReLU, 0.1)).eval()
            with torch.no_grad():
                for mod in m.modules():
                    if isinstance(mod, nn.BatchNorm2d):
                        mod.running_mean.uniform_(-0.5, 0.5)
                        mod.running_var.uniform_(0.5, 2.0)
            return m
    ''',
}

COMPILE_IN_CODE = '''
import sys, torch, slimc, tinylib.models
from slimc.prune import prune
m = tinylib.models.build()
x = torch.randn(2, 3, 16, 16)
masks = prune(m, x, "l1", ratio=0.5)
torch.save(masks, sys.argv[1] + "/masks.pth")
res = slimc.compile(m, masks, x)
res.save(sys.argv[1] + "/out", onnx=False)
print(res.report["user_model"]["reload"])
'''

# the fresh process: the reference from its own code, the masks applied by hand, then
# slimc.load once per entry of `loads` (None: no base=; else the base= it is given)
CHECK = """
import json, sys, warnings, torch, runpy
d, build, loads = sys.argv[1], sys.argv[2], json.loads(sys.argv[3])
if build.endswith(".py"):
    ref = runpy.run_path(build)["model"]
else:
    mod, _, fn = build.partition(":")
    ref = getattr(__import__(mod, fromlist=[fn]), fn)()
ref.eval()
raw = torch.load(d + "/masks.pth", weights_only=True)
params = dict(ref.named_parameters())
with torch.no_grad():
    for k, m in raw.items():
        params[k].mul_((torch.as_tensor(m) != 0).to(params[k].dtype))
import slimc
out = []
for base in loads:
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        slim = slimc.load(d + "/out", base=base).eval()
    res = {"module": type(slim).__module__, "class": type(slim).__name__,
           "warnings": [str(w.message) for w in caught if "slimc" in str(w.message)], "diffs": [],
           "params": sum(p.numel() for p in slim.parameters())}
    g = torch.Generator().manual_seed(1)
    for shape in [(2, 3, 16, 16), (3, 3, 16, 16), (1, 3, 24, 20)]:
        x = torch.randn(*shape, generator=g)
        with torch.no_grad():
            a, b = slim(x), ref(x)
        res["diffs"].append([list(shape), float((a - b).abs().max()), float(b.abs().max())])
    out.append(res)
print("RELOAD " + json.dumps(out))
"""


def _library(root: Path) -> Path:
    lib = root / "site"
    for rel, text in LIBRARY.items():
        (lib / rel).parent.mkdir(parents=True, exist_ok=True)
        (lib / rel).write_text(textwrap.dedent(text))
    return lib


def _run(args: list[str], cwd: Path, pythonpath: Path | None = None, timeout: int = 600) -> subprocess.CompletedProcess:
    import os

    env = dict(os.environ)
    if pythonpath is not None:
        env["PYTHONPATH"] = str(pythonpath) + (os.pathsep + env["PYTHONPATH"] if env.get("PYTHONPATH") else "")
    p = subprocess.run([sys.executable, *args], cwd=cwd, env=env, capture_output=True, text=True, timeout=timeout)
    assert p.returncode == 0, f"{args[:2]} exited {p.returncode}: {p.stderr[-3000:]}"
    return p


def _check(d: Path, build: str, pythonpath: Path | None = None, loads: tuple = (None,)) -> list[dict]:
    p = _run(["-c", CHECK, str(d), build, json.dumps(list(loads))], d, pythonpath)
    line = next(ln for ln in p.stdout.splitlines() if ln.startswith("RELOAD "))
    return json.loads(line[len("RELOAD "):])


def _assert_exact(got: dict) -> None:
    assert len(got["diffs"]) == 3
    for shape, diff, scale in got["diffs"]:
        assert diff <= TOL * max(1.0, scale), f"{got['class']} at {shape}: diff {diff:.3g} (scale {scale:.3g})"


def _channel_masks(conv: str, bn: str | None, n: int, gone: slice) -> dict:
    """Complete masks of a conv's output channels: its filters and bias, and the BatchNorm's
    γ and β after it (so the masked model is the slim model, as `slimc prune` writes them)."""
    rows, vec = torch.ones(n, 1, 1, 1), torch.ones(n)
    rows[gone] = 0
    vec[gone] = 0
    out = {f"{conv}.weight": rows, f"{conv}.bias": vec}
    if bn:
        out.update({f"{bn}.weight": vec, f"{bn}.bias": vec})
    return out


def _one_line_naming_base(got: dict, *names: str) -> None:
    assert got["class"] == "GraphModule" and len(got["warnings"]) == 1, got
    w = got["warnings"][0]
    assert "\n" not in w and "base=" in w and all(n in w for n in names), w


def test_library_class_built_in_code_reloads_as_itself_in_a_fresh_process(tmp_path):
    """No model.py at all: a class from an importable package, built by its builder with
    options, compiled through the Python API → slimc.load in a fresh process (the package on
    its path) returns that class, slim and exact, without a warning."""
    lib = _library(tmp_path)
    p = _run(["-c", COMPILE_IN_CODE, str(tmp_path)], tmp_path, lib)
    assert "structure.pt" in p.stdout, p.stdout
    lay = json.loads((tmp_path / "out" / "layout.json").read_text())
    assert lay["structure"] == "structure.pt" and lay["spec"] is None
    got, = _check(tmp_path, "tinylib.models:build", lib)
    assert (got["module"], got["class"]) == ("tinylib.models", "TinyNet"), got
    assert not got["warnings"], got["warnings"]
    _assert_exact(got)
    graph = torch.load(tmp_path / "out" / "slim.pt", weights_only=False)
    assert got["params"] == sum(t.numel() for t in graph.parameters())  # as slim as the graph


def test_model_file_that_builds_a_library_class_may_move(tmp_path):
    """`slimc compile model.py` where model.py builds the package's class: the folder reloads it
    from structure.pt, so moving model.py away afterwards changes nothing. Without the package
    on the path: the graph, and one line that says why and names base=."""
    lib = _library(tmp_path)
    (tmp_path / "model.py").write_text(textwrap.dedent('''
        import torch
        import tinylib.models
        model = tinylib.models.build()
        example_inputs = torch.randn(2, 3, 16, 16)
    '''))
    masks = {}
    for i, step in enumerate((2, 3, 4)):  # expansion channels of every block, complete
        masks.update(_channel_masks(f"blocks.{i}.conv", f"blocks.{i}.bn", 32, slice(None, None, step)))
    torch.save(masks, tmp_path / "masks.pth")
    _run(["-c", CLI, "compile", "model.py", "--masks", "masks.pth", "-o", "out", "--no-onnx"], tmp_path, lib)
    report = json.loads((tmp_path / "out" / "report.json").read_text())
    assert "structure.pt" in report["user_model"]["reload"], report["user_model"]
    (tmp_path / "model.py").rename(tmp_path / "moved.py")
    got, = _check(tmp_path, "tinylib.models:build", lib)
    assert (got["module"], got["class"]) == ("tinylib.models", "TinyNet") and not got["warnings"], got
    _assert_exact(got)

    # a process that cannot import tinylib: the graph (checked against the same reference, by
    # a script that builds it from a copy of the package under another name)
    shutil.copytree(lib / "tinylib", tmp_path / "elsewhere" / "otherlib")
    (tmp_path / "elsewhere" / "otherlib" / "__init__.py").write_text("from otherlib.models import create_model\n")
    got, = _check(tmp_path, "otherlib.models:build", tmp_path / "elsewhere")
    _one_line_naming_base(got, "tinylib")
    _assert_exact(got)


MODEL_PY = '''
import torch
from torch import nn


class Net(nn.Module):
    def __init__(self):
        super().__init__()
        self.conv1 = nn.Conv2d(3, 12, 3, padding=1)
        self.bn1 = nn.BatchNorm2d(12)
        self.conv2 = nn.Conv2d(12, 16, 3, padding=1)
        self.fc = nn.Linear(16, 4)

    def forward(self, x):
        x = torch.relu(self.bn1(self.conv1(x)))
        return self.fc(torch.relu(self.conv2(x)).mean((2, 3)))


torch.manual_seed(0)
model = Net().eval()
example_inputs = torch.randn(2, 3, 16, 16)
'''




def test_moved_model_file_warns_naming_base_and_base_rebuilds_the_class(tmp_path):
    (tmp_path / "model.py").write_text(MODEL_PY)
    masks = {**_channel_masks("conv1", "bn1", 12, slice(None, None, 3)), **_channel_masks("conv2", None, 16, slice(1, None, 2))}
    torch.save(masks, tmp_path / "masks.pth")
    _run(["-c", CLI, "compile", "model.py", "--masks", "masks.pth", "-o", "out", "--no-onnx"], tmp_path)
    lay = json.loads((tmp_path / "out" / "layout.json").read_text())
    assert "structure" not in lay and "model file" in lay["structure_why_not"], lay  # Net lives in model.py

    new = tmp_path / "elsewhere" / "net_model.py"
    new.parent.mkdir()
    shutil.move(str(tmp_path / "model.py"), new)
    plain, with_base = _check(tmp_path, str(new), loads=(None, str(new)))
    _one_line_naming_base(plain, str(tmp_path / "model.py"))
    _assert_exact(plain)  # the graph, exact too
    assert with_base["class"] == "Net" and not with_base["warnings"], with_base
    _assert_exact(with_base)
    assert with_base["params"] == plain["params"]


# --- structure.pt: what it refuses, in-process -------------------------------------------------

def test_structure_is_written_only_where_its_classes_import_by_name(tmp_path):
    from torch import nn

    assert structure.importable("torch.nn.modules.conv") and structure.importable("collections")
    assert not structure.importable("__main__") and not structure.importable("_slimc_user_model_123")
    assert structure.importable("slimc.zoo.resnet")  # an editable install is found by its meta path finder
    import importlib.util
    import sys

    (tmp_path / "m.py").write_text("X = 1\n")
    spec = importlib.util.spec_from_file_location("_slimc_user_m_1", tmp_path / "m.py")
    sys.modules["_slimc_user_m_1"] = importlib.util.module_from_spec(spec)  # loaded here, by path, only
    try:
        assert not structure.importable("_slimc_user_m_1")
    finally:
        del sys.modules["_slimc_user_m_1"]

    plain = nn.Sequential(nn.Conv2d(3, 4, 3), nn.ReLU())
    assert structure.save(plain, tmp_path / "a.pt") == ""
    back = structure.load(tmp_path / "a.pt")
    assert type(back) is nn.Sequential and back[0].weight.is_meta and back[0].weight.shape == (4, 3, 3, 3)

    Local = type("Local", (nn.Module,), {"__module__": "__main__"})  # a class a script defines
    why = structure.save(nn.Sequential(Local()), tmp_path / "b.pt")
    assert "Local" in why and "__main__" in why and not (tmp_path / "b.pt").exists()

    odd = nn.Linear(2, 2)
    odd.scale_fn = lambda t: t * 2  # a lambda does not pickle
    why = structure.save(odd, tmp_path / "c.pt")
    assert "does not pickle" in why and not (tmp_path / "c.pt").exists()


def test_skeleton_keeps_ties_and_non_persistent_buffers_on_meta_only_the_weights():
    from torch import nn

    class Tied(nn.Module):
        def __init__(self):
            super().__init__()
            self.emb = nn.Embedding(10, 4)
            self.out = nn.Linear(4, 10, bias=False)
            self.out.weight = self.emb.weight
            self.register_buffer("table", torch.arange(3.0), persistent=False)
            self.register_buffer("stats", torch.ones(4))

    m = Tied()
    sk = structure.skeleton(m)
    assert sk.out.weight is sk.emb.weight and sk.emb.weight.is_meta
    assert sk.stats.is_meta and not sk.table.is_meta and torch.equal(sk.table, m.table)
    assert not m.emb.weight.is_meta  # the model itself untouched


def test_in_process_load_of_a_class_from_an_importable_module(tmp_path):
    """The Python API, a class from an importable module (torch.nn's Sequential): slimc.load
    rebuilds it from structure.pt, not the graph, with no model file and no base=."""
    from torch import nn

    torch.manual_seed(0)
    m = nn.Sequential(nn.Conv2d(3, 8, 3, padding=1), nn.BatchNorm2d(8), nn.ReLU(), nn.Conv2d(8, 4, 1)).eval()
    x = torch.randn(2, 3, 8, 8)
    mask = torch.ones(8, 1, 1, 1)
    mask[::2] = 0
    res = slimc.compile(m, {"0.weight": mask}, x)
    res.save(tmp_path / "out", onnx=False)
    back = slimc.load(tmp_path / "out")
    assert type(back) is nn.Sequential and back[0].out_channels == 4
    y = torch.randn(3, 3, 12, 12)
    with torch.no_grad():
        assert torch.allclose(back(y), res.model(y), atol=1e-6)
