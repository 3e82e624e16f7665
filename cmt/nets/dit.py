"""The transformer family: DiT (Peebles & Xie 2023) with SiT's time in [0, 1] and MeanFlow's second time input
(latent.md 1), written for forward-mode AD.

Module and parameter names follow DiT / SiT (``x_embedder.proj``, ``t_embedder.mlp.0``, ``y_embedder.embedding_table``,
``blocks.<i>.attn.qkv``, ``blocks.<i>.adaLN_modulation.1``, ``final_layer.linear``, ``pos_embed``) so released SiT
weights load by name; MeanFlow's ``h_embedder`` embeds the second time h = t − r. Attention is an explicit softmax
(no fused kernel), so ``torch.func.jvp`` works through the network (latent.md 1.3), and every linear layer is a
``TangentLinear``, whose JVP skips the weights' zero tangent (latent.md 1.4).

The network takes the call of every family: ``net(x, noise_labels, second_time, class_labels)`` with the time t in
``noise_labels`` (fed raw, in [0, 1]), h in ``second_time`` and one-hot class labels, an all-zero row meaning the null
class (label dropout for classifier-free guidance).
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import ClassVar

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from cmt.errors import BadInput
from cmt.nets.architecture import ArchitectureDict
from cmt.nets.tangent_linear import TangentLinear

FREQUENCY_CHANNELS = 256  # the sinusoidal time features each time embedder starts from (latent.md 1.1)


@dataclass(frozen=True)
class DiTConfig(ArchitectureDict):
    family: ClassVar[str] = "dit"
    parameterisation: ClassVar[str] = "flow"  # raw velocity u(z, t, h), no EDM preconditioning (latent.md 3)
    img_resolution: int = 32
    in_channels: int = 4
    out_channels: int = 4
    patch_size: int = 2
    hidden_size: int = 1152
    depth: int = 28
    num_heads: int = 16
    mlp_ratio: float = 4.0
    label_dim: int = 0
    second_time: bool = False
    time_reversed: bool = False  # SiT's time, noise at 0 and data at 1: the t embedder reads 1 − t (latent.md 7)

    @property
    def grid(self) -> int:
        """Patches along a side."""
        return self.img_resolution // self.patch_size


def timestep_features(t: Tensor, channels: int = FREQUENCY_CHANNELS, max_period: float = 10000.0) -> Tensor:
    """[cos(t·f_i), sin(t·f_i)] with f_i = max_period^(−i / (channels/2)) (DiT's TimestepEmbedder; latent.md 1.1)."""
    half, dtype = channels // 2, torch.promote_types(t.dtype, torch.float32)  # at least fp32, fp64 kept
    freqs = torch.exp(-math.log(max_period) * torch.arange(half, dtype=dtype, device=t.device) / half)
    args = t.to(dtype)[:, None] * freqs[None]
    return torch.cat([torch.cos(args), torch.sin(args)], dim=-1)


def sincos_positions(dim: int, grid: int) -> Tensor:
    """Fixed 2-D sin-cos positions, (grid², dim): half the channels for the row, half for the column, each
    [sin(p·ω), cos(p·ω)] with ω_i = 10000^(−i / (dim/4)) (DiT's get_2d_sincos_pos_embed; latent.md 1.1)."""
    omega = 1.0 / 10000 ** (torch.arange(dim // 4, dtype=torch.float64) / (dim / 4))
    rows, cols = torch.meshgrid(
        torch.arange(grid, dtype=torch.float64), torch.arange(grid, dtype=torch.float64), indexing="ij"
    )

    def axis(pos: Tensor) -> Tensor:
        args = pos.reshape(-1, 1) * omega[None]
        return torch.cat([torch.sin(args), torch.cos(args)], dim=1)

    return torch.cat([axis(cols), axis(rows)], dim=1).to(torch.float32)  # DiT: width first, then height


def modulate(x: Tensor, shift: Tensor, scale: Tensor) -> Tensor:
    """adaLN: x·(1 + scale) + shift, per sample (DiT's modulate)."""
    return x * (1 + scale[:, None]) + shift[:, None]


class TimestepEmbedder(nn.Module):
    """A scalar time → hidden_size: sinusoidal features, then Linear, SiLU, Linear (``mlp.0``, ``mlp.2``)."""

    def __init__(self, hidden_size: int):
        super().__init__()
        self.mlp = nn.Sequential(
            TangentLinear(FREQUENCY_CHANNELS, hidden_size), nn.SiLU(), TangentLinear(hidden_size, hidden_size)
        )

    def forward(self, t: Tensor) -> Tensor:
        return self.mlp(timestep_features(t).to(self.mlp[0].weight.dtype))


class LabelEmbedder(nn.Module):
    """One-hot labels → a row of ``embedding_table`` (label_dim + 1 rows, the last the null class): the row an all-zero
    label selects is the null one, so dropping a label is zeroing it (latent.md 1.1: 1001 rows, null = 1000)."""

    def __init__(self, label_dim: int, hidden_size: int):
        super().__init__()
        self.embedding_table = nn.Embedding(label_dim + 1, hidden_size)

    def forward(self, onehot: Tensor) -> Tensor:
        null = 1 - onehot.sum(dim=1, keepdim=True)
        weights = torch.cat([onehot, null], dim=1).to(self.embedding_table.weight.dtype)
        return weights @ self.embedding_table.weight


class Attention(nn.Module):
    """Multi-head self-attention with an explicit softmax, so forward-mode AD goes through it (latent.md 1.3)."""

    def __init__(self, dim: int, num_heads: int):
        super().__init__()
        self.num_heads = num_heads
        self.qkv = TangentLinear(dim, 3 * dim)
        self.proj = TangentLinear(dim, dim)

    def forward(self, x: Tensor) -> Tensor:
        b, n, d = x.shape
        q, k, v = self.qkv(x).reshape(b, n, 3, self.num_heads, d // self.num_heads).permute(2, 0, 3, 1, 4)
        weights = torch.softmax(q @ k.transpose(-2, -1) / math.sqrt(d // self.num_heads), dim=-1)
        return self.proj((weights @ v).transpose(1, 2).reshape(b, n, d))


class Mlp(nn.Module):
    def __init__(self, dim: int, hidden: int):
        super().__init__()
        self.fc1, self.fc2 = TangentLinear(dim, hidden), TangentLinear(hidden, dim)

    def forward(self, x: Tensor) -> Tensor:
        return self.fc2(F.gelu(self.fc1(x), approximate="tanh"))


class DiTBlock(nn.Module):
    """adaLN-Zero block: shift, scale and gate of attention and MLP from the conditioning, gates start at 0."""

    def __init__(self, dim: int, num_heads: int, mlp_ratio: float):
        super().__init__()
        self.norm1 = nn.LayerNorm(dim, elementwise_affine=False, eps=1e-6)
        self.attn = Attention(dim, num_heads)
        self.norm2 = nn.LayerNorm(dim, elementwise_affine=False, eps=1e-6)
        self.mlp = Mlp(dim, int(dim * mlp_ratio))
        self.adaLN_modulation = nn.Sequential(nn.SiLU(), TangentLinear(dim, 6 * dim))

    def forward(self, x: Tensor, c: Tensor) -> Tensor:
        shift1, scale1, gate1, shift2, scale2, gate2 = self.adaLN_modulation(c).chunk(6, dim=1)
        x = x + gate1[:, None] * self.attn(modulate(self.norm1(x), shift1, scale1))
        return x + gate2[:, None] * self.mlp(modulate(self.norm2(x), shift2, scale2))


class FinalLayer(nn.Module):
    def __init__(self, dim: int, patch_size: int, out_channels: int):
        super().__init__()
        self.norm_final = nn.LayerNorm(dim, elementwise_affine=False, eps=1e-6)
        self.linear = TangentLinear(dim, patch_size * patch_size * out_channels)
        self.adaLN_modulation = nn.Sequential(nn.SiLU(), TangentLinear(dim, 2 * dim))

    def forward(self, x: Tensor, c: Tensor) -> Tensor:
        shift, scale = self.adaLN_modulation(c).chunk(2, dim=1)
        return self.linear(modulate(self.norm_final(x), shift, scale))


def check_shape(cfg: DiTConfig) -> None:
    """Refuse a config whose image does not split into patches, or whose width does not split into heads and into
    the four sin-cos position blocks."""
    if cfg.img_resolution % cfg.patch_size:
        raise BadInput(f"network.patch_size: {cfg.patch_size} does not divide img_resolution {cfg.img_resolution}")
    if cfg.hidden_size % cfg.num_heads or cfg.hidden_size % 4:
        raise BadInput(
            f"network.hidden_size: {cfg.hidden_size} must be a multiple of 4 and of num_heads {cfg.num_heads}"
        )


class DiT(nn.Module):
    """DiT / SiT F(x, t[, h], labels): patches, + fixed positions, adaLN-Zero blocks on c = t_emb (+ h_emb) + y_emb,
    a zero-initialised output layer, unpatchified to ``out_channels``."""

    def __init__(self, cfg: DiTConfig):
        super().__init__()
        check_shape(cfg)
        self.cfg = cfg
        d = cfg.hidden_size
        self.x_embedder = nn.Module()
        self.x_embedder.proj = nn.Conv2d(cfg.in_channels, d, cfg.patch_size, stride=cfg.patch_size)
        self.register_buffer("pos_embed", sincos_positions(d, cfg.grid)[None])
        self.t_embedder = TimestepEmbedder(d)
        if cfg.second_time:
            self.h_embedder = TimestepEmbedder(d)
        if cfg.label_dim:
            self.y_embedder = LabelEmbedder(cfg.label_dim, d)
        self.blocks = nn.ModuleList(DiTBlock(d, cfg.num_heads, cfg.mlp_ratio) for _ in range(cfg.depth))
        self.final_layer = FinalLayer(d, cfg.patch_size, cfg.out_channels)
        self._initialize()

    def _initialize(self) -> None:
        """DiT's init: Xavier-uniform linears with zero bias, the patch projection as a linear, N(0, 0.02) time MLPs
        and label table, and zeros for every adaLN modulation and the output layer (adaLN-Zero). The h embedder's
        last layer starts at zero too, so adding it to a one-time network changes nothing (latent.md 1.2)."""
        for module in self.modules():
            if isinstance(module, nn.Linear):
                nn.init.xavier_uniform_(module.weight)
                nn.init.zeros_(module.bias)
        proj = self.x_embedder.proj
        nn.init.xavier_uniform_(proj.weight.view(proj.weight.shape[0], -1))
        nn.init.zeros_(proj.bias)
        nn.init.normal_(self.t_embedder.mlp[0].weight, std=0.02)
        nn.init.normal_(self.t_embedder.mlp[2].weight, std=0.02)
        if self.cfg.second_time:
            nn.init.normal_(self.h_embedder.mlp[0].weight, std=0.02)
        if self.cfg.label_dim:
            nn.init.normal_(self.y_embedder.embedding_table.weight, std=0.02)
        zeroed = [block.adaLN_modulation[-1] for block in self.blocks]
        zeroed += [self.final_layer.adaLN_modulation[-1], self.final_layer.linear]
        zeroed += [self.h_embedder.mlp[2]] if self.cfg.second_time else []
        for layer in zeroed:
            nn.init.zeros_(layer.weight)
            nn.init.zeros_(layer.bias)

    def condition(self, t: Tensor, h: Tensor | None, class_labels: Tensor | None) -> Tensor:
        """c = t_emb + h_emb + y_emb (MeanFlow's DiT sums its two time embeddings and the label's; latent.md 1.1); a
        network in SiT's time embeds 1 − t, the same instant (latent.md 7)."""
        c = self.t_embedder(1 - t if self.cfg.time_reversed else t)
        if self.cfg.second_time:
            if h is None:
                raise ValueError("this network was built with second_time=True and needs a second time input")
            c = c + self.h_embedder(h)
        elif h is not None:
            raise ValueError("a second time input was given to a network built without second_time")
        if self.cfg.label_dim:
            if class_labels is None:
                raise ValueError(
                    f"this network is class-conditional (label_dim {self.cfg.label_dim}) and needs class labels"
                )
            c = c + self.y_embedder(class_labels)
        elif class_labels is not None:
            raise ValueError("class labels were given to an unconditional network (label_dim 0)")
        return c

    def unpatchify(self, x: Tensor) -> Tensor:
        """(B, grid², p²·C) → (B, C, H, W)."""
        p, g, c = self.cfg.patch_size, self.cfg.grid, self.cfg.out_channels
        x = x.reshape(x.shape[0], g, g, p, p, c)
        return torch.einsum("nhwpqc->nchpwq", x).reshape(x.shape[0], c, g * p, g * p)

    def forward(
        self, x: Tensor, noise_labels: Tensor, second_time: Tensor | None = None, class_labels: Tensor | None = None
    ) -> Tensor:
        c = self.condition(noise_labels, second_time, class_labels).to(x.dtype)
        tokens = self.x_embedder.proj(x).flatten(2).transpose(1, 2) + self.pos_embed.to(x.dtype)
        for block in self.blocks:
            tokens = block(tokens, c)
        return self.unpatchify(self.final_layer(tokens, c))
