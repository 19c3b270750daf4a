"""Hugging Face models stay Hugging Face models: their config follows the slim widths, and
whether the config can *express* them (``from_pretrained`` alone rebuilds the slim model)
is checked, not assumed: the class is instantiated from the new config on the meta device
and every tensor shape, module class and size attribute compared with the slim model.
GPT-2's head size is ``hidden // heads``, so pruned heads there are not expressible; nor
are layers of different widths — ``slimc.load`` rebuilds those from the recorded layout.
"""
from __future__ import annotations

import copy
import sys
from typing import Any

import torch
from torch import nn

from slimc.surgery.layout import simple_value as _simple
from slimc.surgery.sizes import FFN, HEAD_DIM, HEADS, HIDDEN, KV_HEADS, input_embedding_width
from slimc.errors import describe

EPS_FIELDS = ("rms_norm_eps", "layer_norm_eps", "layer_norm_epsilon", "norm_eps", "rms_norm_epsilon")
EPS_ATTRS = ("variance_epsilon", "eps", "epsilon")
HEAD_FIELDS = (*HEADS, "encoder_attention_heads", "decoder_attention_heads")
FFN_FIELDS = (*FFN, "hidden_dim", "encoder_ffn_dim", "decoder_ffn_dim")


def is_hf(model: nn.Module) -> bool:
    tf = sys.modules.get("transformers")
    return tf is not None and isinstance(model, tf.PreTrainedModel)


def _one(values) -> Any:
    values = set(values)
    return next(iter(values)) if len(values) == 1 else None


def _dim_news(original: nn.Module, slim: nn.Module) -> dict[int, set[int]]:
    out: dict[int, set[int]] = {}
    for t0, t in zip(original.parameters(), slim.parameters()):
        for o, n in zip(t0.shape, t.shape):
            out.setdefault(o, set()).add(n)
    return out


def sync_config(slim: nn.Module, original: nn.Module, splits: dict[str, list]) -> list[str]:
    """Set the slim model's config fields (heads, kv heads, head dim, hidden, FFN width, norm
    eps) where every layer agrees. Returns "field: old → new" lines."""
    cfg, cfg0 = slim.config, original.config
    all_splits = [s for sp in splits.values() for s in sp]
    dims = _dim_news(original, slim)
    hidden = input_embedding_width(original, slim)
    eps_new: dict[float, set[float]] = {}
    for (p0, m0), m1 in zip(original.named_modules(), slim.modules()):
        for a in EPS_ATTRS:
            e0, e1 = getattr(m0, a, None), getattr(m1, a, None)
            if isinstance(e0, float) and isinstance(e1, float):
                eps_new.setdefault(e0, set()).add(e1)
    changes = []
    for key, old in cfg0.to_dict().items():
        if isinstance(old, bool):
            continue
        new = None
        if key in HEAD_FIELDS or key in KV_HEADS:
            new = _one(s[2] for s in all_splits if s[0] == old) if isinstance(old, int) else None
        elif key in HEAD_DIM:
            new = _one(s[3] for s in all_splits if s[1] == old) if isinstance(old, int) else None
        elif key in HIDDEN:
            if isinstance(old, int):
                new = hidden[1] if hidden and hidden[0] == old else _one(dims.get(old, ()))
        elif key in FFN_FIELDS:
            width = old if isinstance(old, int) else 4 * hidden[0] if old is None and hidden else None
            news = dims.get(width, set()) if width else set()
            new = _one(news) if news and width not in news else None
        elif key in EPS_FIELDS and isinstance(old, float):
            news = eps_new.get(old, set()) - {old}
            new = _one(news) if len(eps_new.get(old, ())) == 1 else None
        if new is not None and new != getattr(cfg, key, old):
            setattr(cfg, key, new)
            changes.append(f"{key}: {old} → {new}")
    return changes + _kept_valid(cfg, cfg0, changes)


def _invalid(cfg) -> str | None:
    """Why the config's own validation refuses it (None: it validates, or has no validation).
    ``save_pretrained`` and ``from_pretrained`` validate: a config that does not cannot be
    written or read back."""
    validate = getattr(cfg, "validate", None)
    if not callable(validate):
        return None
    try:
        validate()
    except Exception as e:
        return describe(e.__cause__ or e)[:200]
    return None


def _kept_valid(cfg, cfg0, changes: list[str]) -> list[str]:
    """Where the slim widths make a config its class refuses (a head dim computed as
    ``hidden // heads`` that RoPE needs even), the fields that make it so keep their old
    values, one at a time from the last set (the config then cannot express the model, and
    ``slimc.load`` rebuilds it from the layout). Returns what was kept and why."""
    why = _invalid(cfg)
    kept = []
    for line in reversed(changes):
        if why is None:
            break
        key = line.split(":", 1)[0]
        setattr(cfg, key, getattr(cfg0, key))
        kept.append(f"{key} kept at {getattr(cfg0, key)}: the config's validation refuses the slim value ({why})")
        why = _invalid(cfg)
    return kept


def expressible(slim: nn.Module) -> tuple[bool, str]:
    """Does ``type(slim)(slim.config)`` build exactly the slim model's structure?"""
    cfg = copy.deepcopy(slim.config)
    try:
        with torch.device("meta"):
            fresh = type(slim)(cfg)
    except Exception as e:  # the config's sizes do not even build
        return False, f"the config does not build: {describe(e)}"[:200]
    mods = dict(fresh.named_modules())
    for path, m in slim.named_modules():
        f = mods.get(path)
        if f is None or type(f) is not type(m):
            return False, f"'{path}' is a {type(m).__name__} that the config builds as {type(f).__name__}"
        for name, t in [*m.named_parameters(recurse=False), *m.named_buffers(recurse=False)]:
            ft = getattr(f, name, None)
            if not isinstance(ft, torch.Tensor) or ft.shape != t.shape:
                got = tuple(ft.shape) if isinstance(ft, torch.Tensor) else None
                return False, f"'{path}.{name}' is {tuple(t.shape)}, the config builds {got}"
        for k, v in vars(m).items():
            if k.startswith("_") or k == "training" or not _simple(v):
                continue
            fv = vars(f).get(k)
            if fv != v and not (isinstance(v, float) and isinstance(fv, float) and abs(fv - v) <= 1e-9 * max(1.0, abs(v))):
                return False, f"'{path}.{k}' is {v!r}, the config builds {fv!r}"
    return True, ""


__all__ = ["is_hf", "sync_config", "expressible"]
