"""The study's own reading of the FD curves: the plateau check, cost to quality, and FD against training images with
a band over seeds (docs/findings.md; the rule and the thresholds: workflow.md §7.2).

Every curve is a student lineage's FD history as its training runs logged it (``metrics.jsonl``, ingested into
MLflow): the CMT stage's, then the post-training stage's, at the training images the lineage had spent by then.
A stage's teacher NFE and wall seconds up to one of its steps are taken as its totals times step / iterations
(each stage spends them evenly; the stored trajectory set a CMT job reads counts in its teacher NFE).
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from pathlib import Path
from typing import TypeVar

import numpy as np
import pandas as pd

from cmt.errors import BadInput
from cmt.formats.atomic import atomic_write_bytes
from cmt.report.ablation_tables import STUDENT
from cmt.report.plots import save_figure
from cmt.report.tables import _metric, lineage, model_name, split_runs, tag, teacher_sampler, to_markdown
from cmt.workflow.jobs import table_id, teacher_draws_path

STEPS = (1, 2)
COSTS = ("images", "teacher_nfe", "wall_seconds")
COST_NAMES = {"images": "images", "teacher_nfe": "teacher NFE", "wall_seconds": "wall s"}
WITH_TEACHER = ("images", "wall_seconds")  # what the teacher's own training spends (it calls no teacher)
Spent = TypeVar("Spent")
VARIANT_TABLES = ("post_variants", "teacher_variants")  # sweep tables whose rows are variants of the comparison's


@dataclass(frozen=True)
class PlateauRule:
    """A curve has plateaued when it no longer trends: over the evaluations in the last ``tail`` of its stage's
    iterations, the mean FD of the later half differs from the earlier half's by at most ``tolerance`` (relative; an
    odd middle evaluation counts in neither). Checked after training; nothing stops early."""

    tail: float
    tolerance: float


def tail_fds(points: list[tuple[int, float]], iterations: int, rule: PlateauRule) -> list[float]:
    """The FDs evaluated at steps >= (1 - tail) * iterations; at least two are needed."""
    tail = [fd for step, fd in points if step >= (1 - rule.tail) * iterations]
    if len(tail) < 2:
        raise ValueError(
            f"the last {rule.tail:.0%} of {iterations} iterations holds {len(tail)} evaluation(s); the plateau rule "
            "needs two: lower eval_every"
        )
    return tail


def plateau_drift(points: list[tuple[int, float]], iterations: int, rule: PlateauRule) -> float:
    """(mean of the later half - mean of the earlier half) / mean of the earlier half, over ``tail_fds``."""
    tail = tail_fds(points, iterations, rule)
    half = len(tail) // 2
    early, late = sum(tail[:half]) / half, sum(tail[-half:]) / half
    return (late - early) / early


def first_reach(curve: list[tuple[Spent, float]], threshold: float) -> Spent | None:
    """The first x (what was spent by then) of a curve in training order at which FD <= threshold; None if never."""
    return next((x for x, fd in curve if fd <= threshold), None)


@dataclass(frozen=True)
class Stage:
    """One training stage of a lineage: its run id, iterations and totals (``COSTS``)."""

    run_id: str
    kind: str
    iterations: int
    totals: dict[str, float]

    def spent(self, step: int) -> dict[str, float]:
        """What the stage had spent by ``step`` (evenly over its iterations)."""
        return {name: total * step / self.iterations for name, total in self.totals.items()}


def stages(chain: list[pd.Series]) -> tuple[dict[str, float], list[Stage]]:
    """(the teacher's training totals, or zeros without a teacher; the student stages) of a lineage."""
    teacher = {name: 0.0 for name in COSTS}
    students = []
    for run in chain:
        totals = {name: (v if not math.isnan(v := _metric(run, name)) else 0.0) for name in COSTS}
        if tag(run, "kind") == "teacher":
            teacher = totals
        else:
            students.append(Stage(run["run_id"], tag(run, "kind"), int(run["params.iterations"]), totals))
    return teacher, students


@dataclass(frozen=True)
class Lineage:
    """One evaluated student of the study: its method x init (``family``, a model name), seed, teacher totals,
    student stages, each stage's FD history (step, FD) per step count, and what sets it apart from its family
    (``lineage_variant``)."""

    family: str
    seed: int
    teacher: dict[str, float]
    students: list[Stage]
    histories: dict[int, list[list[tuple[int, float]]]]
    variant: str = ""

    @property
    def model(self) -> str:
        """Its name in tables and legends: the family, then the variant."""
        return ", ".join(filter(None, [self.family, self.variant]))

    def curve(self, k: int) -> list[tuple[dict, float]]:
        """The lineage's k-step FD curve (``lineage_curve``)."""
        return lineage_curve(self.histories[k], self.students)


def lineage_curve(histories: list[list[tuple[int, float]]], students: list[Stage]) -> list[tuple[dict, float]]:
    """A lineage's FD curve: (what its students had spent, FD) at every evaluation of every student stage, in order;
    ``histories``: each stage's (step, FD)."""
    before = {name: 0.0 for name in COSTS}
    curve = []
    for stage, history in zip(students, histories):
        for step, fd in history:
            spent = stage.spent(step)
            curve.append(({name: before[name] + spent[name] for name in COSTS}, fd))
        before = {name: before[name] + stage.totals[name] for name in COSTS}
    return curve


def lineages(db: str | Path, runs: pd.DataFrame, table: str) -> list[Lineage]:
    """The lineages of the students that feed ``table`` (a table id, cmt/workflow/jobs.py: table_id)."""
    from mlflow.tracking import MlflowClient

    from cmt.report.tracking import tracking_uri

    client = MlflowClient(tracking_uri(db))
    train, evals = split_runs(runs)
    found = []
    for _, ev in evals.iterrows():
        if table not in tag(ev, "tables").split(",") or tag(ev, "kind") not in STUDENT:  # not the teacher's
            continue
        teacher, students = stages(lineage(train, tag(ev, "job")))
        histories = {
            k: [sorted((h.step, h.value) for h in client.get_metric_history(s.run_id, f"fd_{k}step")) for s in students]
            for k in STEPS
        }
        found.append(Lineage(model_name(ev), int(tag(ev, "seed")), teacher, students, histories, lineage_variant(ev)))
    return found


def lineage_variant(ev: pd.Series) -> str:
    """A lineage's post-training setting and teacher where they are a sweep's variants (``post_variants``,
    ``teachers``); "" for the method's own settings under the config's teacher."""
    setting, teacher = tag(ev, "post_variant"), tag(ev, "teacher_variant")
    return ", ".join(filter(None, [setting, teacher and f"teacher {teacher}"]))


def teacher_references(runs: pd.DataFrame, seeds: set[int]) -> dict[int, float]:
    """Per training seed, the config's teacher's FD at its multi-step sampler on the noise draws that seed's FD curves
    use (the evaluation-only job ``eval/teacher-draws/s<seed>``): at 500 samples the draws alone move FD by a third,
    so a threshold is only comparable with curves on the same draws (workflow.md 7.2)."""
    _, evals = split_runs(runs)
    draws = evals[evals["tags.kind"] == "teacher_draws"] if "tags.kind" in evals else evals.iloc[:0]
    sampler = teacher_sampler(runs.columns)
    found = {int(tag(ev, "seed")): _metric(ev, f"fd_{sampler}") for _, ev in draws.iterrows()} if sampler else {}
    if missing := sorted(seeds - set(found)):
        raise BadInput(
            f"no teacher evaluation on the draws of seed(s) {missing} in the store "
            f"(eval/{teacher_draws_path(missing[0])}): run the study target, which evaluates it"
        )
    return {seed: found[seed] for seed in sorted(seeds)}


def plateau_table(found: list[Lineage], rule: PlateauRule) -> pd.DataFrame:
    """Per lineage, seed and step count: the drift of its last stage's FD over that stage's last ``rule.tail``
    (``plateau_drift``) and whether it is within ``rule.tolerance``."""
    rows = []
    for item in found:
        iterations = item.students[-1].iterations
        for k in STEPS:
            points = item.histories[k][-1]
            drift = plateau_drift(points, iterations, rule)
            rows.append(
                {
                    "model": item.model,
                    "seed": item.seed,
                    "steps": k,
                    "iterations": iterations,
                    f"FD drift, last {rule.tail:.0%}": drift,
                    "plateaued": "yes" if abs(drift) <= rule.tolerance else "no",
                    "FD start": points[0][1],
                    "FD end": points[-1][1],
                    f"mean FD, last {rule.tail:.0%}": float(np.mean(tail_fds(points, iterations, rule))),
                    "best FD": min(fd for _, fd in points),
                }
            )
    return pd.DataFrame(rows).sort_values(["model", "steps", "seed"], kind="stable")


def cost_table(found: list[Lineage], references: dict[int, float], factors: tuple[float, ...]) -> pd.DataFrame:
    """Per lineage, step count and threshold factor x the teacher's FD on each seed's own draws (``references``):
    how many seeds reached it, and the mean over those of the training images, teacher NFE and wall seconds first
    needed, without and with the teacher's own training."""
    rows = []
    models = list(dict.fromkeys(item.model for item in found))
    for model, k, factor in ((m, k, f) for m in models for k in STEPS for f in factors):
        seeds = [item for item in found if item.model == model]
        reached = []
        for item in seeds:
            spent = first_reach(item.curve(k), factor * references[item.seed])
            if spent is not None:
                reached.append((spent, item.teacher))
        row = {"model": model, "steps": k, "threshold": f"{factor:g} x teacher"}
        row["reached"] = f"{len(reached)}/{len(seeds)}" if reached else "not reached"
        for name in COSTS:
            row[COST_NAMES[name]] = float(np.mean([spent[name] for spent, _ in reached])) if reached else math.nan
        for name in WITH_TEACHER:
            total = [spent[name] + teacher[name] for spent, teacher in reached]
            row[f"{COST_NAMES[name]} + teacher"] = float(np.mean(total)) if reached else math.nan
        rows.append(row)
    return pd.DataFrame(rows)


LINE_STYLES = ("-", "--", ":", "-.")


def line_styles(found: list[Lineage]) -> dict[str, dict]:
    """Model name -> matplotlib style: without variants the colour cycle's own (one colour per model); with them a
    colour per variant and a line style per method x init, so a dozen lines stay apart."""
    variants = list(dict.fromkeys(item.variant for item in found))
    if len(variants) < 2:
        return {item.model: {} for item in found}
    families = list(dict.fromkeys(item.family for item in found))
    return {
        item.model: {
            "color": f"C{variants.index(item.variant) % 10}",
            "ls": LINE_STYLES[families.index(item.family) % len(LINE_STYLES)],
        }
        for item in found
    }


def plot_bands(found: list[Lineage], reference: float, path: str | Path) -> None:
    """FD against the lineage's training images, 1- and 2-step: the mean over seeds, a band from the lowest to the
    highest seed, and the teacher's FD on the same draws (the mean over the seeds') as a dashed line. With variants,
    a colour per variant and a line style per method x init (``line_styles``)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    styles = line_styles(found)
    fig, axes = plt.subplots(1, len(STEPS), figsize=(6 * len(STEPS), 4), dpi=120, squeeze=False)
    for ax, k in zip(axes[0], STEPS):
        for model, style in styles.items():
            curves = [item.curve(k) for item in found if item.model == model]
            n = min(len(c) for c in curves)
            x = np.array([spent["images"] for spent, _ in curves[0][:n]])
            fd = np.array([[fd for _, fd in c[:n]] for c in curves])
            seeds = f"{len(curves)} seed{'s' if len(curves) > 1 else ''}"
            (line,) = ax.plot(x, fd.mean(0), lw=1.3, label=f"{model} ({seeds})", **style)
            ax.fill_between(x, fd.min(0), fd.max(0), color=line.get_color(), alpha=0.2, lw=0)
        if not math.isnan(reference):
            ax.axhline(reference, color="k", ls="--", lw=0.8, label="teacher (multi-step, same draws)")
        ax.set(xlabel="training images (CMT + post-training)", ylabel=f"{k}-step FD", yscale="log")
        ax.legend(fontsize=6)
    save_figure(fig, path)


def plateau_note(rule: PlateauRule) -> str:
    return (
        f"The plateau rule: over the evaluations in the last {rule.tail:.0%} of a lineage's last stage, the mean FD of "
        f"the later half is within {rule.tolerance:g} (relative) of the earlier half's; drift = (later - earlier) / "
        "earlier. Checked after training; nothing stopped early."
    )


def cost_note(references: dict[int, float]) -> str:
    listed = ", ".join(f"{fd:.1f} (seed {seed})" for seed, fd in references.items())
    return (
        "Training images, teacher NFE and wall seconds a lineage (CMT + post-training) first needed to reach each FD "
        "threshold, a multiple of the teacher's own multi-step FD on the same noise draws and sample count as the "
        f"seed's curve (the teacher's FD on each seed's draws: {listed}); the mean over the seeds that reached it; "
        "`+ teacher`: with the teacher's own training counted (not for random init)."
    )


def study_report(
    db: str | Path, experiment: str, out_dir: str | Path, scope: str, rule: PlateauRule, factors: tuple[float, ...]
) -> None:
    """Of a sweep's comparison (table ``method_init``): ``plateau``, ``cost`` (.md, .csv) and ``fd_bands.png``; of
    each table of ``VARIANT_TABLES`` the sweep feeds: ``<table>_plateau`` and ``<table>_bands.png``, so a variant is
    read from its whole curve and not from one end point."""
    from cmt.report.tables import _runs, log_tables

    out = Path(out_dir)
    runs = _runs(db, experiment)
    found = lineages(db, runs, table_id(scope, "method_init"))
    variants = {table: lineages(db, runs, table_id(scope, table)) for table in VARIANT_TABLES}
    variants = {table: curves for table, curves in variants.items() if curves}
    references = teacher_references(runs, {item.seed for curves in [found, *variants.values()] for item in curves})
    frames = {  # name -> (table, frame, note)
        "plateau": ("method_init", plateau_table(found, rule), plateau_note(rule)),
        "cost": ("method_init", cost_table(found, references, factors), cost_note(references)),
    }
    bands = {"fd_bands": found}
    for table, curves in variants.items():
        frames[f"{table}_plateau"] = (table, plateau_table(curves, rule), plateau_note(rule))
        bands[f"{table}_bands"] = curves
    for name, (table, frame, note) in frames.items():
        atomic_write_bytes(out / f"{name}.csv", frame.to_csv(index=False).encode())
        title = name.replace("_", " ").capitalize()
        md = f"# {title} ({experiment}, table {table_id(scope, table)})\n\n{note}\n\n" + to_markdown(frame)
        atomic_write_bytes(out / f"{name}.md", md.encode())
    for name, curves in bands.items():
        reference = float(np.mean([references[seed] for seed in {item.seed for item in curves}]))
        plot_bands(curves, reference, out / f"{name}.png")
    files = [out / f"{n}.{e}" for n in frames for e in ("md", "csv")] + [out / f"{n}.png" for n in bands]
    log_tables(db, experiment, files)
