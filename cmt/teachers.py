"""Teacher kinds, one registry: what a teacher job's weights are and how the stages that read a teacher (trajectories,
online CMT, ECD's teacher step, the teacher's own evaluation) use them:

- ``ode``, an EDM denoiser solved by the PF-ODE solvers;
- ``flowmap``, a mean-flow model sampled in k steps, whose trajectories are the states along that path in
  flow-matching time (docs/latent.md 6);
- ``autoguided``, an EDM denoiser guided by a smaller, shorter-trained one, two networks a call (docs/latent.md 8.1).
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

from cmt.errors import BadInput

if TYPE_CHECKING:
    from torch import nn

    from cmt.numerics.precond import Denoiser


@dataclass(frozen=True)
class TeacherKind:
    """A teacher kind: its name (config ``teacher.kind``, recorded in the teacher's meta), the model kind of its
    weights (``cmt.objectives.registry.MODEL_KINDS``: how it is sampled), its network passes per teacher
    evaluation (what one teacher NFE costs), the teacher-stage method that trains it, and whether a guiding network
    is stored with it (``names.GUIDE``)."""

    name: str
    model_kind: str
    passes: int
    method: str
    description: str
    guided: bool = False


TEACHER_KINDS = {
    kind.name: kind
    for kind in (
        TeacherKind("ode", "diffusion", 1, "edm", "an EDM denoiser; trajectories and teacher steps by ODE solvers"),
        TeacherKind("flowmap", "meanflow", 1, "meanflow", "a mean-flow model; trajectories along its k-step path"),
        TeacherKind(
            "autoguided", "diffusion", 2, "edm", "an EDM denoiser guided by a weaker one, D_g + w(D - D_g)", True
        ),
    )
}
UNNAMED = "ode"  # the kind of a teacher whose meta names none (written before kinds were named)


def teacher_kind(meta: dict) -> TeacherKind:
    """The kind a teacher's meta records; an unknown one is refused listing the known ones."""
    name = meta.get("teacher_kind", UNNAMED)
    if name not in TEACHER_KINDS:
        raise BadInput(f"unknown teacher kind {name!r}; known: {', '.join(TEACHER_KINDS)}")
    return TEACHER_KINDS[name]


def load_model(folder: str | Path) -> tuple["nn.Module", dict]:
    """A checkpoint folder as the denoiser its callers see, and its meta: an autoguided teacher's main network with
    its guide (``names.GUIDE``) at the recorded weight, any other folder its denoiser."""
    from cmt.formats.checkpoints import load_denoiser
    from cmt.formats.names import GUIDE
    from cmt.numerics.autoguidance import Autoguided

    denoiser, meta = load_denoiser(folder)
    if not teacher_kind(meta).guided:
        return denoiser, meta
    if "guidance" not in meta:
        raise BadInput(f"{Path(folder) / 'meta.json'}: an autoguided teacher's meta has no 'guidance' weight")
    guide, _ = load_denoiser(Path(folder) / GUIDE)
    return Autoguided(denoiser, guide, meta["guidance"]), meta


def load_teacher(folder: str | Path) -> tuple[Denoiser, TeacherKind]:
    """A teacher job's output, frozen and in eval mode, and its kind."""
    model, meta = load_model(folder)
    return model.eval().requires_grad_(False), teacher_kind(meta)
