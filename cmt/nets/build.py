"""Networks by family: our DDPM++ U-Net (EDM's SongUNet names, the default) and EDM2's magnitude-preserving U-Net.

A checkpoint's ``architecture`` is its config as a dict; ``family: edm2`` marks an EDM2 network (absent: DDPM++).
"""

from __future__ import annotations

from dataclasses import fields, replace

from torch import nn

from cmt.nets.edm2 import EDM2_PRESETS, EDM2Config, EDM2UNet
from cmt.nets.edm2 import FAMILY as EDM2
from cmt.nets.unet import PRESETS, SongUNet, UNetConfig

NetConfig = UNetConfig | EDM2Config


def config_from_dict(arch: dict) -> NetConfig:
    """A network config from its dict form (a checkpoint's ``architecture``)."""
    return EDM2Config.from_dict(arch) if arch.get("family") == EDM2 else UNetConfig.from_dict(arch)


def build_network(cfg: NetConfig | dict) -> nn.Module:
    """A fresh network of the config's family."""
    cfg = config_from_dict(cfg) if isinstance(cfg, dict) else cfg
    return EDM2UNet(cfg) if isinstance(cfg, EDM2Config) else SongUNet(cfg)


def add_second_time(net: nn.Module) -> nn.Module:
    """Copy of a single-time network with a zero-initialised second time branch (identical output at init)."""
    twin = build_network(replace(net.cfg, second_time=True))
    missing, unexpected = twin.load_state_dict(net.state_dict(), strict=False)
    if unexpected or any("time2" not in k for k in missing):
        raise RuntimeError(f"second-time conversion lost weights: missing={missing}, unexpected={unexpected}")
    return twin


def network_config(section: dict) -> NetConfig:
    """A config ``network`` section: a named preset (DDPM++ or EDM2), any other keys overriding its fields.  For an
    EDM2 preset ``in_channels`` sets its image channels (its output has as many) and ``out_channels`` must agree."""
    name = section["preset"]
    overrides = {k: v for k, v in section.items() if k != "preset"}
    if name not in EDM2_PRESETS:
        return UNetConfig.from_dict({**PRESETS[name].to_dict(), **overrides})
    channels = {overrides.pop(k) for k in ("in_channels", "out_channels") if k in overrides}
    if len(channels) > 1:
        raise ValueError(f"network: an EDM2 network outputs its input's channels; in/out_channels differ {channels}")
    overrides |= {"img_channels": channels.pop()} if channels else {}
    unknown = sorted(set(overrides) - {f.name for f in fields(EDM2Config)})
    if unknown:
        raise ValueError(f"network.{unknown[0]}: not a field of EDM2 preset {name!r}")
    return EDM2Config.from_dict({**EDM2_PRESETS[name].to_dict(), **overrides})
