"""Teacher kinds, one registry: what a teacher job's weights are and how the stages that read a teacher (trajectories,
online CMT, ECD's teacher step, the teacher's own evaluation) use them: ``ode``, an EDM denoiser solved by the PF-ODE
solvers, and ``flowmap``, a mean-flow model sampled in k steps whose trajectories are the states along that path in
flow-matching time (docs/latent.md 6). An autoguided pair (two networks a call) joins here as an entry.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

from cmt.errors import BadInput

if TYPE_CHECKING:
    from cmt.numerics.precond import Denoiser


@dataclass(frozen=True)
class TeacherKind:
    """A teacher kind: its name (config ``teacher.kind``, recorded in the teacher's meta), the model kind of its
    weights (``cmt.objectives.registry.MODEL_KINDS``: how it is sampled), its network passes per teacher
    evaluation (what one teacher NFE costs), and the teacher-stage method that trains it."""

    name: str
    model_kind: str
    passes: int
    method: str
    description: str


TEACHER_KINDS = {
    kind.name: kind
    for kind in (
        TeacherKind("ode", "diffusion", 1, "edm", "an EDM denoiser; trajectories and teacher steps by ODE solvers"),
        TeacherKind("flowmap", "meanflow", 1, "meanflow", "a mean-flow model; trajectories along its k-step path"),
    )
}
UNNAMED = "ode"  # the kind of a teacher whose meta names none (written before kinds were named)


def teacher_kind(meta: dict) -> TeacherKind:
    """The kind a teacher's meta records; an unknown one is refused listing the known ones."""
    name = meta.get("teacher_kind", UNNAMED)
    if name not in TEACHER_KINDS:
        raise BadInput(f"unknown teacher kind {name!r}; known: {', '.join(TEACHER_KINDS)}")
    return TEACHER_KINDS[name]


def load_teacher(folder: str | Path) -> tuple[Denoiser, TeacherKind]:
    """A teacher job's output, frozen and in eval mode, and its kind."""
    from cmt.formats.checkpoints import load_denoiser

    denoiser, meta = load_denoiser(folder)
    return denoiser.eval().requires_grad_(False), teacher_kind(meta)
