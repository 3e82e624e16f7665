"""Training minibatches of real images (and labels): drawn in memory, or streamed from disk by a DataLoader; or of
latents, each a fresh draw of its stored posterior.

Every trainer that reads data (teacher, ECT, ECD, MeanFlow) asks ``batches(step, generator)`` for step
``step``'s images. In memory (the embedded digits) the rows are drawn with the loss's generator. Streamed
(``ImageFiles``) the rows and x-flips of step s come from a generator seeded by (seed, s) alone, so a resumed
run reads exactly the batches an uninterrupted one would, whatever the worker count; workers decode images
ahead of the step and the main process only copies uint8 batches to the device. With several processes
(``cmt.training.parallel``) every rank draws the global batch's rows and reads its own share of them.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import NamedTuple

import torch
from torch import Tensor
from torch.utils.data import DataLoader, Sampler

from cmt.data.datasets import ImageDataset, ImageFiles, Images, to_unit
from cmt.data.latent_zip import LatentDataset, LatentFiles
from cmt.errors import BadInput
from cmt.seeds import derived_seed
from cmt.training import parallel


class ImageBatch(NamedTuple):
    """This process's share of a step's training images (n, C, H, W) in [-1, 1] and their labels (n,) or None."""

    images: Tensor
    labels: Tensor | None = None


def flip_rows(images: Tensor, flip: Tensor) -> Tensor:
    """Mirror the rows of ``images`` where ``flip`` is true (horizontal x-flip, EDM's ``--xflip``)."""
    return torch.where(flip.reshape(-1, 1, 1, 1).to(images.device), images.flip(-1), images)


class MemoryBatches:
    """Rows of an in-memory dataset on the device, drawn with the loss's generator (the embedded default)."""

    def __init__(self, data: ImageDataset, labels: Tensor | None, batch_size: int, device: torch.device, xflip: bool):
        self.images, self.xflip = data.images.to(device), xflip
        self.local = parallel.local_count(batch_size, "batch_size")
        self.labels = None if labels is None else labels.to(device)

    def __call__(self, step: int, gen: torch.Generator) -> ImageBatch:
        idx = parallel.randint(len(self.images), (self.local,), gen).to(self.images.device)
        images = self.images[idx]
        if self.xflip:
            images = flip_rows(images, parallel.randint(2, idx.shape, gen).bool())
        return ImageBatch(images, None if self.labels is None else self.labels[idx])


class LatentBatches:
    """Rows of an in-memory latent dataset on the device, each a fresh posterior draw z = convention(mean + std·ε)
    (docs/latent.md 4.3); rows and ε from the loss's generator. Latents are never mirrored."""

    def __init__(self, data: LatentDataset, labels: Tensor | None, batch_size: int, device: torch.device):
        self.data = data.to(device)
        self.local = parallel.local_count(batch_size, "batch_size")
        self.labels = None if labels is None else labels.to(device)

    def __call__(self, step: int, gen: torch.Generator) -> ImageBatch:
        idx = parallel.randint(len(self.data), (self.local,), gen).to(self.data.mean.device)
        latents = self.data.draw(idx, parallel.randn((self.local, *self.data.shape), gen))
        return ImageBatch(latents, None if self.labels is None else self.labels[idx])


class StepRows(Sampler[list[int]]):
    """Each step's dataset rows from step ``first`` on, without end: step s's rows are uniform draws (with
    replacement) of a generator seeded by (seed, s), this process's share of them; a flipped image is row ``-1 - r``
    (decoded by ``FlipRows``)."""

    def __init__(self, count: int, batch_size: int, seed: int, first: int, xflip: bool):
        self.count, self.batch_size, self.seed, self.first, self.xflip = count, batch_size, seed, first, xflip

    def rows(self, step: int) -> Tensor:
        gen = torch.Generator().manual_seed(derived_seed(self.seed, f"batch/{step}"))
        rows = torch.randint(self.count, (self.batch_size,), generator=gen)
        if self.xflip:
            rows = torch.where(torch.randint(2, rows.shape, generator=gen).bool(), -1 - rows, rows)
        return parallel.share(rows)

    def __iter__(self) -> Iterator[list[int]]:
        step = self.first
        while True:
            yield self.rows(step).tolist()
            step += 1


class FlipRows(torch.utils.data.Dataset):
    """``files[r]`` for a row r >= 0, its mirror image for r < 0 (row ``-1 - r``): uint8 (C, H, W) and the row."""

    def __init__(self, files: ImageFiles):
        self.files = files

    def __getitem__(self, row: int) -> tuple[Tensor, int]:
        image, _ = self.files[row if row >= 0 else -1 - row]
        return (image if row >= 0 else image.flip(-1)), (row if row >= 0 else -1 - row)

    def __len__(self) -> int:
        return len(self.files)


class StreamedBatches:
    """Batches of an on-disk dataset through a ``DataLoader`` (``workers`` processes, pinned memory on CUDA): images
    mapped to [-1, 1], or latents drawn from their stored posteriors with noise fixed by (seed, step), so a resumed
    run draws the latents an uninterrupted one would."""

    def __init__(
        self,
        data: ImageFiles | LatentFiles,
        labels: Tensor | None,
        batch_size: int,
        seed: int,
        device: torch.device,
        loader: dict,
    ):
        self.data, self.labels, self.batch_size, self.seed, self.device = data, labels, batch_size, seed, device
        self.loader, self._rows, self._next_step = loader, None, None

    def _open(self, first: int) -> Iterator[tuple[Tensor, Tensor]]:
        sampler = StepRows(len(self.data), self.batch_size, self.seed, first, self.loader["xflip"])
        workers = self.loader["workers"]
        return iter(
            DataLoader(
                FlipRows(self.data) if isinstance(self.data, ImageFiles) else self.data,
                batch_sampler=sampler,
                num_workers=workers,
                pin_memory=self.loader["pin_memory"] and self.device.type == "cuda",
                prefetch_factor=self.loader["prefetch"] if workers else None,
                persistent_workers=False,
            )
        )

    def latent_noise(self, step: int, shape: tuple[int, ...]) -> Tensor:
        """This process's share of step ``step``'s posterior noise, drawn from (seed, step) alone."""
        gen = torch.Generator(device=self.device).manual_seed(derived_seed(self.seed, f"latent/{step}"))
        return parallel.share(torch.randn((self.batch_size, *shape), generator=gen, device=self.device))

    def __call__(self, step: int, gen: torch.Generator) -> ImageBatch:
        if self._rows is None or step != self._next_step:  # first call, or a resumed run's first step
            self._rows = self._open(step)
        batch, rows = next(self._rows)
        self._next_step = step + 1
        batch = batch.to(self.device, non_blocking=True)
        if isinstance(self.data, ImageFiles):
            images = to_unit(batch)
        else:
            images = self.data.draws(batch, self.latent_noise(step, self.data.shape))
        return ImageBatch(images, None if self.labels is None else self.labels[rows].to(self.device))


def make_batches(
    data: Images | LatentDataset | LatentFiles,
    labels: Tensor | None,
    batch_size: int,
    seed: int,
    device: torch.device,
    loader: dict,
) -> MemoryBatches | StreamedBatches | LatentBatches:
    """The batch source of a dataset: in memory for ``ImageDataset``, streamed for ``ImageFiles`` and ``LatentFiles``,
    posterior draws in memory for a ``LatentDataset``; ``labels`` are the checked labels a class-conditional model
    reads (``cmt.data.labels.dataset_labels``), or None."""
    if isinstance(data, (LatentDataset, LatentFiles)) and loader["xflip"]:
        raise BadInput(f"data.loader.xflip: latents ({data.name}) are not mirrored; encode mirrored images instead")
    if isinstance(data, LatentDataset):
        return LatentBatches(data, labels, batch_size, device)
    if isinstance(data, ImageDataset):
        return MemoryBatches(data, labels, batch_size, device, loader["xflip"])
    return StreamedBatches(data, labels, batch_size, seed, device, loader)
