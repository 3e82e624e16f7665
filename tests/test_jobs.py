"""The workflow's jobs (cmt/workflow/jobs.py): paths, axes, the main run as the sweep's reference point, table grouping;
and the ablation tables built from a real MLflow store."""

import csv
from pathlib import Path

import pytest
import yaml
from helpers.figures import assert_plot

from cmt.config import load_config
from cmt.formats.pretrained import lpips_trunk_path
from cmt.report.ablation_tables import ablation_report
from cmt.report.tracking import ingest, search, write_history, write_record
from cmt.workflow.jobs import (
    SETTING_TABLES,
    TABLES,
    job_tables,
    main_jobs,
    mid_tags,
    post_tags,
    record_folders,
    record_groups,
    scope_jobs,
    sweep_jobs,
    teacher_of,
    teacher_prefix,
    teacher_section,
    variant_post_tags,
    variant_tables,
)

ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def config():
    return load_config(ROOT / "config" / "config.yaml")


def test_main_run_jobs_of_the_default_config(config):
    assert set(main_jobs(config)) == {
        "teacher",
        "mid/base/dpmpp3m_legacy-nfe16/s0",
        "post/ect-random/none/it600/s0",
        "post/ect-diffusion/none/it600/s0",
        "post/ect-cmt/base/it600/s0",
    }


def test_sweep_jobs_of_the_shipped_config(config):
    sweep = sweep_jobs(config)
    mids = {p: t for p, t in sweep.items() if p.startswith("mid/")}
    posts = {p: t for p, t in sweep.items() if p.startswith("post/")}
    # per seed: base on 12 solver x NFE sets + 9 more variants on the default set; 9 method x init + 2 budget
    # splits + slow + KD post-training runs (ECT from base CMT is shared by method_init, budget and variants)
    assert (len(mids), len(posts)) == (2 * 21, 2 * 13)
    tables = job_tables(config)
    assert tables["mid/base/heun-nfe4/s1"] == ["nfe_solver"]
    assert tables["mid/slow/dpmpp3m_legacy-nfe16/s0"] == ["cmt_variants", "slow_fast"]
    # CMT alone is the method x init comparison's reference row; no teacher or post-training variants here
    variant_tables_ = ["cmt_variants", "loss", "slow_fast", "trajectory_count", "budget_split"]
    assert tables["mid/base/dpmpp3m_legacy-nfe16/s0"] == ["main", "method_init", "nfe_solver", *variant_tables_]
    assert tables["post/ect-cmt/base/it600/s0"] == ["main", "method_init", "cmt_variants", "slow_fast", "budget_split"]
    assert tables["post/ect-cmt/short/it900/s1"] == ["budget_split"]
    assert tables["post/meanflow-cmt/flowmap/it600/s0"] == ["method_init"]
    for feeds in tables.values():
        assert feeds == sorted(feeds, key=TABLES.index)  # the first names the MLflow parent run


def test_the_main_run_is_the_sweeps_reference_point(config):
    main, sweep = main_jobs(config), scope_jobs(config, "ablations")
    assert set(main) <= set(sweep)
    assert set(record_folders(config, "main")) <= set(record_folders(config, "ablations"))
    shifted = {**config, "seed": 1}  # the main run at another seed is the sweep's seed-1 reference
    assert set(main_jobs(shifted)) - {"teacher"} <= set(sweep_jobs(config))


def test_a_variant_feeds_the_table_of_each_setting_it_changes():
    assert variant_tables({}) == {"cmt_variants", *SETTING_TABLES.values()}
    assert variant_tables({"points": "one"}) == {"cmt_variants", "slow_fast"}
    assert variant_tables({"loss": "lpips", "lpips_resize": 32}) == {"cmt_variants", "loss"}
    assert variant_tables({"lr": 1e-3}) == {"cmt_variants"}  # unknown to the focused tables: the overview only


def test_tags_carry_the_axes_and_the_lineage(config):
    mid = mid_tags("slow", "heun", 8, 1)
    assert mid == {
        "job": "mid/slow/heun-nfe8/s1",
        "kind": "mid",
        "variant": "slow",
        "solver": "heun",
        "nfe": "8",
        "seed": "1",
        "init_job": "teacher",
    }
    post = post_tags(config, "ect", "cmt", "slow", 600, 1)
    assert post["job"] == "post/ect-cmt/slow/it600/s1"
    assert post["init_job"] == "mid/slow/dpmpp3m_legacy-nfe16/s1"  # a CMT init trains on the default set
    assert post_tags(config, "ecd", "diffusion", "none", 600, 0)["init_job"] == "teacher"
    with pytest.raises(ValueError, match="variant"):
        post_tags(config, "ect", "random", "base", 600, 0)


def test_teacher_variants_get_their_own_jobs_below_a_prefix_and_one_teacher_for_every_seed(config):
    """ablations.teachers: each variant's teacher, base CMT, the CMT variant each method starts from and every
    post-training method x init live below t-<name>/ and feed the teacher_variants table; the config's own
    teacher's jobs are the reference rows; nothing else moves."""
    overlay = {**config, "ablations": {**config["ablations"], "teachers": {"weak": {"train": {"iterations": 50}}}}}
    sweep, plain = sweep_jobs(overlay), sweep_jobs(config)
    weak = {p for p in sweep if p.startswith("t-weak/")}
    assert {p for p in weak if "/mid/" in p or p.endswith("teacher")} == {
        "t-weak/teacher",  # one teacher job for both seeds
        *(f"t-weak/mid/{v}/dpmpp3m_legacy-nfe16/s{s}" for v in ("base", "flowmap") for s in (0, 1)),
    }
    assert len([p for p in weak if "/post/" in p]) == 3 * 3 * 2  # method x init x seed
    assert all(sweep[p] == {"teacher_variants"} for p in weak)
    assert set(sweep) - weak == {*plain, "teacher"} and "teacher_variants" in sweep["post/ect-cmt/base/it600/s0"]
    assert teacher_section(overlay, "weak")["train"] == {**config["teacher"]["train"], "iterations": 50}
    mid = mid_tags("base", "heun", 8, 1, "diffusion", "weak")
    assert mid["job"] == "t-weak/mid/base/heun-nfe8/s1" and mid["init_job"] == "t-weak/teacher"
    assert mid["teacher_variant"] == "weak" and "teacher_variant" not in mid_tags("base", "heun", 8, 1)
    post = variant_post_tags(overlay, ("ecd", "cmt", "base", 600, 0), "weak")
    assert post["init_job"] == "t-weak/mid/base/dpmpp3m_legacy-nfe16/s0" and post["job"].startswith("t-weak/post/")
    assert teacher_of(teacher_prefix("weak")) == "weak" and teacher_of("") == "base"
    with pytest.raises(ValueError, match="unknown teacher variant 'strong'; configured in the sweeps' teachers: weak"):
        teacher_section(overlay, "strong")


def test_record_groups_name_training_and_evaluation_records(config):
    groups = record_groups(config)
    assert len(groups) == 2 * (1 + 42 + 26)  # teacher, CMT and post-training jobs, each trained and evaluated
    assert groups["eval/post/ect-cmt/kd/it600/s1"] == ["cmt_variants", "slow_fast"]
    assert groups["mid/online/dpmpp3m_legacy-nfe16/s0"] == ["cmt_variants", "trajectory_count"]
    assert groups["eval/teacher"] == ["main"]


def _job(root: Path, stage: str, tags: dict, metrics: dict, fd: tuple[float, float]) -> list[Path]:
    """A training record (with an FD history) and its evaluation record, as the workflow writes them."""
    path = tags["job"]
    train, ev = root / "res" / path, root / "res" / "eval" / path
    write_record(train, stage=stage, run_name=path, params={"iterations": 4}, tags=tags, metrics=metrics)
    write_history(train, [{"step": s, "fd_2step": fd[1] * (5 - s)} for s in (0, 2, 4)])
    scores = dict(zip(("fd_1step", "fd_2step"), fd))
    write_record(ev, stage="evaluate", run_name=path, params={}, tags={**tags, "label": path}, metrics=scores)
    return [train / "run.json", ev / "run.json"]


def test_report_from_mlflow_sums_the_lineage_and_groups_runs_per_table(tmp_path, config):
    teacher = {"job": "teacher", "kind": "teacher"}
    records = _job(tmp_path, "teacher", teacher, {"images": 1000, "teacher_nfe": 0}, (50.0, 40.0))
    groups = {"teacher": ["main"], "eval/teacher": ["main"]}
    for seed, fd in ((0, 10.0), (1, 14.0)):
        mid = mid_tags("base", "heun", 4, seed)
        records += _job(
            tmp_path, "midtrain", mid, {"images": 100, "teacher_nfe": 40, "distinct_trajectories": 9}, (fd * 3, fd * 2)
        )
        post = post_tags({**config, "trajectories": {"solver": "heun", "nfe": 4}}, "ect", "cmt", "base", 4, seed)
        records += _job(tmp_path, "posttrain", post, {"images": 50, "teacher_nfe": 0}, (fd, fd / 2))
        for tags, tables in ((mid, ["nfe_solver", "cmt_variants"]), (post, ["method_init", "cmt_variants"])):
            groups |= {tags["job"]: tables, f"eval/{tags['job']}": tables}
    db = tmp_path / "mlflow.db"
    ingest(records, db, "ab", tmp_path / "art", root=tmp_path / "res", groups=groups)
    result = ablation_report(db, "ab", tmp_path / "tables")

    method_init = list(csv.DictReader((tmp_path / "tables" / "method_init.csv").open()))
    assert len(method_init) == 1 and method_init[0]["FD 1-step"] == "12.0 ± 2.8"  # mean and std of 10, 14
    # the lineage: mid + post images and teacher NFE; the teacher's own training is not counted
    assert float(method_init[0]["images"]) == 150 and float(method_init[0]["teacher_nfe"]) == 40
    assert result["nfe_solver"][["solver", "nfe", "FD 2-step"]].values.tolist() == [["heun", 4, "24.0 ± 5.7"]]
    assert list(result["cmt_variants"]["model"]) == ["CMT only", "ECT, CMT init"]
    assert result["loss"].empty and (tmp_path / "tables" / "loss.md").exists()
    assert_plot(tmp_path / "tables" / "fd_vs_images.png", (480, 432))

    runs = search(db, "ab")
    parents = runs[runs["tags.cmt_parent"] == "table"].set_index("tags.cmt_table")
    top = runs.loc[runs["tags.cmt_parent"] == "true", "run_id"].item()
    assert set(parents.index) == {"nfe_solver", "method_init", *TABLES[3:]}
    assert set(parents["tags.mlflow.parentRunId"]) == {top}
    jobs = runs[runs["tags.cmt_parent"].isna() & runs["tags.cmt_record"].str.startswith("post/")]
    assert set(jobs["tags.mlflow.parentRunId"]) == {parents.loc["method_init", "run_id"]}
    assert set(jobs["tags.tables"]) == {"method_init,cmt_variants"}
    teacher_run = runs[runs["tags.cmt_record"] == "teacher"]
    assert teacher_run["tags.mlflow.parentRunId"].item() == top  # a main-table job hangs below the experiment

    again = ingest(records, db, "ab", tmp_path / "art", root=tmp_path / "res", groups=groups)
    assert again == {"created": 0, "unchanged": 10, "ungrouped": 0}
    groups["post/ect-cmt/base/it4/s0"] = ["budget_split"]  # a changed grouping replaces the run
    again = ingest(records, db, "ab", tmp_path / "art", root=tmp_path / "res", groups=groups)
    assert again == {"created": 1, "unchanged": 9, "ungrouped": 0}
    moved = search(db, "ab").query("`tags.cmt_record` == 'post/ect-cmt/base/it4/s0'")
    assert moved["tags.mlflow.parentRunId"].item() == parents.loc["budget_split", "run_id"]
    del groups["post/ect-cmt/base/it4/s1"], groups["eval/post/ect-cmt/base/it4/s1"]  # a job the config dropped
    kept = [r for r in records if "base/it4/s1" not in str(r)]
    again = ingest(kept, db, "ab", tmp_path / "art", root=tmp_path / "res", groups=groups)
    assert again["ungrouped"] == 2
    dropped = search(db, "ab").query("`tags.cmt_record`.str.endswith('base/it4/s1')")
    assert set(dropped["tags.tables"]) == {""}


def test_an_overlay_drops_sweep_entries_with_null(config, tmp_path):
    cmt = {name: None for name in config["ablations"]["cmt"] if name not in ("base", "slow", "kd")}
    budget = {name: None for name in config["ablations"]["budget"]}
    overlay = tmp_path / "fewer.yaml"
    overlay.write_text(yaml.safe_dump({"ablations": {"cmt": cmt, "budget": budget}}))
    dropped = load_config(ROOT / "config" / "config.yaml", overlay)
    mids = {p for p in sweep_jobs(dropped) if p.startswith("mid/") and "dpmpp3m_legacy-nfe16" in p}
    assert mids == {f"mid/{v}/dpmpp3m_legacy-nfe16/s{s}" for v in ("base", "slow", "kd") for s in (0, 1)}
    assert not any("/short/" in p or "/long/" in p for p in sweep_jobs(dropped))
    overlay.write_text(yaml.safe_dump({"ablations": {"cmt": {"slow": None}}}))
    with pytest.raises(ValueError, match="unknown CMT variant 'slow'"):
        sweep_jobs(load_config(ROOT / "config" / "config.yaml", overlay))  # variant_post still asks for it


def test_the_lpips_variant_joins_the_sweep_when_its_trunk_is_in_the_torch_hub_cache(
    config, tmp_path, monkeypatch, capsys
):
    monkeypatch.setenv("TORCH_HOME", str(tmp_path / "torch"))
    trunk = lpips_trunk_path("vgg")
    lpips_jobs = {f"mid/lpips/dpmpp3m_legacy-nfe16/s{seed}" for seed in config["ablations"]["seeds"]}
    assert not lpips_jobs & set(sweep_jobs(config))
    assert f"ablations.cmt.lpips: left out of the sweep, no LPIPS trunk at {trunk}" in capsys.readouterr().err
    trunk.parent.mkdir(parents=True)
    trunk.write_bytes(b"the trunk's presence decides the DAG; loading it is tested in test_lpips")
    jobs = sweep_jobs(config)
    assert lpips_jobs <= set(jobs) and all("loss" in jobs[j] for j in lpips_jobs)
