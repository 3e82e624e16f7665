"""Seeds derived from a job's seed, one per purpose: network initialisation, each sample's noise and label.

Every random draw of a job comes from a generator seeded here, so a result depends on the job's seed and
the sample's index only, not on batch sizes, process counts or the order in which things ran.
"""

from __future__ import annotations

import hashlib
from collections.abc import Iterator
from contextlib import contextmanager

import torch
from torch import Tensor


def derived_seed(seed: int, purpose: str) -> int:
    """An independent 63-bit seed for one purpose of a job (``init``, ...), fixed by the job's seed."""
    return int.from_bytes(hashlib.sha256(f"{seed}/{purpose}".encode()).digest()[:8], "big") >> 1


@contextmanager
def seeded(seed: int, purpose: str) -> Iterator[None]:
    """Run a block (e.g. building a network: its random initialisation) on torch's global RNG seeded from
    ``seed`` and ``purpose``; the RNG state outside the block is left as it was."""
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(derived_seed(seed, purpose))
        yield


def index_normal(
    seed: int, stream: str, first: int, count: int, shape: tuple[int, ...], device: torch.device | str = "cpu"
) -> Tensor:
    """Standard normal draws of ``shape`` for samples ``first .. first + count - 1`` of one ``stream`` (``noise``,
    ``renoise``, ...): sample i's draw comes from its own generator, seeded by (seed, stream, i), so it does not
    depend on the batch it falls in or on how many samples are drawn (as EDM's per-seed generation)."""
    draws = [
        torch.randn(shape, generator=torch.Generator().manual_seed(derived_seed(seed, f"{stream}/{i}")))
        for i in range(first, first + count)
    ]
    return torch.stack(draws).to(device) if draws else torch.empty((0, *shape), device=device)
