"""The ablation tables (mean +- std over seeds) and FD-versus-images curves, from the MLflow store.

Every evaluation run carries its job's axes (``kind``, ``variant``, ``solver``, ``nfe``, ``method``, ``init``,
``iterations``, ``seed``) and the tables the job feeds (``tables``, from cmt/workflow/jobs.py at ingest) as tags.
Its training run is the one with the same ``job`` tag, and ``init_job`` links a post-training run to its
CMT init, so every row carries what its whole student lineage spent (mid + post).
"""

from __future__ import annotations

import math
from pathlib import Path

import pandas as pd

from cmt.formats.atomic import atomic_write_bytes
from cmt.report.plots import save_figure
from cmt.report.tables import (
    INIT_NAMES,
    METHOD_NAMES,
    SCORE_NOTE,
    SCORES,
    _runs,
    lineage,
    lineage_sum,
    log_tables,
    split_runs,
    tag,
    teacher_sampler,
    to_markdown,
)
from cmt.workflow.jobs import ABLATION_TABLES, table_id

COSTS = ("images", "teacher_nfe")
STUDENT = ("mid", "post")  # the stages whose costs a row carries (the teacher is shared by every init but random)
AXES = ["teacher", "kind", "variant", "solver", "nfe", "method", "init", "post_variant", "iterations", "seed"]
FRAME_COLUMNS = [
    *AXES,
    "model",
    "tables",
    *(f"{prefix}_{steps}step" for prefix in SCORES for steps in (1, 2)),
    "distinct_trajectories",
    "train_run",
    "stage_images",
    *COSTS,
]
# table -> (group-by columns, cost columns averaged over seeds); the CMT-variant tables share one layout
LAYOUT = {
    "method_init": (["model", "method", "init", "variant", "iterations"], COSTS),
    "post_variants": (["method", "init", "variant", "post_variant", "iterations"], COSTS),
    "nfe_solver": (["solver", "nfe"], ("teacher_nfe", "distinct_trajectories")),
    "teacher_variants": (["teacher", "model", "variant"], COSTS),
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
    "teacher_variants": "every post-training method x init and CMT alone under each teacher variant",
    "post_variants": "post-training settings (named variants) from CMT init, next to the method's own",
    "teacher_samplers": "the teacher's FD per solver and step count (one evaluation each, no seeds)",
}
OWN_FRAMES = ("teacher_samplers",)  # tables not built from the students' frame


def ablation_frame(runs: pd.DataFrame, scope: str = "ablations") -> pd.DataFrame:
    """One row per evaluated student of a sweep: its axes, the sweep's tables it feeds, FDs and its lineage's
    cost."""
    train, evals = split_runs(runs)
    ids = {table_id(scope, name): name for name in ABLATION_TABLES}
    rows = []
    for _, ev in evals[evals["tags.kind"].isin(STUDENT)].iterrows():
        tables = [ids[t] for t in tag(ev, "tables").split(",") if t in ids]
        if not tables:
            continue
        chain = lineage(train, tag(ev, "job"))
        source, kind, method, init = chain[-1], tag(ev, "kind"), tag(ev, "method"), tag(ev, "init")
        rows.append(
            {
                "teacher": tag(ev, "teacher_variant") or "base",
                "kind": kind,
                "variant": tag(ev, "variant"),
                "solver": tag(ev, "solver"),
                "nfe": int(tag(ev, "nfe") or 0),
                "method": method,
                "init": init,
                "post_variant": tag(ev, "post_variant") or "base",
                "model": "CMT only" if kind == "mid" else f"{METHOD_NAMES[method]}, {INIT_NAMES[init]}",
                "iterations": int(source["params.iterations"]),
                "seed": int(tag(ev, "seed")),
                "tables": tables,
                **{f"{p}_{k}step": ev.get(f"metrics.{p}_{k}step", math.nan) for p in SCORES for k in (1, 2)},
                "distinct_trajectories": source.get("metrics.distinct_trajectories"),
                "train_run": source["run_id"],
                "stage_images": float(source["metrics.images"]),
                **{name: lineage_sum(chain, name, STUDENT) for name in COSTS},
            }
        )
    return pd.DataFrame(rows, columns=FRAME_COLUMNS).sort_values(AXES, kind="stable")


def summarise(df: pd.DataFrame, by: list[str], extra: tuple[str, ...] = ()) -> pd.DataFrame:
    """Mean +- std over seeds of the scores the runs carry (FD, FID) and mean of ``extra`` cost columns, one row
    per ``by`` group."""
    out = []
    scored = [p for p in SCORES if df[f"{p}_1step"].notna().any()]
    for keys, group in df.groupby(by, sort=False, dropna=False):
        row = dict(zip(by, keys if isinstance(keys, tuple) else (keys,)))
        for prefix, steps in ((p, k) for p in scored for k in (1, 2)):
            values = group[f"{prefix}_{steps}step"].astype(float)
            std = f" ± {values.std(ddof=1):.1f}" if len(values) > 1 else ""
            row[f"{SCORES[prefix]} {steps}-step"] = f"{values.mean():.1f}{std}"
        row["seeds"] = len(group)
        for col in extra:
            row[col] = float(group[col].astype(float).mean())
        out.append(row)
    return pd.DataFrame(out) if out else pd.DataFrame(columns=by)


def teacher_sampler_table(runs: pd.DataFrame, scope: str) -> pd.DataFrame:
    """The teacher's FD per solver and step count (evaluation-only jobs of a sweep's ``teacher_samplers``), with the
    denoiser calls each sampler made (its score's name, ``fd_<NFE>nfe``)."""
    _, evals = split_runs(runs)
    rows = []
    for _, ev in evals[evals["tags.kind"] == "teacher_sampler"].iterrows():
        if table_id(scope, "teacher_samplers") not in tag(ev, "tables").split(","):
            continue
        scored = ev.dropna()
        sampler = teacher_sampler(scored.index)  # "<NFE>nfe": the one this evaluation scored
        if f"metrics.fd_{sampler}" in scored:
            fd = scored[f"metrics.fd_{sampler}"]
            rows.append(
                {"solver": tag(ev, "solver"), "steps": int(tag(ev, "steps")), "NFE": int(sampler[:-3]), "FD": fd}
            )
    frame = pd.DataFrame(rows, columns=["solver", "steps", "NFE", "FD"])
    return frame.sort_values(["solver", "steps"], kind="stable").reset_index(drop=True)


def teacher_columns(runs: pd.DataFrame, scope: str) -> pd.DataFrame:
    """Per teacher of a sweep's ``teacher_variants`` table (``base``: the config's own): its FD at its multi-step
    sampler and the images it trained on, the strength each row's students learnt from."""
    train, evals = split_runs(runs)
    sampler = teacher_sampler(runs.columns)
    rows = []
    for _, ev in evals[evals["tags.kind"] == "teacher"].iterrows():
        if table_id(scope, "teacher_variants") in tag(ev, "tables").split(","):
            source = lineage(train, tag(ev, "job"))[-1]
            fd = ev.get(f"metrics.fd_{sampler}", math.nan)
            rows.append(
                {
                    "teacher": tag(ev, "teacher_variant") or "base",
                    "teacher FD": fd,
                    "teacher images": source["metrics.images"],
                }
            )
    return pd.DataFrame(rows, columns=["teacher", "teacher FD", "teacher images"])


def tables(df: pd.DataFrame, names: tuple[str, ...] = ABLATION_TABLES) -> dict[str, pd.DataFrame]:
    """The sweep tables ``names`` (cmt/workflow/jobs.py) from the rows that feed each (a table without runs has no
    rows)."""
    result = {}
    for name in (n for n in names if n not in OWN_FRAMES):
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
    save_figure(fig, path)


def fd_vs_images(db: str | Path, df: pd.DataFrame) -> dict[tuple[str, str], list[tuple[float, float]]]:
    """Seed-0 curves of the method_init table's runs: FD history against the lineage's cumulative images."""
    from mlflow.tracking import MlflowClient

    from cmt.report.tracking import tracking_uri

    client = MlflowClient(tracking_uri(db))
    rows = df[(df["kind"] == "post") & (df["seed"] == 0) & df["tables"].apply(lambda feeds: "method_init" in feeds)]
    curves = {}
    for _, row in rows.iterrows():
        batch, before = row["stage_images"] / row["iterations"], row["images"] - row["stage_images"]
        history = client.get_metric_history(row["train_run"], "fd_2step")
        curves[(row["method"], row["init"])] = sorted((before + h.step * batch, h.value) for h in history)
    return curves


def ablation_report(
    db: str | Path,
    experiment: str,
    out_dir: str | Path,
    scope: str = "ablations",
    names: tuple[str, ...] = ABLATION_TABLES,
) -> dict[str, pd.DataFrame]:
    """Write one Markdown + CSV per table ``names`` of sweep ``scope`` and the FD-vs-images plot into ``out_dir``."""
    out = Path(out_dir)
    runs = _runs(db, experiment)
    df = ablation_frame(runs, scope)
    result = tables(df, names)
    if "teacher_samplers" in names:
        result["teacher_samplers"] = teacher_sampler_table(runs, scope)
    if "teacher_variants" in result:
        result["teacher_variants"] = teacher_columns(runs, scope).merge(
            result["teacher_variants"], on="teacher", how="right"
        )
    for name, table in result.items():
        atomic_write_bytes(out / f"{name}.csv", table.to_csv(index=False).encode())
        heading = "Ablation" if scope == "ablations" else scope
        md = (
            f"# {heading}: {TITLES[name]} ({experiment})\n\nMean ± std over seeds. {SCORE_NOTE}. "
            "Images and teacher NFE are what the student lineage spent "
            f"(mid + post; the teacher's own training, shared by every init but random, is not counted). "
            f"From MLflow store {Path(db).name}.\n\n" + to_markdown(table)
        )
        atomic_write_bytes(out / f"{name}.md", md.encode())
        log_tables(db, experiment, [out / f"{name}.md", out / f"{name}.csv"], table=table_id(scope, name))
    plot_fd_vs_images(fd_vs_images(db, df), out / "fd_vs_images.png")
    log_tables(db, experiment, [out / "fd_vs_images.png"])
    return result
