"""cmt.workflow.slurm without a cluster: sinfo's fields parsed, GPU requests spelt for the site, and every cause that
would make sbatch refuse a job found before submission (the cluster itself: test_workflow_slurm.py)."""

import pytest

from cmt.workflow.slurm import (
    Node,
    Request,
    SlurmSettingError,
    gpu_resources,
    parse_gres,
    parse_sinfo,
    parse_time_limit,
    problems,
)

PROFILE = "profiles/slurm/config.yaml"


def test_gres_strings_count_gpus_per_model():
    assert parse_gres("(null)") == {}
    assert parse_gres("gpu:4") == {"": 4}
    assert parse_gres("gpu:a100:4(S:0-1)") == {"a100": 4}
    assert parse_gres("gpu:a100:2,gpu:v100:4(S:0),tmpdisk:100") == {"a100": 2, "v100": 4}


@pytest.mark.parametrize(
    ("text", "minutes"),
    [("infinite", None), ("UNLIMITED", None), ("30", 30), ("30:00", 30), ("2:00:00", 120), ("1-00:00:00", 1440),
     ("2-12:30:01", 2 * 1440 + 12 * 60 + 31)],
)  # fmt: skip
def test_time_limits_in_minutes(text, minutes):
    assert parse_time_limit(text) == minutes


def test_sinfo_lines_become_nodes():
    nodes = parse_sinfo("cpu|64|256000|(null)|1-00:00:00\ngpu|32|512000+|gpu:h100:8(S:0-1)|2-00:00:00\n")
    assert nodes == [Node("cpu", 64, 256000, {}, 1440), Node("gpu", 32, 512000, {"h100": 8}, 2880)]


def test_a_gpu_request_takes_the_sites_spelling_and_a_cpu_job_none_of_it():
    site = {"CMT_SLURM_GPU_PARTITION": "gpu", "CMT_SLURM_GPU_MODEL": "h100"}
    assert gpu_resources(0, site) == {"gpu": 0}
    assert gpu_resources(2, {}) == {"gpu": 2}
    assert gpu_resources(2, site) == {"slurm_partition": "gpu", "gpu": 2, "gpu_model": "h100"}
    assert gpu_resources(2, {**site, "CMT_SLURM_GPU_REQUEST": "gres"}) == {
        "slurm_partition": "gpu",
        "gres": "gpu:h100:2",
    }
    assert gpu_resources(1, {"CMT_SLURM_GPU_REQUEST": "gres"}) == {"gres": "gpu:1"}
    with pytest.raises(SlurmSettingError, match="CMT_SLURM_GPU_REQUEST='gpu': valid values are gpus, gres"):
        gpu_resources(1, {"CMT_SLURM_GPU_REQUEST": "gpu"})


def request(**changes) -> Request:
    base = dict(
        rule="midtrain", account="proj", partition="gpu", gpu=1, gpu_model="", cpus=8, mem_mb=32000, minutes=600
    )
    return Request(**{**base, **changes})


NODES = parse_sinfo("cpu|64|256000|(null)|1-00:00:00\ngpu|32|512000|gpu:h100:8|2-00:00:00\n")


def test_requests_the_cluster_can_honour_pass():
    assert problems([request(), request(rule="dataset", partition="cpu", gpu=0)], NODES, {"proj"}, PROFILE) == []
    assert problems([request(account="")], NODES, None, PROFILE) == []  # no accounting: no account at all


def test_a_request_read_from_resources_counts_gres_gpus_and_runtime_in_minutes():
    resources = {"slurm_account": "proj", "slurm_partition": "gpu", "gres": "gpu:h100:2", "mem_mb": 1000, "runtime": 90}
    assert Request.of("posttrain", resources, 4) == request(
        rule="posttrain", gpu=2, gpu_model="h100", cpus=4, mem_mb=1000, minutes=90
    )


@pytest.mark.parametrize(
    ("changes", "accounts", "message"),
    [
        ({"account": "$CMT_SLURM_ACCOUNT"}, {"proj"}, "slurm_account is not set ($CMT_SLURM_ACCOUNT): export "
         f"CMT_SLURM_ACCOUNT=<account> or set it in {PROFILE}"),
        ({"account": "<account>"}, None, "CMT_SLURM_ACCOUNT= , empty, on a cluster without accounting"),
        ({"account": "other"}, {"proj", "lab"}, "slurm_account 'other' is not one of your accounts: export "
         "CMT_SLURM_ACCOUNT=<account> or set it in profiles/slurm/config.yaml; yours: lab, proj"),
        ({"account": ""}, {"proj"}, "slurm_account is empty: export CMT_SLURM_ACCOUNT=<account>"),
        ({"account": "proj"}, None, "slurm_account 'proj' cannot be used: this cluster has no accounting"),
        ({"partition": "$CMT_SLURM_PARTITION"}, {"proj"}, "slurm_partition is not set ($CMT_SLURM_PARTITION): export "
         "CMT_SLURM_PARTITION=<partition> or set it in profiles/slurm/config.yaml; the cluster's partitions: cpu, gpu"),
        ({"partition": ""}, {"proj"}, "slurm_partition is not set (empty)"),
        ({"partition": "a100"}, {"proj"}, "partition 'a100' (rule midtrain) does not exist; the cluster's partitions"),
        ({"partition": "cpu"}, {"proj"}, "rule midtrain asks partition 'cpu' for 1 GPUs (a node has none); set "
         "CMT_SLURM_GPU_PARTITION to a partition with GPUs"),
        ({"gpu": 9}, {"proj"}, "rule midtrain asks partition 'gpu' for 9 GPUs (a node has 8 h100)"),
        ({"gpu_model": "a100"}, {"proj"}, "for 1 a100 GPUs (a node has 8 h100)"),
        ({"cpus": 33}, {"proj"}, "for 33 CPUs (a node has 32)"),
        ({"mem_mb": 600000}, {"proj"}, "for 600000 MB of memory (a node has 512000)"),
        ({"minutes": 2881}, {"proj"}, "for a runtime of 2881 min (the partition's limit is 2880)"),
    ],
)  # fmt: skip
def test_each_cause_sbatch_would_refuse_is_named_with_what_to_set(changes, accounts, message):
    found = problems([request(**changes)], NODES, accounts, PROFILE)
    assert len(found) == 1 and message in found[0], found


def test_one_message_per_cause_however_many_jobs_share_it():
    jobs = [request(rule=r, account="$CMT_SLURM_ACCOUNT", partition="cpu") for r in ("midtrain", "midtrain", "post")]
    found = problems(jobs, NODES, {"proj"}, PROFILE)
    assert len(found) == 3  # the account once, the GPU request of each rule once
    assert found[0].startswith("slurm_account is not set")
