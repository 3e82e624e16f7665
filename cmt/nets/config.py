"""A network config's dict form (a checkpoint's ``architecture``): tuples as JSON lists, and the family's name
for every family but the default DDPM++ one (so DDPM++ architectures read as they always have)."""

from __future__ import annotations

from dataclasses import asdict
from typing import ClassVar, Self


class ArchitectureDict:
    """Mixin for frozen dataclass configs: ``to_dict`` / ``from_dict`` round trip through JSON."""

    family: ClassVar[str | None] = None

    def to_dict(self) -> dict:
        fields = {k: list(v) if isinstance(v, tuple) else v for k, v in asdict(self).items()}
        return {"family": self.family, **fields} if self.family else fields

    @classmethod
    def from_dict(cls, d: dict) -> Self:
        return cls(**{k: tuple(v) if isinstance(v, list) else v for k, v in d.items() if k != "family"})
