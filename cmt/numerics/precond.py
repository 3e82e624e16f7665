"""EDM preconditioning, the consistency-model boundary variant, and EDM <-> flow-matching conversions.

D(x, sigma) = c_skip * x + c_out * F(c_in * x, c_noise)   (EDM, Karras et al. 2022, Table 1)
Formulas restated in docs/numerics.md sections 2.1, 6 and 6.1.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable, Protocol, runtime_checkable

import torch
from torch import Tensor, nn

from cmt.errors import BadInput

SIGMA_DATA = 0.5


@dataclass(frozen=True)
class Scalings:
    c_skip: Tensor
    c_out: Tensor
    c_in: Tensor
    c_noise: Tensor


def edm_scalings(sigma: Tensor, sigma_data: float = SIGMA_DATA) -> Scalings:
    """EDM preconditioning coefficients (EDM Table 1, 'Ours')."""
    total = sigma**2 + sigma_data**2
    return Scalings(
        c_skip=sigma_data**2 / total,
        c_out=sigma * sigma_data / total.sqrt(),
        c_in=1 / total.sqrt(),
        c_noise=sigma.log() / 4,
    )


def boundary_scalings(sigma: Tensor, sigma_min: float, sigma_data: float = SIGMA_DATA) -> Scalings:
    """Consistency-model boundary variant: f(x, sigma_min) = x (ECT/CMT eval mode; numerics.md 2.1).

    Note the plain sigma^2 (not (sigma - sigma_min)^2) in the c_out denominator, as in ECT.
    """
    edm = edm_scalings(sigma, sigma_data)
    return Scalings(
        c_skip=sigma_data**2 / ((sigma - sigma_min) ** 2 + sigma_data**2),
        c_out=(sigma - sigma_min) * sigma_data / (sigma**2 + sigma_data**2).sqrt(),
        c_in=edm.c_in,
        c_noise=edm.c_noise,
    )


def edm_loss_weight(sigma: Tensor, sigma_data: float = SIGMA_DATA) -> Tensor:
    """lambda(sigma) = (sigma^2 + sigma_data^2) / (sigma * sigma_data)^2 = 1 / c_out^2 (EDM eq. 8, Table 1)."""
    return (sigma**2 + sigma_data**2) / (sigma * sigma_data) ** 2


class Denoiser(nn.Module):
    """Wraps a raw network F(x, c_noise[, c_noise2]) into a preconditioned denoiser.

    ``mode`` selects the scalings explicitly: ``"edm"`` (diffusion training, CMT/ECT train mode) or
    ``"boundary"`` (consistency eval mode, f(x, sigma_min) = x).  The attribute name ``model``
    matches EDM's preconditioner, so state-dict keys read ``model.enc.32x32_conv.weight``.

    A network whose family is parameterised by flow (``parameterisation`` "flow": the transformers) is no EDM
    network: its raw output is the mean velocity u(z, t, h) in flow-matching time, read as is by ``mean_velocity``
    and converted to a denoiser D = z − t·u (u fed t and the second time h; h = 0 is the instantaneous velocity)
    only where a sampler or objective asks for D (latent.md 3).
    """

    def __init__(self, model: nn.Module, sigma_data: float = SIGMA_DATA, sigma_min: float = 0.002, mode: str = "edm"):
        super().__init__()
        self.model = model
        self.sigma_data = sigma_data
        self.sigma_min = sigma_min
        self.amp_dtype: torch.dtype | None = None  # bf16: the network under autocast, preconditioning in fp32
        self.set_mode(mode)

    @property
    def parameterisation(self) -> str:
        """How the network's output is read: "edm" (preconditioned, EDM Table 1) or "flow" (u(z, t, h); latent.md 3)."""
        return self.model.cfg.parameterisation

    def set_mode(self, mode: str) -> "Denoiser":
        if mode not in ("edm", "boundary"):
            raise ValueError(f"unknown preconditioning mode {mode!r}; valid modes: edm, boundary")
        if mode == "boundary" and self.parameterisation == "flow":
            raise BadInput(
                f"a {self.model.cfg.family} network predicts a velocity and has no consistency boundary mode "
                "(latent.md 3); train it with a flow-map method (midtrain.form flowmap, posttrain meanflow)"
            )
        self.mode = mode
        return self

    def scalings(self, sigma: Tensor) -> Scalings:
        if self.mode == "boundary":
            return boundary_scalings(sigma, self.sigma_min, self.sigma_data)
        return edm_scalings(sigma, self.sigma_data)

    def network(self, x: Tensor, noise: Tensor, second_time: Tensor | None, class_labels: Tensor | None) -> Tensor:
        """The raw network on ``x`` (already in the network's dtype) and its noise input, under autocast when
        ``amp_dtype`` is set; the output in x's dtype."""
        with torch.autocast(x.device.type, dtype=self.amp_dtype or torch.bfloat16, enabled=self.amp_dtype is not None):
            return self.model(x, noise, second_time, class_labels).to(x.dtype)

    def forward(
        self, x: Tensor, sigma: Tensor, second_time: Tensor | None = None, class_labels: Tensor | None = None
    ) -> Tensor:
        """D(x, sigma); ``second_time`` (B,) is fed raw to the network's optional second time input, and
        ``class_labels`` (B, label_dim), one-hot, to a class-conditional network (EDM's convention).

        Computes in fp32 at least (EDM casts to fp32; fp64 inputs stay fp64) and returns x's dtype; with
        ``amp_dtype`` set only the network runs under autocast (config compute.precision).
        """
        dtype = torch.promote_types(x.dtype, torch.float32)
        sigma = torch.as_tensor(sigma, device=x.device).to(dtype).reshape(-1)
        if sigma.numel() == 1:
            sigma = sigma.expand(x.shape[0])
        col = sigma.reshape(-1, *([1] * (x.ndim - 1)))
        xc = x.to(dtype)
        if self.parameterisation == "flow":
            z, t = edm_to_fm(xc, col)
            u = self.network(z, t.reshape(-1), second_time, class_labels)
            return (z - t * u).to(x.dtype)  # the data estimate of the flow path: x = z_t − t·v (latent.md 3)
        c = self.scalings(col)
        f = self.network(c.c_in * xc, c.c_noise.reshape(-1), second_time, class_labels)
        return (c.c_skip * xc + c.c_out * f).to(x.dtype)

    def mean_velocity(self, z: Tensor, r: Tensor, t: Tensor, class_labels: Tensor | None = None) -> Tensor:
        """u(z, r, t) in flow-matching time: the network itself for a flow parameterisation (fed t and h = t − r;
        latent.md 3), else the EDM converter (``converted_mean_velocity``)."""
        if self.parameterisation == "edm":
            return converted_mean_velocity(lambda x, s, h: self(x, s, h, class_labels), z, r, t)
        dtype = torch.promote_types(z.dtype, torch.float32)
        return self.network(z.to(dtype), t.to(dtype), (t - r).to(dtype), class_labels).to(z.dtype)


@runtime_checkable
class FlowMap(Protocol):
    """A model that gives its mean velocity itself (``Denoiser``, or one with its labels bound)."""

    def mean_velocity(self, z: Tensor, r: Tensor, t: Tensor) -> Tensor: ...


def edm_to_fm(x: Tensor, sigma: Tensor) -> tuple[Tensor, Tensor]:
    """EDM state x_sigma -> flow-matching state z_t: z = x / (1 + sigma), t = sigma / (1 + sigma) (numerics.md 6.1)."""
    return x / (1 + sigma), sigma / (1 + sigma)


def fm_to_edm(z: Tensor, t: Tensor) -> tuple[Tensor, Tensor]:
    """Inverse of ``edm_to_fm``: sigma = t / (1 - t), x = z / (1 - t) (numerics.md 6.1)."""
    return z / (1 - t), t / (1 - t)


def fm_time(sigma: float) -> float:
    """A noise level in flow-matching time, t = sigma / (1 + sigma) (numerics.md 6.1)."""
    return sigma / (1 + sigma)


def fm_range(parameterisation: str, sigma_min: float, sigma_max: float) -> tuple[float, float]:
    """The flow-matching times a model is trained and sampled on: the EDM sigma range mapped (numerics.md 6.1), or
    all of [0, 1] for a network parameterised by flow, sampled from pure noise at t = 1 (latent.md 3)."""
    return (0.0, 1.0) if parameterisation == "flow" else (fm_time(sigma_min), fm_time(sigma_max))


def mean_velocity(model: Callable[..., Tensor], z: Tensor, r: Tensor, t: Tensor) -> Tensor:
    """u(z, r, t) of a model in flow-matching time: its own (``FlowMap``: a ``Denoiser`` of either
    parameterisation), or, for a bare EDM denoiser callable, the converter ``converted_mean_velocity``."""
    if isinstance(model, FlowMap):
        return model.mean_velocity(z, r, t)
    return converted_mean_velocity(model, z, r, t)


def converted_mean_velocity(model: Callable[..., Tensor], z: Tensor, r: Tensor, t: Tensor) -> Tensor:
    """u(z, r, t) of an EDM denoiser with second time input h = t - r, in flow-matching time (numerics.md 6.1 init
    rule): u = (z - D(z / (1 - t), t / (1 - t); h)) / t, so a zero-initialised second branch starts as the velocity."""
    t_col = t.reshape(-1, *([1] * (z.ndim - 1)))
    x, sigma = fm_to_edm(z, t_col)
    return (z - model(x, sigma.reshape(-1), t - r)) / t_col


def fm_velocity(denoiser: Callable[[Tensor, Tensor], Tensor], z: Tensor, t: Tensor) -> Tensor:
    """FM velocity of an EDM denoiser: v(z, t) = (z - D(z / (1 - t), t / (1 - t))) / t (numerics.md 6).

    ``t`` is broadcastable against ``z`` with leading batch dimension; valid on t in [t_min, t_max].
    """
    x, sigma = fm_to_edm(z, t)
    return (z - denoiser(x, sigma.reshape(-1))) / t


def fm_mean_velocity(z_t: Tensor, t: Tensor, z_r: Tensor, r: Tensor) -> Tensor:
    """Finite-difference mean velocity u = (z_t - z_r) / (t - r) in flow-matching time (MeanFlow eq. 3)."""
    return (z_t - z_r) / (t - r)
