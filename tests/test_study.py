"""The study (config/study.yaml): its targets' jobs, the plateau rule, cost to quality, and its report from a real
MLflow store."""

import csv
import math
from pathlib import Path

import pytest
from helpers.figures import assert_plot
from helpers.project import ROOT, copy_project, planned_jobs, snakemake

from cmt.config import load_config
from cmt.errors import BadInput
from cmt.report.study import (
    Lineage,
    PlateauRule,
    Stage,
    cost_table,
    first_reach,
    line_styles,
    lineage_curve,
    plateau_drift,
    study_report,
    tail_fds,
)
from cmt.report.tracking import ingest, write_history, write_record
from cmt.workflow import jobs

RULE = PlateauRule(tail=0.25, tolerance=0.05)


@pytest.fixture(scope="module")
def study():
    return load_config(ROOT / "config" / "config.yaml", ROOT / "config" / "study.yaml")


def test_the_plateau_rule_compares_the_halves_of_the_last_quarter():
    noisy_but_flat = [(0, 100.0), (200, 60.0), (300, 50.0), (320, 56.0), (360, 49.0), (380, 52.0), (400, 51.0)]
    # the last 25 %: steps 300..400; earlier half (50, 56), later half (52, 51); the middle one (49) counts in neither
    assert plateau_drift(noisy_but_flat, 400, RULE) == pytest.approx((51.5 - 53) / 53)
    assert tail_fds(noisy_but_flat, 400, RULE) == [50.0, 56.0, 49.0, 52.0, 51.0]  # what the plateau table averages
    still_falling = [(0, 100.0), (300, 80.0), (400, 60.0)]
    assert plateau_drift(still_falling, 400, RULE) == pytest.approx(-0.25)
    rising = [(300, 40.0), (400, 60.0)]  # a curve that gets worse has not settled either
    assert plateau_drift(rising, 400, RULE) == pytest.approx(0.5)
    with pytest.raises(ValueError, match="holds 1 evaluation"):
        plateau_drift([(0, 1.0), (400, 1.0)], 400, RULE)


def test_a_lineage_curve_adds_each_stage_after_the_ones_before_it():
    mid = Stage("m", "mid", 100, {"images": 1000.0, "teacher_nfe": 400.0, "wall_seconds": 10.0})
    post = Stage("p", "post", 50, {"images": 500.0, "teacher_nfe": 0.0, "wall_seconds": 20.0})
    curve = lineage_curve([[(0, 90.0), (100, 30.0)], [(0, 30.0), (25, 20.0), (50, 10.0)]], [mid, post])
    spent = [(x["images"], x["teacher_nfe"], x["wall_seconds"]) for x, _ in curve]
    assert spent == [(0, 0, 0), (1000, 400, 10), (1000, 400, 10), (1250, 400, 20), (1500, 400, 30)]
    assert first_reach(curve, 20.0)["images"] == 1250 and first_reach(curve, 5.0) is None
    assert first_reach(curve, 30.0)["images"] == 1000  # reached at the end of CMT, before post-training starts


def _lineage(model: str, seed: int, fds: list[float], teacher_images: float) -> Lineage:
    stage = Stage("r", "post", 4, {"images": 400.0, "teacher_nfe": 40.0, "wall_seconds": 8.0})
    history = list(zip(range(5), fds))
    teacher = {"images": teacher_images, "teacher_nfe": 0.0, "wall_seconds": 100.0}
    return Lineage(model, seed, teacher, [stage], {1: [history], 2: [history]})


def test_cost_to_quality_is_the_mean_over_the_seeds_that_reach_a_threshold():
    found = [
        _lineage("A", 0, [90, 40, 20, 12, 11], 1000),
        _lineage("A", 1, [90, 60, 40, 20, 12], 1000),
        _lineage("B", 0, [90, 80, 70, 60, 50], 0),
    ]
    table = cost_table(found, references={0: 10.0, 1: 10.0}, factors=(2.0, 1.25))
    rows = {(r["model"], r["steps"], r["threshold"]): r for r in table.to_dict("records")}
    a20 = rows[("A", 2, "2 x teacher")]
    assert a20["reached"] == "2/2" and a20["images"] == (200 + 300) / 2  # steps 2 and 3 at 100 images a step
    assert a20["wall s"] == (4 + 6) / 2 and a20["wall s + teacher"] == 105
    assert a20["images + teacher"] == 1250 and a20["teacher NFE"] == 25
    assert rows[("A", 1, "1.25 x teacher")]["reached"] == "2/2"  # 12 <= 12.5 at step 3, then step 4
    b = rows[("B", 1, "2 x teacher")]
    assert b["reached"] == "not reached" and math.isnan(b["images"])


def test_variant_curves_get_a_colour_per_variant_and_a_line_style_per_method_and_init():
    stage, history = Stage("r", "post", 1, {}), {1: [[(0, 1.0)]], 2: [[(0, 1.0)]]}
    found = [
        Lineage(family, seed, {}, [stage], history, variant)
        for family in ("ECT from CMT init", "CMT only")
        for variant in ("", "teacher q25", "teacher q50")
        for seed in (0, 1)
    ]
    styles = line_styles(found)
    assert list(styles) == [
        "ECT from CMT init", "ECT from CMT init, teacher q25", "ECT from CMT init, teacher q50",
        "CMT only", "CMT only, teacher q25", "CMT only, teacher q50",
    ]  # fmt: skip
    assert styles["CMT only, teacher q25"] == {"color": styles["ECT from CMT init, teacher q25"]["color"], "ls": "--"}
    assert len({style["color"] for style in styles.values()}) == 3
    assert {style["ls"] for name, style in styles.items() if name.startswith("ECT")} == {"-"}
    assert line_styles([item for item in found if not item.variant]) == {"ECT from CMT init": {}, "CMT only": {}}


def test_each_seeds_threshold_is_the_teachers_fd_on_that_seeds_draws():
    # the same curves; seed 1's draws are harder (its teacher scores 20, not 10), so its 40 already meets 2 x teacher
    found = [_lineage("A", 0, [90, 40, 20, 12, 11], 1000), _lineage("A", 1, [90, 60, 40, 20, 12], 1000)]
    paired = cost_table(found, references={0: 10.0, 1: 20.0}, factors=(2.0,))
    row = paired[(paired["steps"] == 1)].iloc[0]
    assert row["reached"] == "2/2" and row["images"] == (200 + 200) / 2  # both at step 2
    unpaired = cost_table(found, references={0: 10.0, 1: 10.0}, factors=(2.0,))
    assert unpaired[(unpaired["steps"] == 1)].iloc[0]["images"] == (200 + 300) / 2


def test_the_study_targets_plan_the_comparison_and_the_extras(study):
    comparison = jobs.sweep_jobs(study, "study")
    posts = {p for p in comparison if p.startswith("post/")}
    assert len(posts) == (7 + 1) * 3  # the seven lineages of the comparison and the extras' winner, three seeds
    assert comparison["post/ect-cmt/base/it2400/p-dropout/s2"] == {"study.post_variants"}
    assert "post/meanflow-cmt/flowmap/it1200/s2" in posts and not any("ecd-random" in p for p in posts)
    assert comparison["mid/base/dpmpp3m_legacy-nfe16/s1"] >= {"study.method_init"}  # CMT alone is a row
    extras = jobs.sweep_jobs(study, "study_extras")
    assert extras["post/ect-cmt/base/it2400/p-lr_low/s0"] == {"study_extras.post_variants"}
    assert "study_extras.post_variants" in extras["post/ect-cmt/base/it2400/s0"]  # the reference row
    assert "post/meanflow-cmt/flowmap/it1200/p-mf_no_diagonal/s0" in extras  # MeanFlow starts from flow-map CMT
    assert {p for p in extras if p.endswith("teacher")} == {
        "teacher",
        *(f"t-{v}/teacher" for v in ("q25", "q50", "narrow")),
    }
    assert jobs.sweep_tables(study, "study_extras") == [
        "method_init", "nfe_solver", "cmt_variants", "loss", "slow_fast", "trajectory_count", "budget_split",
        "teacher_variants", "post_variants", "teacher_samplers",
    ]  # fmt: skip
    tags = jobs.variant_post_tags(study, ("ect", "cmt", "base", 2400, 0), jobs.BASE, "q_high")
    assert tags["job"] == "post/ect-cmt/base/it2400/p-q_high/s0" and tags["post_variant"] == "q_high"
    assert jobs.post_variant_of("p-q_high/") == "q_high" and jobs.post_variant_of("") == jobs.BASE
    assert jobs.post_overrides(study, "q_high", "ect") == {"q": 1024}
    with pytest.raises(ValueError, match="no post-training variant 'q_high' of ecd"):
        jobs.post_overrides(study, "q_high", "ecd")
    narrow = jobs.network_section(study, "narrow")
    assert narrow == {**study["network"], "model_channels": 16} and "network" not in jobs.teacher_section(
        study, "narrow"
    )
    assert jobs.teacher_section(study, "q25")["train"]["iterations"] == 300


def test_a_name_two_sweeps_define_differently_is_refused(study):
    clash = {**study, "ablations": {**study["ablations"], "teachers": {"q25": {"train": {"iterations": 100}}}}}
    with pytest.raises(ValueError, match=r"study_extras.teachers.q25: differs from ablations.teachers.q25"):
        jobs.teacher_section(clash, "q25")


def _job(root: Path, stage: str, tags: dict, costs: dict, history: list[tuple[int, float]], iterations: int) -> list:
    path = tags["job"]
    train, ev = root / "res" / path, root / "res" / "eval" / path
    write_record(train, stage=stage, run_name=path, params={"iterations": iterations}, tags=tags, metrics=costs)
    write_history(train, [{"step": s, "fd_1step": 2 * fd, "fd_2step": fd} for s, fd in history])
    scores = {"fd_16nfe": history[-1][1]} if stage == "teacher" else {"fd_1step": 2 * history[-1][1]}
    write_record(ev, stage="evaluate", run_name=path, params={}, tags={**tags, "label": path}, metrics=scores)
    return [train / "run.json", ev / "run.json"]


def test_the_study_report_reads_plateau_and_cost_from_a_real_store(tmp_path, study):
    teacher_costs = {"images": 10000, "teacher_nfe": 0, "wall_seconds": 50}
    records = _job(tmp_path, "teacher", jobs.teacher_tags(), teacher_costs, [(0, 10.0)], 10)
    groups = {}
    for seed in (0, 1):
        mid = jobs.mid_tags("base", "dpmpp3m_legacy", 16, seed)
        mid_costs = {"images": 400, "teacher_nfe": 160, "wall_seconds": 4}
        records += _job(tmp_path, "midtrain", mid, mid_costs, [(0, 80.0), (2, 40.0), (3, 30.0), (4, 30.0)], 4)
        post = jobs.post_tags(study, "ect", "cmt", "base", 4, seed)
        post_costs = {"images": 200, "teacher_nfe": 0, "wall_seconds": 8}
        records += _job(tmp_path, "posttrain", post, post_costs, [(0, 30.0), (2, 20.0 + seed), (3, 14.0), (4, 18.0)], 4)
        for job in (mid["job"], post["job"]):
            groups |= {job: ["study.method_init"], f"eval/{job}": ["study.method_init"]}
        groups[post["job"]] = groups[f"eval/{post['job']}"] = ["study.method_init", "study.post_variants"]
        setting = jobs.variant_post_tags(study, ("ect", "cmt", "base", 4, seed), jobs.BASE, "dropout")
        records += _job(tmp_path, "posttrain", setting, post_costs, [(0, 30.0), (2, 25.0), (3, 12.0), (4, 10.0)], 4)
        groups |= {where: ["study.post_variants"] for where in (setting["job"], f"eval/{setting['job']}")}
    weak = jobs.mid_tags("base", "dpmpp3m_legacy", 16, 0, teacher="q25")  # a teacher variant's lineage
    records += _job(tmp_path, "teacher", jobs.teacher_tags("q25"), teacher_costs, [(0, 12.0)], 10)
    records += _job(tmp_path, "midtrain", weak, mid_costs, [(0, 90.0), (2, 50.0), (3, 36.0), (4, 40.0)], 4)
    groups |= {where: ["study.teacher_variants"] for where in (weak["job"], f"eval/{weak['job']}")}
    db = tmp_path / "mlflow.db"
    ingest(records, db, "study", tmp_path / "art", root=tmp_path / "res", groups=groups)
    with pytest.raises(BadInput, match=r"seed\(s\) \[0, 1\].*eval/teacher-draws/s0"):
        study_report(db, "study", tmp_path / "tables", "study", RULE, (2.0, 1.5))
    draws = []
    for seed in (0, 1):  # the teacher on each seed's draws: the cost table's references
        tags = jobs.teacher_draws_tags(seed)
        where = tmp_path / "res" / "eval" / tags["job"]
        write_record(where, stage="evaluate", run_name=tags["job"], params={}, tags=tags, metrics={"fd_16nfe": 10.0})
        draws.append(where / "run.json")
    db = tmp_path / "with-draws.db"
    groups |= {f"eval/{jobs.teacher_draws_path(seed)}": ["study.method_init"] for seed in (0, 1)}  # as jobs.py tags
    ingest(records + draws, db, "study", tmp_path / "art", root=tmp_path / "res", groups=groups)
    study_report(db, "study", tmp_path / "tables", "study", RULE, (2.0, 1.5))

    plateau = {(r["model"], r["seed"], r["steps"]): r for r in csv.DictReader((tmp_path / "tables/plateau.csv").open())}
    assert plateau[("CMT only", "0", "2")]["plateaued"] == "yes"  # 30, 30 over steps 3..4
    ect = plateau[("ECT from CMT init", "1", "2")]
    assert float(ect["FD drift, last 25%"]) == pytest.approx(4 / 14) and ect["plateaued"] == "no"
    cost = {(r["model"], r["steps"], r["threshold"]): r for r in csv.DictReader((tmp_path / "tables/cost.csv").open())}
    cmt = cost[("CMT only", "2", "2 x teacher")]
    assert cmt["reached"] == "not reached"
    ect = cost[("ECT from CMT init", "2", "2 x teacher")]
    assert ect["reached"] == "2/2"  # seed 0 at post step 2, seed 1 at step 3: CMT's 400 images, then 50 a step
    assert float(ect["images"]) == 400 + (100 + 150) / 2 and float(ect["images + teacher"]) == 10000 + 525
    assert float(ect["teacher NFE"]) == 160 and float(ect["wall s"]) == 4 + (4 + 6) / 2
    assert "the mean FD of the later half is within 0.05 (relative)" in (tmp_path / "tables/plateau.md").read_text()
    assert "10.0 (seed 0), 10.0 (seed 1)" in (tmp_path / "tables/cost.md").read_text()
    assert_plot(tmp_path / "tables" / "fd_bands.png", (1440, 480))
    # the settings' own plateau table names each setting and averages the last quarter (steps 3, 4)
    settings = {
        (r["model"], r["seed"], r["steps"]): r
        for r in csv.DictReader((tmp_path / "tables/post_variants_plateau.csv").open())
    }
    assert {model for model, _, _ in settings} == {"ECT from CMT init", "ECT from CMT init, dropout"}
    assert float(settings[("ECT from CMT init, dropout", "1", "2")]["mean FD, last 25%"]) == pytest.approx(11.0)
    assert float(settings[("ECT from CMT init", "0", "2")]["mean FD, last 25%"]) == pytest.approx(16.0)
    assert "table study.post_variants" in (tmp_path / "tables/post_variants_plateau.md").read_text()
    weak = list(csv.DictReader((tmp_path / "tables/teacher_variants_plateau.csv").open()))
    assert [(r["model"], r["steps"], float(r["mean FD, last 25%"])) for r in weak] == [
        ("CMT only, teacher q25", "1", 76.0),
        ("CMT only, teacher q25", "2", 38.0),
    ]
    assert_plot(tmp_path / "tables" / "teacher_variants_bands.png", (1440, 480))
    assert_plot(tmp_path / "tables" / "post_variants_bands.png", (1440, 480))


def test_snakemake_plans_both_study_targets(tmp_path):
    project = copy_project(tmp_path / "p")
    for target, teachers in (("study", 1), ("study_extras", 4)):
        out = snakemake(project, "-n", target, "--configfile", "config/study.yaml").stdout
        planned = planned_jobs(out)
        assert planned["teacher"] == teachers and planned["report_study"] == 1
    published = planned_jobs(snakemake(project, "-n", "findings", "--configfile", "config/study.yaml").stdout)
    assert published["publish_findings"] == 2 and published["report_study"] == 2
    # with the experiments (the MeanFlow lineage of the main run's seed is one more CMT and post-training job)
    assert planned["posttrain"] == 17 and planned["midtrain"] == 6
    assert planned["gradient_bias"] == 1 and planned["meanflow_targets"] == 1
    assert planned["evaluate_teacher_alone"] == 9 + 1  # 3 solvers x 8, 16, 32 steps; the teacher on seed 0's draws


def test_findings_copy_the_generated_files_and_name_the_commits_of_the_targets_records(tmp_path):
    from cmt.report.findings import publish

    results = tmp_path / "results"
    tables, experiment = results / "tables" / "study", results / "gradient-bias"
    tables.mkdir(parents=True)
    experiment.mkdir()
    (tables / "cost.md").write_text("| model |\n")
    (tables / "cost.csv").write_text("model\n")
    (tables / "notes.txt").write_text("not published")
    (experiment / "gradient_bias.png").write_bytes(b"png")
    for job, commit in (("a", "abc"), ("b", "abc"), ("c", "def+dirty"), ("other", "xyz")):
        (results / job).mkdir()
        (results / job / "run.json").write_text(f'{{"git_commit": "{commit}"}}')
    out = tmp_path / "docs" / "findings" / "study" / "study"
    (out / "stale").mkdir(parents=True)  # a file of an earlier publication is not kept
    copied = publish(tables, [experiment], [results / job for job in "abc"], out)
    assert sorted(p.relative_to(out).as_posix() for p in copied) == [
        "cost.csv",
        "cost.md",
        "gradient-bias/gradient_bias.png",
    ]
    assert not (out / "stale").exists() and (out / "cost.md").read_text() == "| model |\n"
    provenance = (out / "provenance.md").read_text()
    assert "| `abc` | 2 |" in provenance and "| `def+dirty` | 1 |" in provenance
    assert "xyz" not in provenance  # a record of another target is not this one's provenance


def test_the_teachers_other_samplers_are_evaluation_only_jobs_with_their_own_table(tmp_path, study):
    evaluations = jobs.sweep_evaluations(study, "study_extras")
    assert evaluations["eval/teacher-samplers/heun-s8"] == {"study_extras.teacher_samplers"} and len(evaluations) == 10
    assert evaluations["eval/teacher-draws/s0"] == {"study_extras.method_init"}  # the cost table's reference
    assert [p for p in jobs.sweep_evaluations(study, "study") if "draws" in p] == [
        f"eval/teacher-draws/s{seed}" for seed in (0, 1, 2)
    ]
    evaluate, sample, tags = jobs.teacher_evaluation(study, "teacher-draws/s2")
    assert evaluate["seed"] == 2 and sample == study["teacher"]["sample"] and tags["kind"] == "teacher_draws"
    evaluate, sample, tags = jobs.teacher_evaluation(study, "teacher-samplers/heun-s8")
    assert evaluate == study["evaluate"] and (sample["solver"], sample["steps"]) == ("heun", 8)
    with pytest.raises(BadInput, match="teacher-draws/x: not an evaluation-only teacher job"):
        jobs.teacher_evaluation(study, "teacher-draws/x")
    assert jobs.record_groups(study)["eval/teacher-samplers/heun-s8"] == ["study_extras.teacher_samplers"]
    assert "eval/teacher-samplers/heun-s8" in jobs.record_folders(study, "study_extras")
    assert "teacher_samplers" in jobs.sweep_tables(study, "study_extras")
    from cmt.report.ablation_tables import ablation_report

    records, groups = [], {}
    for (solver, steps), (nfe, fd) in {
        ("heun", 8): (15, 30.0),
        ("heun", 16): (31, 20.0),
        ("euler", 8): (8, 60.0),
    }.items():
        tags = jobs.teacher_sampler_tags(solver, steps)
        where = tmp_path / "res" / "eval" / tags["job"]
        write_record(where, stage="evaluate", run_name=tags["job"], params={}, tags=tags, metrics={f"fd_{nfe}nfe": fd})
        records.append(where / "run.json")
        groups[f"eval/{tags['job']}"] = ["study_extras.teacher_samplers"]
    db = tmp_path / "mlflow.db"
    ingest(records, db, "study", tmp_path / "art", root=tmp_path / "res", groups=groups)
    result = ablation_report(db, "study", tmp_path / "tables", "study_extras", ("teacher_samplers",))
    table = result["teacher_samplers"]
    assert table.values.tolist() == [["euler", 8, 8, 60.0], ["heun", 8, 15, 30.0], ["heun", 16, 31, 20.0]]
    assert (tmp_path / "tables" / "teacher_samplers.md").exists()
