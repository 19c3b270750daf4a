"""Shared test helpers: the DESIGN.md contract, checked independently of slimc's own
``verify`` step, and mask generators.

``assert_contract`` compiles with ``verify=False`` and then re-derives every claim of
the contract from first principles:

(a) slim(x) == original-with-FINAL-masks(x) on fresh random inputs at the example's shape and
    at a second shape the masked original accepts (another batch and every other size it lets
    vary: image sizes, lengths; see ``contract_refs.second_shape``)
    (max abs diff <= 1e-5 * max(1, output scale), fp32);
(b) final masks ⊇ user masks (nothing the user zeroed is un-zeroed);
(c) the slim model holds exactly the parameters the plan's kept indices imply
    (per parameter shape and in total), and each slim parameter *is* the masked
    original sliced at the kept indices;
(d) the original model is unchanged and still runs;
(e) the slim model comes back in the original's train/eval mode;
(f) where the final masks zero nothing the user's masks leave (complete masks), slim(x) ==
    the original masked with the USER's masks, applied by the test, at both shapes; a test
    that passes complete masks says so (``complete=True``): a plan that removes more than
    asked, even consistently, then fails;
plus: every removed slice is zero in the final masks, and no gather/index_select
is left in the slim graph (removal is physical).
"""
from __future__ import annotations

import copy
import math
from typing import Any, Mapping

import numpy as np
import torch
import torch.nn.functional as F
import torch.nn.utils.prune as torch_prune
from torch import nn

import contract_refs
import slimc

TOL = 1e-5
FULL_SIZE = ("vgg16", "resnet18", "resnet50", "mobilenetv2")  # the zoo's full-size CNNs: `-m slow`
CONV_TYPES = (nn.Conv1d, nn.Conv2d, nn.Conv3d)
CONVT_TYPES = (nn.ConvTranspose1d, nn.ConvTranspose2d, nn.ConvTranspose3d)


# --------------------------------------------------------------------------- basics
def zoo_params(names, slow_for=FULL_SIZE) -> list:
    """Zoo names as pytest params, the full-size models marked slow (``make test`` skips them)."""
    import pytest

    return [pytest.param(n, marks=pytest.mark.slow) if n in slow_for else n for n in names]


def n_params(m: nn.Module) -> int:
    return sum(p.numel() for p in m.parameters())


def as_tuple(x: Any) -> tuple:
    return x if isinstance(x, tuple) else (x,)


def random_inputs_like(inputs: tuple, seed: int) -> tuple:
    """Fresh inputs shaped like ``inputs`` (written apart from slimc.inputs on purpose): floats
    redrawn from a normal distribution, integer token ids redrawn in ``[0, max]``; bool and
    0/1 integer tensors (attention masks) and non-tensors are kept."""
    g = torch.Generator().manual_seed(10_000 + seed)
    out = []
    for t in inputs:
        if isinstance(t, torch.Tensor) and t.is_floating_point():
            out.append(torch.randn(t.shape, generator=g, dtype=t.dtype))
        elif (isinstance(t, torch.Tensor) and t.dtype in (torch.int32, torch.int64) and t.numel()
              and int(t.min()) >= 0 and int(t.max()) > 1):
            out.append(torch.randint(0, int(t.max()) + 1, t.shape, generator=g, dtype=t.dtype))
        else:
            out.append(t)
    return tuple(out)


def flat_outputs(y: Any) -> list[torch.Tensor]:
    if isinstance(y, torch.Tensor):
        return [y]
    if isinstance(y, Mapping):
        y = list(y.values())
    if isinstance(y, (list, tuple)):
        return [t for v in y for t in flat_outputs(v)]
    if y is None or type(y).__name__.endswith("Cache"):  # HF KV caches: the model's state, not an output to compare
        return []
    raise TypeError(f"unexpected model output {type(y).__name__}")


def run_eval(m: nn.Module, x: tuple) -> list[torch.Tensor]:
    """Outputs of ``m`` in eval mode (dropout off, running stats), mode restored after."""
    was = m.training
    m.eval()
    try:
        with torch.no_grad():
            return flat_outputs(m(*x))
    finally:
        m.train(was)


def max_diff(a: list[torch.Tensor], b: list[torch.Tensor]) -> tuple[float, float]:
    assert len(a) == len(b), f"{len(a)} outputs vs {len(b)}"
    diff, scale = 0.0, 0.0
    for x, y in zip(a, b):
        assert x.shape == y.shape, f"output shape {tuple(x.shape)} vs reference {tuple(y.shape)}"
        if x.numel():
            diff = max(diff, float((x.double() - y.double()).abs().max()))
            scale = max(scale, float(y.double().abs().max()))
    return diff, scale


def outputs_diff(m1: nn.Module, m2: nn.Module, inputs: tuple, n: int = 3) -> tuple[float, float]:
    """(max abs diff, max |m2 output|) over ``n`` random inputs shaped like ``inputs``."""
    diff, scale = 0.0, 0.0
    for s in range(n):
        x = random_inputs_like(inputs, s)
        d, sc = max_diff(run_eval(m1, x), run_eval(m2, x))
        diff, scale = max(diff, d), max(scale, sc)
    return diff, scale


# --------------------------------------------------------------------------- masks
def flat_user_masks(raw: Any) -> dict[str, torch.Tensor]:
    """The three accepted mask formats → flat ``{param_fqn: bool (True = kept)}``.

    Written independently of slimc.masks on purpose: the test must not trust the code
    under test to tell it what the user asked for. Compact masks (``(out, 1, 1, 1)``) stay
    compact: they broadcast wherever they are used."""
    if raw is None:
        return {}
    if isinstance(raw, slimc.MaskSet):
        raw = raw.masks
    flat: dict[str, Any] = {}
    for k, v in raw.items():
        if isinstance(v, Mapping):
            for sub, t in v.items():
                flat[f"{k}.{sub}"] = t
        else:
            flat[k] = v
    if any(k.endswith("_mask") for k in flat):
        flat = {k[: -len("_mask")]: v for k, v in flat.items() if k.endswith("_mask")}
    return {k: torch.as_tensor(v) != 0 for k, v in flat.items()}


def random_filter_masks(model: nn.Module, ratio: float, seed: int = 0, *, bias: bool = False,
                        linear: bool = True) -> dict[str, torch.Tensor]:
    """Mask ``floor(ratio * n)`` random output filters (at least one kept) of every
    Conv / ConvTranspose / Linear weight. Flat format, float 0/1."""
    g = torch.Generator().manual_seed(seed)
    masks: dict[str, torch.Tensor] = {}
    for name, m in model.named_modules():
        if isinstance(m, CONV_TYPES):
            dim = 0
        elif isinstance(m, CONVT_TYPES) and m.groups == 1:
            dim = 1
        elif linear and isinstance(m, nn.Linear):
            dim = 0
        else:
            continue
        w = m.weight
        n = w.shape[dim]
        k = min(int(n * ratio), n - 1)
        if k <= 0:
            continue
        idx = torch.randperm(n, generator=g)[:k]
        mask = torch.ones_like(w)
        mask.index_fill_(dim, idx, 0.0)
        masks[f"{name}.weight"] = mask
        if bias and m.bias is not None and dim == 0:
            b = torch.ones_like(m.bias)
            b[idx] = 0.0
            masks[f"{name}.bias"] = b
    return masks


def sink_masks(model: nn.Module, ratio: float, seed: int = 0, types: tuple = CONV_TYPES) -> dict[str, torch.Tensor]:
    """Mask ``floor(ratio * n)`` random input columns (weight dim 1) of every conv (or other
    layer of ``types``) with more than one input column per group; nothing else."""
    g = torch.Generator().manual_seed(seed)
    masks: dict[str, torch.Tensor] = {}
    for name, m in model.named_modules():
        if not isinstance(m, types) or m.weight.shape[1] <= 1:
            continue
        n = m.weight.shape[1]
        k = min(int(n * ratio), n - 1)
        if k <= 0:
            continue
        idx = torch.randperm(n, generator=g)[:k]
        mask = torch.ones_like(m.weight)
        mask.index_fill_(1, idx, 0.0)
        masks[f"{name}.weight"] = mask
    return masks


def torch_prune_masks(model: nn.Module, amount: float = 0.5, n: int = 2, dim: int = 0) -> dict[str, torch.Tensor]:
    """``torch.nn.utils.prune.ln_structured`` on every conv of a deep copy; returns that
    copy's state dict (``*.weight_orig`` + ``*.weight_mask`` + everything else)."""
    m2 = copy.deepcopy(model)
    for mod in m2.modules():
        if isinstance(mod, CONV_TYPES):
            torch_prune.ln_structured(mod, "weight", amount=amount, n=n, dim=dim)
    return m2.state_dict()


def to_nni(flat: Mapping[str, torch.Tensor]) -> dict[str, dict[str, torch.Tensor]]:
    """Flat ``{"a.b.weight": m}`` → NNI style ``{"a.b": {"weight": m}}``."""
    out: dict[str, dict[str, torch.Tensor]] = {}
    for k, v in flat.items():
        mod, _, leaf = k.rpartition(".")
        out.setdefault(mod, {})[leaf] = v
    return out


# --------------------------------------------------------------------------- contract
def masked_reference(model: nn.Module, masks: Mapping[str, torch.Tensor]) -> nn.Module:
    """A copy of ``model`` whose parameters are multiplied by ``masks`` (``{param_fqn: 0/1}``,
    the param's shape or compact: broadcast to it). Written apart from slimc.verify on purpose:
    the reference the contract compares against must not come from the code under test."""
    ref = copy.deepcopy(model)
    params = dict(ref.named_parameters(remove_duplicate=False))
    with torch.no_grad():
        for fqn, m in masks.items():
            p = params[fqn]
            p.mul_((m != 0).to(p.dtype).expand(p.shape))  # tied names: the same 0/1 mask, applied again
    return ref


def user_masked(model: nn.Module, masks: Any, final: Mapping[str, torch.Tensor] | None = None) -> nn.Module:
    """``model`` masked with the user's ``masks`` (any accepted format) by the test's own code.
    ``final``: the compile's final masks, asserted to zero nothing more (complete masks: then
    this is the model the slim one must equal)."""
    user = flat_user_masks(masks)
    if final is not None:
        extra, where = contract_refs.masks_equal(final, user, dict(model.named_parameters(remove_duplicate=False)))
        assert not extra, f"the user's masks are not complete: the final masks zero {extra} entries more in {where[:4]}"
    return masked_reference(model, user)


def _expected_slim_param(orig: torch.Tensor, mask: torch.Tensor | None, fqn: str, plan) -> torch.Tensor:
    t = orig.detach()
    if mask is not None:
        t = t * mask.to(t.dtype)
    for d in range(t.dim()):
        k = plan.kept_idx(("p", fqn, d))
        if k is not None:
            t = t.index_select(d, torch.as_tensor(np.asarray(k), dtype=torch.long))
    return t


def assert_contract(model: nn.Module, masks: Any, inputs: Any, *, n_inputs: int = 3,
                    check_values: bool = True, complete: bool | None = None, **kw) -> "slimc.CompileResult":
    """Compile ``model`` under ``masks`` (verify=False) and check the DESIGN.md contract
    independently. ``complete``: the test says the user's masks are complete (True: the final
    masks zero nothing more, and slim == the model masked with them) or not (False); None:
    either (``res.contract`` says which). Extra keyword arguments go to ``slimc.compile``.
    Returns the result."""
    inputs = as_tuple(inputs)
    state_before = copy.deepcopy(model.state_dict())
    training_before = model.training
    res = slimc.compile(model, masks, inputs, verify=False, **kw)

    # (d) the original model is unchanged and still runs
    state_after = model.state_dict()
    assert state_after.keys() == state_before.keys(), "compile changed the original model's state dict keys"
    for k, v in state_before.items():
        assert torch.equal(state_after[k], v), f"compile modified the original model's '{k}'"
    assert model.training == training_before, "compile changed the original model's train/eval mode"
    run_eval(model, inputs)

    # the code the slim module runs is its graph's (a compile that reuses the analysis runs the
    # kept module's generated forward where the passes left the graph as it was)
    assert res.module.code == res.module.graph.python_code(root_module="self").src, "stale generated code"

    # (e) same train/eval mode
    assert res.module.training == model.training, (
        f"slim module training={res.module.training}, original training={model.training}")

    # (b) final masks ⊇ user masks
    params = dict(model.named_parameters())  # tied params once, as parameters() counts them
    all_params = dict(model.named_parameters(remove_duplicate=False))  # every name a mask may use
    user = flat_user_masks(masks)
    for fqn, um in user.items():
        assert fqn in res.masks, f"user masked '{fqn}' but it is missing from the final masks"
        fm = res.masks[fqn]
        assert broadcasts_to(fm, all_params[fqn]), f"final mask '{fqn}' has shape {tuple(fm.shape)}"
        unzeroed = (~um) & (fm != 0)
        assert not bool(unzeroed.any()), (
            f"final masks un-zero {int(unzeroed.sum())} user-masked entries of '{fqn}'")
    for fqn, fm in res.masks.items():
        assert fqn in all_params, f"final mask for unknown param '{fqn}'"
        assert broadcasts_to(fm, all_params[fqn]), f"final mask '{fqn}' has shape {tuple(fm.shape)}"

    # (c) parameter count and shapes implied by the plan; every removed slice is masked;
    #     slim params are the masked originals sliced at the kept indices
    plan = res.plan
    expected_total = 0
    expected_shapes: dict[str, tuple] = {}
    for fqn, p in params.items():
        if p.dim() and ("p", fqn, 0) not in plan.dg.size:
            continue  # not reached by the traced graph: absent from the slim module
        shp = tuple(plan.new_size(("p", fqn, d)) for d in range(p.dim()))
        expected_shapes[fqn] = shp
        expected_total += math.prod(shp)
        for d in range(p.dim()):
            k = plan.kept_idx(("p", fqn, d))
            if k is None:
                continue
            removed = np.setdiff1d(np.arange(p.shape[d]), np.asarray(k))
            if len(removed) == 0:
                continue
            fm = res.masks.get(fqn)
            assert fm is not None, f"'{fqn}' dim {d} loses {len(removed)} slices but has no final mask"
            sl = fm.expand(p.shape).index_select(d, torch.as_tensor(removed, dtype=torch.long))
            assert not bool((sl != 0).any()), f"'{fqn}' dim {d}: a removed slice is not zero in the final masks"
    slim_params = dict(res.module.named_parameters())
    assert n_params(res.module) == expected_total, (
        f"slim model has {n_params(res.module):,} params, the kept indices imply {expected_total:,}")
    for fqn, p in slim_params.items():
        if fqn in expected_shapes:
            assert tuple(p.shape) == expected_shapes[fqn], (
                f"slim '{fqn}' has shape {tuple(p.shape)}, plan implies {expected_shapes[fqn]}")
            if check_values:
                want = _expected_slim_param(params[fqn], res.masks.get(fqn), fqn, plan)
                assert torch.equal(p.detach(), want), f"slim '{fqn}' is not the masked original sliced at kept indices"
    assert res.report["params"]["after"] == expected_total
    assert res.report["params"]["before"] == n_params(model)

    # removal is physical: no gather / index_select left behind
    for node in res.module.graph.nodes:
        name = getattr(node.target, "__name__", str(node.target))
        assert name not in ("index_select", "gather", "take"), f"slim graph has {node.format_node()}"

    # (a) slim(x) == original-with-final-masks(x), at the example's shape and a second shape
    ref = masked_reference(model, res.masks)
    diff, scale = outputs_diff(res.module, ref, inputs, n_inputs)
    tol = TOL * max(1.0, scale)
    assert diff <= tol, f"slim differs from masked-with-final-masks by {diff:.3g} (tolerance {tol:.3g})"
    x2, varied = contract_refs.second_shape(ref.eval(), inputs)
    if x2 is not None:
        try:
            got = run_eval(res.module, x2)
        except Exception as e:  # only where the trace itself is specialized to the example's sizes
            assert not contract_refs.runs(res.plan.dg.gm, x2), (
                f"slim refuses a shape the masked original and the traced graph accept ({varied}): {e}")
            x2, varied = contract_refs.second_shape(ref, inputs, sizes=False)
            got = run_eval(res.module, x2)
        d2, s2 = max_diff(got, run_eval(ref, x2))
        assert d2 <= TOL * max(1.0, s2), f"slim differs from masked-with-final-masks by {d2:.3g} at {varied}"

    # (f) the user's own masks, applied by the test: where the final masks zero nothing more
    #     (complete masks), slim == the model masked with the user's masks, at both shapes
    extra, where = contract_refs.masks_equal(res.masks, user, all_params)
    res.contract = {"user_masks_complete": not extra, "extra_zeros": extra, "varied": varied}
    if complete is not None:
        assert complete == (not extra), (
            f"the test says the user's masks are {'complete' if complete else 'incomplete'}, but the final masks "
            f"zero {extra} entries more (in {', '.join(where[:4]) or 'no param'})")
    if not extra:
        ref_user = masked_reference(model, user)
        d, s = outputs_diff(res.module, ref_user, inputs, n_inputs)
        if x2 is not None:
            d2, s2 = max_diff(run_eval(res.module, x2), run_eval(ref_user, x2))
            d, s = max(d, d2), max(s, s2)
        assert d <= TOL * max(1.0, s), f"slim differs from the model masked with the user's masks by {d:.3g}"
    return res


def assert_same_masks(final: Mapping[str, torch.Tensor], given: Mapping[str, torch.Tensor]) -> None:
    """``final`` (compile's) zero exactly the entries ``given`` (a pruner's) zero; a param on one
    side only must be all ones."""
    for fqn in set(final) | set(given):
        a = final[fqn].bool() if fqn in final else None
        b = given[fqn].bool() if fqn in given else None
        if a is None or b is None:
            assert bool((a if a is not None else b).all()), f"'{fqn}' is masked on one side only"
        else:  # compact masks (a broadcast shape) compare by the entries they mean
            a, b = torch.broadcast_tensors(a, b)
            assert torch.equal(a, b), f"'{fqn}': compile's final masks differ from the pruner's ({int((a != b).sum())} entries)"


def kept_reasons(res) -> str:
    return " | ".join(r["reason"] for r in res.report["kept"])


def removed_idx(res, model: nn.Module, fqn: str, dim: int = 0) -> set[int]:
    """Indices of ``model``'s param ``fqn`` along ``dim`` that the plan removes."""
    k = res.plan.kept_idx(("p", fqn, dim))
    if k is None:
        return set()
    n = dict(model.named_parameters(remove_duplicate=False))[fqn].shape[dim]
    return set(range(n)) - set(np.asarray(k).tolist())


def broadcasts_to(mask: torch.Tensor, param: torch.Tensor) -> bool:
    """A mask is the param's shape, or compact: the same rank, each dim 1 or the param's."""
    return mask.dim() == param.dim() and all(m in (1, p) for m, p in zip(mask.shape, param.shape))


def dense(mask: torch.Tensor, shape) -> torch.Tensor:
    """A (possibly compact) mask at the full ``shape``, 0/1 bool."""
    return (mask != 0).expand(tuple(shape))


def masked_idx(mask: torch.Tensor, dim: int = 0, shape=None) -> set[int]:
    """Indices along ``dim`` whose whole slice of ``mask`` is zero (``shape``: the param's,
    for a compact mask that does not vary along ``dim``)."""
    if shape is not None:
        mask = dense(mask, shape)
    other = [d for d in range(mask.dim()) if d != dim]
    nz = (mask != 0).sum(dim=other) if other else (mask != 0).long()
    return set(torch.nonzero(nz == 0).flatten().tolist())


# --------------------------------------------------------------------------- rule fragments
# shared by the tests/test_rules_*.py files (one per shape-rule family)
SEEDS = (0, 1)


@torch.no_grad()
def randomize_norms(model: nn.Module, seed: int = 0) -> nn.Module:
    """Non-trivial affine params and running stats on every norm layer, so that a wrong
    follower (β left in, γ sliced wrong, stats misaligned) shows up in the outputs."""
    g = torch.Generator().manual_seed(seed)
    for m in model.modules():
        if isinstance(m, (nn.BatchNorm1d, nn.BatchNorm2d, nn.BatchNorm3d, nn.InstanceNorm2d)):
            n = m.num_features
            if m.running_mean is not None:
                m.running_mean.copy_(torch.randn(n, generator=g) * 0.2)
                m.running_var.copy_(torch.rand(n, generator=g) + 0.5)
        elif isinstance(m, (nn.GroupNorm, nn.LayerNorm)):
            pass
        else:
            continue
        if getattr(m, "weight", None) is not None:
            m.weight.copy_(torch.rand(m.weight.shape, generator=g) + 0.5)
        if getattr(m, "bias", None) is not None:
            m.bias.copy_(torch.randn(m.bias.shape, generator=g) * 0.5)
    return model


def build(cls, *args, seed: int = 0, train: bool = False, **kw) -> nn.Module:
    torch.manual_seed(seed)
    m = randomize_norms(cls(*args, **kw), seed)
    return m.train(train)


def x_(*shape: int, seed: int = 0) -> torch.Tensor:
    return torch.randn(*shape, generator=torch.Generator().manual_seed(seed))


def mask_rows(model: nn.Module, fqn: str, rows, dim: int = 0) -> torch.Tensor:
    w = dict(model.named_parameters())[fqn]
    m = torch.ones_like(w)
    m.index_fill_(dim, torch.as_tensor(list(rows), dtype=torch.long), 0.0)
    return m


def check(model: nn.Module, inputs, masks=None, *, smaller: bool = True, seed: int = 0, ratio: float = 0.5, **kw):
    """Contract + (optionally) a strictly smaller slim model."""
    if masks is None:
        masks = random_filter_masks(model, ratio, seed)
    res = assert_contract(model, masks, inputs, **kw)
    if smaller:
        assert n_params(res.module) < n_params(model), (
            f"masks allow removal but the slim model is not smaller; kept: {kept_reasons(res)}")
    return res


def slim_module(res, name: str) -> nn.Module:
    return res.module.get_submodule(name)


class ConvChain(nn.Module):
    def __init__(self, nd: int = 2, cin: int = 3, c1: int = 8, c2: int = 6, bias: bool = True):
        super().__init__()
        Conv = {1: nn.Conv1d, 2: nn.Conv2d, 3: nn.Conv3d}[nd]
        BN = {1: nn.BatchNorm1d, 2: nn.BatchNorm2d, 3: nn.BatchNorm3d}[nd]
        self.conv1 = Conv(cin, c1, 3, padding=1, bias=bias)
        self.bn1 = BN(c1)
        self.conv2 = Conv(c1, c2, 3, padding=1, bias=bias)
        self.bn2 = BN(c2)
        self.conv3 = Conv(c2, 4, 1)

    def forward(self, x):
        x = F.relu(self.bn1(self.conv1(x)))
        x = F.relu(self.bn2(self.conv2(x)))
        return self.conv3(x)


# --------------------------------------------------------------------------- pipeline stages
def stages(model: nn.Module, masks: Any, inputs: Any, front_end: str = "fx"):
    """The pipeline up to the rewrite, stage by stage, as ``compile`` runs it: (traced gm,
    dependency graph, removal plan). For the per-stage tests (test_graph, test_propagate,
    test_passes_*), which then run one stage or pass on their own."""
    from slimc import graph as graph_mod
    from slimc.inputs import bind
    from slimc.masks import normalize
    from slimc.propagate import plan
    from slimc.trace import shapes_of, trace

    inputs = bind(model, inputs)
    traced = trace(model, inputs, front_end)
    dg = graph_mod.build(traced.gm, shapes_of(traced.gm))
    return traced.gm, dg, plan(dg, normalize(masks, model))


def run_pass(name: str, model: nn.Module, masks: Any, inputs: Any, front_end: str = "fx"):
    """Every pass of ``PIPELINE`` before ``name``, then ``name`` itself: (PassResult, context)."""
    from slimc.passes import PIPELINE, RewriteContext

    gm, _, p = stages(model, masks, inputs, front_end)
    ctx = RewriteContext(p)
    for pass_name, fn in PIPELINE:
        res = fn(gm, ctx)
        gm = res.gm
        if pass_name == name:
            return res, ctx
    raise KeyError(name)
