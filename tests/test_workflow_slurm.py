"""The workflow on a real single-node SLURM cluster (tests/helpers/slurm_cluster.py), through the shipped profile and
the real executor plugin: `--profile slurm` from the project root, every job submitted with sbatch, the same bytes as a
local run, a training job cancelled mid-way and resumed, settings refused before the first submission, and a failed
job's log named. Two clusters, one after the other: without accounting (the profile's squeue status) and with
slurmdbd and MariaDB (`--slurm-status-command sacct`). They need root and Debian packages; elsewhere they skip."""

import contextlib
import os
import re
import shutil
import signal
import subprocess
import time
from pathlib import Path

import pytest
import yaml
from helpers.project import SNAKEMAKE, artifact_hashes, copy_project, planned_jobs, sweep_overlay
from helpers.slurm_cluster import PARTITION, LocalSlurm, Unavailable

from cmt.workflow.slurm import ACCOUNT_VAR, PARTITION_VAR

pytestmark = pytest.mark.slurm

SMOKE = ("--configfile", "config/smoke.yaml")
FAST_POLL = ("--slurm-init-seconds-before-status-checks", "1")  # the first status check after 1 s, not 40
RUN_TIMEOUT_S = 1200  # a hung controller fails the test instead of the CI job
MID = "mid/base/dpmpp3m_legacy-nfe16/s0"
SUBMITTED = re.compile(r"Job \d+ has been submitted with SLURM jobid (\d+) \(log: (\S+)\)\.")


@contextlib.contextmanager
def cluster(accounting: bool):
    """A local cluster for the block; the tests skip where this machine cannot run one."""
    try:
        slurm = LocalSlurm(accounting).up()
    except Unavailable as err:
        pytest.skip(f"no local SLURM cluster: {err}")
    try:
        yield slurm
    finally:
        slurm.down()


def slurm_env(**settings: str) -> dict[str, str]:
    return {**os.environ, ACCOUNT_VAR: "", PARTITION_VAR: PARTITION, **settings}


def start(project: Path, *args: str, env: dict[str, str]) -> subprocess.Popen:
    """`snakemake --profile slurm ARGS` from the project root (the literal command), in its own process group."""
    return subprocess.Popen(
        [str(SNAKEMAKE), "--profile", "slurm", *FAST_POLL, *args],
        cwd=project,
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        start_new_session=True,
    )


def finish(proc: subprocess.Popen) -> tuple[int, str]:
    try:
        out, _ = proc.communicate(timeout=RUN_TIMEOUT_S)
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, signal.SIGINT)  # Snakemake cancels its SLURM jobs on SIGINT
        out, _ = proc.communicate(timeout=120)
        pytest.fail(f"snakemake --profile slurm ran past {RUN_TIMEOUT_S} s:\n{out[-4000:]}")
    return proc.returncode, out


def run(project: Path, *args: str, env: dict[str, str]) -> tuple[int, str]:
    return finish(start(project, *args, env=env))


def remote_jobs(out: str) -> list[str]:
    """The rules of the jobs the controller ran remotely (`rule x:` blocks; `localrule x:` ran in the controller)."""
    return re.findall(r"^rule (\w+):", out, flags=re.M)


def cancel_midtrain_after_its_first_checkpoint(project: Path, proc: subprocess.Popen) -> str:
    """`scancel` the CMT job once it has written a resume checkpoint; its SLURM job id."""
    checkpoint = project / "work" / "smoke" / MID / "resume.pt"
    deadline = time.monotonic() + RUN_TIMEOUT_S
    while not checkpoint.exists():
        assert proc.poll() is None and time.monotonic() < deadline, "the CMT job never wrote a resume checkpoint"
        time.sleep(0.2)
    queue = subprocess.run(["squeue", "-h", "-o", "%i %k"], capture_output=True, text=True, check=True).stdout
    job = next((line.split()[0] for line in queue.splitlines() if line.split()[1].startswith("rule_midtrain")), None)
    assert job, f"the CMT job left the queue before it could be cancelled:\n{queue}"
    subprocess.run(["scancel", job], check=True)
    return job


@pytest.fixture(scope="module")
def plain(smoke, tmp_path_factory):
    """A cluster without accounting: settings refused before submission, a failing job, then `all` with the CMT job
    cancelled once mid-way. The cluster is stopped before the tests read what it left."""
    found = {}
    with cluster(accounting=False):
        probe = copy_project(tmp_path_factory.mktemp("probe"))
        found["dry"] = run(probe, "-n", "all_ablations", env=slurm_env())
        for name, env in {
            "unset": {k: v for k, v in slurm_env().items() if k not in (ACCOUNT_VAR, PARTITION_VAR)},
            "account": slurm_env(**{ACCOUNT_VAR: "physics"}),
            "partition": slurm_env(**{PARTITION_VAR: "gpu"}),
        }.items():
            found[name] = run(probe, "all", *SMOKE, env=env)
        overlay = tmp_path_factory.mktemp("gpu") / "gpu.yaml"
        overlay.write_text(yaml.safe_dump({"resources": {"midtrain": {"gpu": 1}, "evaluate": {"mem_mb": 10**7}}}))
        found["gpu"] = run(probe, "all", *SMOKE, str(overlay), env=slurm_env())
        broken = overlay.with_name("broken.yaml")
        fetch = {"url": "file:///nonexistent.pkl", "sha256": "0" * 64}
        broken.write_text(yaml.safe_dump({"teacher": {"source": "fetch", "fetch": fetch}}))
        teacher = "results/smoke/teacher/model.safetensors"
        found["failing"] = run(probe, "--retries", "0", teacher, *SMOKE, str(broken), env=slurm_env())
        project = copy_project(tmp_path_factory.mktemp("slurm"))
        found["planned"] = planned_jobs(run(project, "-n", "all", *SMOKE, env=slurm_env())[1])
        t0 = time.monotonic()
        proc = start(project, "all", *SMOKE, env=slurm_env())
        found["cancelled"] = cancel_midtrain_after_its_first_checkpoint(project, proc)
        found["all"] = finish(proc)
        found["seconds"] = time.monotonic() - t0
        found["again"] = run(project, "-n", "all", *SMOKE, env=slurm_env())
    return project, found


def test_the_dry_run_from_the_project_root_prints_every_job_with_its_slurm_resources(plain):
    _, found = plain
    code, out = found["dry"]
    assert code == 0, out[-3000:]
    assert "Using profiles slurm and workflow specific profile workflow/profiles/default" in out
    midtrain = re.search(r"rule midtrain:.*?resources: ([^\n]+)", out, flags=re.S)[1]
    assert f"slurm_partition={PARTITION}" in midtrain and "runtime=120" in midtrain and "mem_mb=4000" in midtrain
    assert "slurm_extra=--signal=TERM@300" in midtrain and "gpu=0" in midtrain
    assert not SUBMITTED.search(out)


@pytest.mark.parametrize(
    ("probe", "message"),
    [
        ("unset", "slurm_account is not set ($CMT_SLURM_ACCOUNT): export CMT_SLURM_ACCOUNT=<account> or set it in"),
        ("unset", "slurm_partition is not set ($CMT_SLURM_PARTITION): export CMT_SLURM_PARTITION=<partition>"),
        ("account", "slurm_account 'physics' cannot be used: this cluster has no accounting"),
        ("partition", "partition 'gpu' (rule "),
        ("gpu", "rule midtrain asks partition 'debug' for 1 GPUs (a node has none); set CMT_SLURM_GPU_PARTITION"),
        ("gpu", "rule evaluate asks partition 'debug' for 10000000 MB of memory (a node has "),
    ],
)
def test_settings_the_cluster_cannot_honour_stop_the_run_before_the_first_submission(plain, probe, message):
    _, found = plain
    code, out = found[probe]
    assert code != 0
    assert "SLURM settings to fix before anything is submitted:" in out and message in out, out[-3000:]
    assert not SUBMITTED.search(out)


def test_a_job_that_fails_on_the_cluster_names_its_slurm_log_and_shows_its_own(plain):
    _, found = plain
    code, out = found["failing"]
    assert code != 0
    assert re.search(r"SLURM-job '\d+' failed, SLURM status is: 'FAILED'", out), out[-3000:]
    slurm_log = re.search(r"log: (\S+/rule_teacher/\d+\.log)", out)[1]
    assert Path(slurm_log).exists()  # kept: a failed job's sbatch log
    assert "Logfile results/smoke/logs/teacher.log:" in out
    assert "cmt teacher: error: teacher.fetch: cannot fetch file:///nonexistent.pkl" in out  # one line, from the log


def test_every_job_of_all_ran_as_a_slurm_job_and_wrote_the_bytes_of_the_local_run(plain, smoke):
    project, found = plain
    code, out = found["all"]
    assert code == 0, out[-4000:]
    planned = found["planned"]
    remote = {rule: n for rule, n in planned.items() if rule not in ("all", "ingest", "report")}
    submitted = SUBMITTED.findall(out)
    assert len(submitted) == sum(remote.values()) + 1  # the cancelled CMT job ran twice
    assert sorted(set(remote_jobs(out))) == sorted(remote)
    ran = artifact_hashes(project / "results" / "smoke")
    local = artifact_hashes(smoke / "results" / "smoke")
    assert len(ran) >= 15 and ran == {name: local.get(name) for name in ran}
    assert "Nothing to be done" in found["again"][1]
    print(f"`all` through SLURM (squeue status, one scancel): {found['seconds']:.0f} s")


def test_a_cancelled_training_job_is_resubmitted_and_resumes_from_the_step_it_saved(plain):
    project, found = plain
    code, out = found["all"]
    assert code == 0
    assert f"SLURM-job '{found['cancelled']}' failed, SLURM status is: 'CANCELLED'" in out
    stopped = re.search(r"interrupted: [^\n]*: stopped by a signal after step (\d+); checkpoint", out)
    assert stopped, "the cancelled attempt's log (shown by the controller) names the step it saved"
    step = int(stopped[1])
    assert 20 <= step < 40  # at or after its first periodic checkpoint, before the end
    log = (project / "results" / "smoke" / "logs" / f"{MID}.log").read_text()
    assert f"resumed from step {step} (checkpoint work/smoke/{MID}/resume.pt)" in log
    record = yaml.safe_load((project / "results" / "smoke" / MID / "run.json").read_text())
    assert record["metrics"]["resumed_from"] == step


def part_of_the_sweep(folder: Path) -> Path:
    """An overlay whose sweep is part of SWEEP in helpers/project.py (the Heun set, base CMT on it, ECD from base
    CMT): its jobs are jobs of the local sweep, so their files must match."""
    path = sweep_overlay(folder)
    overlay = yaml.safe_load(path.read_text())
    sweep = overlay["ablations"]
    sweep["trajectory_sets"] = {"solvers": ["heun"], "nfes": [4]}
    sweep["cmt"] = {name: ({} if name == "base" else None) for name in sweep["cmt"]}
    sweep["post"] = {**sweep["post"], "methods": ["ecd"], "cmt_variant": {"ecd": "base"}}
    sweep["budget"] = {name: None for name in sweep["budget"]}
    sweep["teachers"] = {name: None for name in sweep["teachers"]}
    path.write_text(yaml.safe_dump(overlay))
    return path


@pytest.fixture(scope="module")
def accounted(plain, swept, tmp_path_factory):
    """A cluster with slurmdbd and MariaDB: `all_ablations` of part of the local reduced sweep on the finished `all`
    project, polled with sacct; what sacct recorded; a wrong account."""
    project, _ = plain
    args = ("--configfile", "config/smoke.yaml", str(part_of_the_sweep(tmp_path_factory.mktemp("part"))))
    copy = tmp_path_factory.mktemp("accounted") / "project"
    shutil.copytree(project, copy, symlinks=True)
    found = {}
    with cluster(accounting=True):
        env = slurm_env(**{ACCOUNT_VAR: "root"})
        found["wrong"] = run(copy, "all_ablations", *args, env=slurm_env(**{ACCOUNT_VAR: "physics"}))
        t0 = time.monotonic()
        found["sweep"] = run(copy, "--slurm-status-command", "sacct", "all_ablations", *args, env=env)
        found["seconds"] = time.monotonic() - t0
        found["sacct"] = subprocess.run(
            ["sacct", "-X", "-n", "-P", "-o", "JobID,State,Account,Comment"], capture_output=True, text=True, check=True
        ).stdout
        found["again"] = run(copy, "-n", "all_ablations", *args, env=env)
    return copy, found


def test_with_accounting_a_foreign_account_is_refused_naming_the_users_own(accounted):
    _, found = accounted
    code, out = found["wrong"]
    assert code != 0 and "slurm_account 'physics' is not one of your accounts" in out and "yours: root" in out
    assert not SUBMITTED.search(out)


def test_all_ablations_through_slurm_with_sacct_runs_each_new_job_once_with_the_local_sweeps_bytes(accounted, smoke):
    project, found = accounted
    code, out = found["sweep"]
    assert code == 0, out[-4000:]
    submitted = {job for job, _ in SUBMITTED.findall(out)}
    recorded = {}
    for line in found["sacct"].splitlines():
        job, state, account, comment = line.split("|")
        recorded[job] = (state, account, comment.split("_wildcards_")[0])
    assert submitted and submitted <= set(recorded)  # sacct saw every job the controller submitted
    assert {recorded[j][:2] for j in submitted} == {("COMPLETED", "root")}
    assert {recorded[j][2] for j in submitted} == {f"rule_{r}" for r in remote_jobs(out)}
    assert {"rule_midtrain", "rule_posttrain", "rule_trajectories", "rule_evaluate"} <= {
        recorded[j][2] for j in submitted
    }
    # the Heun set, CMT on it, ECD from the base CMT, and their scores
    assert sorted(remote_jobs(out)) == ["evaluate", "evaluate", "midtrain", "posttrain", "trajectories"]
    ran = artifact_hashes(project / "results" / "smoke")
    local = artifact_hashes(smoke / "results" / "smoke")
    assert len([name for name in ran if "heun" in name]) >= 5  # shards, index, model, meta, scores
    assert ran == {name: local.get(name) for name in ran}  # the main run (without accounting) and these, byte for byte
    assert "Nothing to be done" in found["again"][1]
    print(f"the sweep's `all_ablations` through SLURM (sacct status): {found['seconds']:.0f} s")
