"""Property tests: random small architectures × random structured masks, checked against
final masks the generator derives itself (tests/randarch, plain torch, no slimc code).

A draw (one seed) is a CNN — plain, grouped and depthwise convs, BatchNorm, residual adds,
concats, squeeze-excite gates, pooling, a linear head — or a pre-norm transformer on
features, tokens or image patches — multi-head, grouped-query and multi-query attention
(fused SDPA, ``repeat_kv``, explicit matmul + softmax; q, k, v from three Linears, one
split in three, or one viewed as (3, heads, head_dim)), LayerNorm / RMSNorm (written out
and ``nn.RMSNorm``), residual streams with or without layer scale, plain and gated FFNs
(SwiGLU, GeGLU) — with widths 4–32, 1–4 blocks, 8×8 images, sequences ≤ 12. Its masks
zero whole channels, heads and head-dim channels, in whole coupled groups or in part of
one. For every draw:

* ``slimc.compile(model, masks, example)`` (its own check on) succeeds;
* its coupled channel groups, on the param slices the generator joined by construction
  (everything but the attention heads' q/k/v rows and o columns), are the generator's;
* its final masks equal the generator's, parameter by parameter (DESIGN.md's semantics,
  derived by tests/randarch/channels.py and heads.py);
* every slim parameter is the original times the generator's mask, cut to the kept
  indices those masks imply;
* the slim graph and the user's class (where slimc builds it) compute the model with the
  generator's masks applied (multiplied in by this test) within 1e-5 × output scale, at
  the example's shape and at a second one (another batch, and another image size or
  sequence length).

The default suite runs ``FAST_SEEDS`` (``test_draw``); ``-m slow`` runs seeds 0–1999 in
chunks of 50 (``test_2000_draws``), each failure naming its seed. Replay seeds (any, and
only those)::

    SLIMC_PROP_SEEDS=123,456 pytest tests/test_properties.py -k test_draw

(``-k seed_7`` picks one seed of the fast sample.)
"""
from __future__ import annotations

import os
import re
import warnings

import pytest
import torch

import slimc
from helpers import assert_contract, n_params, outputs_diff
from randarch import apply_masks, draw

# 0–31, and draws that once found a bug: 33 (v masks took q and k along in a shared view),
# 75 (exact mode dropped a multi-query head whose q rows alone were masked), 189 (the user's
# class changed a scale it read from a size attribute); 35 draws multi-query explicit attention
FAST_SEEDS = (*range(32), 33, 35, 75, 189)
SLOW_SEEDS, CHUNK = range(2000), 50
REPLAY = tuple(int(s) for s in os.environ.get("SLIMC_PROP_SEEDS", "").replace(",", " ").split())
TOL = 1e-5


def _kept(mask: torch.Tensor, dim: int) -> torch.Tensor:
    """Indices along ``dim`` where the mask keeps anything (a removed slice is all zero)."""
    other = [d for d in range(mask.dim()) if d != dim]
    return torch.nonzero(mask.any(dim=other) if other else mask).flatten()


def _removed(d, fqn: str) -> dict[int, set[int]]:
    """Per dim, the indices of ``fqn`` the generator's semantics remove."""
    out: dict[int, set[int]] = {}
    for name, dim, i in d.removed:
        if name == fqn:
            out.setdefault(dim, set()).add(i)
    return out


def _mask_diff(d, final: dict[str, torch.Tensor]) -> list[str]:
    lines = []
    for fqn, want in d.oracle.items():
        got = final.get(fqn)
        got = torch.ones_like(want) if got is None else (got != 0).expand(want.shape)
        if torch.equal(got, want):
            continue
        for dim in range(want.dim()):
            a, b = set(_kept(want, dim).tolist()), set(_kept(got, dim).tolist())
            if a != b:
                lines.append(f"{fqn} dim {dim}: removed by the generator only {sorted(b - a)}, by slimc only {sorted(a - b)}")
        if not lines or not lines[-1].startswith(fqn):
            lines.append(f"{fqn}: {int((got != want).sum())} entries differ (not whole slices)")
    extra = sorted(set(final) - set(d.oracle))
    return lines + [f"final mask for a parameter the model does not have: {extra}"] * bool(extra)


def _group_diff(d, plan) -> list[str]:
    """The compiler's coupled groups, restricted to the param slices the generator's groups
    hold, must be the generator's groups: the same partition, no slice missing."""
    dg, label = plan.dg, plan.group
    theirs: dict[int, set] = {}
    for g in d.groups:
        for fqn, dim, i in g:
            key = ("p", fqn, dim)
            if key not in dg.offset:
                return [f"the compiler's graph has no slot for {fqn} dim {dim}"]
            theirs.setdefault(int(label[dg.ids(key)[i]]), set()).add((fqn, dim, i))
    ours = set(d.groups)
    split = [g for g in ours if g not in {frozenset(t) for t in theirs.values()}]
    return [f"channel group {sorted(g)[:4]}{' …' * (len(g) > 4)} ({len(g)} slices) is not one of the compiler's groups"
            for g in sorted(split, key=len)[:3]]


def _slim_params(d, slim: torch.nn.Module, values: bool) -> list[str]:
    """Each slim param: the original's shape less the removed slices; ``values``: the
    original times the generator's mask, cut to the kept indices."""
    params = dict(d.model.named_parameters())
    lines = []
    for fqn, p in slim.named_parameters():
        if fqn not in params:
            lines.append(f"slim parameter '{fqn}' is not one of the model's")
            continue
        want = params[fqn].detach() * d.oracle[fqn]
        for dim, gone in _removed(d, fqn).items():
            keep = torch.tensor(sorted(set(range(want.shape[dim])) - gone), dtype=torch.long)
            want = want.index_select(dim, keep)
        if tuple(p.shape) != tuple(want.shape):
            lines.append(f"slim '{fqn}' has shape {tuple(p.shape)}, the generator's masks imply {tuple(want.shape)}")
        elif values and not torch.equal(p.detach(), want):
            lines.append(f"slim '{fqn}' is not the masked original cut to the kept indices")
    return lines


def _outputs(d, res) -> list[str]:
    ref = apply_masks(d.model, d.oracle)
    lines = []
    for x in (d.example, d.second):
        with torch.no_grad():
            want = ref(*x)
            scale = float(want.abs().max())
            for what, m in (("graph", res.module), ("user's class", res.model)):
                if m is None:
                    continue
                got = m(*x)
                diff = float((got - want).abs().max()) if got.shape == want.shape else float("inf")
                if not diff <= TOL * max(1.0, scale):
                    lines.append(f"{what} at input {tuple(x[0].shape)}: differs from the masked model by {diff:.3g} "
                                 f"(output scale {scale:.3g})")
    return lines


def check_draw(seed: int, tamper=None) -> str | None:
    """Every property of one draw; the failure text, or None. ``tamper(res)`` plants a fault
    in the result (test_the_checks_catch_planted_faults)."""
    try:
        d = draw(seed)
    except Exception as e:  # noqa: BLE001
        return f"seed {seed}: the generator failed: {type(e).__name__}: {e}"
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            res = slimc.compile(d.model, d.masks, d.example)
        if tamper is not None:
            tamper(res)
        lines = _group_diff(d, res.plan) + _mask_diff(d, res.masks)
        if not lines:
            lines = _slim_params(d, res.module, True) + (_slim_params(d, res.model, False) if res.model else [])
        if not lines:
            lines = _outputs(d, res)
    except Exception as e:  # noqa: BLE001 — a compile that raises is a failed draw, named by its seed
        lines = [f"{type(e).__name__}: {e}"]
    return f"{d.desc}\n  " + "\n  ".join(lines) if lines else None


@pytest.mark.parametrize("seed", REPLAY or FAST_SEEDS, ids=lambda s: f"seed_{s}")
def test_draw(seed):
    err = check_draw(seed)
    assert err is None, f"{err}\nreplay: SLIMC_PROP_SEEDS={seed} pytest tests/test_properties.py -k test_draw"


@pytest.mark.slow
@pytest.mark.parametrize("first", range(SLOW_SEEDS.start, SLOW_SEEDS.stop, CHUNK),
                         ids=lambda s: f"seeds_{s}_{s + CHUNK - 1}")
def test_2000_draws(first):
    failed = {s: err for s in range(first, first + CHUNK) if (err := check_draw(s)) is not None}
    assert not failed, "\n".join(failed.values()) + (
        f"\nreplay: SLIMC_PROP_SEEDS={','.join(map(str, failed))} pytest tests/test_properties.py -k test_draw")


# --------------------------------------------------------------------------- other modes
@pytest.mark.parametrize("seed", FAST_SEEDS[::4], ids=lambda s: f"seed_{s}")
def test_exact_mode_equals_the_user_masked_model(seed):
    """mode="exact": nothing beyond what is provably zero or unused goes, so the slim model
    equals the model with the USER's masks (applied by this test), not only the final ones."""
    d = draw(seed)
    res = assert_contract(d.model, d.masks, d.example, mode="exact")
    shared = any(getattr(m, "layout", "") == "shared" for m in d.model.modules())
    for x in (d.example, d.second):
        diff, scale = outputs_diff(res.module, apply_masks(d.model, d.user.full), x)
        if diff > TOL * max(1.0, scale) and shared:
            pytest.xfail("known: exact mode removes channels of q and k viewed with v as (3, heads, head_dim) "
                         f"that the scores still read ({d.desc}: {diff:.3g})")
        assert diff <= TOL * max(1.0, scale), f"{d.desc}: exact mode differs from the user-masked model by {diff:.3g}"


@pytest.mark.parametrize("seed", FAST_SEEDS[1::4], ids=lambda s: f"seed_{s}")
def test_recompiling_with_final_masks_is_monotone(seed):
    """Compiling again with the final masks never brings anything back: the second final
    masks ⊇ the first, the model is no larger, and the contract still holds. (Not always a
    fixed point: a row whose remaining columns the user had masked becomes a whole masked
    filter the second time round; DESIGN.md does not promise idempotence.)"""
    d = draw(seed)
    r1 = slimc.compile(d.model, d.masks, d.example, verify=False)
    r2 = assert_contract(d.model, r1.masks, d.example)
    assert n_params(r2.module) <= n_params(r1.module)
    for k, v in r1.masks.items():
        assert not bool(((v == 0) & (r2.masks[k] != 0)).any()), k


def test_generator_draws_what_it_says():
    """The sample covers both families and every construct the docstring names, and the
    generator's semantics remove something beyond the user's zeros in most draws."""
    seen, beyond = set(), 0
    for seed in FAST_SEEDS:
        d = draw(seed)
        seen |= {type(m).__name__ for m in d.model.modules()}
        attns = [m for m in d.model.modules() if type(m).__name__ == "Attention"]
        seen |= {f"{m.style}/{'mha' if m.kv == m.h else 'mqa' if m.kv == 1 else 'gqa'}" for m in attns if m.h > 1}
        seen |= {f"layout/{m.layout}" for m in attns}
        seen |= {"layer scale" for m in d.model.modules() if getattr(m, "ls1", None) is not None}
        seen |= {"tokens" for m in d.model.modules() if isinstance(m, torch.nn.Embedding)}
        seen |= {f"ffn/{m.kind}" for m in d.model.modules() if type(m).__name__ == "FFN"}
        seen |= {"grouped" for m in d.model.modules() if isinstance(m, torch.nn.Conv2d) and 1 < m.groups < m.in_channels}
        seen |= {"depthwise" for m in d.model.modules() if isinstance(m, torch.nn.Conv2d) and m.groups == m.in_channels > 1}
        beyond += any(bool((d.user.full.get(k, torch.ones_like(v)) & ~v).any()) for k, v in d.oracle.items())
    want = {"ConvNet", "TransformerNet", "Residual", "Inverted", "Concat", "SqueezeExcite", "Pool", "BatchNorm2d",
            "LayerNorm", "RMSNorm", "grouped", "depthwise", "ffn/mlp", "ffn/swiglu", "ffn/geglu", "sdpa/gqa",
            "sdpa/mqa", "repeat_kv/mqa", "explicit/mqa", "sdpa/mha", "explicit/mha", "repeat_kv/mha",
            "layout/separate", "layout/split", "layout/shared", "layer scale", "tokens"}
    assert want <= seen, f"the fast sample never draws {sorted(want - seen)}"
    assert beyond >= len(FAST_SEEDS) * 3 // 4, f"only {beyond} of {len(FAST_SEEDS)} draws remove anything"
    a, b = draw(3), draw(3)  # a seed replays: the same model, inputs and masks
    assert a.masks.keys() == b.masks.keys() and all(torch.equal(a.masks[k], b.masks[k]) for k in a.masks)
    assert all(torch.equal(p, q) for p, q in zip(a.model.state_dict().values(), b.model.state_dict().values()))
    assert torch.equal(a.second[0], b.second[0])


# --------------------------------------------------------------------------- the checks themselves
@torch.no_grad()
def _plant(fault: str, res) -> None:
    """One fault in a correct result: a slice more in the final masks, two groups merged,
    a slim weight changed, a BatchNorm statistic of the slim graph or a weight of the user's
    class changed (both seen by the outputs only)."""
    d = draw(PLANT_SEED)
    if fault == "final mask":
        fqn = next(k for k, v in d.oracle.items() if v.dim() > 1 and v.any())
        m = d.oracle[fqn].clone()
        m[int(_kept(m, 0)[0])] = False
        res.masks = {**{k: res.masks[k] for k in res.masks}, fqn: m}
    elif fault == "groups":
        a, b = (next(iter(g)) for g in sorted(d.groups, key=lambda g: sorted(g))[:2])
        dg, res.plan.group = res.plan.dg, res.plan.group.copy()
        res.plan.group[dg.ids(("p", a[0], a[1]))[a[2]]] = res.plan.group[dg.ids(("p", b[0], b[1]))[b[2]]]
    elif fault == "slim weight":
        next(p for p in res.module.parameters() if p.dim() > 1)[0].mul_(1.5)
    elif fault == "graph buffer":
        next(b for n, b in res.module.named_buffers() if n.endswith("running_mean")).add_(1.0)
    else:
        next(p for p in res.model.parameters() if p.dim() > 1)[0].mul_(1.5)


PLANT_SEED = 0  # a ConvNet: bottleneck residual blocks, a squeeze-excite gate, BatchNorm
PLANTED = {"final mask": r"by slimc only \[\d", "groups": "is not one of the compiler's groups",
           "slim weight": "is not the masked original", "graph buffer": "graph at input",
           "user's class": "user's class at input"}


@pytest.mark.parametrize("fault", PLANTED)
def test_the_checks_catch_planted_faults(fault):
    """Each property check fails on a result with one planted fault, and says which."""
    assert check_draw(PLANT_SEED) is None
    err = check_draw(PLANT_SEED, lambda res: _plant(fault, res))
    assert err is not None and re.search(PLANTED[fault], err), err
