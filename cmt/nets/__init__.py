"""Networks by family (``families``: DDPM++ / EDM's SongUNet, EDM2's magnitude-preserving U-Net, DiT / SiT), their
presets in one table (``presets``)."""

from cmt.nets.dit import DiT, DiTConfig
from cmt.nets.edm2 import EDM2Config, EDM2UNet
from cmt.nets.families import FAMILIES, NetConfig, add_second_time, build_network, config_from_dict, network_config
from cmt.nets.presets import PRESETS
from cmt.nets.unet import SongUNet, UNetBlock, UNetConfig, count_parameters

__all__ = [
    "DiT",
    "DiTConfig",
    "EDM2Config",
    "EDM2UNet",
    "FAMILIES",
    "NetConfig",
    "PRESETS",
    "SongUNet",
    "UNetBlock",
    "UNetConfig",
    "add_second_time",
    "build_network",
    "config_from_dict",
    "count_parameters",
    "network_config",
]
