"""Every zoo model against hand-derived widths (tests/zoo_cuts.py): for a fixed set of user
masks, the slices the compiler must remove are written out by hand from the model's source
and DESIGN.md's semantics, then

* every slim parameter (graph and user's class) has exactly the original's shape less the
  hand-derived removals — nothing more goes, nothing less; the user's class is built
  except where the case says why not (an attention that reads its width from the stream's);
* the final masks equal the complete masks (the user's zeros and the removed slices),
  parameter by parameter; the groups the user masked but the compiler keeps are the ones
  the case names, each for the reason it names (held by a writer, a rectangle, the output);
* the slim graph and the user's class compute the model with those complete masks applied
  by this test (parameters multiplied by 0/1, no slimc code), at the example's shape and at
  a second one (batch 3, and another image size or sequence length where the model takes one).

The full-size CNNs run under ``-m slow``.
"""
from __future__ import annotations

import copy
import functools
import warnings

import pytest
import torch
from torch import nn

import slimc
from helpers import FULL_SIZE, zoo_params
from slimc import zoo
from zoo_cuts import CUTS, FFN_ONLY, Case

TOL = 1e-5
# a second input: batch 3 and, where the model accepts it, another size (VGG's classifier and
# ViT's pos_embed fix 32×32; BERT and GPT hold 32 positions)
SECOND = {"vgg16": 32, "vgg11_small": 32, "vit_tiny": 32, "bert_tiny": 11, "gpt_tiny": 11, "llama_tiny": 21,
          "unet_small": 48}


def test_every_zoo_model_has_hand_derived_cuts():
    assert set(CUTS) == set(zoo.names())


@functools.lru_cache(maxsize=None)
def _model(name: str) -> nn.Module:
    return zoo.build(name)


def user_masks(model: nn.Module, case: Case) -> dict[str, torch.Tensor]:
    """The user's masks, flat 0/1 of each parameter's shape."""
    params = dict(model.named_parameters())
    out: dict[str, torch.Tensor] = {}
    for fqn, dim, idx in case.masked:
        m = out.setdefault(fqn, torch.ones_like(params[fqn]))
        m.index_fill_(dim, torch.tensor(idx), 0.0)
    return out


def complete_masks(model: nn.Module, case: Case) -> dict[str, torch.Tensor]:
    """Full-shape bool masks of every parameter: the user's zeros and every removed slice."""
    out = {k: torch.ones(p.shape, dtype=torch.bool) for k, p in model.named_parameters()}
    for fqn, dim, idx in case.masked + case.removed:
        out[fqn].index_fill_(dim, torch.tensor(idx), False)
    return out


def expected_shapes(model: nn.Module, case: Case) -> dict[str, tuple[int, ...]]:
    gone: dict[tuple[str, int], set[int]] = {}
    for fqn, dim, idx in case.removed:
        gone.setdefault((fqn, dim), set()).update(idx)
    out = {}
    for fqn, p in model.named_parameters():
        out[fqn] = tuple(n - len(gone.get((fqn, d), ())) for d, n in enumerate(p.shape))
    return out


@torch.no_grad()
def masked(model: nn.Module, masks: dict[str, torch.Tensor]) -> nn.Module:
    out = copy.deepcopy(model)
    for fqn, p in out.named_parameters():
        p.mul_(masks[fqn].to(p.dtype))
    return out


def second_input(name: str, m: nn.Module, x: torch.Tensor) -> torch.Tensor:
    g = torch.Generator().manual_seed(11)
    size = SECOND.get(name, 40)
    if x.dtype == torch.long:  # token ids: the vocabulary is the first embedding table's
        vocab = next(t for t in m.modules() if isinstance(t, nn.Embedding)).num_embeddings
        return torch.randint(0, vocab, (3, size), generator=g)
    return torch.randn(3, x.shape[1], size, size, generator=g)


def check(name: str, case: Case | None = None, tamper=None) -> list[str]:
    """Every mismatch between the compiled model and the hand-derived cuts (empty: none);
    ``case`` and ``tamper(res)`` plant faults (test_the_check_catches_planted_faults)."""
    m = _model(name)
    case = case or CUTS[name](m)
    (x,) = zoo.example_inputs(name, batch=2)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        res = slimc.compile(m, user_masks(m, case), (x,))
    if tamper is not None:
        tamper(res)
    want_shapes, want_masks = expected_shapes(m, case), complete_masks(m, case)
    lines = []
    why = (res.report.get("user_model") or {}).get("reason") or ""
    if (res.model is None) != (case.no_user_class is not None) or (res.model is None and case.no_user_class[1] not in why):
        lines.append(f"user's class built: {res.model is not None} ({why}); by hand: {case.no_user_class or 'built'}")
    for what, slim in (("graph", res.module), ("user's class", res.model)):
        if slim is None:
            continue
        got = {k: tuple(p.shape) for k, p in slim.named_parameters()}
        for fqn in sorted(set(got) | set(want_shapes)):
            if got.get(fqn) != want_shapes.get(fqn):
                lines.append(f"{what}: {fqn} is {got.get(fqn)}, by hand {want_shapes.get(fqn)}")
    for fqn, want in want_masks.items():
        final = res.masks.get(fqn)
        final = torch.ones_like(want) if final is None else (final != 0).expand(want.shape)
        if not torch.equal(final, want):
            lines.append(f"final mask of {fqn} differs from the hand-derived one in {int((final != want).sum())} entries")
    # what the user masked and the compiler keeps: as many groups as the case says, each for its reason
    reasons = [k["reason"] for k in res.report["kept"] for _ in range(k["groups"])]
    if len(reasons) != len(case.kept) or not all(any(w in r for r in reasons) for _, w in case.kept):
        lines.append(f"kept groups {reasons}, by hand {case.kept}")
    ref = masked(m, want_masks)
    with torch.no_grad():
        for inp in (x, second_input(name, m, x)):
            y = ref(inp)
            scale = max(1.0, float(y.abs().max()))
            for what, slim in (("graph", res.module), ("user's class", res.model)):
                if slim is None:
                    continue
                out = slim(inp)
                diff = float((out - y).abs().max()) if out.shape == y.shape else float("inf")
                if not diff <= TOL * scale:
                    lines.append(f"{what} at {tuple(inp.shape)} differs from the hand-masked model by {diff:.3g}")
    return lines


@pytest.mark.parametrize("name", zoo_params(zoo.names(), slow_for=FULL_SIZE))
def test_hand_derived_widths(name):
    lines = check(name)
    assert not lines, f"{name}:\n  " + "\n  ".join(lines)


@pytest.mark.parametrize("name", FFN_ONLY)
def test_ffn_cut_in_the_users_class(name):
    """Where cut heads or hidden channels leave no user's class (ViT, nanoGPT: their
    attention reads its width from the stream), the FFN cut alone: the user's class is
    built and checked like the graph."""
    lines = check(name, FFN_ONLY[name](_model(name)))
    assert not lines, f"{name}:\n  " + "\n  ".join(lines)


@torch.no_grad()
def _zero_row(res, fqn: str, row: int) -> None:
    dict(res.module.named_parameters())[fqn][row].zero_()


def _one_more_final_zero(res, fqn: str, row: int, shape) -> None:
    masks = {k: res.masks[k] for k in res.masks}
    masks[fqn] = masks[fqn].expand(shape).clone()
    masks[fqn][row] = False
    res.masks = masks


@pytest.mark.parametrize("fault", ["one more removed by hand", "one fewer removed by hand", "final mask",
                                   "slim weight"])
def test_the_check_catches_planted_faults(fault):
    """A case that removes one slice more or less than the compiler, a final mask with one
    more zero, and a slim model with one filter zeroed each fail the check, with the line
    that says which."""
    m = _model("resnet_tiny")
    case = CUTS["resnet_tiny"](m)
    tamper, want = None, "by hand"
    if fault == "one more removed by hand":
        case = Case(case.masked, case.removed + [("layer2.0.conv1.weight", 0, (0,))])
    elif fault == "one fewer removed by hand":
        case = Case(case.masked, [c for c in case.removed if c[0] != "fc.weight"])
    elif fault == "final mask":
        shape = m.layer3[0].conv2.weight.shape
        tamper = lambda res: _one_more_final_zero(res, "layer3.0.conv2.weight", 0, shape)  # noqa: E731
        want = "final mask of layer3.0.conv2.weight"
    else:
        tamper, want = lambda res: _zero_row(res, "layer3.0.conv1.weight", 0), "graph at (2, 3, 16, 16) differs"
    lines = check("resnet_tiny", case, tamper)
    assert any(want in line for line in lines), lines
