"""The paper's tables and plots, built from the MLflow store (``search_runs``), never from hand-kept lists."""

from __future__ import annotations

import io
import math
from pathlib import Path

import pandas as pd

from cmt.checkpoints import atomic_write_bytes

METHOD_NAMES = {"ect": "ECT", "ecd": "ECD", "meanflow": "MeanFlow"}
INIT_NAMES = {"random": "random init", "diffusion": "diffusion init", "cmt": "CMT init"}
# The training stages (by label) whose images, teacher NFE and wall time a model of each init carries.
INIT_LINEAGE = {"random": [], "diffusion": ["teacher"], "cmt": ["teacher", "cmt"]}
TRAIN_STAGES = ("teacher", "midtrain", "posttrain")


def _runs(db: str | Path, experiment: str) -> pd.DataFrame:
    from cmt.tracking import search

    runs = search(db, experiment)
    return runs[runs.get("tags.cmt_parent", pd.Series(index=runs.index, dtype=object)).isna()]


def _metric(row: pd.Series | None, name: str) -> float:
    if row is None or f"metrics.{name}" not in row or pd.isna(row[f"metrics.{name}"]):
        return math.nan
    return float(row[f"metrics.{name}"])


def model_rows(labels: set[str]) -> list[tuple[str, str, list[str]]]:
    """(label, row name, lineage) for the evaluated labels: teacher, CMT, then <method>-<init> in a fixed order."""
    rows = [("teacher", "teacher (EDM)", ["teacher"]), ("cmt", "CMT only", ["teacher", "cmt"])]
    rows += [
        (f"{m}-{i}", f"{name} from {init_name}", INIT_LINEAGE[i] + [f"{m}-{i}"])
        for m, name in METHOD_NAMES.items()
        for i, init_name in INIT_NAMES.items()
    ]
    return [row for row in rows if row[0] in labels]


def _images(train: dict, lineage: list[str], label: str) -> int:
    """Training images of stage ``label`` if the model's lineage includes it."""
    return int(_metric(train.get(label), "images")) if label in lineage and label in train else 0


def _lineage_sum(train: dict, lineage: list[str], name: str) -> float:
    """Sum of a training metric over the stages a model descends from (missing values count as 0)."""
    values = [_metric(train.get(stage), name) for stage in lineage]
    return sum(v for v in values if not math.isnan(v))


def main_table(runs: pd.DataFrame) -> pd.DataFrame:
    """One row per model: FD of its samplers, the images each stage trained on, teacher NFE, wall time."""
    by = {(r["tags.cmt_stage"], r["tags.label"]): r for _, r in runs.iterrows()}
    train = {label: r for (stage, label), r in by.items() if stage in TRAIN_STAGES}
    multi = next((c[len("metrics.") :] for c in runs.columns if c.startswith("metrics.fd_") and c.endswith("nfe")), "")
    rows = []
    for label, name, lineage in model_rows({lbl for stage, lbl in by if stage == "evaluate"}):
        ev = by[("evaluate", label)]
        rows.append(
            {
                "model": name,
                "FD 1-step": _metric(ev, "fd_1step"),
                "FD 2-step": _metric(ev, "fd_2step"),
                f"FD teacher {multi[3:-3]} NFE": _metric(ev, multi) if multi else math.nan,
                "KID 2-step": _metric(ev, "kid_2step"),
                "images teacher": _images(train, lineage, "teacher"),
                "images mid": _images(train, lineage, "cmt"),
                "images post": _images(train, lineage, label) if label not in ("teacher", "cmt") else 0,
                "teacher NFE (training)": int(_lineage_sum(train, lineage, "teacher_nfe")),
                "wall s (training)": _lineage_sum(train, lineage, "wall_seconds"),
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


def fd_curves(db: str | Path, runs: pd.DataFrame, labels: list[str]) -> dict[str, dict[str, list[tuple[int, float]]]]:
    """FD histories (step, value) of the post-training runs, per label and metric, from MLflow."""
    from mlflow.tracking import MlflowClient

    from cmt.tracking import tracking_uri

    client = MlflowClient(tracking_uri(db))
    curves = {}
    for _, r in runs[(runs["tags.cmt_stage"] == "posttrain") & runs["tags.label"].isin(labels)].iterrows():
        curves[r["tags.label"]] = {
            m: sorted((h.step, h.value) for h in client.get_metric_history(r["run_id"], m))
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
    fig.tight_layout()
    buf = io.BytesIO()
    fig.savefig(buf, format="png")
    plt.close(fig)
    atomic_write_bytes(path, buf.getvalue())


def log_tables(db: str | Path, experiment: str, files: list[Path], table: str | None = None) -> None:
    """Attach files to the experiment's parent run, or to one ablation table's parent (``tables/``)."""
    from mlflow.tracking import MlflowClient

    from cmt.tracking import parent_run, table_run, tracking_uri

    client = MlflowClient(tracking_uri(db))
    exp = client.get_experiment_by_name(experiment)
    run_id = parent_run(client, exp.experiment_id, experiment)
    if table is not None:
        run_id = table_run(client, exp.experiment_id, run_id, table)
    for file in files:
        client.log_artifact(run_id, str(file), artifact_path="tables")


def main_report(db: str | Path, experiment: str, out_dir: str | Path) -> pd.DataFrame:
    """Write ``main.md``, ``main.csv`` and ``fd_vs_iterations.png`` into ``out_dir``."""
    out = Path(out_dir)
    runs = _runs(db, experiment)
    table = main_table(runs)
    post = sorted(runs.loc[runs["tags.cmt_stage"] == "posttrain", "tags.label"])
    curves = fd_curves(db, runs, post)
    atomic_write_bytes(out / "main.csv", table.to_csv(index=False).encode())
    notes = [iterations_to_match(curves, f"{m}-diffusion", f"{m}-cmt") for m in METHOD_NAMES if f"{m}-cmt" in curves]
    md = (
        f"# Main comparison ({experiment})\n\nBuilt from the MLflow store {Path(db).name} "
        f"(experiment `{experiment}`). FD: Frechet distance in the feature space of the evaluation net, "
        "against held-out data (lower is better).\n\n" + to_markdown(table) + "".join(f"\n{n}.\n" for n in notes)
    )
    atomic_write_bytes(out / "main.md", md.encode())
    plot_curves(curves, out / "fd_vs_iterations.png")
    log_tables(db, experiment, [out / "main.md", out / "main.csv", out / "fd_vs_iterations.png"])
    return table
