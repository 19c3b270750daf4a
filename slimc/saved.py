"""A compile output folder, written and read back.

``out/`` holds the graph (``slim.pt``, loads with torch alone), and — where the user's
class could be made slim — that model: ``layout.json`` (what changed against the original
architecture) with its weights, ``hf/`` (``save_pretrained``: config.json, safetensors,
generation config) for Hugging Face models whose config expresses the slim widths, else
``model.safetensors`` (and, for HF models, ``hf/`` with the config alone).

``slimc.load(out)`` returns the user's class where the folder has it — through plain
``from_pretrained`` when the config expresses the slim widths, else rebuilt from the
original architecture plus the layout — and the graph module otherwise. Other models
come back from ``structure.pt`` (the slim objects pickled, parameters on meta: it loads
wherever their classes import by name, a library's class built in code included), else
from the model file the report names plus the layout, else from ``base=``; where none of
these can be had (a model file moved, a class defined in a script), ``slimc.load`` warns,
naming ``base=``, and returns the graph.
"""
from __future__ import annotations

import json
import warnings
from pathlib import Path
from typing import Any, Callable

import torch
from torch import nn

from slimc.atomic import atomic_dir, atomic_path, remove, write_text
from slimc.errors import DamagedOutput, LoadError, describe
from slimc.surgery import structure

LAYOUT = "layout.json"
WEIGHTS = "model.safetensors"
BUFFERS = "buffers.safetensors"


def save_user_model(model: nn.Module, layout: dict[str, Any], out: Path, *, hf_info: dict | None = None,
                    base_config: dict | None = None, spec: str | None = None) -> tuple[list[str], str]:
    """Write the slim model of the user's class and its layout into ``out``; returns the paths
    and how ``slimc.load`` will rebuild it (one line, for the report)."""
    from safetensors.torch import save_file, save_model

    from slimc.surgery.hf import save_config

    lay = dict(layout, spec=spec, training=model.training)
    paths = []
    on_meta = any(t.is_meta for t in model.parameters())
    if hf_info is not None:
        lay["hf"] = dict(hf_info, base_config=base_config, config=model.config.to_dict(),
                         attn_implementation=getattr(model.config, "_attn_implementation", None))
        with atomic_dir(out / "hf") as tmp:
            if on_meta or not hf_info.get("expressible"):
                # the config here; the weights beside it under the model's own names (model.safetensors,
                # or for a plan from shapes the shards --weights slices), for slimc.load. A config that
                # fails its own validation is written as it is: slimc.load sets its fields one by one
                save_config(model.config, tmp)
                if getattr(model, "generation_config", None) is not None:
                    model.generation_config.save_pretrained(tmp)
            else:
                from slimc.surgery.hf import no_progress_bars

                with no_progress_bars():
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
    how = _save_structure(model, lay, out, hf_info is not None, paths)
    write_text(out / LAYOUT, json.dumps(lay, indent=1, default=str))
    paths.append(str(out / LAYOUT))
    return paths, how


def _save_structure(model: nn.Module, lay: dict, out: Path, hf: bool, paths: list[str]) -> str:
    """structure.pt where the model's classes import by name (not for HF models: their config
    rebuilds them); records it in ``lay`` and says how slimc.load rebuilds the model."""
    cls = type(model).__name__
    if hf:
        return f"slimc.load: {cls} from hf/" + (" (from_pretrained)" if lay["hf"].get("expressible") else
                                                " and layout.json (the config cannot express the widths)")
    why = structure.save(model, out / structure.FILE)
    if not why:
        lay["structure"] = structure.FILE
        paths.append(str(out / structure.FILE))
        return f"slimc.load: {cls} from {structure.FILE} (in any process where its classes import)"
    remove(out / structure.FILE)  # a stale one from an earlier save
    lay["structure_why_not"] = why
    if lay.get("spec"):
        return f"slimc.load: {cls} from the model file {lay['spec']} and layout.json"
    return f"slimc.load needs base= for {cls} ({why}); without it, the graph"


def _weight_files(out: Path, hf_dir: bool) -> list[Path]:
    """The slim weights: hf/model*.safetensors or model.safetensors, else the shards that
    ``--weights`` sliced into the folder (a plan from shapes)."""
    own = sorted((out / "hf").glob("model*.safetensors")) if hf_dir else [p for p in [out / WEIGHTS] if p.is_file()]
    return own or sorted(p for p in out.glob("*.safetensors") if p.name != BUFFERS)


def _state(out: Path, hf_dir: bool) -> dict[str, torch.Tensor]:
    from safetensors.torch import load_file

    files = _weight_files(out, hf_dir)
    if not files:
        raise LoadError(f"'{out}' has no weights (no {WEIGHTS}, no sliced shards): compile again, or, for a plan "
                        "made on the meta device, slice a checkpoint into it with `slimc compile --weights` "
                        "(or slimc.shards.slice_checkpoint)")
    state: dict[str, torch.Tensor] = {}
    for f in [*files, *[p for p in [out / BUFFERS] if p.is_file()]]:
        try:
            state.update(load_file(str(f)))
        except Exception as e:  # cut short, not safetensors
            raise DamagedOutput(f, e) from e
    return state


def _rebuild(base: nn.Module, lay: dict, state: dict) -> nn.Module:
    from slimc.surgery import layout

    return _fill(layout.apply(base, lay), lay, state)


def _fill(base: nn.Module, lay: dict, state: dict) -> nn.Module:
    """The slim structure ``base`` (parameters on meta) with the saved weights."""
    from slimc.surgery import layout
    from slimc.surgery.derived import refresh_derived

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
        from slimc.surgery.hf import no_progress_bars

        with no_progress_bars():
            return cls.from_pretrained(str(out / "hf"))
    base_cfg = cls.config_class.from_dict(info["base_config"])
    impl = info.get("attn_implementation")
    if impl:
        base_cfg._attn_implementation = impl
    with empty_weights():
        base = cls(base_cfg)
    model = _rebuild(base, lay, _state(out, hf_dir=False))
    model.config = _slim_config(cls, info, out)
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


def _slim_config(cls: type, info: dict, out: Path):
    """The slim model's config: the original one with the slim fields set one by one (set, not
    validated: widths the config cannot express may break its own checks, e.g. a hidden size
    that is not a multiple of the head count)."""
    slim = info.get("config")
    if slim is None:  # written before the layout kept it
        return cls.config_class.from_pretrained(str(out / "hf"))
    cfg = cls.config_class.from_dict(info["base_config"])
    base = cfg.to_dict()
    for k, v in slim.items():
        if k in base and base[k] != v:
            setattr(cfg, k, v)
    return cfg


def _spec_gone(spec: str) -> str:
    """Why the model spec recorded at compile time no longer loads here, or ""."""
    import importlib.util

    if spec.startswith("zoo:"):
        return ""
    if spec.endswith(".py") or "/" in spec or "\\" in spec:
        return "" if Path(spec).is_file() else f"the model file '{spec}' it was compiled from is not there any more"
    mod = spec.partition(":")[0]
    try:
        found = importlib.util.find_spec(mod) is not None
    except (ImportError, ValueError):
        found = False
    return "" if found else f"the module '{mod}' it was compiled from does not import here"


def _base_model(base: Any) -> nn.Module:
    """``base`` as a model of the original architecture, parameters on meta where it is built here."""
    from slimc.shards import empty_weights

    if isinstance(base, (str, Path)):
        from slimc.loading import load_model

        with empty_weights():
            return load_model(str(base))[0]
    if isinstance(base, nn.Module):
        import copy

        return copy.deepcopy(base)
    if callable(base):
        with empty_weights():
            return base()
    raise LoadError(f"base is a {type(base).__name__}: pass the original model, a function that builds it, "
                    "or its model.py")


def load(out_dir: str | Path, base: nn.Module | Callable[[], nn.Module] | str | Path | None = None) -> nn.Module:
    """The slim model of a compile output: the user's class where the folder has it, else the
    graph module. ``base``: the original model, a function that builds it, or its model file
    (``model.py`` or ``pkg.module:attr``) — needed only where the folder cannot rebuild the
    class itself (its model file moved, a class defined in a script); ``slimc.load`` then warns
    and returns the graph."""
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
        raise DamagedOutput(lay_path, e) from e
    if lay.get("hf"):
        return _load_hf(out, lay)
    if base is not None:
        return _rebuild(_base_model(base), lay, _state(out, hf_dir=False))
    why = []
    if lay.get("structure"):
        try:
            skel = structure.load(out / lay["structure"])
        except (ImportError, AttributeError) as e:  # its classes do not import here
            why.append(f"{structure.FILE} does not load here ({describe(e, 160)})")
        except FileNotFoundError:
            raise DamagedOutput(out / lay["structure"]) from None
        except Exception as e:
            raise DamagedOutput(out / lay["structure"], e) from e
        else:
            return _fill(skel, lay, _state(out, hf_dir=False))
    spec = lay.get("spec")
    gone = _spec_gone(spec) if spec else ""
    if spec and not gone:
        from slimc.loading import load_model

        with empty_weights():
            base, _ = load_model(spec)
        return _rebuild(base, lay, _state(out, hf_dir=False))
    why = [*why, gone] if gone else why or [lay.get("structure_why_not") or "the folder does not say how to build it"]
    cls = str(lay.get("class", "model")).rpartition(".")[2]
    warnings.warn(f"slimc.load('{out}'): {'; '.join(why)}, so the slim {cls} cannot be rebuilt here: returning the "
                  f"graph (slim.pt); pass base= (the original model, a function that builds it, or its model.py) "
                  f"for your class", stacklevel=2)
    return load_slim(out)


__all__ = ["load", "save_user_model", "LAYOUT"]
