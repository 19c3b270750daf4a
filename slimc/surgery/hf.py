"""Hugging Face models stay Hugging Face models: their config follows the slim widths, and
whether the config can *express* them (``from_pretrained`` alone rebuilds the slim model)
is checked, not assumed: the class is instantiated from the new config on the meta device
and every tensor shape, module class and size attribute compared with the slim model.
GPT-2's head size is ``hidden // heads``, so pruned heads there are not expressible; nor
are layers of different widths — ``slimc.load`` rebuilds those from the recorded layout.
"""
from __future__ import annotations

import contextlib
import copy
import sys
from pathlib import Path
from typing import Any

import torch
from torch import nn

from slimc.surgery.experts import COUNTS as EXPERT_FIELDS  # expert counts (whole experts dropped)
from slimc.surgery.layout import simple_value as _simple
from slimc.surgery.sizes import FFN, HEAD_DIM, HEADS, HIDDEN, KV_HEADS, input_embedding_width
from slimc.errors import describe, one_line

EPS_FIELDS = ("rms_norm_eps", "layer_norm_eps", "layer_norm_epsilon", "norm_eps", "rms_norm_epsilon")
EPS_ATTRS = ("variance_epsilon", "eps", "epsilon")
HEAD_FIELDS = (*HEADS, "encoder_attention_heads", "decoder_attention_heads")
FFN_FIELDS = (*FFN, "hidden_dim", "encoder_ffn_dim", "decoder_ffn_dim", "moe_intermediate_size",
              "shared_expert_intermediate_size")
FFN_ATTRS = (*FFN, "intermediate_dim")  # module attributes that hold an FFN width (an experts module's)


def is_hf(model: nn.Module) -> bool:
    tf = sys.modules.get("transformers")
    return tf is not None and isinstance(model, tf.PreTrainedModel)


def _one(values) -> Any:
    values = set(values)
    return next(iter(values)) if len(values) == 1 else None


def _scope(key: str) -> str | None:
    """"encoder" / "decoder" for a config field of one stack (``encoder_ffn_dim``)."""
    head = key.split("_", 1)[0]
    return head if head in ("encoder", "decoder") and "_" in key else None


def _in(scope: str | None, path: str) -> bool:
    return scope is None or scope in path.split(".")


def _dim_news(original: nn.Module, slim: nn.Module, scope: str | None = None) -> dict[int, set[int]]:
    out: dict[int, set[int]] = {}
    for (name, t0), t in zip(original.named_parameters(), slim.parameters()):
        if not _in(scope, name):
            continue
        for o, n in zip(t0.shape, t.shape):
            out.setdefault(o, set()).add(n)
    return out


def _attr_news(original: nn.Module, slim: nn.Module, names: tuple[str, ...]) -> dict[int, set[int]]:
    """Old value → new values of the modules' size attributes ``names`` (an FFN width read
    off the modules that hold it, not off every tensor dim of that size)."""
    out: dict[int, set[int]] = {}
    for m0, m1 in zip(original.modules(), slim.modules()):
        for a in names:
            o, n = vars(m0).get(a), vars(m1).get(a)
            if isinstance(o, int) and isinstance(n, int) and not isinstance(o, bool):
                out.setdefault(o, set()).add(n)
    return out


def _derived_head_dim(cfg, cfg0, splits: list) -> int | None:
    """A config without a head size (``head_dim=None``: hidden // heads) whose hidden size
    changed while the heads kept their size: the head size to write down."""
    hidden, heads = getattr(cfg0, "hidden_size", None), getattr(cfg0, "num_attention_heads", None)
    if not (isinstance(hidden, int) and isinstance(heads, int) and heads and hidden % heads == 0):
        return None
    new = _one(s[3] for s in splits if s[1] == hidden // heads)
    derived = cfg.hidden_size // cfg.num_attention_heads if cfg.num_attention_heads else None
    return new if new is not None and new != derived else None


def sync_config(slim: nn.Module, original: nn.Module, splits: dict[str, list], guess: bool = True) -> list[str]:
    """Set the slim model's config fields (heads, kv heads, head dim, hidden, FFN width, norm
    eps) where every layer agrees. Returns "field: old → new" lines. ``guess``: an FFN width
    whose old size other, unchanged tensors share (a vocabulary of 128 beside ``d_ff`` 128)
    follows the one new size the changed ones agree on (:func:`follow_config` checks it)."""
    cfg, cfg0 = slim.config, original.config
    all_splits = [s for sp in splits.values() for s in sp]
    dims_in: dict[str | None, dict[int, set[int]]] = {None: _dim_news(original, slim)}  # by stack (scope)
    dims = dims_in[None]
    ffn = _attr_news(original, slim, FFN_ATTRS)
    experts = _attr_news(original, slim, EXPERT_FIELDS)
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
        scope = _scope(key)  # BART's encoder_ffn_dim follows the encoder's layers only
        if key in HEAD_FIELDS or key in KV_HEADS:
            scoped = [s for path, sp in splits.items() if _in(scope, path) for s in sp]
            new = _one(s[2] for s in scoped if s[0] == old) if isinstance(old, int) else None
        elif key in HEAD_DIM:
            new = _one(s[3] for s in all_splits if s[1] == old) if isinstance(old, int) else None
        elif key in HIDDEN:
            if isinstance(old, int):
                new = hidden[1] if hidden and hidden[0] == old else _one(dims.get(old, ()))
        elif key in FFN_FIELDS:
            width = old if isinstance(old, int) else 4 * hidden[0] if old is None and hidden else None
            if scope not in dims_in:
                dims_in[scope] = _dim_news(original, slim, scope)
            news = (ffn.get(width) or dims_in[scope].get(width, set())) if width else set()
            new = _one(news) if news and width not in news else _one(news - {width}) if guess else None
        elif key in EXPERT_FIELDS and isinstance(old, int):
            new = _one(experts.get(old, ()))
        elif key in EPS_FIELDS and isinstance(old, float):
            news = eps_new.get(old, set()) - {old}
            new = _one(news) if len(eps_new.get(old, ())) == 1 else None
        if new is not None and new != getattr(cfg, key, old):
            setattr(cfg, key, new)
            changes.append(f"{key}: {old} → {new}")
    return changes + _kept_valid(cfg, cfg0, changes)


def _kept_valid(cfg, cfg0, changes: list[str]) -> list[str]:
    """Where the slim widths make a config its class refuses (a head dim computed as
    ``hidden // heads`` that RoPE needs even), the fields that make it so keep their old
    values, one at a time from the last set (the config then cannot express the model, and
    ``slimc.load`` rebuilds it from the layout). Returns what was kept and why."""
    why = config_invalid(cfg)
    kept = []
    for line in reversed(changes):
        if not why:
            break
        key = line.split(":", 1)[0]
        setattr(cfg, key, getattr(cfg0, key))
        kept.append(f"{key} kept at {getattr(cfg0, key)}: the config's validation refuses the slim value ({why})")
        why = config_invalid(cfg)
    return kept


def follow_config(slim: nn.Module, original: nn.Module, splits: dict[str, list]) -> dict[str, Any]:
    """The slim model's config made to follow its widths (:func:`sync_config`), and whether it
    expresses them (:func:`expressible`); where a guessed FFN width leaves it inexpressible,
    the config is made again without guesses; then :func:`_settle_head_dim`."""
    cfg = slim.config
    before = dict(vars(cfg))
    changes = sync_config(slim, original, splits)
    ok, why = expressible(slim)
    if not ok and changes:
        for k, v in before.items():
            if getattr(cfg, k, v) != v:
                setattr(cfg, k, v)
        sure = sync_config(slim, original, splits, guess=False)
        if sure != changes:  # (the same changes: the same config, no need to check it again)
            changes = sure
            ok, why = expressible(slim)
    if not ok:
        changes, ok, why = _settle_head_dim(slim, original, splits, changes, why)
    kept = [c for c in changes if " kept at " in c]
    if not ok and kept:  # the first cause: a width the config's validation refuses
        why = f"{kept[0]}; so {why}"
    return {"config_changes": changes, "expressible": ok, "why_not": why}


def _settle_head_dim(slim: nn.Module, original: nn.Module, splits: dict[str, list], changes: list[str],
                     why: str) -> tuple[list[str], bool, str]:
    """A config without a head size (``head_dim`` None or absent: HF's ``getattr(config,
    "head_dim", None) or hidden // heads``) whose hidden size changed while the heads kept theirs
    gets ``head_dim`` written down — kept where that settles the head size the config builds
    (the slim model may read it at run time: PhiMoE's rotary embedding), left out where the
    class derives its head size otherwise (BERT's)."""
    cfg, cfg0 = slim.config, original.config
    new = None if getattr(cfg0, "head_dim", None) is not None else \
        _derived_head_dim(cfg, cfg0, [s for sp in splits.values() for s in sp])
    if new is None:
        return changes, False, why
    had = "head_dim" in vars(cfg)
    cfg.head_dim = new
    ok2, why2 = expressible(slim)
    if ok2 or ("head_dim" in why and "head_dim" not in why2):
        return [*changes, f"head_dim: None → {new}"], ok2, why2
    if had:
        cfg.head_dim = None
    else:
        del cfg.head_dim
    return changes, False, why


@contextlib.contextmanager
def no_progress_bars():
    """transformers' own bars ("Writing model shards", "Loading weights") off while slimc saves
    or loads a slim model: a successful command prints what the user needs, nothing else."""
    from transformers.utils import logging as hf_logging

    was = hf_logging.is_progress_bar_enabled()
    hf_logging.disable_progress_bar()
    try:
        yield
    finally:
        if was:
            hf_logging.enable_progress_bar()


def config_invalid(cfg) -> str:
    """Why ``cfg`` fails its own validation (transformers' strict configs: ``hidden_size`` a
    multiple of the head count, …), or "": such a config cannot be saved or loaded."""
    validate = getattr(cfg, "validate", None)
    if not callable(validate):
        return ""
    try:
        validate()
    except Exception as e:  # StrictDataclassClassValidationError: its last line is the config's own error
        lines = [ln.strip() for ln in str(e).splitlines() if ln.strip()]
        return f"the config does not validate: {one_line(lines[-1] if lines else describe(e), 180)}"
    return ""


def save_config(cfg, folder) -> str:
    """``cfg.save_pretrained(folder)``; where the config fails its own validation, its JSON is
    written as it is (what the slim widths are, for people) and the reason returned."""
    why = config_invalid(cfg)
    if not why:
        cfg.save_pretrained(folder)
        return ""
    cfg.to_json_file(str(Path(folder) / "config.json"))
    return why


def expressible(slim: nn.Module) -> tuple[bool, str]:
    """Does ``type(slim)(slim.config)`` build exactly the slim model's structure?"""
    cfg = copy.deepcopy(slim.config)
    why = config_invalid(cfg)
    if why:
        return False, why
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


__all__ = ["is_hf", "sync_config", "follow_config", "expressible", "config_invalid", "save_config"]
