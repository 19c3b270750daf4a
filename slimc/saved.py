"""A compile output folder, written and read back.

``out/`` holds the graph (``slim.pt``, loads with torch alone), and — where the user's
class could be made slim — that model: ``layout.json`` (what changed against the original
architecture) with its weights, ``hf/`` (``save_pretrained``: config.json, safetensors,
generation config) for Hugging Face models whose config expresses the slim widths, else
``model.safetensors`` (and, for HF models, ``hf/`` with the config alone).

``slimc.load(out)`` returns the user's class where the folder has it — through plain
``from_pretrained`` when the config expresses the slim widths, else rebuilt from the
original architecture plus the layout — and the graph module otherwise.
"""
from __future__ import annotations

import json
from pathlib import Path
from typing import Any, Callable

import torch
from torch import nn

from slimc.atomic import atomic_dir, atomic_path, write_text
from slimc.errors import LoadError

LAYOUT = "layout.json"
WEIGHTS = "model.safetensors"
BUFFERS = "buffers.safetensors"


def save_user_model(model: nn.Module, layout: dict[str, Any], out: Path, *, hf_info: dict | None = None,
                    base_config: dict | None = None, spec: str | None = None) -> list[str]:
    """Write the slim model of the user's class and its layout into ``out``; returns the paths."""
    from safetensors.torch import save_file, save_model

    lay = dict(layout, spec=spec, training=model.training)
    paths = []
    on_meta = any(t.is_meta for t in model.parameters())
    if hf_info is not None:
        lay["hf"] = dict(hf_info, base_config=base_config,
                         attn_implementation=getattr(model.config, "_attn_implementation", None))
        with atomic_dir(out / "hf") as tmp:
            if on_meta or not hf_info.get("expressible"):
                # the config here; the weights beside it under the model's own names (model.safetensors,
                # or for a plan from shapes the shards --weights slices), for slimc.load
                model.config.save_pretrained(tmp)
                if getattr(model, "generation_config", None) is not None:
                    model.generation_config.save_pretrained(tmp)
            else:
                model.save_pretrained(tmp)
        paths.append(str(out / "hf"))
        if not on_meta and not hf_info.get("expressible"):
            with atomic_path(out / WEIGHTS) as tmp:
                save_model(model, tmp)
            paths.append(str(out / WEIGHTS))
    elif not on_meta:
        with atomic_path(out / WEIGHTS) as tmp:
            save_model(model, tmp)
        paths.append(str(out / WEIGHTS))
    extra = {n: t.detach().contiguous() for n, t in model.named_buffers() if n in layout.get("non_persistent", [])}
    if extra and not on_meta:
        with atomic_path(out / BUFFERS) as tmp:
            save_file(extra, tmp)
        paths.append(str(out / BUFFERS))
    write_text(out / LAYOUT, json.dumps(lay, indent=1, default=str))
    paths.append(str(out / LAYOUT))
    return paths


def _weight_files(out: Path, hf_dir: bool) -> list[Path]:
    """The slim weights: hf/model*.safetensors or model.safetensors, else the shards that
    ``--weights`` sliced into the folder (a plan from shapes)."""
    own = sorted((out / "hf").glob("model*.safetensors")) if hf_dir else [p for p in [out / WEIGHTS] if p.is_file()]
    return own or sorted(p for p in out.glob("*.safetensors") if p.name != BUFFERS)


def _state(out: Path, hf_dir: bool) -> dict[str, torch.Tensor]:
    from safetensors.torch import load_file

    files = _weight_files(out, hf_dir)
    if not files:
        raise LoadError(f"'{out}' has no weights: it was planned on the meta device; slice a checkpoint "
                        "into it with `slimc compile --weights` (or slimc.shards.slice_checkpoint)")
    state: dict[str, torch.Tensor] = {}
    for f in files:
        state.update(load_file(str(f)))
    if (out / BUFFERS).is_file():
        state.update(load_file(str(out / BUFFERS)))
    return state


def _rebuild(base: nn.Module, lay: dict, state: dict) -> nn.Module:
    from slimc.surgery import layout
    from slimc.surgery.derived import refresh_derived

    layout.apply(base, lay)
    layout.load_weights(base, state)
    with torch.no_grad():
        for t in lay.get("weight_transforms", []):  # norms made exact on a plan from shapes
            w = base.get_parameter(t["param"])
            w.copy_((w + t["offset"]) * t["scale"] - t["offset"])
    return refresh_derived(base.train(bool(lay.get("training", False))))


def _load_hf(out: Path, lay: dict) -> nn.Module:
    from slimc.shards import empty_weights
    from slimc.surgery.layout import resolve

    cls = resolve(lay["class"])
    info = lay["hf"]
    if info.get("expressible") and list((out / "hf").glob("model*.safetensors")):
        return cls.from_pretrained(str(out / "hf"))
    base_cfg = cls.config_class.from_dict(info["base_config"])
    impl = info.get("attn_implementation")
    if impl:
        base_cfg._attn_implementation = impl
    with empty_weights():
        base = cls(base_cfg)
    model = _rebuild(base, lay, _state(out, hf_dir=False))
    model.config = cls.config_class.from_pretrained(str(out / "hf"))
    if impl:
        model.config._attn_implementation = impl
    for m in model.modules():  # submodules hold the config too
        if hasattr(m, "config") and m is not model:
            m.config = model.config
    try:
        from transformers import GenerationConfig

        model.generation_config = GenerationConfig.from_pretrained(str(out / "hf"))
    except Exception:  # no generation config saved: the model's default stays
        pass
    return model


def load(out_dir: str | Path, base: nn.Module | Callable[[], nn.Module] | None = None) -> nn.Module:
    """The slim model of a compile output: the user's class where the folder has it (``base``:
    the original model, or a function that builds it, where the folder does not name a
    model.py to build it from), else the graph module."""
    from slimc.shards import empty_weights, load_slim

    out = Path(out_dir)
    if not out.is_dir():
        raise LoadError(f"'{out}' is not a folder: pass a `slimc compile` output folder")
    lay_path = out / LAYOUT
    if not lay_path.is_file():
        return load_slim(out)
    try:
        lay = json.loads(lay_path.read_text())
    except ValueError as e:
        raise LoadError(f"cannot read '{lay_path}': {e}") from e
    if lay.get("hf"):
        return _load_hf(out, lay)
    if base is None and lay.get("spec"):
        from slimc.loading import load_model

        with empty_weights():
            base, _ = load_model(lay["spec"])
    elif callable(base) and not isinstance(base, nn.Module):
        with empty_weights():
            base = base()
    elif isinstance(base, nn.Module):
        import copy

        base = copy.deepcopy(base)
    if base is None:
        return load_slim(out)
    return _rebuild(base, lay, _state(out, hf_dir=False))


__all__ = ["load", "save_user_model", "LAYOUT"]
