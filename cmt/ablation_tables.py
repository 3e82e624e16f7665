"""The ablation tables (mean +- std over seeds) and FD-versus-images curves, from the MLflow store.

Every ablation evaluation run carries its axes (variant, trajectory set, method, init, seed) and the
tables its job feeds (``tags.tables``, from cmt/ablations.py at ingest) as tags.  Its training run is
found by record path (``.../ab/eval/<path>`` evaluates ``.../ab/<path>``), and a post-training run's
init by ``tags.init_model``, so every row carries what its whole student lineage spent (mid + post).
"""

from __future__ import annotations

import io
import os
from pathlib import Path

import pandas as pd

from cmt.ablations import TABLES
from cmt.checkpoints import atomic_write_bytes
from cmt.tables import INIT_NAMES, METHOD_NAMES, _runs, log_tables, to_markdown

COSTS = ("images", "teacher_nfe")
AXES = ["kind", "variant", "solver", "nfe", "method", "init", "iterations", "seed"]
FRAME_COLUMNS = [
    *AXES,
    "model",
    "tables",
    "fd_1step",
    "fd_2step",
    "distinct_trajectories",
    "train_run",
    "stage_images",
    *COSTS,
]
# table -> (group-by columns, cost columns averaged over seeds); the CMT-variant tables share one layout
LAYOUT = {
    "method_init": (["method", "init", "variant", "iterations"], COSTS),
    "nfe_solver": (["solver", "nfe"], ("teacher_nfe", "distinct_trajectories")),
}
VARIANT_LAYOUT = (["variant", "model", "iterations"], (*COSTS, "distinct_trajectories"))
TITLES = {
    "method_init": "post-training method x initialisation",
    "nfe_solver": "trajectory solver x NFE (CMT only)",
    "cmt_variants": "every CMT variant on the default trajectory set",
    "loss": "CMT objective: loss and form",
    "slow_fast": "all trajectory points (fast) vs one point per trajectory (slow) vs noise only (KD)",
    "trajectory_count": "distinct stored trajectories vs online trajectories",
    "budget_split": "mid/post iteration split at a fixed total",
}


def _cost(train: pd.DataFrame, record: str, name: str) -> float:
    """A training run's cost metric plus its init's (mid + post; the shared teacher is not counted)."""
    run = train.loc[record]
    own = float(run.get(f"metrics.{name}", float("nan")))
    init = os.path.normpath(str(run.get("tags.init_model") or "none"))
    if init in train.index and train.loc[init].get("tags.cmt_stage") == "midtrain":
        own += float(train.loc[init].get(f"metrics.{name}", 0.0))
    return own


def ablation_frame(runs: pd.DataFrame) -> pd.DataFrame:
    """One row per evaluated ablation model: its axes, tables, FDs and its lineage's cost."""
    key = runs["tags.cmt_record"].fillna("")
    evals = runs[key.str.contains("/ab/eval/")]
    train = runs[~key.str.contains("/ab/eval/")].set_index("tags.cmt_record")
    rows = []
    for _, ev in evals.iterrows():
        record = ev["tags.cmt_record"].replace("/ab/eval/", "/ab/")
        source, kind = train.loc[record], ev["tags.label"].split("/")[0]
        method, init = source.get("tags.method"), source.get("tags.init")
        solver, _, nfe = str(source.get("tags.trajectory_set")).partition("-nfe") if kind == "mid" else ("", "", "")
        rows.append(
            {
                "kind": kind,
                "variant": source.get("tags.ablation_variant"),
                "solver": solver,
                "nfe": int(nfe) if nfe else 0,
                "method": method,
                "init": init,
                "model": "CMT only" if kind == "mid" else f"{METHOD_NAMES[method]}, {INIT_NAMES[init]}",
                "iterations": int(source.get("params.iterations")),
                "seed": int(source.get("tags.seed")),
                "tables": (ev.get("tags.tables") or "").split(","),
                "fd_1step": ev["metrics.fd_1step"],
                "fd_2step": ev["metrics.fd_2step"],
                "distinct_trajectories": source.get("metrics.distinct_trajectories"),
                "train_run": source["run_id"],
                "stage_images": float(source["metrics.images"]),
                **{name: _cost(train, record, name) for name in COSTS},
            }
        )
    return pd.DataFrame(rows, columns=FRAME_COLUMNS).sort_values(AXES, kind="stable")


def summarise(df: pd.DataFrame, by: list[str], extra: tuple[str, ...] = ()) -> pd.DataFrame:
    """Mean +- std over seeds of the FDs (and mean of ``extra`` cost columns), one row per ``by`` group."""
    out = []
    for keys, group in df.groupby(by, sort=False, dropna=False):
        row = dict(zip(by, keys if isinstance(keys, tuple) else (keys,)))
        for metric in ("fd_1step", "fd_2step"):
            values = group[metric].astype(float)
            std = f" ± {values.std(ddof=1):.1f}" if len(values) > 1 else ""
            row[metric.replace("fd_", "FD ").replace("step", "-step")] = f"{values.mean():.1f}{std}"
        row["seeds"] = len(group)
        for col in extra:
            row[col] = float(group[col].astype(float).mean())
        out.append(row)
    return pd.DataFrame(out) if out else pd.DataFrame(columns=by)


def tables(df: pd.DataFrame) -> dict[str, pd.DataFrame]:
    """Every table of cmt/ablations.py from the rows that feed it (a table without runs has no rows)."""
    result = {}
    for name in TABLES:
        by, extra = LAYOUT.get(name, VARIANT_LAYOUT)
        result[name] = summarise(df[df["tables"].apply(lambda feeds, name=name: name in feeds)], by, extra)
    return result


def plot_fd_vs_images(curves: dict[tuple[str, str], list[tuple[float, float]]], path: str | Path) -> None:
    """One panel per method: 2-step FD against the lineage's training images, one line per init."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    methods = sorted({method for method, _ in curves}, key=list(METHOD_NAMES).index) or ["ect"]
    fig, axes = plt.subplots(1, len(methods), figsize=(4 * len(methods), 3.6), dpi=120, squeeze=False)
    for ax, method in zip(axes[0], methods):
        for init in INIT_NAMES:
            if curves.get((method, init)):
                xs, ys = zip(*curves[(method, init)])
                ax.plot(xs, ys, marker="o", ms=2.5, lw=1.2, label=INIT_NAMES[init])
        ax.set(xlabel="training images (mid + post)", yscale="log", title=METHOD_NAMES[method])
        ax.legend(fontsize=7)
    axes[0][0].set_ylabel("2-step FD (seed 0)")
    fig.tight_layout()
    buf = io.BytesIO()
    fig.savefig(buf, format="png")
    plt.close(fig)
    atomic_write_bytes(path, buf.getvalue())


def fd_vs_images(db: str | Path, df: pd.DataFrame) -> dict[tuple[str, str], list[tuple[float, float]]]:
    """Seed-0 curves of the method_init table's runs: FD history against the lineage's cumulative images."""
    from mlflow.tracking import MlflowClient

    from cmt.tracking import tracking_uri

    client = MlflowClient(tracking_uri(db))
    rows = df[(df["kind"] == "post") & (df["seed"] == 0) & df["tables"].apply(lambda feeds: "method_init" in feeds)]
    curves = {}
    for _, row in rows.iterrows():
        batch, before = row["stage_images"] / row["iterations"], row["images"] - row["stage_images"]
        history = client.get_metric_history(row["train_run"], "fd_2step")
        curves[(row["method"], row["init"])] = sorted((before + h.step * batch, h.value) for h in history)
    return curves


def ablation_report(db: str | Path, experiment: str, out_dir: str | Path) -> dict[str, pd.DataFrame]:
    """Write one Markdown + CSV per ablation table and the FD-vs-images plot into ``out_dir``."""
    out = Path(out_dir)
    df = ablation_frame(_runs(db, experiment))
    result = tables(df)
    for name, table in result.items():
        atomic_write_bytes(out / f"{name}.csv", table.to_csv(index=False).encode())
        md = (
            f"# Ablation: {TITLES[name]} ({experiment})\n\nMean ± std over seeds; FD of the feature net against "
            "held-out data (lower is better); images and teacher NFE are what the student lineage spent "
            f"(mid + post; the teacher's own training, shared by every init but random, is not counted). "
            f"From MLflow store {Path(db).name}.\n\n" + to_markdown(table)
        )
        atomic_write_bytes(out / f"{name}.md", md.encode())
        log_tables(db, experiment, [out / f"{name}.md", out / f"{name}.csv"], table=name)
    plot_fd_vs_images(fd_vs_images(db, df), out / "fd_vs_images.png")
    log_tables(db, experiment, [out / "fd_vs_images.png"])
    return result
