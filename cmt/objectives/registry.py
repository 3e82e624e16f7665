"""The one list of training methods and of the model kinds they train; torch-free, so the workflow reads it at once.

A method is a config name within its stage (the teacher's ``edm``, a ``midtrain.form``, a post-training method),
the module of its objective, and the facts every other part asks about it: the model kind it trains (which fixes
the sampler and the step counts that sampler defines), what it reads, how its teacher NFE are counted, whether it
may train in reduced precision and why not, and its name in tables. The CLI's choices, the Snakefile's wildcard
constraints, the tables' names and the precision rule read this module; ``tests/test_registry.py`` checks that the
config schema's enums list the same names.

Adding a method: one objective module under ``cmt/objectives/`` (a ``build(cfg, context)`` returning the
objective) and one ``Method`` entry below; its config section goes in the schema.
"""

from __future__ import annotations

import importlib
from dataclasses import dataclass

from cmt.errors import BadInput

STAGES = ("teacher", "midtrain", "posttrain")
READS = ("images", "trajectories", "teacher")
TEACHER_NFE = ("none", "per_row", "per_trajectory")


@dataclass(frozen=True)
class ModelKind:
    """What a trained network is, and how it is sampled."""

    name: str
    sampler: str  # what ``cmt.sampling.samplers.sample`` runs for it
    steps: tuple[int, ...] | None  # the step counts its sampler defines; None: any positive count
    eval_steps: tuple[int, ...]  # the step counts scored along training and by ``evaluate`` (the teacher: its ODE)
    saved_mode: str  # preconditioning mode of the saved weights (``cmt.numerics.precond.Denoiser.set_mode``)
    second_time: bool  # the network takes a second time input h = t - r


MODEL_KINDS = {
    kind.name: kind
    for kind in (
        ModelKind("diffusion", "PF-ODE solver on a sigma grid (config teacher.sample)", None, (), "edm", False),
        ModelKind(
            "consistency", "consistency sampling, re-noised to t_mid for 2 steps", (1, 2), (1, 2), "boundary", False
        ),
        ModelKind("meanflow", "flow-map steps on a uniform grid in flow-matching time", None, (1, 2), "edm", True),
    )
}


@dataclass(frozen=True)
class Method:
    """One training method (see the module docstring)."""

    stage: str  # one of STAGES
    name: str  # its config name within the stage
    display: str  # its name in tables
    kind: str  # the MODEL_KINDS entry it trains
    reads: tuple[str, ...]  # of READS
    teacher_nfe: str  # of TEACHER_NFE: no teacher; one teacher step per training row; one solve per trajectory
    module: str  # the objective's module, imported on use (``build``)
    fp32_reason: str | None = None  # why it trains in fp32 whatever compute.precision says; None: it follows it

    @property
    def model_kind(self) -> ModelKind:
        return MODEL_KINDS[self.kind]

    @property
    def section(self) -> str:
        """The config section that sets a run of this method, which its errors name."""
        return {"teacher": "teacher.train", "midtrain": "midtrain"}.get(self.stage, f"{self.stage}.{self.name}")


MEANFLOW_FP32 = "its JVP and target stay in fp32 (numerics.md 9.4)"
ECT_FP32 = "its target f(x_t) - f(x_r) is O(1/q) of f, below bf16's 2^-8 resolution at the recipe's q (measured)"


def meanflow(stage: str) -> Method:
    """MeanFlow, which trains a flow-map teacher from scratch and post-trains a student alike."""
    module = "cmt.objectives.meanflow"
    return Method(stage, "meanflow", "MeanFlow", "meanflow", ("images",), "none", module, MEANFLOW_FP32)


METHODS = (
    Method("teacher", "edm", "EDM", "diffusion", ("images",), "none", "cmt.objectives.edm"),
    meanflow("teacher"),
    Method("midtrain", "consistency", "CMT", "consistency", ("trajectories",), "per_trajectory", "cmt.objectives.cmt"),
    Method(
        "midtrain",
        "flowmap",
        "CMT (flow map)",
        "meanflow",
        ("trajectories",),
        "per_trajectory",
        "cmt.objectives.cmt_flowmap",
    ),
    Method("posttrain", "ect", "ECT", "consistency", ("images",), "none", "cmt.objectives.ect", ECT_FP32),
    Method("posttrain", "ecd", "ECD", "consistency", ("images", "teacher"), "per_row", "cmt.objectives.ecd", ECT_FP32),
    meanflow("posttrain"),
)


def names(stage: str) -> tuple[str, ...]:
    """The methods of one stage, in registry order."""
    if stage not in STAGES:
        raise BadInput(f"unknown stage {stage!r}; valid: {', '.join(STAGES)}")
    return tuple(m.name for m in METHODS if m.stage == stage)


def method(stage: str, name: str) -> Method:
    """The registry entry of ``name`` in ``stage``; an unknown name is refused listing the valid ones."""
    for entry in METHODS:
        if entry.stage == stage and entry.name == name:
            return entry
    raise BadInput(f"unknown {stage} method {name!r}; valid: {', '.join(names(stage))}")


def build(entry: Method, cfg: dict, context: object) -> object:
    """The method's objective for one job: its module's ``build(cfg, context)`` (context: ``base.Context``)."""
    return importlib.import_module(entry.module).build(cfg, context)


def teacher_nfe(entry: Method, rows: int, calls: int) -> int:
    """Teacher evaluations a run spent: ``rows`` training rows (per_row) or solved trajectories (per_trajectory),
    each costing ``calls`` teacher evaluations; none for methods that read no teacher output."""
    return 0 if entry.teacher_nfe == "none" else rows * calls
