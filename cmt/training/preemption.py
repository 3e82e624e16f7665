"""Stopping a training run cleanly when the scheduler asks: SLURM sends SIGTERM before it kills a job (walltime with
``--signal``, ``scancel``, preemption), so the trainer saves a resume checkpoint and exits instead of losing the
steps since the last periodic one (workflow.md 3.2: the retry resumes from the work folder)."""

from __future__ import annotations

import signal
from types import FrameType

# what SLURM sends ahead of a kill; our profile asks for TERM (`--signal=TERM@300`): Snakemake's job step waits for
# its job on SIGTERM but dies on SIGUSR1, which batch scripts with `--signal=B:USR1@s` forward themselves
STOP_SIGNALS = (signal.SIGTERM, signal.SIGUSR1)
EXIT_CODE = 128 + signal.SIGTERM  # the shell's code for "terminated by SIGTERM": a failed attempt, to be retried


class Preempted(RuntimeError):
    """The run stopped on a signal after saving a resume checkpoint; the message names the step and the file."""


class StopRequest:
    """While active, SIGTERM and SIGUSR1 only set ``requested``; the loop decides where to stop (a step boundary).

    Outside the main thread (where Python cannot install handlers) it is inert and the default actions stay.
    """

    def __init__(self) -> None:
        self.requested: int | None = None  # the signal received, if any
        self._previous: dict[int, object] = {}

    def _handle(self, signum: int, frame: FrameType | None) -> None:
        self.requested = signum

    def __enter__(self) -> "StopRequest":
        try:
            self._previous = {s: signal.signal(s, self._handle) for s in STOP_SIGNALS}
        except ValueError:  # not the main thread
            self._previous = {}
        return self

    def __exit__(self, *exc: object) -> None:
        for signum, handler in self._previous.items():
            signal.signal(signum, handler)
