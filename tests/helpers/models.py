"""Small networks and wrappers the tests share: perturbed tiny U-Nets (every weight matters, zero-initialised
layers included), a denoiser's outputs at fixed inputs, and a teacher wrapper that counts the rows it evaluates."""

import torch

from cmt.nets import PRESETS, UNetConfig, build_network
from cmt.numerics.precond import Denoiser


def perturbed_denoiser(label_dim: int = 0, seed: int = 0, **arch) -> Denoiser:
    """The digits-tiny U-Net (``arch`` on top) with every weight moved by 0.05 N(0, 1) noise."""
    torch.manual_seed(seed)
    cfg = UNetConfig.from_dict({**PRESETS["digits-tiny"].to_dict(), "label_dim": label_dim, **arch})
    denoiser = Denoiser(build_network(cfg)).eval()
    with torch.no_grad():
        for p in denoiser.parameters():
            p.add_(0.05 * torch.randn_like(p))  # zero-initialised layers too, so every weight matters
    return denoiser


def conditional_denoiser(label_dim: int = 10) -> Denoiser:
    return perturbed_denoiser(label_dim, seed=0)


def random_denoiser(label_dim: int = 0) -> Denoiser:
    return perturbed_denoiser(label_dim, seed=label_dim, attn_resolutions=[4])


def denoised(denoiser: Denoiser, labels: torch.Tensor | None = None) -> torch.Tensor:
    gen = torch.Generator().manual_seed(0)
    x = torch.randn(4, 1, 8, 8, generator=gen)
    with torch.no_grad():
        return denoiser(x, torch.tensor([0.01, 0.5, 3.0, 80.0]), None, labels)


class CountingTeacher(torch.nn.Module):
    """Wraps a denoiser and counts the rows it evaluates: the teacher NFE a stage really spent."""

    def __init__(self, inner: torch.nn.Module):
        super().__init__()
        self.inner, self.rows = inner, 0

    @property
    def model(self) -> torch.nn.Module:  # the wrapped network (its config: label_dim, image shape)
        return self.inner.model

    def forward(self, x, sigma, *args):
        self.rows += x.shape[0]
        return self.inner(x, sigma, *args)


def count_teacher_loads(monkeypatch, module) -> list[CountingTeacher]:
    """Make ``module.load_teacher`` hand out counting wrappers; returns the list they are appended to."""
    real, made = module.load_teacher, []

    def load(path):
        denoiser, kind = real(path)
        made.append(CountingTeacher(denoiser))
        return made[-1], kind

    monkeypatch.setattr(module, "load_teacher", load)
    return made
