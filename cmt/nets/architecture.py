"""A network config's dict form (a checkpoint's ``architecture``): tuples as JSON lists, and its family's name
(``cmt.nets.families``; a checkpoint written before families were named is DDPM++)."""

from __future__ import annotations

from dataclasses import asdict
from typing import ClassVar, Self


class ArchitectureDict:
    """Mixin for frozen dataclass configs: ``to_dict`` / ``from_dict`` round trip through JSON, and the shape of one
    image the network takes (every family has ``in_channels`` and ``img_resolution``)."""

    family: ClassVar[str]
    parameterisation: ClassVar[str] = "edm"  # how ``cmt.numerics.precond.Denoiser`` reads the network's output
    in_channels: int
    img_resolution: int

    @property
    def image_shape(self) -> tuple[int, int, int]:
        return (self.in_channels, self.img_resolution, self.img_resolution)

    def to_dict(self) -> dict:
        fields = {k: list(v) if isinstance(v, tuple) else v for k, v in asdict(self).items()}
        return {"family": self.family, **fields}

    @classmethod
    def from_dict(cls, d: dict) -> Self:
        return cls(**{k: tuple(v) if isinstance(v, list) else v for k, v in d.items() if k != "family"})
