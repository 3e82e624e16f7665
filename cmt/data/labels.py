"""Class labels: EDM's one-hot convention, uniform draws fixed per sample, and binding labels to a denoiser so
that every sampler keeps its one signature ``denoiser(x, sigma)``.

A class-conditional network (``label_dim`` > 0) needs labels at every call and an unconditional one
refuses them (``cmt.nets.unet``); the helpers here pass exactly what the network was built for.
"""

from __future__ import annotations

from collections.abc import Callable

import torch
from torch import Tensor, nn

from cmt.errors import BadInput
from cmt.seeds import derived_seed


def label_dim_of(denoiser: nn.Module) -> int:
    """The number of classes a denoiser is conditioned on (0: unconditional)."""
    return int(denoiser.model.cfg.label_dim)


def one_hot(labels: Tensor | None, label_dim: int) -> Tensor | None:
    """Integer labels (B,) -> float one-hot (B, label_dim), EDM's ``class_labels``; None for unconditional."""
    if label_dim == 0:
        if labels is not None:
            raise BadInput("class labels were given for an unconditional network (label_dim 0)")
        return None
    if labels is None:
        raise BadInput(f"a class-conditional network (label_dim {label_dim}) needs class labels")
    return torch.nn.functional.one_hot(checked(labels, label_dim), label_dim).to(torch.float32)


def checked(labels: Tensor, label_dim: int) -> Tensor:
    """Integer labels as int64, after checking they lie in [0, label_dim)."""
    if labels.numel() and (int(labels.min()) < 0 or int(labels.max()) >= label_dim):
        raise BadInput(f"class labels must lie in [0, {label_dim}); got {int(labels.min())}..{int(labels.max())}")
    return labels.long()


def draw_labels(
    count: int, label_dim: int, seed: int, first: int = 0, device: torch.device | str = "cpu"
) -> Tensor | None:
    """Uniform labels for samples ``first .. first + count - 1`` (None if unconditional): sample i's label depends
    on (seed, i) only, so it does not change with the batch size or the number of samples (as EDM's per-seed
    generation)."""
    if not label_dim:
        return None
    values = [derived_seed(seed, f"label/{i}") % label_dim for i in range(first, first + count)]
    return torch.tensor(values, dtype=torch.int64, device=device)


def conditioned(denoiser: nn.Module, labels: Tensor | None) -> Callable[..., Tensor]:
    """``denoiser`` with its class labels bound (integer labels, one per sample of every call); without labels,
    the denoiser itself (a class-conditional one then refuses the call)."""
    if labels is None:
        return denoiser
    return bound(denoiser, one_hot(labels, label_dim_of(denoiser)))


def bound(denoiser: nn.Module, class_labels: Tensor) -> "Bound":
    """``denoiser`` with one-hot ``class_labels`` bound; an all-zero row is the null class (label dropout)."""
    return Bound(denoiser, class_labels)


class Bound:
    """A denoiser with its one-hot labels bound: called as ``denoiser(x, sigma[, second_time])`` by every sampler,
    and giving ``mean_velocity(z, r, t)`` as the denoiser does (``cmt.numerics.precond.FlowMap``)."""

    def __init__(self, denoiser: nn.Module, class_labels: Tensor):
        self.denoiser, self.class_labels = denoiser, class_labels

    def __call__(self, x: Tensor, sigma: Tensor, second_time: Tensor | None = None) -> Tensor:
        return self.denoiser(x, sigma, second_time, self.class_labels.to(x.device))

    def mean_velocity(self, z: Tensor, r: Tensor, t: Tensor) -> Tensor:
        return self.denoiser.mean_velocity(z, r, t, self.class_labels.to(z.device))


def class_columns(count: int, label_dim: int) -> Tensor | None:
    """Labels for a per-class sample grid with ``label_dim`` images a row: column k holds class k (None if
    unconditional)."""
    return torch.arange(count) % label_dim if label_dim else None


def dataset_labels(labels: Tensor | None, label_dim: int, where: str) -> Tensor | None:
    """A dataset's labels as a network of ``label_dim`` classes needs them: None for an unconditional network; an
    error naming ``where`` when a conditional network meets unlabelled data."""
    if not label_dim:
        return None
    if labels is None:
        raise BadInput(f"{where}: the network is class-conditional (label_dim {label_dim}); the data have no labels")
    return checked(labels, label_dim)


def class_grid_order(labels: Tensor, label_dim: int, rows: int) -> Tensor:
    """Indices that lay samples out as a per-class grid of ``label_dim`` columns (column k: class k), ``rows``
    deep or as deep as the rarest class allows; the first samples of each class, in order."""
    by_class = [torch.nonzero(labels.cpu() == k).flatten() for k in range(label_dim)]
    depth = min(rows, *(len(members) for members in by_class))
    return torch.stack([members[:depth] for members in by_class], dim=1).flatten()
