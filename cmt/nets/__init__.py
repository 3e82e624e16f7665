"""Networks: the EDM-style U-Net (DDPM++ / SongUNet naming) and EDM2's magnitude-preserving U-Net."""

from cmt.nets.build import NetConfig, add_second_time, build_network, config_from_dict, network_config
from cmt.nets.edm2 import EDM2_PRESETS, EDM2Config, EDM2UNet
from cmt.nets.unet import (
    PRESETS,
    SongUNet,
    UNetBlock,
    UNetConfig,
    build_unet,
    count_parameters,
)

__all__ = [
    "EDM2Config",
    "EDM2UNet",
    "EDM2_PRESETS",
    "NetConfig",
    "PRESETS",
    "SongUNet",
    "UNetBlock",
    "UNetConfig",
    "add_second_time",
    "build_network",
    "build_unet",
    "config_from_dict",
    "count_parameters",
    "network_config",
]
