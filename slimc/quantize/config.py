"""Quantization config lists as NNI writes them, from YAML/JSON or the API::

    [{"quant_types": ["weight", "input", "output"], "quant_bits": 8, "op_types": ["Conv2d", "Linear"]},
     {"quant_types": ["weight"], "quant_bits": {"weight": 4}, "op_names": ["features.0"]},
     {"exclude": True, "op_names": ["classifier.1"]}]

Which modules an entry selects is the pruner config's rule (:mod:`slimc.prune.config`:
``op_types``, ``op_names``, ``op_names_re``, ``op_partial_names``, ``exclude_op_*``; the
*last* entry that matches a module wins). What it asks for: ``quant_types`` (``weight``,
``input``, ``output``), ``quant_bits`` (an int, or one per type), ``quant_scheme``
(``per_channel_symmetric`` — the weights' default —, ``per_tensor_affine`` — the
activations' —, ``per_tensor_symmetric``, ``per_channel_affine``, or just ``per_tensor`` /
``per_channel`` / ``affine`` / ``symmetric``) and ``quant_start_step`` (QAT: observe ranges
only until this training step). Weights are quantized on Conv1d/2d/3d, Linear and Embedding.
"""
from __future__ import annotations

import difflib
from dataclasses import dataclass, field
from typing import Any, Iterable

from torch import nn

from slimc.errors import ConfigError
from slimc.prune.config import ConfigEntry, _names, _type_names, check_entry, raw_entries

TYPES = ("weight", "input", "output")
WEIGHTED = (nn.Conv1d, nn.Conv2d, nn.Conv3d, nn.Linear, nn.Embedding)
LAYER_TYPES = ("Conv1d", "Conv2d", "Conv3d", "Linear")
SELECTORS = ("op_types", "op_names", "op_names_re", "op_partial_names", "exclude_op_names", "exclude_op_types")
KEYS = ("quant_types", "quant_bits", "quant_scheme", "quant_dtype", "quant_start_step", "exclude", *SELECTORS)
EXAMPLE = "{quant_types: [weight, input], quant_bits: 8, op_types: [Conv2d]}"
SCHEMES = ("per_tensor_affine", "per_tensor_symmetric", "per_channel_affine", "per_channel_symmetric")


@dataclass(frozen=True)
class Scheme:
    per_channel: bool
    symmetric: bool

    @classmethod
    def parse(cls, raw: Any, i: int, default: "Scheme") -> "Scheme":
        if raw is None:
            return default
        words = str(raw).lower().replace("-", "_")
        if words not in (*SCHEMES, "per_tensor", "per_channel", "affine", "symmetric"):
            raise ConfigError(f"config entry {i}: quant_scheme '{raw}' is not one of {', '.join(SCHEMES)} "
                              "(or per_tensor, per_channel, affine, symmetric)")
        per_channel = default.per_channel if "per_" not in words else words.startswith("per_channel")
        symmetric = default.symmetric if not words.endswith(("affine", "symmetric")) else words.endswith("symmetric")
        return cls(per_channel, symmetric)


WEIGHT_SCHEME = Scheme(per_channel=True, symmetric=True)
ACTIVATION_SCHEME = Scheme(per_channel=False, symmetric=False)


@dataclass(frozen=True)
class LayerQuant:
    """What one module's quantizers do: bits per quantized type, the weight's scheme."""

    name: str
    bits: dict[str, int]  # type → bits, only the types quantized
    weight_scheme: Scheme = WEIGHT_SCHEME
    start_step: int = 0
    entry: int = 0

    def has(self, kind: str) -> bool:
        return kind in self.bits


@dataclass(frozen=True)
class QuantEntry:
    index: int
    selector: ConfigEntry  # op_types / op_names / … and exclude, matched as the pruners match
    types: tuple[str, ...] = ()
    bits: dict[str, int] = field(default_factory=dict)
    scheme: Scheme | None = None
    start_step: int = 0

    @classmethod
    def parse(cls, raw: Any, i: int, default_bits: int) -> "QuantEntry":
        check_entry(raw, i, KEYS, EXAMPLE)
        sel = ConfigEntry(index=i, exclude=bool(raw.get("exclude", False)),
                          **{k: _names(raw[k], k, i) for k in SELECTORS if k in raw})
        if sel.exclude:
            return cls(i, sel)
        types = _names(raw.get("quant_types", ()), "quant_types", i)
        bad = [t for t in types if t not in TYPES]
        if not types or bad:
            raise ConfigError(f"config entry {i}: quant_types must list some of {', '.join(TYPES)}"
                              + (f", not '{bad[0]}'" if bad else "") + " (or set exclude: true)")
        return cls(i, sel, types, _bits(raw.get("quant_bits", default_bits), types, i),
                   Scheme.parse(raw.get("quant_scheme"), i, WEIGHT_SCHEME) if "quant_scheme" in raw else None,
                   _count(raw.get("quant_start_step", 0), "quant_start_step", i))


def _bits(raw: Any, types: tuple[str, ...], i: int) -> dict[str, int]:
    if isinstance(raw, dict):
        unknown = [k for k in raw if k not in types]
        if unknown:
            raise ConfigError(f"config entry {i}: quant_bits names '{unknown[0]}', which is not in its quant_types "
                              f"({', '.join(types)})")
        missing = [t for t in types if t not in raw]
        if missing:
            raise ConfigError(f"config entry {i}: quant_bits gives no bits for '{missing[0]}'")
        return {t: _count(raw[t], f"quant_bits.{t}", i, low=1) for t in types}
    return {t: _count(raw, "quant_bits", i, low=1) for t in types}


def _count(v: Any, key: str, i: int, low: int = 0) -> int:
    if isinstance(v, bool) or not isinstance(v, int) or v < low:
        raise ConfigError(f"config entry {i}: '{key}' must be an integer ≥ {low}, got {v!r}")
    return v


class QuantConfig:
    """A parsed config list; :meth:`resolve` says what each module of a model gets."""

    def __init__(self, entries: Iterable[QuantEntry], given: bool = True):
        self.entries = list(entries)
        self.given = given  # from the user (an entry that matches nothing is an error), or a default

    @classmethod
    def parse(cls, raw: Any, default_bits: int = 8) -> "QuantConfig":
        """From a list of mappings, a JSON/YAML string, or the path of a .json/.yaml file."""
        if isinstance(raw, QuantConfig):
            return raw
        entries = raw_entries(raw, EXAMPLE, "a quantization config list")
        return cls(QuantEntry.parse(e, i, default_bits) for i, e in enumerate(entries))

    @classmethod
    def default(cls, types: tuple[str, ...], bits: int, op_types: tuple[str, ...] = LAYER_TYPES,
                extra: Iterable[dict] = ()) -> "QuantConfig":
        raw = [{"quant_types": list(types), "quant_bits": bits, "op_types": list(op_types)}, *extra]
        return cls((QuantEntry.parse(e, i, bits) for i, e in enumerate(raw)), given=False)

    def resolve(self, model: nn.Module, weight_scheme: Scheme = WEIGHT_SCHEME) -> dict[str, LayerQuant]:
        """Module name → its quantizers (modules no entry quantizes are absent). Weights only
        where the module has one to quantize; an entry the user gave that selects no module, or
        names one the model lacks, is a one-line error."""
        mods = dict(model.named_modules())
        if self.given:
            self._check_names(mods)
        out: dict[str, LayerQuant] = {}
        hit: set[int] = set()
        for name, m in mods.items():
            if not name or (list(m.children()) and not isinstance(m, WEIGHTED)):
                continue  # containers: their leaves are matched
            win = None
            for e in self.entries:
                if e.selector.matches(name, _type_names(m)):
                    win = e
            if win is None:
                continue
            hit.add(win.index)
            if win.selector.exclude:
                continue
            bits = {t: b for t, b in win.bits.items() if t != "weight" or isinstance(m, WEIGHTED)}
            if bits:
                out[name] = LayerQuant(name, bits, win.scheme or weight_scheme, win.start_step, win.index)
        missed = [e for e in self.entries if e.index not in hit]
        if self.given and missed:
            raise ConfigError(f"config entry {missed[0].index} matches no module of the model: check its op_types / "
                              "op_names (types are class names such as Conv2d, Linear)")
        return out

    def _check_names(self, mods: dict[str, nn.Module]) -> None:
        names = [n for n in mods if n]
        for e in self.entries:
            for n in e.selector.op_names or ():
                if n not in mods:
                    hint = difflib.get_close_matches(n, names, n=1, cutoff=0.6)
                    raise ConfigError(f"config entry {e.index}: op_names '{n}' names no module of the model"
                                      + (f" (did you mean '{hint[0]}'?)" if hint else "")
                                      + ": use module names as in model.named_modules()")
