"""The real Snakemake workflow: dry runs of both targets on the default config, resources from config, the smoke
run end to end (tables from MLflow), up-to-date check, targeted reruns, bad input, and a reduced real sweep."""

import csv
import functools
import hashlib
import http.server
import io
import json
import re
import shutil
import threading
from pathlib import Path

import pytest
import torch
import yaml
from helpers.edm_standin import edm_snapshot, write_pickle
from helpers.figures import assert_plot
from helpers.image_standins import write_image_folder, write_inception
from helpers.models import denoised, random_denoiser
from helpers.project import SMOKE_MID, artifact_hashes, copy_project, planned_jobs, snakemake
from PIL import Image
from safetensors.torch import load_file

from cmt.formats.checkpoints import load_denoiser
from cmt.training.loop import RESUME_FILE

MAIN = {
    "teacher",
    "mid/base/dpmpp3m_legacy-nfe16/s0",
    "post/ect-random/none/it40/s0",
    "post/ect-diffusion/none/it40/s0",
    "post/ect-cmt/base/it40/s0",
}


def dry_run(workdir: Path, target: str, *args: str) -> str:
    return snakemake(workdir, "-n", "--forceall", target, *args).stdout


def outputs(dry: str) -> set[str]:
    return {
        f.strip()
        for line in dry.splitlines()
        if line.strip().startswith("output:")
        for f in line.split(":", 1)[1].split(",")
    }


def job_resources(dry: str) -> dict[str, tuple[str, str]]:
    """Job (its jobid line's output) -> (rule, resources line), from a dry run."""
    found, rule, output = {}, None, None
    for line in dry.splitlines():
        if match := re.match(r"(?:local)?rule (\w+):", line):
            rule, output = match[1], None
        elif line.strip().startswith("output:"):
            output = line.strip()
        elif line.strip().startswith("resources:") and rule:
            found[output or rule] = (rule, line.strip())
    return found


@pytest.fixture(scope="module")
def project(tmp_path_factory):
    return copy_project(tmp_path_factory.mktemp("dry"))


def test_both_targets_on_the_default_config_and_all_is_inside_all_ablations(project):
    main, sweep = dry_run(project, "all"), dry_run(project, "all_ablations")
    assert planned_jobs(main) == {
        "teacher": 1, "featnet": 1, "trajectories": 1, "midtrain": 1, "posttrain": 3, "evaluate": 5,
        "ingest": 1, "report": 1, "all": 1,
    }  # fmt: skip
    jobs = planned_jobs(sweep)
    # 3 solvers x 4 NFEs; CMT: base on 12 sets + 9 variants on the default set = 21 per seed; post: 3 methods x
    # 3 inits + 2 budget splits + slow + KD = 13 per seed; two seeds; every trained job evaluated, the teacher too
    assert {k: jobs[k] for k in ("trajectories", "midtrain", "posttrain", "evaluate", "ingest")} == {
        "trajectories": 12,
        "midtrain": 42,
        "posttrain": 26,
        "evaluate": 69,
        "ingest": 2,
    }
    assert outputs(main) <= outputs(sweep) and len(outputs(sweep)) > 3 * len(outputs(main))
    lint = snakemake(project, "--lint", check=False)
    assert "Congratulations" in lint.stdout + lint.stderr


def test_the_imagenet256_config_plans_the_latent_comparison_on_gpus(project):
    """config/imagenet256.yaml plans ADM's crop, the autoencoder and the encoding, the MF-B/4 teacher, online CMT-MF
    on MF-XL/2, MeanFlow from three inits and 50k-sample FID against ADM's statistics; GPUs on the jobs that run a
    network, none where a job only reads or writes files."""
    dry = snakemake(project, "-n", "-p", "--forceall", "all_ablations", "--configfile", "config/config.yaml",
                    "config/imagenet256.yaml").stdout  # fmt: skip
    jobs = planned_jobs(dry)
    assert {k: jobs.get(k, 0) for k in ("dataset", "vae", "encode", "teacher", "fid_reference")} == dict.fromkeys(
        ("dataset", "vae", "encode", "teacher", "fid_reference"), 1
    )
    assert jobs["midtrain"] == 1 and jobs["posttrain"] == 3 and jobs["evaluate"] == 5
    assert "trajectories" not in jobs and "featnet" not in jobs  # online paths; FID only
    commands = [line for line in dry.splitlines() if " -m cmt " in line]

    def params(command: str) -> dict:
        return json.loads((project / re.search(r"--params (\S+)", command)[1]).read_text())

    (mid,) = [params(c) for c in commands if "cmt midtrain" in c]
    assert mid["midtrain"]["form"] == "flowmap" and mid["midtrain"]["source"] == "online"
    assert mid["trajectories"]["solver"] == "flowmap" and mid["student_network"] == {"preset": "dit-xl2"}
    assert mid["data"]["source"] == "latent_zip"
    inits = sorted(re.search(r"--init (\S+)", c)[1] for c in commands if "cmt posttrain" in c)
    assert inits == ["cmt", "file", "random"]
    (teacher,) = [params(c) for c in commands if "cmt teacher" in c]
    assert teacher["teacher"]["kind"] == "flowmap" and teacher["network"]["preset"] == "dit-b4"
    evaluations = [params(c)["evaluate"] for c in commands if "cmt evaluate" in c]
    assert all(e["num_samples"] == 50000 and e["metrics"] == ["fid"] for e in evaluations)
    for rule, res in job_resources(dry).values():
        gpus = {"teacher": 8, "midtrain": 8, "posttrain": 8, "evaluate": 1, "fid_reference": 1, "vae": 1, "encode": 1}
        assert f"gpu={gpus.get(rule, 0)}" in res or (rule not in gpus and "gpu=" not in res), (rule, res)


def test_the_imagenet512_config_plans_data_free_cmt_and_autoguided_ecd_on_gpus(project):
    """config/imagenet512.yaml (docs/latent.md 8): the unguided XXL teacher and the autoguided XXL + M pair as two
    teacher jobs, the latent LPIPS backbone, CMT that reads no dataset, ECD from CMT and from the EDM2 weights, and
    FID and FD_DINOv2 against EDM2's statistics, the minimum over three 50k seed ranges; GPUs on the jobs that run a
    network."""
    dry = snakemake(project, "-n", "-p", "--forceall", "all_ablations", "--configfile", "config/config.yaml",
                    "config/imagenet512.yaml").stdout  # fmt: skip
    jobs = planned_jobs(dry)
    once = ("dataset", "vae", "encode", "latent_lpips", "teacher", "post_teacher", "midtrain", "fid_reference",
            "fd_dinov2_reference")  # fmt: skip
    assert {k: jobs.get(k, 0) for k in once} == dict.fromkeys(once, 1)
    assert jobs["posttrain"] == 2 and jobs["evaluate"] == 5 and "trajectories" not in jobs
    commands = [line for line in dry.splitlines() if " -m cmt " in line]

    def params(command: str) -> dict:
        return json.loads((project / re.search(r"--params (\S+)", command)[1]).read_text())

    (mid_command,) = [c for c in commands if "cmt midtrain" in c]
    mid = params(mid_command)
    assert mid["midtrain"]["loss"] == "latent_lpips" and mid["trajectories"]["start"] == "prior"
    assert (
        "--vae results/imagenet512/vae" in mid_command
        and "--lpips-backbone results/imagenet512/latent-lpips" in mid_command
    )
    (mid_rule,) = [block for block in dry.split("\nrule ")[1:] if block.startswith("midtrain:")]
    assert "images.zip" not in mid_rule and "latents.zip" not in mid_rule  # no dataset read by CMT
    teachers = {params(c)["job"]["job"]: params(c)["teacher"] for c in commands if "cmt teacher" in c}
    assert teachers["teacher"]["fetch"]["url"].endswith("edm2-img512-xxl-0939524-0.070.pkl")
    post = teachers["teacher-post"]
    assert post["kind"] == "autoguided" and post["guidance"] == 2.05
    assert post["fetch"]["url"].endswith("0.075.pkl") and post["guide"]["fetch"]["url"].endswith("m-0268435-0.155.pkl")
    inits = sorted(re.search(r"--init (\S+)", c)[1] for c in commands if "cmt posttrain" in c)
    assert inits == ["cmt", "diffusion"]
    evaluations = [c for c in commands if "cmt evaluate" in c]
    protocol = {"count": 3, "reduce": "min"}  # EDM2's seeds 0-49999, 50000-99999, 100000-149999 (docs/latent.md 8.7)
    assert all(params(c)["evaluate"]["num_samples"] == 50000 for c in evaluations)
    assert all(params(c)["evaluate"]["seed_ranges"] == protocol for c in evaluations)
    refs = (
        "--fid-ref results/imagenet512/fid-ref/legacy_tensorflow.npz --fd-dinov2-ref results/imagenet512/fd-dinov2-ref/"
    )
    assert all(refs in c for c in evaluations)
    references = {
        re.search(r"--metric (\S+)", c)[1] if "--metric" in c else "fid": params(c)["evaluate"]
        for c in commands
        if "cmt fid-reference" in c
    }
    assert set(references) == {"fid", "fd_dinov2"}
    for metric, section in references.items():  # one published file, EDM2's, for both
        assert section[metric]["reference"]["url"] == "https://nvlabs-fi-cdn.nvidia.com/edm2/dataset-refs/img512.pkl"
    for rule, res in job_resources(dry).values():
        gpus = {"midtrain": 8, "posttrain": 8, "latent_lpips": 8, "teacher": 1, "post_teacher": 1, "evaluate": 1}
        gpus |= {"fid_reference": 1, "fd_dinov2_reference": 1, "vae": 1, "encode": 1}
        assert f"gpu={gpus.get(rule, 0)}" in res or (rule not in gpus and "gpu=" not in res), (rule, res)


def test_a_post_training_teacher_is_its_own_job_that_post_training_reads_and_cmt_does_not(project, tmp_path):
    """posttrain.teacher (docs/latent.md 8.2): a job teacher-post/ with the overrides on the teacher section (and the
    network), read by every post-training job as its teacher and by the diffusion init as its weights; CMT, its
    trajectories and their lineage keep the config's teacher."""
    overlay = tmp_path / "post-teacher.yaml"
    guide = {"iterations": 30, "network": {"model_channels": 16}}
    post = {"kind": "autoguided", "guidance": 2.5, "guide": guide, "network": {"model_channels": 48}}
    overlay.write_text(yaml.safe_dump({"posttrain": {"methods": ["ecd"], "teacher": post}}))
    dry = snakemake(project, "-n", "-p", "--forceall", "all", "--configfile", str(overlay)).stdout
    assert planned_jobs(dry)["post_teacher"] == 1 and planned_jobs(dry)["teacher"] == 1
    commands = [line for line in dry.splitlines() if " -m cmt " in line]

    def params(command: str) -> dict:
        return json.loads((project / re.search(r"--params (\S+)", command)[1]).read_text())

    teachers = {params(c)["job"]["job"]: params(c) for c in commands if "cmt teacher" in c}
    assert teachers["teacher-post"]["teacher"]["kind"] == "autoguided"
    assert teachers["teacher-post"]["teacher"]["guide"] == {"source": "train", **guide}
    assert teachers["teacher-post"]["network"]["model_channels"] == 48 and "guide" not in teachers["teacher"]["teacher"]
    posts = [c for c in commands if "cmt posttrain" in c]
    assert len(posts) == 3 and all("--teacher results/default/teacher-post " in c for c in posts)
    lineage = {params(c)["job"]["init"]: params(c)["job"]["init_job"] for c in posts}
    assert lineage == {"random": "none", "diffusion": "teacher-post", "cmt": "mid/base/dpmpp3m_legacy-nfe16/s0"}
    (mid,) = [c for c in commands if "cmt midtrain" in c]
    assert "--teacher results/default/teacher " in mid and params(mid)["job"]["init_job"] == "teacher"


def test_resources_come_from_config_and_an_overlay_changes_only_its_rule(project, tmp_path):
    default = job_resources(dry_run(project, "all_ablations"))
    assert {res for rule, res in default.values() if rule == "midtrain"} == {
        "resources: tmpdir=/tmp, gpu=0, runtime=120, mem_mb=4000, mem=4 GB, mem_mib=3815"
    }
    overlay = tmp_path / "gpu.yaml"
    overlay.write_text("resources: {midtrain: {gpu: 1}}\n")
    changed = job_resources(dry_run(project, "all_ablations", "--configfile", str(overlay)))
    assert changed.keys() == default.keys()
    differ = [rule for job, (rule, res) in changed.items() if res != default[job][1]]
    assert differ == ["midtrain"] * 42
    assert all("gpu=1" in res for rule, res in changed.values() if rule == "midtrain")


PAPER_CONFIGS = ["cifar10", "ffhq64", "afhqv2-64", "imagenet64"]


@pytest.mark.parametrize("name", PAPER_CONFIGS)
def test_paper_configs_plan_their_whole_pipeline_on_gpus(project, name):
    """Each paper config, with its placeholder archive and teacher, plans: dataset preparation (EDM zips we can
    build), the teacher fetch, the FID reference, online CMT (no stored trajectories), the post-training method
    and 50k-sample evaluations; training and sampling jobs ask for a GPU, the serial rules for none."""
    dry = snakemake(project, "-n", "-p", "--forceall", "all_ablations", "--configfile", "config/config.yaml",
                    f"config/{name}.yaml").stdout  # fmt: skip
    jobs = planned_jobs(dry)
    assert jobs.get("dataset", 0) == (0 if name == "imagenet64" else 1)
    assert jobs["teacher"] == jobs["fid_reference"] == 1 and "trajectories" not in jobs and "featnet" not in jobs
    assert (
        jobs["midtrain"] >= 1
        and jobs["posttrain"] >= 2
        and jobs["evaluate"] == 1 + jobs["midtrain"] + jobs["posttrain"]
    )
    commands = [line for line in dry.splitlines() if " -m cmt " in line]
    method = "ecd" if name == "imagenet64" else "ect"
    assert all(f"--method {method}" in c for c in commands if "cmt posttrain" in c)

    def params(command: str) -> dict:  # a rule passes its params as a file (docs/workflow.md 1.6)
        return json.loads((project / re.search(r"--params (\S+)", command)[1]).read_text())

    mids = [params(c)["midtrain"] for c in commands if "cmt midtrain" in c]
    assert mids and all(m["source"] == "online" and m["loss"] == "lpips" for m in mids)
    evaluations = [params(c)["evaluate"] for c in commands if "cmt evaluate" in c]
    assert evaluations and all(e["num_samples"] == 50000 and e["metrics"] == ["fid"] for e in evaluations)
    for rule, res in job_resources(dry).values():
        gpus = 1 if rule in ("teacher", "midtrain", "posttrain", "evaluate", "fid_reference") else 0
        assert (f"gpu={gpus}" in res) or (gpus == 0 and "gpu=" not in res), (rule, res)


def test_smoke_run_produces_tables_from_mlflow(smoke):
    results = smoke / "results" / "smoke"
    rows = list(csv.DictReader((results / "tables" / "main.csv").open()))
    assert [r["model"] for r in rows] == [
        "teacher (EDM)",
        "CMT only",
        "ECT from random init",
        "ECT from diffusion init",
        "ECT from CMT init",
    ]
    cmt = rows[-1]  # the lineage: teacher, CMT, ECT
    assert int(cmt["images teacher"]) == 60 * 128 and int(cmt["images mid"]) == int(cmt["images post"]) == 40 * 128
    assert int(rows[2]["images teacher"]) == int(rows[2]["images mid"]) == 0
    assert_plot(results / "tables" / "fd_vs_iterations.png", (1080, 408))
    assert_sample_links(results / "tables" / "main.md", 5)
    from cmt.report.tracking import EXPERIMENT_KIND, search, tracking_uri

    runs = search(results / "mlflow.db", "smoke", stage="evaluate")
    assert set(runs["tags.job"]) == MAIN
    for metric in ("fd_1step", "fd_2step", "images", "teacher_nfe"):  # the runs table's headline columns
        assert runs.loc[runs["tags.kind"] == "post", f"metrics.{metric}"].notna().all(), metric
    parent = search(results / "mlflow.db", "smoke").query("`tags.cmt_parent` == 'true'")
    tables = Path(parent["artifact_uri"].item().removeprefix("file://")) / "tables"
    assert {"main.md", "main.csv", "fd_vs_iterations.png"} <= {p.name for p in tables.iterdir()}
    from mlflow.tracking import MlflowClient

    experiment = MlflowClient(tracking_uri(results / "mlflow.db")).get_experiment_by_name("smoke")
    assert EXPERIMENT_KIND.items() <= experiment.tags.items()
    url = f"http://127.0.0.1:5000/#/experiments/{experiment.experiment_id}?workflowType=machine_learning"
    assert url in (results / "logs" / "ingest-main.log").read_text()  # the runs table, not the GenAI overview
    assert (results / "benchmarks" / "post" / "ect-cmt" / "base" / "it40" / "s0.tsv").exists()
    assert not any((smoke / "work" / "smoke").rglob("resume.pt"))


def assert_sample_links(report: Path, count: int) -> list[Path]:
    """The report's Samples section links ``count`` grids, each an existing image."""
    links = re.findall(r"!\[[^]]*\]\(([^)]+)\)", report.read_text().partition("## Samples")[2])
    grids = [(report.parent / link).resolve() for link in links]
    assert len(grids) == count and all(g.is_file() and g.name.startswith("grid-") for g in grids), links
    return grids


def test_second_run_has_nothing_to_do(smoke):
    assert "Nothing to be done" in snakemake(smoke, "-n", "all", "--configfile", "config/smoke.yaml").stdout


def test_editing_midtrain_loss_reruns_only_midtrain_and_downstream(smoke, tmp_path):
    edited = tmp_path / "edited.yaml"
    edited.write_text("midtrain: {loss: pseudo_huber}\n")
    args = ("--configfile", "config/smoke.yaml", str(edited))
    jobs = planned_jobs(snakemake(smoke, "-n", "all", *args).stdout)
    assert jobs == {"midtrain": 1, "posttrain": 1, "evaluate": 2, "ingest": 1, "report": 1, "all": 1}


def test_config_typo_is_a_schema_error_naming_the_file_and_key(smoke, tmp_path):
    bad = tmp_path / "typo.yaml"
    bad.write_text("midtrain: {los: l2}\n")
    proc = snakemake(smoke, "-n", "all", "--configfile", "config/smoke.yaml", str(bad), check=False)
    assert proc.returncode != 0
    assert f"{bad}: midtrain.los: unknown key" in proc.stdout + proc.stderr


def test_fetched_teacher_with_wrong_sha256_is_refused(smoke, tmp_path):
    project = copy_project(tmp_path / "fetch")
    weights = smoke / "results" / "smoke" / "teacher" / "model.safetensors"
    fetch = {"url": weights.as_uri(), "sha256": "0" * 64}
    overlay = project / "config" / "fetched.yaml"
    overlay.write_text(yaml.safe_dump({"name": "fetched", "teacher": {"source": "fetch", "fetch": fetch}}))
    teacher = "results/fetched/teacher/model.safetensors"  # the teacher rule's output (a teacher variant's: t-<name>/)
    args = ("--cores", "1", teacher, "--configfile", "config/smoke.yaml", "config/fetched.yaml")
    proc = snakemake(project, *args, check=False)
    assert proc.returncode != 0
    log = (project / "results" / "fetched" / "logs" / "teacher.log").read_text()
    assert "sha256 mismatch" in log and weights.as_uri() in log
    # one line naming the section and the file, no traceback; Snakemake shows the log (the workflow profile's
    # show-failed-logs) and a shell command that holds the params file's path, not the params
    error = f"cmt teacher: error: teacher.fetch: sha256 mismatch for {weights.as_uri()}"
    assert error in log and "Traceback" not in log and error in proc.stdout + proc.stderr
    assert "--params work/fetched/params/" in proc.stdout + proc.stderr and '{"' not in proc.stdout + proc.stderr
    assert not any(p.is_file() for p in (project / "results" / "fetched" / "teacher").rglob("*"))

    fetch["sha256"] = hashlib.sha256(weights.read_bytes()).hexdigest()
    overlay.write_text(yaml.safe_dump({"name": "fetched", "teacher": {"source": "fetch", "fetch": fetch}}))
    snakemake(project, *args)
    assert (project / "results" / "fetched" / "teacher" / "samples.png").exists()


def test_ablation_sweep_runs_for_real_on_a_small_grid(smoke, swept):
    """A reduced sweep on the smoke project (SWEEP in helpers/project.py): the main run's jobs are reused, every
    other job runs once."""
    args, planned = swept
    # the main run's teacher, trajectories, base CMT and evaluations are reused; only new jobs are planned
    assert {k: planned[k] for k in ("teacher", "midtrain", "posttrain", "trajectories")} == {
        "teacher": 1,  # the weak teacher variant
        "midtrain": 6,  # base on 2 new sets, flowmap, traj128; base and flowmap from the weak teacher
        "posttrain": 5,  # ECD and MeanFlow from CMT (for each teacher), the budget split
        "trajectories": 3,  # 2 new sets; the weak teacher's default set
    }
    results = smoke / "results" / "smoke"
    assert (results / "post" / "meanflow-cmt" / "flowmap" / "it40" / "s0" / "model.safetensors").exists()
    assert (results / "eval" / "mid" / "base" / "heun-nfe4" / "s0" / "scores.json").exists()
    from cmt.report.tracking import search

    runs = search(results / "mlflow.db", "smoke", stage="evaluate")
    assert {"post/ecd-cmt/base/it40/s0", "post/ect-cmt/traj128/it20/s0"} <= set(runs["tags.job"])
    tables = results / "tables"
    method_init = list(csv.DictReader((tables / "method_init.csv").open()))
    # ECD and MeanFlow from CMT, and CMT alone: the comparison's reference row
    assert {(r["model"], r["method"], r["init"]) for r in method_init} == {
        ("ECD, CMT init", "ecd", "cmt"),
        ("MeanFlow, CMT init", "meanflow", "cmt"),
        ("CMT only", "", ""),
    }
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
    assert_plot(tables / "fd_vs_images.png", (960, 432))  # one panel per method: ECD, MeanFlow
    runs = search(results / "mlflow.db", "smoke")
    parents = runs[runs["tags.cmt_parent"] == "table"].set_index("run_id")["tags.cmt_table"]
    grouped = runs[runs["tags.cmt_parent"].isna() & runs["tags.tables"].fillna("").str.len().gt(0)]
    ablation_only = grouped[~grouped["tags.tables"].str.contains("main")]
    assert set(ablation_only["tags.mlflow.parentRunId"].map(parents)) == {
        "method_init",
        "nfe_solver",
        "cmt_variants",
        "budget_split",
        "teacher_variants",
    }
    assert_teacher_variant(results, tables)
    assert "Nothing to be done" in snakemake(smoke, "-n", "all_ablations", *args).stdout
    assert "Nothing to be done" in snakemake(smoke, "-n", "all", *args).stdout  # `all` is inside `all_ablations`


def assert_teacher_variant(results: Path, tables: Path) -> None:
    """The weak teacher (20 iterations) is its own job; its trajectories, CMT and post-training read it, their tags
    name it, and the teacher_variants table holds its rows beside the config's own teacher's."""
    weak = results / "t-weak"
    assert json.loads((weak / "teacher" / "meta.json").read_text())["config"]["teacher"]["train"]["iterations"] == 20
    sha = hashlib.sha256((weak / "teacher" / "model.safetensors").read_bytes()).hexdigest()
    index = json.loads((weak / "traj" / "dpmpp3m_legacy-nfe16" / "index.json").read_text())
    base = json.loads((results / "traj" / "dpmpp3m_legacy-nfe16" / "index.json").read_text())
    assert index["teacher_sha256"] == sha != base["teacher_sha256"]
    record = json.loads((weak / "mid" / "base" / "dpmpp3m_legacy-nfe16" / "s0" / "run.json").read_text())
    assert record["tags"]["teacher_variant"] == "weak" and record["tags"]["init_job"] == "t-weak/teacher"
    table = list(csv.DictReader((tables / "teacher_variants.csv").open()))
    rows = {(r["teacher"], r["model"], r["variant"]) for r in table}
    for teacher, prefix in (("base", ""), ("weak", "t-weak/")):  # each row names its teacher's strength
        scores = json.loads((results / "eval" / f"{prefix}teacher" / "run.json").read_text())["metrics"]
        fd = next(v for k, v in scores.items() if k.startswith("fd_") and k.endswith("nfe"))
        trained = json.loads((results / f"{prefix}teacher" / "run.json").read_text())["metrics"]["images"]
        own = [r for r in table if r["teacher"] == teacher]
        assert own and all(float(r["teacher FD"]) == pytest.approx(fd) for r in own)
        assert {float(r["teacher images"]) for r in own} == {trained}
    models = {
        ("CMT only", "base"),
        ("CMT only", "flowmap"),
        ("ECD, CMT init", "base"),
        ("MeanFlow, CMT init", "flowmap"),
    }
    assert rows == {(teacher, *model) for teacher in ("base", "weak") for model in models}


def test_a_hard_killed_fresh_run_resumes_to_the_same_bytes_as_an_uninterrupted_one(smoke, killed_rerun):
    """kill -9 of the whole Snakemake tree while CMT has a resume checkpoint; `--unlock`; the same command again:
    the incomplete CMT job reruns, says where it resumed, and every artifact equals the uninterrupted smoke
    run's, byte for byte (so two fresh runs of one config agree, too)."""
    project, seen = killed_rerun
    assert seen["checkpoint"], "CMT never wrote a resume checkpoint"
    assert not seen["tables_after_kill"]
    locked = seen["locked"]
    assert locked.returncode != 0 and "--unlock" in locked.stdout + locked.stderr
    log = (project / "results" / "smoke" / "logs" / f"{SMOKE_MID}.log").read_text()
    assert f"resumed from step 20 (checkpoint work/smoke/{SMOKE_MID}/{RESUME_FILE})" in log
    resumed, uninterrupted = (
        artifact_hashes(project / "results" / "smoke"),
        artifact_hashes(smoke / "results" / "smoke"),
    )
    assert len(resumed) >= 15  # the smoke project may hold more (the reduced sweep's), never other bytes
    assert resumed == {name: uninterrupted.get(name) for name in resumed}


def test_a_truncated_resume_checkpoint_stops_the_job_naming_it_until_the_user_deletes_it(smoke, tmp_path):
    project = tmp_path / "damaged"
    shutil.copytree(smoke, project, ignore=shutil.ignore_patterns(".snakemake", "mlartifacts"))
    mid = "mid/base/dpmpp3m_legacy-nfe16/s0"
    model = project / "results" / "smoke" / mid / "model.safetensors"
    model.unlink()
    checkpoint = project / "work" / "smoke" / mid / RESUME_FILE
    checkpoint.parent.mkdir(parents=True, exist_ok=True)
    buf = io.BytesIO()
    torch.save({"step": 20, "model": torch.zeros(64)}, buf)
    checkpoint.write_bytes(buf.getvalue()[: len(buf.getvalue()) // 2])
    args = ("--cores", "2", f"results/smoke/{mid}/model.safetensors", "--configfile", "config/smoke.yaml")

    proc = snakemake(project, *args, check=False)
    assert proc.returncode != 0
    log = (project / "results" / "smoke" / "logs" / f"{mid}.log").read_text()
    assert f"cmt midtrain: error: midtrain: work/smoke/{mid}/{RESUME_FILE}: cannot resume from this checkpoint" in log
    assert "delete it to start this job over" in log
    assert checkpoint.exists() and not model.exists()

    checkpoint.unlink()
    snakemake(project, *args)
    assert model.read_bytes() == (smoke / "results" / "smoke" / mid / "model.safetensors").read_bytes()


def test_the_determinism_switch_reaches_every_job_on_the_device(smoke, tmp_path):
    overlay = tmp_path / "deterministic.yaml"
    overlay.write_text("deterministic: true\n")
    jobs = planned_jobs(snakemake(smoke, "-n", "all", "--configfile", "config/smoke.yaml", str(overlay)).stdout)
    assert jobs == {
        "teacher": 1,
        "trajectories": 1,
        "midtrain": 1,
        "posttrain": 3,
        "evaluate": 5,
        "ingest": 1,
        "report": 1,
        "all": 1,
    }


@pytest.mark.parametrize("request_form", ["gpus", "gres"])
def test_the_slurm_profile_found_from_the_project_root_spells_gpu_jobs_for_the_site(project, monkeypatch, request_form):
    """`--profile slurm -n` (the root link to profiles/slurm) on a paper config: GPU jobs go to the GPU partition
    with the site's model, as --gpus (gpu, gpu_model) or --gres; CPU jobs to the default partition, without either;
    runtime in minutes from the config's units, times the attempt."""
    site = {"CMT_SLURM_ACCOUNT": "lab", "CMT_SLURM_PARTITION": "cpu", "CMT_SLURM_GPU_PARTITION": "gpu",
            "CMT_SLURM_GPU_MODEL": "h100", "CMT_SLURM_GPU_REQUEST": request_form}  # fmt: skip
    for name, value in site.items():
        monkeypatch.setenv(name, value)
    proc = snakemake(project, "--profile", "slurm", "-n", "--forceall", "all_ablations", "--configfile",
                     "config/config.yaml", "config/cifar10.yaml")  # fmt: skip
    assert "Using profiles slurm and workflow specific profile" in proc.stderr
    dry = proc.stdout
    found = job_resources(dry)
    midtrain = next(res for rule, res in found.values() if rule == "midtrain")
    dataset = next(res for rule, res in found.values() if rule == "dataset")
    gpu = "gres=gpu:h100:1" if request_form == "gres" else "gpu=1, gpu_model=h100"
    assert "slurm_account=lab" in midtrain and "slurm_partition=gpu" in midtrain and gpu in midtrain
    assert "runtime=2880" in midtrain and "slurm_extra=--signal=TERM@300" in midtrain  # 48h
    assert ("gpu=1" in midtrain) == (request_form == "gpus")
    assert "slurm_partition=cpu" in dataset and "gpu_model" not in dataset and "gres" not in dataset


def test_the_teacher_rule_fetches_an_edm_pickle_over_http_and_converts_it_once(tmp_path):
    """A stand-in EDM snapshot served on 127.0.0.1: the teacher job downloads it (sha256-checked), reads it without
    running it, and writes our format, which computes what the pickled network computed; the dry run of `all`
    plans the teacher (the conversion) before the trajectories."""
    original = random_denoiser()
    served = tmp_path / "www"
    served.mkdir()
    name = "edm-digits-8x8-uncond-vp.pkl"
    pickle_file = write_pickle(edm_snapshot(original, augment_dim=9), served / name)
    handler = functools.partial(http.server.SimpleHTTPRequestHandler, directory=str(served))
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    try:
        url = f"http://127.0.0.1:{server.server_address[1]}/{pickle_file.name}"
        project = copy_project(tmp_path / "edm")
        fetch = {"url": url, "sha256": hashlib.sha256(pickle_file.read_bytes()).hexdigest()}
        overlay = {"name": "edm", "teacher": {"source": "fetch", "fetch": fetch}}
        (project / "config" / "edm.yaml").write_text(yaml.safe_dump(overlay))
        args = ("--configfile", "config/smoke.yaml", "config/edm.yaml")
        dry = snakemake(project, "-n", "all", *args).stdout
        assert dry.index("rule teacher:") < dry.index("rule trajectories:")
        snakemake(project, "--cores", "1", "results/edm/teacher/model.safetensors", *args)
    finally:
        server.shutdown()
    teacher, meta = load_denoiser(project / "results" / "edm" / "teacher")
    assert torch.equal(denoised(teacher), denoised(original))
    converted = meta["fetched_meta"]["converted_from"]
    assert converted == {
        "format": "edm-pickle",
        "sha256": fetch["sha256"],
        "url": url,
        "file": f"fetched-{pickle_file.name}",
    }
    assert meta["fetched_meta"]["extras"] == ["model.map_augment.weight"]


@pytest.mark.slow  # a real workflow run
def test_a_class_conditional_run_on_a_dataset_built_from_an_image_folder(tmp_path, monkeypatch):
    """`config/smoke-conditional.yaml` (`network.label_dim: 10`) on `data.build` from an image folder of ten class
    folders. The data: the `dataset` rule writes the EDM zip and its sha256 record, every job reads the zip through
    the DataLoader, `fid_reference` computes the training set's statistics once (stand-in Inception at
    $CMT_INCEPTION_DIR), and the table carries FD and FID under distinct names, with the FID mode recorded. The
    labels: the teacher, the stored trajectories, every student and every sampler are class-conditional, and the
    evaluation grids are per class (column k: class k)."""
    write_image_folder(tmp_path / "images", 240, 10, classes=10)
    write_inception(tmp_path / "inception")
    monkeypatch.setenv("CMT_INCEPTION_DIR", str(tmp_path / "inception"))
    project = copy_project(tmp_path / "files")
    build = {"from": "image_folder", "archive": str(tmp_path / "images"), "resolution": 8, "labels": "subfolders"}
    overlay = {
        "name": "files",
        "data": {"build": build, "loader": {"workers": 1}},
        "network": {"in_channels": 3, "out_channels": 3},
        "evaluate": {"metrics": ["featnet", "fid"]},
    }
    (project / "config" / "files.yaml").write_text(yaml.safe_dump(overlay))
    configs = ("config/smoke.yaml", "config/smoke-conditional.yaml", "config/files.yaml")
    snakemake(project, "--cores", "2", "all", "--configfile", *configs)
    results = project / "results" / "files"
    record = json.loads((results / "dataset" / "build.json").read_text())
    assert record["count"] == 240 and record["shape"] == [3, 8, 8] and record["classes"] == 10
    assert record["sha256"] == hashlib.sha256((results / "dataset" / "images.zip").read_bytes()).hexdigest()
    assert (results / "fid-ref" / "legacy_tensorflow.npz").is_file()
    scores = json.loads((results / "eval" / "post" / "ect-cmt" / "base" / "it40" / "s0" / "scores.json").read_text())
    assert scores["fid_mode"] == "legacy_tensorflow" and scores["fid_reference_count"] == 240
    assert scores["fid_reference"] == "training set"  # which statistics: computed here, not a published file
    assert scores["fid_2step"] > 0 and scores["fd_2step"] > 0
    table = (results / "tables" / "main.md").read_text()
    header = table.split("\n| model")[1].split("\n")[0]
    assert "| FD 1-step | FD 2-step |" in header and "| FID 1-step | FID 2-step |" in header

    index = json.loads((results / "traj" / "dpmpp3m_legacy-nfe16" / "index.json").read_text())
    assert index["label_dim"] == 10
    shard = load_file(results / "traj" / "dpmpp3m_legacy-nfe16" / index["shards"][0]["file"])
    assert shard["labels"].shape == (index["shards"][0]["count"],) and set(shard["labels"].tolist()) == set(range(10))
    for job in MAIN:
        assert json.loads((results / job / "meta.json").read_text())["architecture"]["label_dim"] == 10
    assert table.count("\n| ") == 6  # header + 5 models
    for grid in assert_sample_links(results / "tables" / "main.md", 5):  # the report shows per-class grids
        assert Image.open(grid).width == 4 * (10 * (8 + 1) + 1)  # ten columns of 8-pixel images, 1-pixel borders


def two_gpu_overlay(folder: Path) -> Path:
    """Every training rule given two GPUs (the launch comes from resources, cmt/workflow/launch.py), and smaller budgets
    where they are not part of a job's path (fewer steps and evaluations: the same files)."""
    overlay = folder / "two-gpus.yaml"
    entry = {"gpu": 2, "cpus": 1, "mem_mb": 4000, "runtime": "1h"}
    small = {"batch_size": 32, "eval_every": 40, "eval_samples": 50}
    settings = {
        "resources": {rule: entry for rule in ("teacher", "featnet", "midtrain", "posttrain")},
        "teacher": {"train": {"iterations": 20, "batch_size": 32, "checkpoint_every": 10}},
        "midtrain": {**small, "iterations": 20, "checkpoint_every": 10, "eval_every": 20},
        "posttrain": {"ect": small},
        "evaluate": {"num_samples": 100},
    }
    overlay.write_text(yaml.safe_dump(settings))
    return overlay


def test_a_training_rule_given_two_gpus_starts_under_accelerate_and_serial_rules_never(project, tmp_path, monkeypatch):
    monkeypatch.delenv("CMT_LAUNCH", raising=False)
    overlay = tmp_path / "mid.yaml"
    overlay.write_text(
        "resources: {midtrain: {gpu: 2, cpus: 2, mem_mb: 4000, runtime: 2h}}\ncompute: {precision: bf16}\n"
    )
    commands = [line for line in dry_run(project, "all", "-p", "--configfile", str(overlay)).splitlines()]
    starts = {re.search(r"-m cmt ([\w-]+)", c)[1]: c.split(" -m cmt ")[0] for c in commands if " -m cmt " in c}
    assert starts["midtrain"].endswith(
        "${CMT_LAUNCH:-accelerate launch --multi_gpu --num_processes 2 --num_machines 1 --main_process_port 0"
        " --mixed_precision bf16 --dynamo_backend no}"
    )
    assert starts["teacher"].endswith("${CMT_LAUNCH:-python}") and starts["posttrain"].endswith("${CMT_LAUNCH:-python}")
    for serial in ("ingest", "report", "evaluate", "trajectories"):
        assert starts[serial].endswith(" python") and "CMT_LAUNCH" not in starts[serial], starts[serial]


@pytest.mark.slow  # a real workflow run, every training job as two processes
def test_a_two_process_smoke_run_writes_the_files_of_a_one_process_run(smoke, tmp_path, monkeypatch):
    monkeypatch.delenv("CMT_LAUNCH", raising=False)
    project = copy_project(tmp_path / "two")
    overlay = two_gpu_overlay(tmp_path)  # one job at a time, one thread per process: two processes on two cores
    lineage = "results/smoke/post/ect-cmt/base/it40/s0/model.safetensors"  # every training rule, one job each
    snakemake(project, "--cores", "1", lineage, "--configfile", "config/smoke.yaml", str(overlay))
    two, one = project / "results" / "smoke", smoke / "results" / "smoke"

    def files(results: Path) -> set[str]:  # MLflow's artifact folders are named by random run ids
        return {str(f.relative_to(results)) for f in results.rglob("*") if f.is_file() and "mlartifacts" not in f.parts}

    assert files(two) <= files(one)  # nothing written twice or elsewhere (the smoke project may hold more jobs)
    for record in two.rglob("run.json"):
        job = record.parent
        assert sorted(p.name for p in job.iterdir()) == sorted(p.name for p in (one / job.relative_to(two)).iterdir())
        run = json.loads(record.read_text())
        if run["stage"] in ("teacher", "midtrain", "posttrain"):
            assert run["params"]["processes"] == 2 and run["metrics"]["replica_spread"] == 0.0, record
    assert {json.loads(r.read_text())["stage"] for r in two.rglob("run.json")} >= {"teacher", "midtrain", "posttrain"}
