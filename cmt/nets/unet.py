"""EDM-style U-Net of the DDPM++ family ("SongUNet" in EDM's networks.py), written for forward-mode AD.

Module and parameter names follow EDM's SongUNet (``enc.32x32_conv``, ``enc.16x16_down``,
``dec.8x8_in0``, ``dec.32x32_aux_conv``, ``map_noise``, ``map_layer0`` ...) so that official EDM
weights can be copied by name (method.md 12.2).  Every op is a plain differentiable torch op (no
custom autograd functions, no fused attention), so ``torch.func.jvp`` works through the network.

An optional second time input (``second_time=True``) adds a zero-initialised embedding branch
``map_time2`` whose output is added to the noise embedding before ``map_layer0``, the way EDM adds
label and augmentation embeddings (numerics.md 6.1): a converted single-time model starts out
computing exactly what its parent computed.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import ClassVar

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from cmt.nets.architecture import ArchitectureDict
from cmt.nets.resample import fir_filter, fir_resample


@dataclass(frozen=True)
class UNetConfig(ArchitectureDict):
    family: ClassVar[str] = "ddpmpp"
    img_resolution: int = 32
    in_channels: int = 3
    out_channels: int = 3
    model_channels: int = 128
    channel_mult: tuple[int, ...] = (2, 2, 2)
    channel_mult_emb: int = 4
    num_blocks: int = 4
    attn_resolutions: tuple[int, ...] = (16,)
    dropout: float = 0.10
    num_heads: int = 1
    label_dim: int = 0
    second_time: bool = False
    resample_filter: tuple[int, ...] = (1, 1)


def _xavier(shape: tuple[int, ...], fan_in: int, fan_out: int, gain: float) -> Tensor:
    """Xavier-uniform init scaled by ``gain`` (EDM's weight_init 'xavier_uniform')."""
    return gain * math.sqrt(6 / (fan_in + fan_out)) * (torch.rand(*shape) * 2 - 1)


class Linear(nn.Module):
    def __init__(self, in_features: int, out_features: int, bias: bool = True, gain: float = 1.0):
        super().__init__()
        self.weight = nn.Parameter(_xavier((out_features, in_features), in_features, out_features, gain))
        self.bias = nn.Parameter(torch.zeros(out_features)) if bias else None

    def forward(self, x: Tensor) -> Tensor:
        return F.linear(x, self.weight.to(x.dtype), None if self.bias is None else self.bias.to(x.dtype))


class Conv2d(nn.Module):
    """Convolution with optional 2x up/down resampling by a fixed FIR filter (EDM's Conv2d)."""

    def __init__(
        self,
        in_channels: int,
        out_channels: int,
        kernel: int,
        up: bool = False,
        down: bool = False,
        resample_filter: tuple[int, ...] = (1, 1),
        gain: float = 1.0,
    ):
        super().__init__()
        self.in_channels, self.out_channels, self.up, self.down = in_channels, out_channels, up, down
        fan_in, fan_out = in_channels * kernel * kernel, out_channels * kernel * kernel
        self.weight = (
            nn.Parameter(_xavier((out_channels, in_channels, kernel, kernel), fan_in, fan_out, gain))
            if kernel
            else None
        )
        self.bias = nn.Parameter(torch.zeros(out_channels)) if kernel else None
        self.register_buffer("resample_filter", fir_filter(resample_filter) if (up or down) else None)

    def forward(self, x: Tensor) -> Tensor:
        if self.resample_filter is not None:
            x = fir_resample(x, self.resample_filter, up=self.up)
        if self.weight is not None:
            x = F.conv2d(x, self.weight.to(x.dtype), padding=self.weight.shape[-1] // 2)
            x = x + self.bias.to(x.dtype).reshape(1, -1, 1, 1)
        return x


class GroupNorm(nn.Module):
    def __init__(self, num_channels: int, num_groups: int = 32, min_channels_per_group: int = 4, eps: float = 1e-6):
        super().__init__()
        self.num_groups = min(num_groups, num_channels // min_channels_per_group)
        self.eps = eps
        self.weight = nn.Parameter(torch.ones(num_channels))
        self.bias = nn.Parameter(torch.zeros(num_channels))

    def forward(self, x: Tensor) -> Tensor:
        return F.group_norm(x, self.num_groups, self.weight.to(x.dtype), self.bias.to(x.dtype), self.eps)


class PositionalEmbedding(nn.Module):
    """Sinusoidal embedding of a scalar per sample (Transformer / DDPM++), output order [cos, sin]."""

    def __init__(self, num_channels: int, max_positions: int = 10000, endpoint: bool = True):
        super().__init__()
        self.num_channels, self.max_positions, self.endpoint = num_channels, max_positions, endpoint

    def forward(self, x: Tensor) -> Tensor:
        half = self.num_channels // 2
        dtype = torch.promote_types(x.dtype, torch.float32)  # fp32 at least; fp64 stays fp64
        freqs = torch.arange(half, dtype=dtype, device=x.device) / (half - int(self.endpoint))
        freqs = (1 / self.max_positions) ** freqs
        x = x.to(dtype).outer(freqs)
        return torch.cat([x.cos(), x.sin()], dim=1)


def _swap_halves(emb: Tensor) -> Tensor:
    """[cos, sin] -> [sin, cos], as EDM's SongUNet does after map_noise."""
    return emb.reshape(emb.shape[0], 2, -1).flip(1).reshape(emb.shape)


class UNetBlock(nn.Module):
    """Residual block with additive embedding, optional 2x resampling and optional self-attention."""

    def __init__(
        self,
        in_channels: int,
        out_channels: int,
        emb_channels: int,
        up: bool = False,
        down: bool = False,
        attention: bool = False,
        num_heads: int = 1,
        dropout: float = 0.0,
        resample_filter: tuple[int, ...] = (1, 1),
    ):
        super().__init__()
        self.in_channels, self.out_channels = in_channels, out_channels
        self.num_heads = num_heads if attention else 0
        self.dropout = dropout
        self.skip_scale = math.sqrt(0.5)
        self.norm0 = GroupNorm(in_channels)
        self.conv0 = Conv2d(in_channels, out_channels, 3, up=up, down=down, resample_filter=resample_filter)
        self.affine = Linear(emb_channels, out_channels)
        self.norm1 = GroupNorm(out_channels)
        self.conv1 = Conv2d(out_channels, out_channels, 3, gain=1e-5)
        self.skip = None
        if out_channels != in_channels or up or down:
            self.skip = Conv2d(in_channels, out_channels, 1, up=up, down=down, resample_filter=resample_filter)
        if self.num_heads:
            self.norm2 = GroupNorm(out_channels)
            self.qkv = Conv2d(out_channels, out_channels * 3, 1, gain=math.sqrt(0.2))
            self.proj = Conv2d(out_channels, out_channels, 1, gain=1e-5)

    def forward(self, x: Tensor, emb: Tensor) -> Tensor:
        orig = x
        x = self.conv0(F.silu(self.norm0(x)))
        x = F.silu(self.norm1(x + self.affine(emb)[:, :, None, None].to(x.dtype)))
        x = self.conv1(F.dropout(x, p=self.dropout, training=self.training))
        x = (x + (self.skip(orig) if self.skip is not None else orig)) * self.skip_scale
        if self.num_heads:
            x = (x + self.proj(self._attention(self.norm2(x)))) * self.skip_scale
        return x

    def _attention(self, x: Tensor) -> Tensor:
        """Plain softmax attention over pixels (einsum + softmax: forward-mode AD safe)."""
        b, c, h, w = x.shape
        q, k, v = self.qkv(x).reshape(b * self.num_heads, c // self.num_heads, 3, h * w).unbind(2)
        weights = torch.softmax(torch.einsum("ncq,nck->nqk", q, k / math.sqrt(q.shape[1])), dim=2)
        return torch.einsum("nqk,nck->ncq", weights, v).reshape(b, c, h, w)


class SongUNet(nn.Module):
    """DDPM++ U-Net F(x, c_noise[, second_time]) with EDM's module names."""

    def __init__(self, cfg: UNetConfig):
        super().__init__()
        self.cfg = cfg
        emb_channels = cfg.model_channels * cfg.channel_mult_emb
        noise_channels = cfg.model_channels
        block = dict(
            emb_channels=emb_channels, num_heads=cfg.num_heads, dropout=cfg.dropout, resample_filter=cfg.resample_filter
        )

        self.map_noise = PositionalEmbedding(noise_channels)
        if cfg.label_dim:
            self.map_label = Linear(cfg.label_dim, noise_channels)
        if cfg.second_time:
            self.map_time2_embed = PositionalEmbedding(noise_channels)
            self.map_time2 = Linear(noise_channels, noise_channels, bias=False, gain=0.0)
        self.map_layer0 = Linear(noise_channels, emb_channels)
        self.map_layer1 = Linear(emb_channels, emb_channels)

        self.enc = nn.ModuleDict()
        cout = cfg.in_channels
        for level, mult in enumerate(cfg.channel_mult):
            res = cfg.img_resolution >> level
            if level == 0:
                self.enc[f"{res}x{res}_conv"] = Conv2d(cout, cfg.model_channels, 3)
                cout = cfg.model_channels
            else:
                self.enc[f"{res}x{res}_down"] = UNetBlock(cout, cout, down=True, **block)
            for idx in range(cfg.num_blocks):
                cin, cout = cout, cfg.model_channels * mult
                self.enc[f"{res}x{res}_block{idx}"] = UNetBlock(
                    cin, cout, attention=res in cfg.attn_resolutions, **block
                )
        skips = [m.out_channels for m in self.enc.values()]

        self.dec = nn.ModuleDict()
        for level, mult in reversed(list(enumerate(cfg.channel_mult))):
            res = cfg.img_resolution >> level
            if level == len(cfg.channel_mult) - 1:
                self.dec[f"{res}x{res}_in0"] = UNetBlock(cout, cout, attention=True, **block)
                self.dec[f"{res}x{res}_in1"] = UNetBlock(cout, cout, **block)
            else:
                self.dec[f"{res}x{res}_up"] = UNetBlock(cout, cout, up=True, **block)
            for idx in range(cfg.num_blocks + 1):
                cin, cout = cout + skips.pop(), cfg.model_channels * mult
                attn = idx == cfg.num_blocks and res in cfg.attn_resolutions
                self.dec[f"{res}x{res}_block{idx}"] = UNetBlock(cin, cout, attention=attn, **block)
        res = cfg.img_resolution
        self.dec[f"{res}x{res}_aux_norm"] = GroupNorm(cout)
        self.dec[f"{res}x{res}_aux_conv"] = Conv2d(cout, cfg.out_channels, 3, gain=1e-5)

    def embed(
        self, noise_labels: Tensor, second_time: Tensor | None = None, class_labels: Tensor | None = None
    ) -> Tensor:
        emb = _swap_halves(self.map_noise(noise_labels))
        if self.cfg.second_time:
            if second_time is None:
                raise ValueError("this network was built with second_time=True and needs a second time input")
            emb = emb + self.map_time2(_swap_halves(self.map_time2_embed(second_time)))
        elif second_time is not None:
            raise ValueError("a second time input was given to a network built without second_time")
        emb = emb + self._label_embedding(class_labels, emb.dtype)
        emb = F.silu(self.map_layer0(emb))
        return F.silu(self.map_layer1(emb))

    def _label_embedding(self, class_labels: Tensor | None, dtype: torch.dtype) -> Tensor | float:
        """map_label of one-hot labels times sqrt(label_dim), as EDM's SongUNet (method.md 12.5)."""
        if not self.cfg.label_dim:
            if class_labels is not None:
                raise ValueError("class labels were given to an unconditional network (label_dim 0)")
            return 0.0
        if class_labels is None:
            raise ValueError(
                f"this network is class-conditional (label_dim {self.cfg.label_dim}) and needs class labels"
            )
        return self.map_label(class_labels.to(dtype) * math.sqrt(self.cfg.label_dim))

    def forward(
        self, x: Tensor, noise_labels: Tensor, second_time: Tensor | None = None, class_labels: Tensor | None = None
    ) -> Tensor:
        emb = self.embed(noise_labels, second_time, class_labels).to(x.dtype)
        skips = []
        for block in self.enc.values():
            x = block(x, emb) if isinstance(block, UNetBlock) else block(x)
            skips.append(x)
        out = None
        for name, block in self.dec.items():
            if name.endswith("aux_norm"):
                out = block(x)
            elif name.endswith("aux_conv"):
                out = block(F.silu(out))
            else:
                if x.shape[1] != block.in_channels:
                    x = torch.cat([x, skips.pop()], dim=1)
                x = block(x, emb)
        return out


def count_parameters(net: nn.Module) -> int:
    return sum(p.numel() for p in net.parameters())
