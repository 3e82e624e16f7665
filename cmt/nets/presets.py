"""Every named network preset, of every family, in one table (config ``network.preset``; the schema's enum is checked
against it by tests/test_registry.py)."""

from __future__ import annotations

from dataclasses import replace

from cmt.nets.dit import DiTConfig
from cmt.nets.edm2 import EDM2Config
from cmt.nets.unet import UNetConfig

DIT_SIZES = {"s": (12, 384, 6), "b": (12, 768, 12), "m": (16, 1024, 16), "l": (24, 1024, 16), "xl": (28, 1152, 16)}


def _dit(size: str, patch: int) -> DiTConfig:
    """DiT's sizes (depth, width, heads; DiT paper Table 1, MeanFlow's M) on ImageNet-256's SD-VAE latents, 32x32x4,
    1000 classes (latent.md 1.1)."""
    depth, width, heads = DIT_SIZES[size]
    return DiTConfig(32, 4, 4, patch, width, depth, heads, label_dim=1000)


def _edm2(img_resolution: int, img_channels: int, channels: int) -> EDM2Config:
    """EDM2's released size: 1000 classes, dropout 0.10 from M (256 channels) up (EDM2 paper Table 2)."""
    return EDM2Config(
        img_resolution, img_channels, 1000, model_channels=channels, dropout=0.10 if channels >= 256 else 0.0
    )


DIGITS_TINY = UNetConfig(
    img_resolution=8,
    in_channels=1,
    out_channels=1,
    model_channels=32,
    channel_mult=(1, 2),
    channel_mult_emb=2,
    num_blocks=1,
    attn_resolutions=(),
    dropout=0.0,
)

PRESETS: dict[str, UNetConfig | EDM2Config | DiTConfig] = {
    # DDPM++ (EDM's SongUNet): CIFAR-10 = EDM's "ddpmpp" config, 55.73M parameters
    "digits-tiny": DIGITS_TINY,
    # the digits' 4x4x4 latents (config/smoke-latent.yaml): an EDM teacher in latent space, as EDM2's on ImageNet-512
    "digits-latent-tiny": replace(DIGITS_TINY, img_resolution=4, in_channels=4, out_channels=4),
    "ddpmpp-cifar10": UNetConfig(img_resolution=32, dropout=0.13),
    "ddpmpp-64": UNetConfig(img_resolution=64, channel_mult=(1, 2, 2, 2), dropout=0.10),
    # EDM2: ImageNet-512 in the SD-VAE latent space (64x64x4) and ImageNet-64 in pixels
    **{
        f"edm2-img512-{size}": _edm2(64, 4, channels)
        for size, channels in {"xs": 128, "s": 192, "m": 256, "l": 320, "xl": 384, "xxl": 448}.items()
    },
    **{
        f"edm2-img64-{size}": _edm2(64, 3, channels)
        for size, channels in {"s": 192, "m": 256, "l": 320, "xl": 384}.items()
    },
    # DiT / SiT (MeanFlow's backbone): ImageNet-256 latents; tiny ones for the digits' 4x4x4 latents
    **{f"dit-{size}{patch}": _dit(size, patch) for size in DIT_SIZES for patch in (2, 4, 8)},
    "dit-digits-tiny": DiTConfig(4, 4, 4, patch_size=1, hidden_size=64, depth=4, num_heads=4),
    "dit-digits-tiny-p2": DiTConfig(4, 4, 4, patch_size=2, hidden_size=64, depth=4, num_heads=4),
}
