"""The paper's tables and plots, built from the MLflow store (``search_runs``), never from hand-kept lists.

Rows are found by the runs' tags: ``tables`` (which tables a job feeds), the job's axes (``kind``,
``method``, ``init``, ``variant``, ...) and ``init_job``, the job a student's weights start from, whose
chain is the row's lineage (teacher -> CMT -> post-training) and what its costs sum over.
"""

from __future__ import annotations

import math
import os
from collections.abc import Iterator
from pathlib import Path

import pandas as pd

from cmt.evaluation.detectors import DETECTORS
from cmt.formats.atomic import atomic_write_bytes
from cmt.inits import INITS
from cmt.objectives import registry
from cmt.report.plots import save_figure
from cmt.teachers import TEACHER_KINDS
from cmt.teachers import UNNAMED as UNNAMED_TEACHER
from cmt.workflow.jobs import POST_TEACHER, eval_path

METHOD_NAMES = {name: registry.method("posttrain", name).display for name in registry.names("posttrain")}
INIT_NAMES = {name: source.display for name, source in INITS.items()}
KINDS = ("teacher", "mid", "post")
# score prefix -> column name: the offline feature net's FD (cmt.evaluation.featnet_fd), then each detector's
# (cmt.evaluation.detectors: FID, FD_DINOv2)
SCORES = {"fd": "FD", **{name: spec.display for name, spec in DETECTORS.items()}}
SCORE_NOTE = (
    "FD: Frechet distance in the feature space of the offline evaluation net, against held-out data. "
    "FID and FD_DINOv2: Frechet distance of Inception and DINOv2 ViT-L/14 features against reference statistics (the "
    "training set's or a published file's; the mode, reference and seed protocol are each evaluation run's params). "
    "Lower is better for all"
)


def score_column(column) -> tuple[str, str]:
    """(score prefix, sampler) of a metric column: ``metrics.fd_dinov2_2step`` -> (``fd_dinov2``, ``2step``)."""
    prefix, _, sampler = str(column).removeprefix("metrics.").rpartition("_")
    return prefix, sampler


def scores_present(columns) -> list[str]:
    """The score prefixes (``SCORES``) the runs carry, in ``SCORES`` order."""
    found = {score_column(c)[0] for c in columns if str(c).startswith("metrics.")}
    return [p for p in SCORES if p in found]


def _runs(db: str | Path, experiment: str) -> pd.DataFrame:
    from cmt.report.tracking import search

    runs = search(db, experiment)
    return runs[runs.get("tags.cmt_parent", pd.Series(index=runs.index, dtype=object)).isna()]


def _metric(row: pd.Series | None, name: str) -> float:
    if row is None or f"metrics.{name}" not in row or pd.isna(row[f"metrics.{name}"]):
        return math.nan
    return float(row[f"metrics.{name}"])


def tag(row: pd.Series, name: str) -> str:
    """A run's tag as a string ("" when the run does not carry it)."""
    value = row.get(f"tags.{name}")
    return "" if value is None or (isinstance(value, float) and math.isnan(value)) else str(value)


def split_runs(runs: pd.DataFrame) -> tuple[pd.DataFrame, pd.DataFrame]:
    """(training runs indexed by their job, evaluation runs) of the jobs that carry their axes as tags."""
    has_job = runs["tags.job"].notna() if "tags.job" in runs else pd.Series(False, index=runs.index)
    jobs = runs[has_job]
    evals = jobs[jobs["tags.cmt_stage"] == "evaluate"]
    train = jobs[jobs["tags.cmt_stage"] != "evaluate"].set_index("tags.job")
    return train, evals


def in_table(evals: pd.DataFrame, table: str) -> pd.DataFrame:
    """The evaluation runs whose job feeds ``table`` (tag ``tables``, set at ingest from cmt/workflow/jobs.py)."""
    return evals[evals["tags.tables"].fillna("").str.split(",").apply(lambda feeds: table in feeds)]


def lineage(train: pd.DataFrame, job: str) -> list[pd.Series]:
    """The training runs a job's weights descend from, the job's own last: teacher, CMT, post-training."""
    chain: list[pd.Series] = []
    while job in train.index and len(chain) < len(KINDS):
        chain.insert(0, train.loc[job])
        job = tag(chain[0], "init_job")
    return chain


def lineage_sum(chain: list[pd.Series], name: str, kinds: tuple[str, ...] = KINDS) -> float:
    """Sum of a training metric over the lineage's stages of ``kinds`` (missing values count as 0)."""
    values = [_metric(run, name) for run in chain if tag(run, "kind") in kinds]
    return sum(v for v in values if not math.isnan(v))


def model_name(ev: pd.Series) -> str:
    kind, variant = tag(ev, "kind"), tag(ev, "variant")
    if kind == "teacher":  # named by its kind's method (a teacher recorded before kinds were named: ode) and role
        teacher = TEACHER_KINDS[tag(ev, "teacher_kind") or UNNAMED_TEACHER]
        how = registry.method("teacher", teacher.method).display + (", autoguided" if teacher.guided else "")
        role = "post-training teacher" if tag(ev, "job").endswith(POST_TEACHER) else "teacher"
        return f"{role} ({how})"
    if kind == "mid":
        return "CMT only" if variant == "base" else f"CMT ({variant})"
    return f"{METHOD_NAMES[tag(ev, 'method')]} from {INIT_NAMES[tag(ev, 'init')]}"


def _order(ev: pd.Series) -> tuple:
    method, init = tag(ev, "method"), tag(ev, "init")
    return (
        KINDS.index(tag(ev, "kind")),
        list(METHOD_NAMES).index(method) if method else -1,
        list(INIT_NAMES).index(init) if init else -1,
        tag(ev, "job"),
    )


def _nfe_samplers(columns) -> Iterator[str]:
    """The multi-step samplers (``<n>nfe``) of the score columns among ``columns``, in column order."""
    for column in columns:
        prefix, sampler = score_column(column)
        if prefix in SCORES and sampler.endswith("nfe"):
            yield sampler


def teacher_samplers(columns) -> list[str]:
    """The teachers' multi-step samplers among score columns, fewest network passes first (an autoguided teacher's
    count two per call): one column each in the main table, where two teachers may differ."""
    return sorted(set(_nfe_samplers(columns)), key=lambda sampler: int(sampler[:-3]))


def teacher_sampler(columns) -> str:
    """The teacher's multi-step sampler first among the runs' score columns, or ""."""
    return next(_nfe_samplers(columns), "")


def main_table(runs: pd.DataFrame) -> pd.DataFrame:
    """One row per job of the main run: FD of its samplers, the images each stage of its lineage trained on, teacher
    NFE, wall time and the device-hours of each stage (wall time × max(1, GPUs)) with the devices they ran on."""
    train, evals = split_runs(runs)
    evals = in_table(evals, "main")
    multi = teacher_samplers(column for column in evals.columns if evals[column].notna().any())
    rows = []
    for _, ev in sorted(evals.iterrows(), key=lambda item: _order(item[1])):
        chain = lineage(train, tag(ev, "job"))
        scores = {}
        for prefix in scores_present(runs.columns):
            name = SCORES[prefix]
            scores[f"{name} 1-step"] = _metric(ev, f"{prefix}_1step")
            scores[f"{name} 2-step"] = _metric(ev, f"{prefix}_2step")
            for sampler in multi:
                scores[f"{name} teacher {sampler[:-3]} NFE"] = _metric(ev, f"{prefix}_{sampler}")
        if "metrics.kid_2step" in runs.columns:
            scores["KID 2-step"] = _metric(ev, "kid_2step")
        rows.append(
            {
                "model": model_name(ev),
                **scores,
                **{f"images {kind}": int(lineage_sum(chain, "images", (kind,))) for kind in KINDS},
                "teacher NFE (training)": int(lineage_sum(chain, "teacher_nfe")),
                "wall s (training)": lineage_sum(chain, "wall_seconds"),
                **{f"device-h {kind}": lineage_sum(chain, "device_hours", (kind,)) for kind in KINDS},
                "devices": ", ".join(sorted({tag(run, "device") for run in chain if tag(run, "device")})) or "–",
            }
        )
    return pd.DataFrame(rows)


def to_markdown(df: pd.DataFrame) -> str:
    """Plain GitHub Markdown without optional dependencies; NaN shows as an en dash."""

    def cell(v: object) -> str:
        if isinstance(v, float):
            return "–" if math.isnan(v) else (f"{v:.1f}" if abs(v) >= 100 else f"{v:.3g}")
        return str(v)

    lines = ["| " + " | ".join(df.columns) + " |", "|" + "---|" * len(df.columns)]
    lines += ["| " + " | ".join(cell(v) for v in row) + " |" for row in df.itertuples(index=False)]
    return "\n".join(lines) + "\n"


def fd_curves(db: str | Path, runs: pd.DataFrame) -> dict[str, dict[str, list[tuple[int, float]]]]:
    """FD histories (step, value) of the main run's post-training jobs, per ``<method>-<init>`` and metric."""
    from mlflow.tracking import MlflowClient

    from cmt.report.tracking import tracking_uri

    client = MlflowClient(tracking_uri(db))
    train, evals = split_runs(runs)
    curves = {}
    for _, ev in in_table(evals, "main").iterrows():
        if tag(ev, "kind") == "post":
            run_id = train.loc[tag(ev, "job"), "run_id"]
            curves[f"{tag(ev, 'method')}-{tag(ev, 'init')}"] = {
                m: sorted((h.step, h.value) for h in client.get_metric_history(run_id, m))
                for m in ("fd_1step", "fd_2step")
            }
    return curves


def iterations_to_match(curves: dict, slow: str, fast: str, metric: str = "fd_2step") -> str:
    """When does ``slow`` first reach the FD that ``fast`` has at its last evaluation?"""
    if slow not in curves or fast not in curves or not curves[fast][metric]:
        return "not available"
    fast_step, target = curves[fast][metric][-1]
    for step, value in curves[slow][metric]:
        if value <= target:
            return f"{slow} reaches {fast}'s final {metric} ({target:.1f} at iteration {fast_step}) at iteration {step}"
    last = curves[slow][metric][-1] if curves[slow][metric] else (0, math.nan)
    return (
        f"{slow} does not reach {fast}'s final {metric} ({target:.1f} at iteration {fast_step}) within "
        f"{last[0]} iterations (its best: {min(v for _, v in curves[slow][metric]):.1f})"
    )


def plot_curves(curves: dict, path: str | Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, 2, figsize=(9, 3.4), dpi=120, sharey=True)
    for ax, metric in zip(axes, ("fd_1step", "fd_2step")):
        for label, series in sorted(curves.items()):
            if series[metric]:
                steps, values = zip(*series[metric])
                ax.plot(steps, values, marker="o", ms=3, label=label)
        ax.set(
            title=metric.replace("fd_", "FD, ").replace("step", "-step"), xlabel="post-training iteration", yscale="log"
        )
    axes[0].set_ylabel("FD (feature net)")
    axes[1].legend()
    save_figure(fig, path)


def plot_cost(table: pd.DataFrame, path: str | Path) -> None:
    """Each main-table model's 1-step score (FID where measured, else FD; the teacher's own sampler for the
    teacher) against its lineage's device-hours: the paper's quality-against-training-cost figure."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    metric = "FID" if "FID 1-step" in table.columns else "FD"
    own = [c for c in table.columns if c.startswith(f"{metric} teacher")]
    fig, ax = plt.subplots(figsize=(5.5, 3.8), dpi=120)
    for _, row in table.iterrows():
        hours = sum(row[f"device-h {kind}"] for kind in KINDS)
        score = row[f"{metric} 1-step"] if not math.isnan(row[f"{metric} 1-step"]) else row[own[0]] if own else math.nan
        ax.scatter(hours, score)
        ax.annotate(row["model"], (hours, score), fontsize=7, xytext=(3, 3), textcoords="offset points")
    ax.set(xlabel="device-hours of the lineage (wall time × max(1, GPUs))", ylabel=f"{metric}, 1 step", yscale="log")
    save_figure(fig, path)


def log_tables(db: str | Path, experiment: str, files: list[Path], table: str | None = None) -> None:
    """Attach files to the experiment's parent run, or to one ablation table's parent (``tables/``)."""
    from mlflow.tracking import MlflowClient

    from cmt.report.tracking import parent_run, table_run, tracking_uri

    client = MlflowClient(tracking_uri(db))
    exp = client.get_experiment_by_name(experiment)
    run_id = parent_run(client, exp.experiment_id, experiment)
    if table is not None:
        run_id = table_run(client, exp.experiment_id, run_id, table)
    for file in files:
        client.log_artifact(run_id, str(file), artifact_path="tables")


def samples_section(runs: pd.DataFrame, out: Path) -> str:
    """Markdown linking each main-table model's evaluation grid (the 2-step one; per class for a class-conditional
    model), read from the results folder that holds ``out``."""
    _, evals = split_runs(runs)
    lines = []
    for _, ev in sorted(in_table(evals, "main").iterrows(), key=lambda item: _order(item[1])):
        grids = sorted((out.parent / eval_path(tag(ev, "job"))).glob("grid-*.png"))  # grid-2step sorts last
        if grids:
            lines.append(f"**{model_name(ev)}**\n\n![{model_name(ev)}]({os.path.relpath(grids[-1], out)})\n")
    return "\n## Samples\n\n" + "\n".join(lines) if lines else ""


def main_report(db: str | Path, experiment: str, out_dir: str | Path) -> pd.DataFrame:
    """Write ``main.md``, ``main.csv``, ``fd_vs_iterations.png`` and ``score_vs_device_hours.png`` into
    ``out_dir``."""
    out = Path(out_dir)
    runs = _runs(db, experiment)
    table = main_table(runs)
    curves = fd_curves(db, runs)
    atomic_write_bytes(out / "main.csv", table.to_csv(index=False).encode())
    notes = [iterations_to_match(curves, f"{m}-diffusion", f"{m}-cmt") for m in METHOD_NAMES if f"{m}-cmt" in curves]
    md = (
        f"# Main comparison ({experiment})\n\nBuilt from the MLflow store {Path(db).name} "
        f"(experiment `{experiment}`). {SCORE_NOTE}.\n\n" + to_markdown(table) + "".join(f"\n{n}.\n" for n in notes)
    ) + samples_section(runs, out)
    atomic_write_bytes(out / "main.md", md.encode())
    plot_curves(curves, out / "fd_vs_iterations.png")
    plot_cost(table, out / "score_vs_device_hours.png")
    files = ["main.md", "main.csv", "fd_vs_iterations.png", "score_vs_device_hours.png"]
    log_tables(db, experiment, [out / name for name in files])
    return table
