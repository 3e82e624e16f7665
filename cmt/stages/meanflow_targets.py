"""The MeanFlow-target job (cmt.evaluation.meanflow_targets): how far the MeanFlow target built from each given
two-time student is from the teacher's trajectories, next to the student's own error; a table and an MLflow record."""

from __future__ import annotations

from pathlib import Path

import pandas as pd
import torch

from cmt.evaluation.meanflow_targets import target_errors
from cmt.formats.atomic import atomic_write_bytes
from cmt.formats.checkpoints import load_denoiser
from cmt.report.tables import to_markdown
from cmt.report.tracking import write_record
from cmt.sampling.trajectory_sets import StoredTrajectories
from cmt.teachers import load_teacher


def run(teacher_dir: Path, traj_dir: Path, models: dict[str, Path], count: int, out: Path) -> pd.DataFrame:
    """``models``: label -> job folder of a two-time student; ``count``: trajectories read from the set."""
    teacher = load_teacher(teacher_dir)[0].set_mode("edm")
    trajectories = StoredTrajectories(traj_dir)
    batch = trajectories.read(torch.arange(min(count, len(trajectories))))
    frames = []
    for label, folder in models.items():
        student = load_denoiser(folder)[0].set_mode("edm").eval()
        frame = target_errors(student, teacher, batch.states.float(), trajectories.grid.float())
        frames.append(frame.assign(model=label, ratio=frame["target"] / frame["student"]))
    table = pd.concat(frames)[["model", "end", "k", "sigma_k", "t_k", "t_j", "student", "target", "ratio"]]
    atomic_write_bytes(out / "meanflow_targets.csv", table.to_csv(index=False).encode())
    note = (
        "# MeanFlow targets against the teacher's trajectories\n\nRelative squared error, against the trajectory's "
        "own mean velocity (z_k - z_j) / (t_k - t_j), of each student's u(z_k, t_j, t_k) and of the MeanFlow target "
        f"built from it with the teacher's velocity; {len(batch.states)} trajectories. ratio = target / student.\n\n"
    )
    atomic_write_bytes(out / "meanflow_targets.md", (note + to_markdown(table)).encode())
    longest = table[(table["end"] == "last") & (table["k"] == 0)].set_index("model")
    metrics = {f"{key}_{label}": float(longest.loc[label, key]) for label in models for key in ("student", "target")}
    write_record(out, stage="meanflow_targets", run_name="meanflow-targets", params={"trajectories": count},
                 tags={"label": "meanflow-targets", "kind": "study"}, metrics=metrics,
                 artifacts=["meanflow_targets.csv", "meanflow_targets.md"])  # fmt: skip
    return table
