"""Autoguidance (Karras et al. 2024, "Guiding a Diffusion Model with a Bad Version of Itself"): a main EDM denoiser
guided by a smaller, shorter-trained one of the same task, D_w = D_guide + w·(D_main − D_guide) (latent.md 8.1).

The pair is one denoiser to every caller (samplers, trajectory solvers, ECD's teacher step): one call runs both
networks, two network passes.
"""

from __future__ import annotations

from torch import Tensor, nn

from cmt.errors import BadInput
from cmt.numerics.precond import Denoiser, converted_mean_velocity


def autoguided(d_main: Tensor, d_guide: Tensor, weight: float) -> Tensor:
    """D_w = D_guide + w·(D_main − D_guide) (autoguidance eq. 1 with D_0 the guide; EDM2 ``generate_images.py``:
    ``ref_Dx.lerp(Dx, guidance)``). ``torch.lerp`` returns D_main exactly at w = 1 and D_guide at w = 0."""
    return d_guide.lerp(d_main, weight)


def check_pair(main: Denoiser, guide: Denoiser) -> None:
    """The guide must denoise the main network's task: EDM-parameterised, same data shape, classes and sigma_data."""
    for name, model in (("main", main), ("guide", guide)):
        if model.parameterisation != "edm":
            raise BadInput(
                f"autoguidance pairs EDM denoisers; the {name} network is a {model.model.cfg.family} flow map"
            )
    facts = {
        "image shape": (main.model.cfg.image_shape, guide.model.cfg.image_shape),
        "label_dim": (main.model.cfg.label_dim, guide.model.cfg.label_dim),
        "sigma_data": (main.sigma_data, guide.sigma_data),
    }
    for fact, (a, b) in facts.items():
        if a != b:
            raise BadInput(f"the guiding network's {fact} {b} differs from the main network's {a}")


class Autoguided(nn.Module):
    """A main denoiser and its guide called as one: ``forward`` is D_w (``autoguided``); ``model``, ``sigma_data``
    and ``parameterisation`` are the main network's, so shape and class lookups see the main network."""

    def __init__(self, main: Denoiser, guide: Denoiser, weight: float):
        check_pair(main, guide)
        super().__init__()
        self.main, self.guide, self.weight = main, guide, float(weight)

    @property
    def model(self) -> nn.Module:
        return self.main.model

    @property
    def sigma_data(self) -> float:
        return self.main.sigma_data

    @property
    def parameterisation(self) -> str:
        return self.main.parameterisation

    def set_mode(self, mode: str) -> "Autoguided":
        self.main.set_mode(mode)
        self.guide.set_mode(mode)
        return self

    def forward(
        self, x: Tensor, sigma: Tensor, second_time: Tensor | None = None, class_labels: Tensor | None = None
    ) -> Tensor:
        d_main = self.main(x, sigma, second_time, class_labels)
        return autoguided(d_main, self.guide(x, sigma, second_time, class_labels), self.weight)

    def mean_velocity(self, z: Tensor, r: Tensor, t: Tensor, class_labels: Tensor | None = None) -> Tensor:
        """u(z, r, t) of the guided denoiser by the EDM converter (numerics.md 6.1), as a ``Denoiser`` gives it."""
        return converted_mean_velocity(lambda x, s, h: self(x, s, h, class_labels), z, r, t)
