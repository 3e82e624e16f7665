"""The real Snakemake workflow on config/smoke.yaml: full run, up-to-date check, targeted reruns, bad input."""

import csv
import hashlib
from pathlib import Path

import yaml
from conftest import copy_project, planned_jobs, snakemake

LABELS = {"teacher", "cmt", "ect-random", "ect-diffusion", "ect-cmt"}


def test_smoke_run_produces_tables_from_mlflow(smoke):
    results = smoke / "results" / "smoke"
    rows = list(csv.DictReader((results / "tables" / "main.csv").open()))
    assert len(rows) == 5 and rows[-1]["model"] == "ECT from CMT init"
    assert (results / "tables" / "fd_vs_iterations.png").stat().st_size > 5000
    assert "| ECT from CMT init |" in (results / "tables" / "main.md").read_text()
    from cmt.tracking import search

    runs = search(results / "mlflow.db", "smoke", stage="evaluate")
    assert set(runs["tags.label"]) == LABELS
    parent = search(results / "mlflow.db", "smoke").query("`tags.cmt_parent` == 'true'")
    tables = Path(parent["artifact_uri"].item().removeprefix("file://")) / "tables"
    assert {"main.md", "main.csv", "fd_vs_iterations.png"} <= {p.name for p in tables.iterdir()}
    assert {"teacher.tsv", "midtrain.tsv", "posttrain-ect-cmt.tsv"} <= {
        p.name for p in (results / "benchmarks").iterdir()
    }
    assert not any((smoke / "work" / "smoke").rglob("resume.pt"))


def test_second_run_has_nothing_to_do(smoke):
    assert "Nothing to be done" in snakemake(smoke, "-n", "all", "--configfile", "config/smoke.yaml").stdout


def test_editing_midtrain_loss_reruns_only_midtrain_and_downstream(smoke, tmp_path):
    cfg = yaml.safe_load((smoke / "config" / "smoke.yaml").read_text())
    cfg["midtrain"]["loss"] = "pseudo_huber"
    edited = tmp_path / "edited.yaml"
    edited.write_text(yaml.safe_dump(cfg))
    jobs = planned_jobs(snakemake(smoke, "-n", "all", "--configfile", str(edited)).stdout)
    assert jobs == {"midtrain": 1, "posttrain": 1, "evaluate": 2, "ingest": 1, "report": 1, "all": 1}


def test_config_typo_is_a_schema_error_naming_the_key(smoke, tmp_path):
    cfg = yaml.safe_load((smoke / "config" / "smoke.yaml").read_text())
    cfg["midtrain"]["los"] = cfg["midtrain"].pop("loss")
    bad = tmp_path / "typo.yaml"
    bad.write_text(yaml.safe_dump(cfg))
    proc = snakemake(smoke, "-n", "all", "--configfile", str(bad), check=False)
    assert proc.returncode != 0
    assert "midtrain.los: unknown key" in proc.stdout + proc.stderr


def test_fetched_teacher_with_wrong_sha256_is_refused(smoke, tmp_path):
    project = copy_project(tmp_path / "fetch")
    weights = smoke / "results" / "smoke" / "teacher" / "model.safetensors"
    cfg = yaml.safe_load((project / "config" / "smoke.yaml").read_text())
    cfg["name"] = "fetched"
    cfg["teacher"] = {
        "source": "fetch",
        "sample": cfg["teacher"]["sample"],
        "fetch": {"url": weights.as_uri(), "sha256": "0" * 64},
    }
    (project / "config" / "fetched.yaml").write_text(yaml.safe_dump(cfg))
    proc = snakemake(project, "--cores", "1", "teacher", "--configfile", "config/fetched.yaml", check=False)
    assert proc.returncode != 0
    log = (project / "results" / "fetched" / "logs" / "teacher.log").read_text()
    assert "sha256 mismatch" in log and weights.as_uri() in log
    assert not any(p.is_file() for p in (project / "results" / "fetched" / "teacher").rglob("*"))

    cfg["teacher"]["fetch"]["sha256"] = hashlib.sha256(weights.read_bytes()).hexdigest()
    (project / "config" / "fetched.yaml").write_text(yaml.safe_dump(cfg))
    snakemake(project, "--cores", "1", "teacher", "--configfile", "config/fetched.yaml")
    assert (project / "results" / "fetched" / "teacher" / "samples.png").exists()


def test_all_ablations_dry_run_lists_the_sweep(smoke):
    proc = snakemake(smoke, "-n", "all_ablations", "--configfile", "config/ablations.yaml")
    jobs = planned_jobs(proc.stdout)
    # 3 solvers x 4 NFEs trajectory sets; CMT: base on all 12 sets + 10 variants on the default set (base shared)
    # = 21 per seed; post: 3 methods x 3 inits + 2 budget splits + slow + KD = 13 per seed; two seeds
    assert {k: jobs[k] for k in ("trajectories", "ab_midtrain", "ab_posttrain", "ab_evaluate")} == {
        "trajectories": 12,
        "ab_midtrain": 42,
        "ab_posttrain": 26,
        "ab_evaluate": 68,
    }
    lint = snakemake(smoke, "--lint", "--configfile", "config/ablations.yaml", check=False)
    assert "Congratulations" in lint.stdout + lint.stderr


def test_ablation_sweep_runs_for_real_on_a_small_grid(smoke, tmp_path):
    """A reduced sweep on the smoke project: every ablation rule runs, the smoke teacher is reused."""
    cfg = yaml.safe_load((smoke / "config" / "smoke.yaml").read_text())
    cfg["ablations"] = {
        "seeds": [0],
        "trajectory_sets": {"solvers": ["dpmpp3m_legacy", "heun"], "nfes": [4]},
        "cmt": {"base": {}, "flowmap": {"form": "flowmap"}, "traj128": {"max_trajectories": 128}},
        "post": {
            "methods": ["ecd", "meanflow"],
            "inits": ["cmt"],
            "cmt_variant": {"ecd": "base", "meanflow": "flowmap"},
        },
        "budget": {"short": ["traj128", 20]},
        "variant_post": [],
    }
    path = tmp_path / "ab-smoke.yaml"
    path.write_text(yaml.safe_dump(cfg))
    snakemake(smoke, "--cores", "2", "all_ablations", "--configfile", str(path))
    ab = smoke / "results" / "smoke" / "ab"
    assert (ab / "post" / "meanflow-cmt" / "flowmap" / "it40" / "s0" / "model.safetensors").exists()
    assert (ab / "eval" / "mid" / "base" / "heun-nfe4" / "s0" / "scores.json").exists()
    from cmt.tracking import search

    runs = search(smoke / "results" / "smoke" / "mlflow.db", "smoke", stage="evaluate")
    assert {"post/ecd-cmt/base/it40/s0", "post/ect-cmt/traj128/it20/s0"} <= set(runs["tags.label"])
    tables = smoke / "results" / "smoke" / "tables"
    method_init = list(csv.DictReader((tables / "method_init.csv").open()))
    assert {(r["method"], r["init"]) for r in method_init} == {("ecd", "cmt"), ("meanflow", "cmt")}
    nfe = {(r["solver"], r["nfe"]): r for r in csv.DictReader((tables / "nfe_solver.csv").open())}
    assert set(nfe) == {("dpmpp3m_legacy", "4"), ("heun", "4"), ("dpmpp3m_legacy", "16")}
    assert float(nfe["heun", "4"]["teacher_nfe"]) > float(nfe["dpmpp3m_legacy", "4"]["teacher_nfe"]) > 0
    counts = {(r["variant"], r["model"]): r for r in csv.DictReader((tables / "trajectory_count.csv").open())}
    assert set(counts) == {("base", "CMT only"), ("traj128", "CMT only")}
    assert float(counts["traj128", "CMT only"]["distinct_trajectories"]) <= 128
    assert float(counts["base", "CMT only"]["distinct_trajectories"]) > 128
    budget = {(r["variant"], r["model"]): r for r in csv.DictReader((tables / "budget_split.csv").open())}
    assert set(budget) == {("base", "CMT only"), ("traj128", "ECT, CMT init")}
    variants = {(r["variant"], r["model"]): r for r in csv.DictReader((tables / "cmt_variants.csv").open())}
    mid_images = float(variants["traj128", "CMT only"]["images"])
    assert float(budget["traj128", "ECT, CMT init"]["images"]) > mid_images > 0  # the lineage: mid + post
    assert (tables / "fd_vs_images.png").stat().st_size > 5000
    runs = search(smoke / "results" / "smoke" / "mlflow.db", "smoke")
    parents = runs[runs["tags.cmt_parent"] == "table"].set_index("run_id")["tags.cmt_table"]
    grouped = runs[runs["tags.cmt_record"].fillna("").str.contains("/ab/")]
    assert set(grouped["tags.mlflow.parentRunId"].map(parents)) == {
        "method_init",
        "nfe_solver",
        "cmt_variants",
        "budget_split",
    }
    assert "Nothing to be done" in snakemake(smoke, "-n", "all_ablations", "--configfile", str(path)).stdout
