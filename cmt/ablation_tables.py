"""The ablation tables (mean +- std over seeds) and FD-versus-images curves, from the MLflow store.

Every ablation job's evaluation run carries its axes as tags (variant, trajectory set, method, init,
iterations, seed); its training run is found by its record path (``.../ab/eval/<path>`` evaluates
``.../ab/<path>``).
"""

from __future__ import annotations

import io
from pathlib import Path

import pandas as pd

from cmt.checkpoints import atomic_write_bytes
from cmt.tables import METHOD_NAMES, _runs, log_tables, to_markdown

TRAIN_METRICS = ("images", "teacher_nfe", "distinct_trajectories", "wall_seconds")
TABLES = ("method_init", "nfe_solver", "cmt_variants", "budget_split")


def ablation_frame(runs: pd.DataFrame) -> pd.DataFrame:
    """One row per evaluated ablation model: its axes, FDs and the training run's cost metrics."""
    key = runs["tags.cmt_record"].fillna("")
    evals = runs[key.str.contains("/ab/eval/")].copy()
    train = runs.set_index("tags.cmt_record")
    rows = []
    for _, ev in evals.iterrows():
        path = ev["tags.label"]
        source = train.loc[ev["tags.cmt_record"].replace("/ab/eval/", "/ab/")]
        rows.append(
            {
                "kind": path.split("/")[0],
                "variant": ev.get("tags.ablation_variant"),
                "tset": ev.get("tags.trajectory_set"),
                "method": ev.get("tags.method"),
                "init": ev.get("tags.init"),
                "iterations": ev.get("tags.iterations"),
                "seed": ev.get("tags.seed"),
                "tables": ev.get("tags.tables") or "",
                "fd_1step": ev["metrics.fd_1step"],
                "fd_2step": ev["metrics.fd_2step"],
                **{m: source.get(f"metrics.{m}") for m in TRAIN_METRICS},
            }
        )
    return pd.DataFrame(rows)


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
    return pd.DataFrame(out)


def tables(df: pd.DataFrame) -> dict[str, pd.DataFrame]:
    """The paper's ablation tables from the frame (a table without runs has no rows)."""
    mid, post = df[df["kind"] == "mid"], df[df["kind"] == "post"]

    def feeds(name: str) -> pd.Series:
        return post["tables"].str.split(",").apply(lambda tables: name in tables)

    default_set = mid.loc[mid["variant"] != "base", "tset"].mode()
    on_default = mid[mid["tset"].isin(default_set)] if len(default_set) else mid.iloc[0:0]
    return {
        "method_init": summarise(
            post[feeds("method_init")], ["method", "init", "variant", "iterations"], ("images", "teacher_nfe")
        ),
        "nfe_solver": summarise(mid[mid["variant"] == "base"], ["tset"], ("teacher_nfe",)),
        "cmt_variants": pd.concat(
            [
                summarise(on_default, ["kind", "variant"], ("images", "teacher_nfe", "distinct_trajectories")),
                summarise(post[feeds("cmt_variants")], ["kind", "variant", "method"], ("images",)),
            ],
            ignore_index=True,
        ),
        "budget_split": summarise(post[feeds("budget_split")], ["variant", "iterations"], ("images",)),
    }


def plot_fd_vs_images(df_history: dict[str, list[tuple[float, float]]], path: str | Path) -> None:
    """2-step FD against training images (post-training, offset by the images spent before it)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(6, 3.8), dpi=120)
    for label, series in sorted(df_history.items()):
        if series:
            xs, ys = zip(*series)
            ax.plot(xs, ys, marker="o", ms=2.5, lw=1.2, label=label)
    ax.set(xlabel="training images (mid + post)", ylabel="2-step FD", yscale="log", title="FD vs images")
    ax.legend(fontsize=7)
    fig.tight_layout()
    buf = io.BytesIO()
    fig.savefig(buf, format="png")
    plt.close(fig)
    atomic_write_bytes(path, buf.getvalue())


def fd_vs_images(db: str | Path, runs: pd.DataFrame, df: pd.DataFrame) -> dict[str, list[tuple[float, float]]]:
    """Seed-0 curves of every method x init (default budget): FD history against cumulative images."""
    from mlflow.tracking import MlflowClient

    from cmt.tracking import tracking_uri

    client = MlflowClient(tracking_uri(db))
    train = runs[runs["tags.cmt_stage"] == "posttrain"]
    curves = {}
    for _, r in train.iterrows():
        if r.get("tags.seed") != "0" or r.get("tags.ablation_variant") not in ("none", "base", "flowmap"):
            continue
        before = 0.0
        if r.get("tags.init") == "cmt":
            mids = df[(df["kind"] == "mid") & (df["variant"] == r["tags.ablation_variant"]) & (df["seed"] == "0")]
            before = float(mids["images"].max()) if len(mids) else 0.0
        batch = float(r["metrics.images"]) / float(r["tags.iterations"])
        history = client.get_metric_history(r["run_id"], "fd_2step")
        curves[f"{METHOD_NAMES[r['tags.method']]} / {r['tags.init']}"] = sorted(
            (before + h.step * batch, h.value) for h in history
        )
    return curves


def ablation_report(db: str | Path, experiment: str, out_dir: str | Path) -> dict[str, pd.DataFrame]:
    """Write one Markdown + CSV per ablation table and the FD-vs-images plot into ``out_dir``."""
    out = Path(out_dir)
    runs = _runs(db, experiment)
    df = ablation_frame(runs)
    result = tables(df)
    files = []
    for name, table in result.items():
        atomic_write_bytes(out / f"{name}.csv", table.to_csv(index=False).encode())
        md = (
            f"# Ablation: {name.replace('_', ' ')} ({experiment})\n\nMean ± std over seeds; FD of the feature net "
            f"against held-out data (lower is better). From MLflow store {Path(db).name}.\n\n" + to_markdown(table)
        )
        atomic_write_bytes(out / f"{name}.md", md.encode())
        files += [out / f"{name}.md", out / f"{name}.csv"]
    plot_fd_vs_images(fd_vs_images(db, runs, df), out / "fd_vs_images.png")
    log_tables(db, experiment, files + [out / "fd_vs_images.png"])
    return result
