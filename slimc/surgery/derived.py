"""What the user's modules derive from their own tensors, made again for the slim model.

A slim copy holds the slim parameters and buffers; a module may also keep tensors it
*computed* from them, which would still be full-size:

* a ``*cache`` dict (timm's and HF's LeViT/EfficientFormer ``attention_bias_cache``) —
  emptied (:mod:`slimc.surgery.weights` does not copy it);
* a plain tensor attribute made in ``train()`` (the official LeViT's and EfficientFormer's
  ``self.ab = self.attention_biases[:, self.attention_bias_idxs]`` in eval mode). The eval
  graph reads that tensor, not the table, so the plan slices the tensor (its heads) and
  leaves the table out. The slim model takes the graph's slim tensor, and the table it
  comes from is cut to match: which of the module's own tensors, along which dim, is
  *measured* — the module's ``train()`` is run on a copy with each candidate cut to the
  kept indices, and must give the slim tensor. Then every module that overrides
  ``train()`` re-enters its own mode (:func:`refresh_derived`), so its derived state is
  made from the slim tensors, and stays right when the user switches modes.
"""
from __future__ import annotations

import copy

import torch
from torch import nn

from slimc.copying import is_cache
from slimc.surgery.leaves import module_pairs


def _own_train(m: nn.Module) -> bool:
    return type(m).train is not nn.Module.train


def _plain_tensors(m: nn.Module) -> list[tuple[str, torch.Tensor]]:
    """Tensor attributes that are neither parameters nor buffers (what fx traces as constants)."""
    return [(a, v) for a, v in vars(m).items() if isinstance(v, torch.Tensor) and not isinstance(v, nn.Parameter)]


def _remade(m: nn.Module, attr: str) -> torch.Tensor | None:
    """``attr`` as ``m``'s own ``train()`` makes it in its current mode, on ``m`` (a copy)."""
    mode = m.training
    with torch.no_grad():
        m.train(not mode)
        m.train(mode)
    v = getattr(m, attr, None)
    return v if isinstance(v, torch.Tensor) else None


def _source_cut(m0: nn.Module, attr: str, dim: int, kept: torch.Tensor) -> tuple[str, int] | None:
    """The own parameter or buffer of ``m0`` (and its dim) that, cut to ``kept``, makes ``attr``
    cut to ``kept`` along ``dim`` — measured with random values in ``m0``'s tensors."""
    trial = copy.deepcopy(m0)
    g = torch.Generator().manual_seed(0)
    with torch.no_grad():
        for t in [*trial.parameters(), *trial.buffers()]:
            if t.is_floating_point():
                t.copy_(torch.randn(t.shape, generator=g, dtype=t.dtype))
    full = _remade(trial, attr)
    if full is None:
        return None
    want = full.index_select(dim, kept)
    for name, t in [*trial._parameters.items(), *trial._buffers.items()]:
        if t is None or not t.is_floating_point():
            continue
        for e in range(t.dim()):
            if t.shape[e] != full.shape[dim]:
                continue
            cut = copy.deepcopy(trial)
            with torch.no_grad():
                small = t.detach().index_select(e, kept)
                if name in cut._parameters:
                    cut._parameters[name] = nn.Parameter(small, requires_grad=t.requires_grad)
                else:
                    cut._buffers[name] = small
            try:
                got = _remade(cut, attr)
            except Exception:
                continue
            if got is not None and got.shape == want.shape and torch.equal(got, want):
                return name, e
    return None


def follow_derived(slim: nn.Module, original: nn.Module, plan, graph_tensors: dict[str, torch.Tensor]) -> list[str]:
    """Plain tensor attributes the slim graph holds cut (its traced constants) → the slim
    model's, with the tensors ``train()`` derives them from cut alike. Returns notes."""
    notes = []
    for path, m0, m in module_pairs(original, slim):
        for attr, t0 in _plain_tensors(m0):
            name = f"{path}.{attr}" if path else attr
            t = graph_tensors.get(name)
            if t is None or t.shape == t0.shape or t.dim() != t0.dim():
                continue
            setattr(m, attr, t.detach().clone())
            cut = [d for d in range(t.dim()) if t.shape[d] != t0.shape[d]]
            kept = plan.kept_index(("p", name, cut[0])) if len(cut) == 1 else None
            if not _own_train(m0) or kept is None:
                continue
            src = _source_cut(m0, attr, cut[0], kept.cpu())
            if src is None:
                continue
            pname, e = src
            own = m._parameters if pname in m._parameters else m._buffers
            old = own[pname]
            with torch.no_grad():
                small = old.detach().index_select(e, kept.to(old.device)).clone()
            own[pname] = nn.Parameter(small, requires_grad=old.requires_grad) if isinstance(old, nn.Parameter) else small
            notes.append(f"{path}.{pname}: cut along dim {e} like {attr}, which train() makes from it")
    return notes


def refresh_derived(model: nn.Module) -> nn.Module:
    """Make again what modules derive from their tensors: ``*cache`` dicts emptied, and a
    module whose class overrides ``train()`` re-enters its own mode; every module's flag
    stays as it was."""
    flags = [(m, m.training) for m in model.modules()]
    for m, _ in flags:
        for attr, value in list(vars(m).items()):
            if is_cache(attr, value) and value:
                setattr(m, attr, type(value)())
    with torch.no_grad():
        for m, training in flags:
            if _own_train(m):
                m.train(training)
    for m, training in flags:
        m.training = training
    return model


__all__ = ["follow_derived", "refresh_derived"]
