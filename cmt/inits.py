"""Where a student's initial weights come from: one registry of init sources, torch-free (the workflow reads it).

Post-training jobs name their source in their path (``post/<method>-<init>/...``); CMT names it in ``midtrain.init``.
A ``file`` source reads the job's ``init_file`` ({url, sha256}), fetched and checked as the teacher's fetch is.
"""

from __future__ import annotations

from dataclasses import dataclass

from cmt.errors import BadInput

WEIGHTS = ("fresh", "teacher", "job", "file")


@dataclass(frozen=True)
class InitSource:
    """One init source: its name in paths and configs, its name in tables, and what it reads (one of ``WEIGHTS``):
    fresh weights of the teacher's architecture (seeded by the job), the teacher's EMA weights, another job's output
    (post-training's CMT init: the CMT job of its variant and seed), or a fetched checkpoint."""

    name: str
    display: str
    weights: str

    @property
    def from_job(self) -> bool:
        """Whether the weights are another job's output (the job path then names the CMT variant)."""
        return self.weights == "job"


INITS = {
    source.name: source
    for source in (
        InitSource("random", "random init", "fresh"),
        InitSource("diffusion", "diffusion init", "teacher"),
        InitSource("cmt", "CMT init", "job"),
        InitSource("file", "fetched init", "file"),
    )
}
DEFAULT_INITS = tuple(name for name, source in INITS.items() if source.weights != "file")  # a sweep's default


def init_source(name: str) -> InitSource:
    """The registry entry of ``name``; an unknown name is refused listing the valid ones."""
    if name not in INITS:
        raise BadInput(f"unknown init {name!r}; valid: {', '.join(INITS)}")
    return INITS[name]
