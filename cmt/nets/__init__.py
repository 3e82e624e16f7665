"""Networks: the EDM-style U-Net (DDPM++ / SongUNet naming)."""

from cmt.nets.unet import (
    PRESETS,
    SongUNet,
    UNetBlock,
    UNetConfig,
    add_second_time,
    build_unet,
    count_parameters,
    network_config,
)

__all__ = [
    "PRESETS",
    "SongUNet",
    "UNetBlock",
    "UNetConfig",
    "add_second_time",
    "build_unet",
    "count_parameters",
    "network_config",
]
