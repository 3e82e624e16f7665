"""A network config's dict form (a checkpoint's ``architecture``): tuples as JSON lists, and its family's name
(``cmt.nets.families``; a checkpoint written before families were named is DDPM++)."""

from __future__ import annotations

from dataclasses import asdict
from typing import ClassVar, Self


class ArchitectureDict:
    """Mixin for frozen dataclass configs: ``to_dict`` / ``from_dict`` round trip through JSON."""

    family: ClassVar[str]

    def to_dict(self) -> dict:
        fields = {k: list(v) if isinstance(v, tuple) else v for k, v in asdict(self).items()}
        return {"family": self.family, **fields}

    @classmethod
    def from_dict(cls, d: dict) -> Self:
        return cls(**{k: tuple(v) if isinstance(v, list) else v for k, v in d.items() if k != "family"})
