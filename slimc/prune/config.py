"""Config lists as NNI writes them, from YAML/JSON or the API::

    [{"sparsity": 0.5, "op_types": ["Conv2d"]},
     {"op_names": ["features.0"], "sparsity": 0.3},
     {"exclude": True, "op_names": ["classifier"]}]

A module takes the *last* entry that matches it (NNI's rule); an ``exclude`` entry that wins
keeps the module at full width in every dim: every family it holds a slice of stays whole.
A family's sparsity is the smallest of the sparsities of the layers that create its
channels (a residual stream is as pruned as its least-pruned writer); a layer no entry
matches keeps its channels. ``total_sparsity`` ranks the units of every family its entry
governs together (global ranking); ``max_sparsity_per_layer`` caps each of them. Layers
whose channels are a model output are never pruned: their width is the model's interface.
"""
from __future__ import annotations

import difflib
import json
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Iterable, Sequence

from torch import nn

from slimc.errors import ConfigError, describe
from slimc.prune.space import PruneSpace

#: NNI's "default" op type: the layers a structured pruner usually means
DEFAULT_TYPES = ("Conv1d", "Conv2d", "Conv3d", "ConvTranspose1d", "ConvTranspose2d", "ConvTranspose3d",
                 "Linear", "Embedding")
RANKINGS = ("layer", "global")
SPARSITY_KEYS = ("sparsity", "sparsity_per_layer", "sparse_ratio")  # NNI 2 / NNI 2 / NNI 3 names
KEYS = (*SPARSITY_KEYS, "total_sparsity", "max_sparsity_per_layer", "op_types", "op_names", "op_names_re",
        "op_partial_names", "exclude_op_names", "exclude_op_types", "exclude")


def _names(v: Any, key: str, i: int) -> tuple[str, ...]:
    if isinstance(v, str):
        return (v,)
    if isinstance(v, (list, tuple)) and all(isinstance(x, str) for x in v):
        return tuple(v)
    raise ConfigError(f"config entry {i}: '{key}' must be a list of strings, got {v!r}")


def check_entry(raw: Any, i: int, keys: Sequence[str], example: str) -> None:
    """Entry ``i`` of a config list is a mapping of known keys (one line naming the culprit)."""
    if not isinstance(raw, dict):
        raise ConfigError(f"config entry {i} is a {type(raw).__name__}: each entry is a mapping like {example}")
    unknown = [k for k in raw if k not in keys]
    if unknown:
        hint = difflib.get_close_matches(str(unknown[0]), keys, n=1)
        raise ConfigError(f"config entry {i}: unknown key '{unknown[0]}'"
                          + (f" (did you mean '{hint[0]}'?)" if hint else "") + f": use {', '.join(keys)}")


def _fraction(v: Any, key: str, i: int) -> float:
    if isinstance(v, bool) or not isinstance(v, (int, float)) or not 0 <= v < 1:
        raise ConfigError(f"config entry {i}: '{key}' must be a number in [0, 1), got {v!r}")
    return float(v)


@dataclass(frozen=True)
class ConfigEntry:
    index: int
    sparsity: float | None = None  # layer-wise
    total_sparsity: float | None = None  # global over the families this entry governs
    max_sparsity_per_layer: float | None = None
    op_types: tuple[str, ...] | None = None
    op_names: tuple[str, ...] | None = None
    op_names_re: tuple[str, ...] | None = None
    op_partial_names: tuple[str, ...] | None = None
    exclude_op_names: tuple[str, ...] = ()
    exclude_op_types: tuple[str, ...] = ()
    exclude: bool = False

    @classmethod
    def parse(cls, raw: Any, i: int) -> "ConfigEntry":
        check_entry(raw, i, KEYS, "{sparsity: 0.5, op_types: [Conv2d]}")
        given = [k for k in SPARSITY_KEYS if k in raw]
        if len(given) > 1:
            raise ConfigError(f"config entry {i}: give one of {', '.join(given)}, not several")
        kw: dict[str, Any] = {"index": i, "exclude": bool(raw.get("exclude", False))}
        if given:
            kw["sparsity"] = _fraction(raw[given[0]], given[0], i)
        for k in ("total_sparsity", "max_sparsity_per_layer"):
            if k in raw:
                kw[k] = _fraction(raw[k], k, i) if k == "total_sparsity" else min(1.0, float(raw[k]))
        for k in ("op_types", "op_names", "op_names_re", "op_partial_names", "exclude_op_names", "exclude_op_types"):
            if k in raw:
                kw[k] = _names(raw[k], k, i)
        e = cls(**kw)
        if not e.exclude and e.sparsity is None and e.total_sparsity is None:
            raise ConfigError(f"config entry {i} sets no sparsity: add `sparsity: 0.5` (or total_sparsity), "
                              "or `exclude: true`")
        if e.sparsity is not None and e.total_sparsity is not None:
            raise ConfigError(f"config entry {i}: give sparsity (layer-wise) or total_sparsity (global), not both")
        for pat in e.op_names_re or ():
            try:
                re.compile(pat)
            except re.error as err:
                raise ConfigError(f"config entry {i}: op_names_re '{pat}' is not a regular expression ({err})") \
                    from None
        return e

    def matches(self, name: str, types: Sequence[str]) -> bool:
        def typed(wanted: tuple[str, ...]) -> bool:
            want = {t for w in wanted for t in (DEFAULT_TYPES if w == "default" else (w.rpartition(".")[2],))}
            return any(t in want for t in types)

        if self.op_types is not None and not typed(self.op_types):
            return False
        named = [c for c in (self.op_names, self.op_names_re, self.op_partial_names) if c is not None]
        if named and not (
            (self.op_names is not None and name in self.op_names)
            or (self.op_names_re is not None and any(re.fullmatch(p, name) for p in self.op_names_re))
            or (self.op_partial_names is not None and any(p in name for p in self.op_partial_names))
        ):
            return False
        return name not in self.exclude_op_names and not (self.exclude_op_types and typed(self.exclude_op_types))

    @property
    def target(self) -> float:
        return self.total_sparsity if self.total_sparsity is not None else (self.sparsity or 0.0)

    def as_target(self, default_cap: float | None = None) -> "Target":
        cap = self.max_sparsity_per_layer if self.max_sparsity_per_layer is not None else default_cap
        return Target(self.target, self.index if self.total_sparsity is not None else None,
                      1.0 if cap is None else cap, self.index)


@dataclass(frozen=True)
class Target:
    """How much of one family to prune: ``pool`` ranks families together (global ranking)."""

    sparsity: float
    pool: int | None = None
    max_sparsity: float = 1.0
    entry: int | None = None


def _type_names(m: nn.Module) -> tuple[str, ...]:
    return tuple(c.__name__ for c in type(m).__mro__)


class ConfigList:
    def __init__(self, entries: Iterable[ConfigEntry]):
        self.entries = list(entries)

    @classmethod
    def parse(cls, raw: Any) -> "ConfigList":
        """From a list of mappings, a JSON/YAML string, or the path of a .json/.yaml file."""
        if isinstance(raw, ConfigList):
            return raw
        return cls(ConfigEntry.parse(e, i) for i, e in enumerate(raw_entries(raw, "{sparsity: 0.5, op_types: [Conv2d]}")))

    @classmethod
    def of(cls, config_list: Any, ratio: float = 0.5, ranking: str = "layer",
           max_sparsity_per_layer: float | None = None) -> "ConfigList":
        """A pruner's config: the list given (its entries say layer-wise or global), else ``ratio``
        for every layer (``ranking="global"``: as one ``total_sparsity``)."""
        if ranking not in RANKINGS:
            raise ConfigError(f"unknown ranking '{ranking}': use {' or '.join(RANKINGS)}")
        if config_list is not None:
            return cls.parse(config_list)
        if not 0 <= ratio < 1:
            raise ConfigError(f"ratio must be in [0, 1), got {ratio}")
        key = "total_sparsity" if ranking == "global" else "sparsity"
        raw: dict[str, Any] = {key: ratio}
        if max_sparsity_per_layer is not None:
            raw["max_sparsity_per_layer"] = max_sparsity_per_layer
        return cls.parse([raw])

    def winner(self, name: str, module: nn.Module | None) -> ConfigEntry | None:
        types = _type_names(module) if module is not None else ()
        hit = None
        for e in self.entries:
            if e.matches(name, types):
                hit = e
        return hit

    def check_names(self, model: nn.Module) -> None:
        """Every op name an entry lists must name a module (one line with the closest name)."""
        modules = [n for n, _ in model.named_modules()]
        known = set(modules)
        for e in self.entries:
            for n in e.op_names or ():
                if n not in known:
                    hint = difflib.get_close_matches(n, modules, n=1, cutoff=0.6)
                    raise ConfigError(f"config entry {e.index}: op_names '{n}' names no module of the model"
                                      + (f" (did you mean '{hint[0]}'?)" if hint else "")
                                      + ": use module names as in model.named_modules()")
            if not any(e.matches(n, _type_names(m)) for n, m in model.named_modules()):
                raise ConfigError(f"config entry {e.index} matches no module of the model: check its op_types / "
                                  "op_names (types are class names such as Conv2d, Linear)")

    def targets(self, space: PruneSpace, max_sparsity_per_layer: float | None = None) -> dict[int, Target]:
        """Per family index: its target (families absent are not pruned)."""
        model = space.model
        self.check_names(model)
        mods = dict(model.named_modules())
        win = {n: self.winner(n, mods.get(n)) for f in space.families for n in f.members}
        leaves = space.leaf_modules()
        out: dict[int, Target] = {}
        for f in space.families:
            if any(win[n] is not None and win[n].exclude for n in f.members):
                continue  # an excluded layer keeps its full width
            voters = [n for n in f.sources if n in leaves]
            ws = [win[n] for n in (voters or sorted(f.members))]
            configured = [w for w in ws if w is not None and not w.exclude]
            if not ws or len(configured) < len(ws):
                continue  # a layer no entry configures keeps its channels
            governing = min(configured, key=lambda w: (w.target, w.index))
            if governing.target > 0:
                out[f.index] = governing.as_target(max_sparsity_per_layer)
        return out

    def layer_targets(self, model: nn.Module, layers: Iterable[str], output_layers: set[str],
                      max_sparsity_per_layer: float | None = None) -> dict[str, Target]:
        """Per layer (unstructured pruning): its target. An output layer is pruned only where
        the entry that configures it names it."""
        self.check_names(model)
        mods = dict(model.named_modules())
        out: dict[str, Target] = {}
        for n in layers:
            w = self.winner(n, mods.get(n))
            if w is None or w.exclude or w.target <= 0:
                continue
            if n in output_layers and not (w.op_names and n in w.op_names):
                continue
            out[n] = w.as_target(max_sparsity_per_layer)
        return out


def raw_entries(raw: Any, example: str, what: str = "a config list") -> list:
    """The entries of a config list given as a list, a JSON/YAML string, the path of a .json/.yaml
    file, or ``{config_list: [...]}``; a non-empty list, else one line."""
    where = ""
    if isinstance(raw, (str, Path)):
        where = f"config file '{raw}': " if Path(raw).is_file() else "the config text: "
        raw = load_config_file(raw)
    if isinstance(raw, dict) and "config_list" in raw:
        raw = raw["config_list"]
    if not isinstance(raw, (list, tuple)) or not raw:
        raise ConfigError(f"{where}{what} is a non-empty list of entries like {example}")
    return list(raw)


def load_config_file(path: str | Path) -> Any:
    p = Path(path)
    if not p.is_file():
        if isinstance(path, str) and path.lstrip().startswith(("[", "{")):
            return _parse_text(path, "the config text")
        raise ConfigError(f"config file '{p}' does not exist: pass a .yaml or .json config list")
    return _parse_text(p.read_text(), f"config file '{p}'", yaml=p.suffix in (".yaml", ".yml"))


def _parse_text(text: str, where: str, yaml: bool = True) -> Any:
    try:
        return json.loads(text)
    except ValueError as e:
        if not yaml:
            raise ConfigError(f"{where} is not valid JSON ({e})") from None
    import yaml as pyyaml

    try:
        return pyyaml.safe_load(text)
    except pyyaml.YAMLError as e:
        raise ConfigError(f"{where} is not valid YAML ({describe(e)})") from None


def dump_config(entries: list[dict], path: str | Path) -> None:
    """Write a config list as YAML (.yaml/.yml) or JSON, atomically."""
    from slimc.atomic import write_text

    p = Path(path)
    if p.suffix in (".yaml", ".yml"):
        import yaml

        write_text(p, yaml.safe_dump(entries, sort_keys=False))
    else:
        write_text(p, json.dumps(entries, indent=2) + "\n")
