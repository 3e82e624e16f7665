"""The ablation sweep's jobs and table grouping, and the tables built from a real MLflow store."""

import csv
from pathlib import Path

import pytest
import yaml

from cmt.ablation_tables import ablation_report
from cmt.ablations import SETTING_TABLES, TABLES, mid_jobs, post_jobs, record_tables, variant_tables
from cmt.tracking import ingest, search, write_history, write_record

ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def config():
    return yaml.safe_load((ROOT / "config" / "ablations.yaml").read_text())


def test_sweep_jobs_of_the_shipped_config(config):
    mids, posts = mid_jobs(config), post_jobs(config)
    # per seed: base on 12 solver x NFE sets + 10 more variants on the default set; 9 method x init + 2 budget
    # splits + slow + KD post-training runs (ECT from base CMT is shared by method_init, budget and variants)
    assert (len(mids), len(posts)) == (2 * 21, 2 * 13)
    assert mids["mid/base/heun-nfe4/s1"] == ["nfe_solver"]
    assert mids["mid/slow/dpmpp3m_legacy-nfe16/s0"] == ["cmt_variants", "slow_fast"]
    assert mids["mid/base/dpmpp3m_legacy-nfe16/s0"] == [
        "nfe_solver",
        *sorted(set(TABLES) - {"method_init", "nfe_solver"}, key=TABLES.index),
    ]
    assert posts["post/ect-cmt/base/it400/s0"] == ["method_init", "cmt_variants", "slow_fast", "budget_split"]
    assert posts["post/ect-cmt/short/it600/s1"] == ["budget_split"]
    assert posts["post/meanflow-cmt/flowmap/it400/s0"] == ["method_init"]
    for tables in (*mids.values(), *posts.values()):
        assert tables == sorted(tables, key=TABLES.index)  # the first names the MLflow parent run


def test_a_variant_feeds_the_table_of_each_setting_it_changes():
    assert variant_tables({}) == {"cmt_variants", *SETTING_TABLES.values()}
    assert variant_tables({"points": "one"}) == {"cmt_variants", "slow_fast"}
    assert variant_tables({"loss": "lpips", "lpips_resize": 32}) == {"cmt_variants", "loss"}
    assert variant_tables({"lr": 1e-3}) == {"cmt_variants"}  # unknown to the focused tables: the overview only


def test_record_tables_name_training_and_evaluation_records(config):
    groups = record_tables(config, "results/ablations/ab")
    assert len(groups) == 2 * (42 + 26)
    assert groups["results/ablations/ab/eval/post/ect-cmt/kd/it400/s1"] == ["cmt_variants", "slow_fast"]
    assert groups["results/ablations/ab/mid/online/dpmpp3m_legacy-nfe16/s0"] == ["cmt_variants", "trajectory_count"]


def _job(root: Path, path: str, stage: str, tags: dict, metrics: dict, fd: tuple[float, float]) -> list[Path]:
    """A training record (with an FD history) and its evaluation record, as the workflow writes them."""
    train, ev = root / "res" / "ab" / path, root / "res" / "ab" / "eval" / path
    write_record(train, stage=stage, run_name=path, params={"iterations": 4}, tags=tags, metrics=metrics)
    write_history(train, [{"step": s, "fd_2step": fd[1] * (5 - s)} for s in (2, 4)])
    write_record(
        ev,
        stage="evaluate",
        run_name=path,
        params={},
        tags={"label": path},
        metrics=dict(zip(("fd_1step", "fd_2step"), fd)),
    )
    return [train / "run.json", ev / "run.json"]


def test_report_from_mlflow_sums_the_lineage_and_groups_runs_per_table(tmp_path):
    records, groups = [], {}
    for seed, fd in ((0, 10.0), (1, 14.0)):
        mid = f"mid/base/heun-nfe4/s{seed}"
        tags = {"ablation_variant": "base", "trajectory_set": "heun-nfe4", "seed": seed}
        records += _job(
            tmp_path,
            mid,
            "midtrain",
            tags,
            {"images": 100, "teacher_nfe": 40, "distinct_trajectories": 9},
            (fd * 3, fd * 2),
        )
        post = f"post/ect-cmt/base/it4/s{seed}"
        tags = {"ablation_variant": "base", "method": "ect", "init": "cmt", "seed": seed, "init_model": f"res/ab/{mid}"}
        records += _job(tmp_path, post, "posttrain", tags, {"images": 50, "teacher_nfe": 0}, (fd, fd / 2))
        for path, tables in ((mid, ["nfe_solver", "cmt_variants"]), (post, ["method_init", "cmt_variants"])):
            groups |= {f"res/ab/{path}": tables, f"res/ab/eval/{path}": tables}
    db = tmp_path / "mlflow.db"
    ingest(records, db, "ab", tmp_path / "art", root=tmp_path, groups=groups)
    result = ablation_report(db, "ab", tmp_path / "tables")

    method_init = list(csv.DictReader((tmp_path / "tables" / "method_init.csv").open()))
    assert len(method_init) == 1 and method_init[0]["FD 1-step"] == "12.0 ± 2.8"  # mean and std of 10, 14
    assert float(method_init[0]["images"]) == 150 and float(method_init[0]["teacher_nfe"]) == 40  # mid + post
    assert result["nfe_solver"][["solver", "nfe", "FD 2-step"]].values.tolist() == [["heun", 4, "24.0 ± 5.7"]]
    assert list(result["cmt_variants"]["model"]) == ["CMT only", "ECT, CMT init"]
    assert result["loss"].empty and (tmp_path / "tables" / "loss.md").exists()
    assert (tmp_path / "tables" / "fd_vs_images.png").stat().st_size > 5000

    runs = search(db, "ab")
    parents = runs[runs["tags.cmt_parent"] == "table"].set_index("tags.cmt_table")
    top = runs.loc[runs["tags.cmt_parent"] == "true", "run_id"].item()
    assert set(parents.index) == {
        "nfe_solver",
        "method_init",
        "loss",
        "slow_fast",
        "trajectory_count",
        "budget_split",
        "cmt_variants",
    }
    assert set(parents["tags.mlflow.parentRunId"]) == {top}
    jobs = runs[runs["tags.cmt_parent"].isna() & runs["tags.cmt_record"].str.contains("/post/")]
    assert set(jobs["tags.mlflow.parentRunId"]) == {parents.loc["method_init", "run_id"]}
    assert set(jobs["tags.tables"]) == {"method_init,cmt_variants"}

    again = ingest(records, db, "ab", tmp_path / "art", root=tmp_path, groups=groups)
    assert again == {"created": 0, "unchanged": 8}
    groups["res/ab/post/ect-cmt/base/it4/s0"] = ["budget_split"]  # a changed grouping replaces the run
    again = ingest(records, db, "ab", tmp_path / "art", root=tmp_path, groups=groups)
    assert again == {"created": 1, "unchanged": 7}
    moved = search(db, "ab").query("`tags.cmt_record` == 'res/ab/post/ect-cmt/base/it4/s0'")
    assert moved["tags.mlflow.parentRunId"].item() == parents.loc["budget_split", "run_id"]
