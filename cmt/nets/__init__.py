"""Networks: the EDM-style U-Net (DDPM++ / SongUNet naming)."""

from cmt.nets.unet import (
    PRESETS,
    SongUNet,
    UNetConfig,
    add_second_time,
    build_unet,
    count_parameters,
    network_config,
)

__all__ = ["PRESETS", "SongUNet", "UNetConfig", "add_second_time", "build_unet", "count_parameters", "network_config"]
