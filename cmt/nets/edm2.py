"""EDM2's magnitude-preserving U-Net (Karras et al. 2024, "Analyzing and Improving the Training Dynamics of
Diffusion Models", Fig. 21), written from the paper's equations with EDM2's module names so released
weights load by name: ``emb_fourier``, ``emb_noise``, ``emb_label``, ``enc.64x64_conv``,
``enc.32x32_down``, ``dec.8x8_in0``, ``..._block{i}.conv_res0`` ..., ``out_conv``, ``out_gain``, and the
preconditioner's uncertainty head ``logvar_fourier`` / ``logvar_linear`` (kept here, inside the network,
so our ``Denoiser`` wraps it like the DDPM++ U-Net; a student may ignore it).

Every op is a plain differentiable torch op (``torch.func.jvp`` works through it), and the network takes
the same optional zero-initialised second time input as our DDPM++ U-Net: a Fourier embedding of the raw
second time through ``emb_time2``, added to the noise embedding with a learnt gain that starts at 0, so a
converted network computes exactly what its parent computed.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import ClassVar

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from cmt.nets.architecture import ArchitectureDict
from cmt.nets.resample import fir_resample


@dataclass(frozen=True)
class EDM2Config(ArchitectureDict):
    family: ClassVar[str] = "edm2"
    img_resolution: int = 64
    img_channels: int = 3
    label_dim: int = 0
    model_channels: int = 192
    channel_mult: tuple[int, ...] = (1, 2, 3, 4)
    channel_mult_noise: int | None = None  # None: channel_mult[0]
    channel_mult_emb: int | None = None  # None: max(channel_mult)
    num_blocks: int = 3
    attn_resolutions: tuple[int, ...] = (16, 8)
    label_balance: float = 0.5
    concat_balance: float = 0.5
    resample_filter: tuple[int, ...] = (1, 1)
    channels_per_head: int = 64
    dropout: float = 0.0
    res_balance: float = 0.3
    attn_balance: float = 0.3
    clip_act: float | None = 256
    logvar_channels: int = 128
    second_time: bool = False

    @property
    def in_channels(self) -> int:
        return self.img_channels


def normalize(x: Tensor, dim: tuple[int, ...] | int | None = None, eps: float = 1e-4) -> Tensor:
    """x / (eps + rms(x)) over ``dim`` (default: all but the first), in fp32 (EDM2 Eq. 66 / pixel norm)."""
    dim = tuple(range(1, x.ndim)) if dim is None else dim
    count = math.prod(x.shape[d] for d in ((dim,) if isinstance(dim, int) else dim))
    norm = torch.linalg.vector_norm(x, dim=dim, keepdim=True, dtype=torch.float32)
    return x / (eps + norm / math.sqrt(count)).to(x.dtype)


def mp_silu(x: Tensor) -> Tensor:
    """Magnitude-preserving SiLU: silu(x) / 0.596 (EDM2 Eq. 81)."""
    return F.silu(x) / 0.596


def mp_sum(a: Tensor, b: Tensor, t: float = 0.5) -> Tensor:
    """Magnitude-preserving blend ((1 - t) a + t b) / sqrt((1 - t)^2 + t^2) (EDM2 Eq. 88)."""
    return a.lerp(b, t) / math.sqrt((1 - t) ** 2 + t**2)


def mp_cat(a: Tensor, b: Tensor, t: float = 0.5) -> Tensor:
    """Magnitude-preserving channel concatenation with balance t (EDM2 Eq. 103)."""
    na, nb = a.shape[1], b.shape[1]
    c = math.sqrt((na + nb) / ((1 - t) ** 2 + t**2))
    return torch.cat([a * (c / math.sqrt(na) * (1 - t)), b * (c / math.sqrt(nb) * t)], dim=1)


class MPFourier(nn.Module):
    """sqrt(2) cos(x * freqs + phases), freqs ~ 2 pi N(0, 1), phases ~ 2 pi U(0, 1) (EDM2 Eq. 75)."""

    def __init__(self, num_channels: int, bandwidth: float = 1.0):
        super().__init__()
        self.register_buffer("freqs", 2 * math.pi * torch.randn(num_channels) * bandwidth)
        self.register_buffer("phases", 2 * math.pi * torch.rand(num_channels))

    def forward(self, x: Tensor) -> Tensor:
        y = x.to(torch.float32).outer(self.freqs.to(torch.float32)) + self.phases.to(torch.float32)
        return (y.cos() * math.sqrt(2)).to(x.dtype)


class MPConv(nn.Module):
    """Magnitude-preserving convolution (kernel k x k) or linear layer (kernel 0): weights normalised per output
    channel, scaled by gain / sqrt(fan_in) (EDM2 Eq. 47).

    Forced weight normalisation (Eq. 66) re-normalises the stored weights before every training step, as EDM2
    does at the start of its training forward pass; here the training loop calls ``before_training_step`` so
    that the forward pass itself changes nothing in place: it stays valid under ``torch.func.jvp`` (MeanFlow)
    and leaves ECT's no-grad target pass without it (method.md 8.2)."""

    def __init__(self, in_channels: int, out_channels: int, kernel: int):
        super().__init__()
        self.out_channels = out_channels
        shape = (out_channels, in_channels, kernel, kernel) if kernel else (out_channels, in_channels)
        self.weight = nn.Parameter(torch.randn(shape))

    @torch.no_grad()
    def before_training_step(self) -> None:
        """Forced weight normalisation of the stored weights (EDM2 Eq. 66)."""
        self.weight.copy_(normalize(self.weight.to(torch.float32)))

    def forward(self, x: Tensor, gain: Tensor | float = 1.0) -> Tensor:
        w = self.weight.to(torch.float32)
        w = normalize(w) * (gain / math.sqrt(w[0].numel()))
        w = w.to(x.dtype)
        if w.ndim == 2:
            return x @ w.t()
        return F.conv2d(x, w, padding=w.shape[-1] // 2)


class Block(nn.Module):
    """Encoder or decoder block with optional self-attention (EDM2 Fig. 21)."""

    def __init__(self, in_channels: int, out_channels: int, emb_channels: int, cfg: EDM2Config, **kind):
        super().__init__()
        self.flavor, self.resample = kind.get("flavor", "enc"), kind.get("resample", "keep")
        self.out_channels, self.cfg = out_channels, cfg
        self.num_heads = out_channels // cfg.channels_per_head if kind.get("attention") else 0
        self.dropout = cfg.dropout
        self.emb_gain = nn.Parameter(torch.zeros([]))
        self.conv_res0 = MPConv(out_channels if self.flavor == "enc" else in_channels, out_channels, 3)
        self.emb_linear = MPConv(emb_channels, out_channels, 0)
        self.conv_res1 = MPConv(out_channels, out_channels, 3)
        self.conv_skip = MPConv(in_channels, out_channels, 1) if in_channels != out_channels else None
        self.attn_qkv = MPConv(out_channels, out_channels * 3, 1) if self.num_heads else None
        self.attn_proj = MPConv(out_channels, out_channels, 1) if self.num_heads else None

    def forward(self, x: Tensor, emb: Tensor) -> Tensor:
        if self.resample != "keep":
            x = fir_resample(x, self.cfg.resample_filter, up=self.resample == "up")
        if self.flavor == "enc":
            if self.conv_skip is not None:
                x = self.conv_skip(x)
            x = normalize(x, dim=1)  # pixel norm
        y = self.conv_res0(mp_silu(x))
        scale = self.emb_linear(emb, gain=self.emb_gain) + 1
        y = mp_silu(y * scale[:, :, None, None].to(y.dtype))
        y = self.conv_res1(F.dropout(y, p=self.dropout, training=self.training))
        if self.flavor == "dec" and self.conv_skip is not None:
            x = self.conv_skip(x)
        x = mp_sum(x, y, self.cfg.res_balance)
        if self.num_heads:
            x = mp_sum(x, self.attn_proj(self._attention(x)), self.cfg.attn_balance)
        return x if self.cfg.clip_act is None else x.clamp(-self.cfg.clip_act, self.cfg.clip_act)

    def _attention(self, x: Tensor) -> Tensor:
        """Cosine attention over pixels: q, k, v pixel-normalised per head (einsum + softmax, jvp-safe)."""
        y = self.attn_qkv(x)
        y = y.reshape(y.shape[0], self.num_heads, -1, 3, y.shape[2] * y.shape[3])
        q, k, v = normalize(y, dim=2).unbind(3)
        weights = torch.einsum("nhcq,nhck->nhqk", q, k / math.sqrt(q.shape[2])).softmax(dim=3)
        return torch.einsum("nhqk,nhck->nhcq", weights, v).reshape(x.shape)


class EDM2UNet(nn.Module):
    """EDM2's U-Net F(x, c_noise[, second_time][, class_labels]) plus the preconditioner's uncertainty head."""

    def __init__(self, cfg: EDM2Config):
        super().__init__()
        self.cfg = cfg
        cblock = [cfg.model_channels * m for m in cfg.channel_mult]
        cnoise = cfg.model_channels * (cfg.channel_mult_noise or cfg.channel_mult[0])
        cemb = cfg.model_channels * cfg.channel_mult_emb if cfg.channel_mult_emb else max(cblock)
        self.out_gain = nn.Parameter(torch.zeros([]))
        self.emb_fourier = MPFourier(cnoise)
        self.emb_noise = MPConv(cnoise, cemb, 0)
        if cfg.label_dim:
            self.emb_label = MPConv(cfg.label_dim, cemb, 0)
        if cfg.second_time:
            self.emb_time2_fourier = MPFourier(cnoise)
            self.emb_time2 = MPConv(cnoise, cemb, 0)
            self.time2_gain = nn.Parameter(torch.zeros([]))
        self.enc = nn.ModuleDict()
        cout = cfg.img_channels + 1
        for level, channels in enumerate(cblock):
            res = cfg.img_resolution >> level
            if level == 0:
                self.enc[f"{res}x{res}_conv"] = MPConv(cout, channels, 3)
                cout = channels
            else:
                self.enc[f"{res}x{res}_down"] = Block(cout, cout, cemb, cfg, resample="down")
            for idx in range(cfg.num_blocks):
                self.enc[f"{res}x{res}_block{idx}"] = Block(
                    cout, channels, cemb, cfg, attention=res in cfg.attn_resolutions
                )
                cout = channels
        skips = [block.out_channels for block in self.enc.values()]
        self.dec = nn.ModuleDict()
        for level, channels in reversed(list(enumerate(cblock))):
            res = cfg.img_resolution >> level
            if level == len(cblock) - 1:
                self.dec[f"{res}x{res}_in0"] = Block(cout, cout, cemb, cfg, flavor="dec", attention=True)
                self.dec[f"{res}x{res}_in1"] = Block(cout, cout, cemb, cfg, flavor="dec")
            else:
                self.dec[f"{res}x{res}_up"] = Block(cout, cout, cemb, cfg, flavor="dec", resample="up")
            for idx in range(cfg.num_blocks + 1):
                self.dec[f"{res}x{res}_block{idx}"] = Block(
                    cout + skips.pop(), channels, cemb, cfg, flavor="dec", attention=res in cfg.attn_resolutions
                )
                cout = channels
        self.out_conv = MPConv(cout, cfg.img_channels, 3)
        self.logvar_fourier = MPFourier(cfg.logvar_channels)
        self.logvar_linear = MPConv(cfg.logvar_channels, 1, 0)

    def embed(self, noise_labels: Tensor, second_time: Tensor | None, class_labels: Tensor | None) -> Tensor:
        emb = self.emb_noise(self.emb_fourier(noise_labels))
        if self.cfg.second_time:
            if second_time is None:
                raise ValueError("this network was built with second_time=True and needs a second time input")
            emb = emb + self.emb_time2(self.emb_time2_fourier(second_time), gain=self.time2_gain)
        elif second_time is not None:
            raise ValueError("a second time input was given to a network built without second_time")
        if self.cfg.label_dim:
            if class_labels is None:
                raise ValueError(f"this network is class-conditional (label_dim {self.cfg.label_dim}) and needs labels")
            labels = class_labels.to(emb.dtype) * math.sqrt(self.cfg.label_dim)  # EDM2's one-hot scaling
            emb = mp_sum(emb, self.emb_label(labels), self.cfg.label_balance)
        elif class_labels is not None:
            raise ValueError("class labels were given to an unconditional network (label_dim 0)")
        return mp_silu(emb)

    def forward(
        self, x: Tensor, noise_labels: Tensor, second_time: Tensor | None = None, class_labels: Tensor | None = None
    ) -> Tensor:
        emb = self.embed(noise_labels, second_time, class_labels).to(x.dtype)
        x = torch.cat([x, torch.ones_like(x[:, :1])], dim=1)
        skips = []
        for name, block in self.enc.items():
            x = block(x) if name.endswith("_conv") else block(x, emb)
            skips.append(x)
        for name, block in self.dec.items():
            if "block" in name:
                x = mp_cat(x, skips.pop(), self.cfg.concat_balance)
            x = block(x, emb)
        return self.out_conv(x, gain=self.out_gain)

    def logvar(self, noise_labels: Tensor) -> Tensor:
        """The uncertainty head u(sigma) of EDM2's preconditioner (EDM2 Eq. 21), one value per sample."""
        return self.logvar_linear(self.logvar_fourier(noise_labels)).reshape(-1)
