"""Network families, one registry: each family's config class, its builder, and how a config ``network`` section's
keys become its config fields. A checkpoint's ``architecture`` names its family (``cmt.nets.architecture``); one written
before families were named is DDPM++.

Adding a family: its module under ``cmt/nets/`` (a frozen config dataclass with ``ArchitectureDict`` and a
``family`` name, and the network built from it), one ``Family`` entry below, its presets in ``cmt.nets.presets``.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, fields, replace

from torch import nn

from cmt.errors import BadInput
from cmt.nets.architecture import ArchitectureDict
from cmt.nets.dit import DiT, DiTConfig
from cmt.nets.edm2 import EDM2Config, EDM2UNet
from cmt.nets.presets import PRESETS
from cmt.nets.unet import SongUNet, UNetConfig

NetConfig = UNetConfig | EDM2Config | DiTConfig
UNNAMED = "ddpmpp"  # the family of an architecture without a name (checkpoints written before families were named)


def _edm2_channels(overrides: dict) -> dict:
    """EDM2 outputs its input's channels: ``in_channels`` / ``out_channels`` set ``img_channels`` and must agree."""
    channels = {overrides.pop(k) for k in ("in_channels", "out_channels") if k in overrides}
    if len(channels) > 1:
        raise BadInput(f"network: an EDM2 network outputs its input's channels; in/out_channels differ {channels}")
    return overrides | ({"img_channels": channels.pop()} if channels else {})


@dataclass(frozen=True)
class Family:
    """One network family: its display name, config class, builder, the translation of config-section keys, and the
    name every parameter of its second time branch carries (``add_second_time``)."""

    display: str
    config: type[ArchitectureDict]
    build: Callable[..., nn.Module]
    section_keys: Callable[[dict], dict] = dict
    second_time_branch: str = "time2"


FAMILIES: dict[str, Family] = {
    "ddpmpp": Family("DDPM++", UNetConfig, SongUNet),
    "edm2": Family("EDM2", EDM2Config, EDM2UNet, _edm2_channels),
    "dit": Family("DiT", DiTConfig, DiT, second_time_branch="h_embedder"),
}


def family(cfg: NetConfig | dict) -> Family:
    """The family of a config or of an architecture dict; an unknown name is refused listing the known ones."""
    name = cfg.get("family", UNNAMED) if isinstance(cfg, dict) else cfg.family
    if name not in FAMILIES:
        raise BadInput(f"unknown network family {name!r}; known: {', '.join(FAMILIES)}")
    return FAMILIES[name]


def config_from_dict(arch: dict) -> NetConfig:
    """A network config from its dict form (a checkpoint's ``architecture``); a field its family lacks is refused."""
    fam = family(arch)
    unknown = sorted(set(arch) - {"family"} - {f.name for f in fields(fam.config)})
    if unknown:
        raise BadInput(f"a {fam.display} architecture has no field {unknown[0]!r}")
    return fam.config.from_dict(arch)


def build_network(cfg: NetConfig | dict) -> nn.Module:
    """A fresh network of the config's family."""
    cfg = config_from_dict(cfg) if isinstance(cfg, dict) else cfg
    return family(cfg).build(cfg)


def add_second_time(net: nn.Module) -> nn.Module:
    """Copy of a single-time network with a zero-initialised second time branch (identical output at init)."""
    twin = build_network(replace(net.cfg, second_time=True))
    missing, unexpected = twin.load_state_dict(net.state_dict(), strict=False)
    if unexpected or any(family(net.cfg).second_time_branch not in k for k in missing):
        raise RuntimeError(f"second-time conversion lost weights: missing={missing}, unexpected={unexpected}")
    return twin


def network_config(section: dict) -> NetConfig:
    """A config ``network`` section: a named preset (``cmt.nets.presets``), any other keys overriding its fields
    (translated by the family, e.g. EDM2's channels)."""
    name = section["preset"]
    if name not in PRESETS:
        raise BadInput(f"network.preset: unknown preset {name!r}; known: {', '.join(PRESETS)}")
    preset = PRESETS[name]
    fam = family(preset)
    overrides = fam.section_keys({k: v for k, v in section.items() if k != "preset"})
    unknown = sorted(set(overrides) - {f.name for f in fields(preset)})
    if unknown:
        raise BadInput(f"network.{unknown[0]}: not a field of {fam.display} preset {name!r}")
    return fam.config.from_dict({**preset.to_dict(), **overrides})
