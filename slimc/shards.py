"""Apply a removal plan to safetensors checkpoints, one shard (one tensor) at a time.

Propagation needs shapes, not values, so a plan for a model larger than memory is
computed with the parameters on the meta device (``empty_weights()``, like accelerate's
``init_empty_weights``: buffers stay real, as a checkpoint may not hold them); the
weights are then sliced here, tensor by tensor, from the checkpoint's shards into new
shards of the same names, so peak memory is one tensor, never the model::

    with slimc.shards.empty_weights():                             # params on meta, buffers real
        meta_model = build()
    res = slimc.compile(meta_model, masks, example_inputs)       # shapes only, not verified
    slimc.shards.slice_checkpoint(res.plan, "ckpt/", "out/")      # out/*.safetensors
    slim = slimc.shards.load_slim("out/")                          # slim.pt + the sliced shards
"""
from __future__ import annotations

import contextlib
import json
import warnings
from pathlib import Path
from typing import Iterable

import numpy as np
import torch
from torch import nn

from slimc.atomic import atomic_path, make_dirs, write_text
from slimc.compact import slice_masked
from slimc.errors import DamagedOutput, LoadError, describe
from slimc.tensors import set_by_path, tied_groups

INDEX = "model.safetensors.index.json"


@contextlib.contextmanager
def empty_weights():
    """Build modules with their parameters on the meta device (no memory); buffers stay
    real. A parameter assigned again (weight tying) keeps its identity."""
    register = nn.Module.register_parameter

    def on_meta(module: nn.Module, name: str, param) -> None:
        register(module, name, param)
        p = module._parameters.get(name)
        if p is not None and not p.is_meta:
            module._parameters[name] = type(p)(p.to("meta"), requires_grad=p.requires_grad)

    nn.Module.register_parameter = on_meta
    try:
        yield
    finally:
        nn.Module.register_parameter = register


def checkpoint_files(src: str | Path | Iterable[str | Path]) -> list[Path]:
    """A folder (its ``*.safetensors``), one file, or a list of files."""
    if isinstance(src, (str, Path)):
        p = Path(src)
        files = sorted(p.glob("*.safetensors")) if p.is_dir() else [p]
    else:
        files = [Path(f) for f in src]
    missing = [f for f in files if not f.is_file()]
    if not files or missing:
        raise LoadError(f"no safetensors checkpoint at {missing[0] if missing else src}: "
                        "pass a folder of *.safetensors shards or the files themselves")
    return files


def sliced(plan, name: str, t: torch.Tensor) -> torch.Tensor:
    """``t`` (the tensor for param/buffer ``name``) with the final masks applied (masked
    entries that stay are zero, as in ``compile``) and cut to the kept indices; ``t`` itself
    where nothing changes. Cut first, then masked by the cut mask factors (never full-size)."""
    dg = plan.dg
    for d in range(t.dim()):
        slot = ("p", name, d)
        if slot in dg.size and dg.size[slot] != t.shape[d]:
            raise LoadError(f"checkpoint tensor '{name}' has shape {tuple(t.shape)}, the model's has "
                            f"dim {d} = {dg.size[slot]}: the checkpoint does not belong to this model")
    out = slice_masked(t, plan.cuts(name, t.dim()), plan.final_masks.user_mask(name))
    return out if out is t else out.contiguous()


def slice_checkpoint(plan, src, out_dir: str | Path) -> dict:
    """Write every shard of ``src`` to ``out_dir`` (same file names), each tensor sliced by
    ``plan``; returns {"files": [...], "bytes_before", "bytes_after", "unknown": [names
    the model does not have, copied unchanged]}."""
    from safetensors import safe_open
    from safetensors.torch import save_file

    files = checkpoint_files(src)
    out = make_dirs(out_dir)
    known = {s[1] for s in plan.dg.size if s[0] == "p"}
    before = after = 0
    unknown: list[str] = []
    written = []
    weight_map: dict[str, str] = {}
    for f in files:
        if (out / f.name).resolve() == f.resolve():
            raise LoadError(f"refusing to overwrite the input shard {f}: choose another output folder")
        tensors: dict[str, torch.Tensor] = {}
        with safe_open(str(f), framework="pt") as r:
            meta = r.metadata()
            for name in r.keys():
                t = r.get_tensor(name)
                before += t.numel() * t.element_size()
                if name in known:
                    t = sliced(plan, name, t)
                else:
                    unknown.append(name)
                tensors[name] = t
                after += t.numel() * t.element_size()
                weight_map[name] = f.name
        with atomic_path(out / f.name) as tmp:
            save_file(tensors, str(tmp), metadata=meta)
        written.append(str(out / f.name))
        del tensors
    if len(files) > 1 or (files[0].parent / INDEX).is_file():
        write_text(out / INDEX, json.dumps({"metadata": {"total_size": after}, "weight_map": weight_map}, indent=2))
    return {"files": written, "bytes_before": before, "bytes_after": after, "unknown": unknown}


def fill_weights(module: nn.Module, src) -> nn.Module:
    """Put the tensors of a safetensors checkpoint into ``module`` (its meta parameters
    become real; tied weights, stored once, are tied again). Every meta tensor must be filled."""
    from safetensors.torch import load_file

    state: dict[str, torch.Tensor] = {}
    for f in checkpoint_files(src):
        state.update(load_file(str(f)))
    tied = tied_groups(module.named_parameters(remove_duplicate=False))
    module.load_state_dict(state, strict=False, assign=True)
    for names in tied:
        src_name = next((n for n in names if n in state), None)
        if src_name is not None:
            p = module.get_parameter(src_name)
            for n in names:
                set_by_path(module, n, p)
    left = [n for n, t in [*module.named_parameters(), *module.named_buffers()] if t.is_meta]
    if left:
        raise LoadError(f"the checkpoint {src} has no weights for '{left[0]}' (and {len(left) - 1} more)")
    return module


def load_slim(out_dir: str | Path) -> nn.Module:
    """``slim.pt`` of a compile output; meta-device weights are filled from its shards."""
    out = Path(out_dir)
    path = out / "slim.pt"
    if not path.is_file():
        raise LoadError(f"'{out}' has no slim.pt: pass a folder `slimc compile` wrote")
    try:
        with warnings.catch_warnings():  # torch's deprecation of the pickled pytree spec (LeafSpec): not the user's
            warnings.simplefilter("ignore", FutureWarning)
            module = torch.load(path, weights_only=False, map_location="cpu")
    except (ImportError, AttributeError) as e:  # the graph calls code of the model's file
        raise LoadError(f"'{path}' needs code that does not import here ({describe(e, 160)}): load it where "
                        "the model's code imports") from e
    except Exception as e:
        raise DamagedOutput(path, e) from e
    if any(t.is_meta for t in [*module.parameters(), *module.buffers()]):
        fill_weights(module, out)
    return module
