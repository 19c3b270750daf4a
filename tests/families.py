"""End to end, as a new user runs it: ``slimc prune`` → ``slimc compile`` → ``slimc.load`` in a
fresh process, for an architecture family written as a ``model.py``.

:func:`run_family` writes the model file, runs the two commands (subprocesses, the real CLI),
then a fresh Python process that rebuilds the original from the model file, applies the
user's masks *with its own code* (never ``slimc.verify``: the reference must not share code
with what it checks; ``slimc prune`` writes complete masks, so the masked model is the slim
model), loads the compile output with ``slimc.load`` and compares, at every given input shape:

* the user's class (``slimc.load``) and the graph (``slim.pt``) against the masked original
  (or a reference the caller makes from it: ``reference=``);
* ``slim.onnx`` in onnxruntime against the masked original (where the compile wrote it);
* greedy ``generate()`` (KV cache on) of the reloaded model against the masked original (an
  encoder–decoder model takes the prompt as its encoder's input).

The caller asserts on the returned :class:`FamilyRun` (``run.assert_exact()`` for the usual
claims) and on the compile's ``report.json``.
"""
from __future__ import annotations

import json
import subprocess
import sys
import textwrap
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

TOL = 1e-5
CLI = "import sys; from slimc.cli import main; sys.exit(main())"


@dataclass
class FamilyRun:
    out: Path
    report: dict[str, Any]  # the compile's report.json
    check: dict[str, Any]  # what the fresh process measured (see FRESH)
    prune_stdout: str = ""
    compile_stdout: str = ""
    compile_stderr: str = ""
    masked_params: int = 0  # params the user's masks zero (whole slices and single entries)

    def assert_exact(self, *, onnx: bool = True, generate: bool | None = None, graph: bool = True) -> None:
        """The usual claims: the user's class came back, the same class, exact at every shape
        (and so is the graph, the ONNX file, greedy generation where asked for)."""
        c = self.check
        assert c["class"] == c["ref_class"], f"slimc.load gave a {c['class']}, the original is a {c['ref_class']}"
        for kind in ("model", *(["graph"] if graph else []), *(["onnx"] if onnx else [])):
            rows = c.get(kind)
            assert rows, f"no {kind} comparison was made: {c.get('errors')}"
            for r in rows:
                assert r["diff"] <= TOL * max(1.0, r["scale"]), f"{kind} at {r['shape']}: diff {r['diff']:.3g} " \
                                                                  f"(scale {r['scale']:.3g})"
        if generate or (generate is None and c.get("generate") is not None):
            g = c.get("generate")
            assert g is not None, f"no generate comparison was made: {c.get('errors')}"
            assert g["equal"], f"greedy tokens differ: slim {g['slim']} vs masked {g['masked']}"
        assert not c.get("errors"), c["errors"]


FRESH = r'''
import inspect, json, sys, warnings
from pathlib import Path
import torch

d = Path(sys.argv[1]); opts = json.loads(sys.argv[2])
sys.path.insert(0, str(d))
import runpy
ns = runpy.run_path(str(d / "model.py"))
ref = ns["model"] if "model" in ns else ns["build_model"]()
ref.eval()

# the user's masks as written by `slimc prune`, applied here (not by slimc)
raw = torch.load(d / "masks.pth", weights_only=True)
flat = {}
for k, v in raw.items():
    if isinstance(v, dict):
        flat.update({f"{k}.{s}": t for s, t in v.items()})
    else:
        flat[k] = v
params = dict(ref.named_parameters(remove_duplicate=False))
with torch.no_grad():
    for k, m in flat.items():
        params[k].mul_((torch.as_tensor(m) != 0).to(params[k].dtype))
if opts.get("reference"):  # the model the slim model must equal, made by the caller's code from the masked one
    rns = {}
    exec(opts["reference"], rns)
    ref = rns["reference"](ref).eval()

def flat_out(y):
    if isinstance(y, torch.Tensor):
        return [y]
    if y is None or type(y).__name__.endswith("Cache"):
        return []
    if isinstance(y, dict):
        y = list(y.values())
    elif hasattr(y, "to_tuple"):
        y = list(y.to_tuple())
    if isinstance(y, (list, tuple)):
        return [t for v in y for t in flat_out(v)]
    return []

def run(m, x):
    with torch.no_grad():
        return flat_out(m(**x) if isinstance(x, dict) else m(*x))

def shape_of(x):
    vals = x.values() if isinstance(x, dict) else x
    return [list(t.shape) for t in vals if isinstance(t, torch.Tensor)]

def compare(a, b):
    if len(a) != len(b):
        raise AssertionError(f"{len(a)} outputs vs {len(b)} of the masked model")
    diff = scale = 0.0
    for s, r in zip(a, b):
        if tuple(s.shape) != tuple(r.shape):
            raise AssertionError(f"output shape {tuple(s.shape)} vs {tuple(r.shape)} of the masked model")
        if r.numel():
            diff = max(diff, float((s.double() - r.double()).abs().max()))
            scale = max(scale, float(r.double().abs().max()))
    return diff, scale

shapes, prompt = torch.load(d / "shapes.pt", weights_only=True)
res = {"ref_class": type(ref).__name__, "errors": [], "model": [], "graph": [], "onnx": []}
import slimc
with warnings.catch_warnings():
    warnings.simplefilter("ignore")
    slim = slimc.load(d / "out")
    graph = torch.load(d / "out" / "slim.pt", weights_only=False)
res["class"] = type(slim).__name__
slim.eval(); graph.eval()
want = [run(ref, x) for x in shapes]
for kind, m in (("model", slim), ("graph", graph)):
    for x, w in zip(shapes, want):
        try:
            diff, scale = compare(run(m, x), w)
            res[kind].append({"shape": shape_of(x), "diff": diff, "scale": scale})
        except Exception as e:
            res["errors"].append(f"{kind} at {shape_of(x)}: {type(e).__name__}: {str(e)[:300]}")

onnx_path = d / "out" / "slim.onnx"
if opts["onnx"] and onnx_path.exists():
    import onnxruntime as ort
    sess = ort.InferenceSession(str(onnx_path), providers=["CPUExecutionProvider"])
    names = [i.name for i in sess.get_inputs()]
    order = list(inspect.signature(ref.forward).parameters)
    for x, w in zip(shapes, want):
        if isinstance(x, dict):
            tensors = [x[k] for k in order if isinstance(x.get(k), torch.Tensor)]
        else:
            tensors = [t for t in x if isinstance(t, torch.Tensor)]
        try:
            if len(tensors) != len(names):
                raise AssertionError(f"slim.onnx takes {len(names)} inputs {names}, the example gives {len(tensors)}")
            got = sess.run(None, {n: t.numpy() for n, t in zip(names, tensors)})
            diff, scale = compare([torch.from_numpy(g) for g in got], w)
            res["onnx"].append({"shape": shape_of(x), "diff": diff, "scale": scale})
        except Exception as e:
            res["errors"].append(f"onnx at {shape_of(x)}: {type(e).__name__}: {str(e)[:300]}")

if opts["generate"]:
    kw = dict(max_new_tokens=opts["new_tokens"], do_sample=False, **opts.get("generate_kw", {}))
    if getattr(ref.generation_config, "pad_token_id", None) is None:
        kw["pad_token_id"] = 0
    gc = ref.generation_config
    if getattr(ref.config, "is_encoder_decoder", False) and getattr(gc, "decoder_start_token_id", None) is None \
            and getattr(gc, "bos_token_id", None) is None:  # T5's default config names none: its pad, as T5 has it
        kw["decoder_start_token_id"] = kw.get("pad_token_id", gc.pad_token_id)
    try:
        with torch.no_grad():
            a, b = slim.generate(prompt, **kw), ref.generate(prompt, **kw)
        res["generate"] = {"equal": bool(torch.equal(a, b)), "slim": a.tolist(), "masked": b.tolist()}
    except Exception as e:
        res["errors"].append(f"generate: {type(e).__name__}: {str(e)[:300]}")
print("FAMILY-RESULT " + json.dumps(res))
'''


def _cli(args: list[str], cwd: Path, timeout: int) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-c", CLI, *args], cwd=cwd, capture_output=True, text=True,
                          timeout=timeout)


def _ok(proc: subprocess.CompletedProcess, what: str) -> None:
    assert proc.returncode == 0, f"{what} exited {proc.returncode}: {proc.stderr[-3000:]}"
    assert "Traceback" not in proc.stderr, f"{what} printed a traceback: {proc.stderr[-3000:]}"
    assert "[E:" not in proc.stderr + proc.stdout, f"{what} printed an error line on success: {proc.stderr[-3000:]}"


def run_family(tmp_path: Path, source: str, shapes: list[Any], *, prompt: torch.Tensor | None = None,
               prune: tuple[str, ...] = ("--criterion", "l1", "--ratio", "0.3", "--round-to", "1"),
               compile_args: tuple[str, ...] = (), onnx: bool = True, new_tokens: int = 6,
               generate_kw: dict | None = None, timeout: int = 900, reference: str | None = None,
               masks: dict | None = None) -> FamilyRun:
    """``source``: a model.py text defining ``model`` (or ``build_model()``) and ``example_inputs``,
    deterministic (seeded), so the fresh process rebuilds the same weights. ``shapes``: inputs
    to compare at (tuples or dicts of forward() keyword arguments; give three, one with
    another batch). ``prompt``: token ids for greedy ``generate()`` (None: not compared);
    ``generate_kw``: more arguments of both ``generate()`` calls (e.g. ``no_repeat_ngram_size=1``
    where random weights would repeat one token: each step then follows the logits' order).
    ``reference``: Python source defining ``reference(masked)`` → the model the slim model must
    equal, made from the masked original by the caller's own code (whole experts removed: the
    masked original whose routers never pick them); default the masked original itself.
    ``masks``: the user's masks (flat ``{param: 0/1 tensor}``) instead of ``slimc prune``'s.
    ``prune`` keeps the exact ratio (``--round-to 1``): the tiny configs' widths are what the
    tests reason about, and the default rounding to 16 would keep most of them whole."""
    d = Path(tmp_path)
    d.mkdir(parents=True, exist_ok=True)
    (d / "model.py").write_text(textwrap.dedent(source))
    torch.save((list(shapes), prompt), d / "shapes.pt")
    if masks is None:
        p = _cli(["prune", "model.py", *prune, "-o", "masks.pth"], d, timeout)
        _ok(p, "slimc prune")
    else:
        torch.save(masks, d / "masks.pth")
        p = subprocess.CompletedProcess([], 0, "", "")
    raw = torch.load(d / "masks.pth", weights_only=True)
    masked = sum(int((torch.as_tensor(t) == 0).sum()) for v in raw.values()
                 for t in (v.values() if isinstance(v, dict) else [v]))
    c = _cli(["compile", "model.py", "--masks", "masks.pth", "-o", "out", *compile_args,
              *([] if onnx else ["--no-onnx"])], d, timeout)
    _ok(c, "slimc compile")
    report = json.loads((d / "out" / "report.json").read_text())
    opts = {"onnx": onnx, "generate": prompt is not None, "new_tokens": new_tokens, "generate_kw": generate_kw or {},
            "reference": reference}
    f = subprocess.run([sys.executable, "-c", FRESH, str(d), json.dumps(opts)], capture_output=True, text=True,
                       timeout=timeout)
    line = next((ln for ln in f.stdout.splitlines() if ln.startswith("FAMILY-RESULT ")), None)
    assert f.returncode == 0 and line, f"the fresh process failed: {f.stderr[-3000:]}"
    return FamilyRun(d / "out", report, json.loads(line[len("FAMILY-RESULT "):]), p.stdout, c.stdout, c.stderr,
                     masked)


__all__ = ["FamilyRun", "run_family", "TOL"]
