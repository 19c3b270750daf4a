"""A case: the user's zeros, the slices that must go, and what stays and why; ``Cuts``
names a layer's coupled members (rows, columns, norm γ/β) while a case is written."""
from __future__ import annotations

from dataclasses import dataclass, field
from torch import nn

Cut = tuple[str, int, tuple[int, ...]]


@dataclass
class Case:
    masked: list[Cut]
    removed: list[Cut]
    # user zeros that stay: (what, a word the report's reason must hold: the holding writer, "rectangle", "output")
    kept: list[tuple[str, str]] = field(default_factory=list)
    # where the user's class cannot be made slim: (why, a word the report's reason must hold)
    no_user_class: tuple[str, str] | None = None


def _r(idx) -> tuple[int, ...]:
    return tuple(idx)


class Cuts:
    """Builds a case for one model: ``mask`` records the user's zeros, ``remove`` the slices
    that must go; ``rows``/``cols``/``norm`` name a layer's coupled members."""

    def __init__(self, model: nn.Module):
        self.mods = dict(model.named_modules())
        self.params = dict(model.named_parameters())
        self.case = Case([], [])

    def rows(self, name: str, idx, *, dim: int = 0) -> list[Cut]:
        """Output channels ``idx`` of a conv / linear (dim 1 of a ConvTranspose), with its bias."""
        out = [(f"{name}.weight", dim, _r(idx))]
        if getattr(self.mods[name], "bias", None) is not None:
            out.append((f"{name}.bias", 0, _r(idx)))
        return out

    def cols(self, name: str, idx, *, dim: int = 1) -> list[Cut]:
        """Input channels ``idx`` of a conv / linear (dim 0 of a ConvTranspose)."""
        return [(f"{name}.weight", dim, _r(idx))]

    def norm(self, name: str, idx) -> list[Cut]:
        """A norm's γ (and β) at ``idx``."""
        return [(f"{name}.{p}", 0, _r(idx)) for p in ("weight", "bias") if f"{name}.{p}" in self.params]

    def mask(self, *cuts: Cut | list[Cut]) -> None:
        self.case.masked += _flat(cuts)

    def remove(self, *cuts: Cut | list[Cut]) -> None:
        self.case.removed += _flat(cuts)

    def keep(self, what: str, reason: str) -> None:
        self.case.kept.append((what, reason))

    def no_user_class(self, why: str, reason: str) -> None:
        self.case.no_user_class = (why, reason)


def _flat(cuts) -> list[Cut]:
    out: list[Cut] = []
    for c in cuts:
        out += c if isinstance(c, list) else [c]
    return out


def _weight(name: str, dim: int, idx) -> Cut:
    return (f"{name}.weight", dim, _r(idx))
