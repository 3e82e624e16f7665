"""A SLURM run's requests, checked against the cluster before anything is submitted, and how a GPU request is spelt.

The workflow's SLURM profile reads the account and the partition from ``CMT_SLURM_ACCOUNT`` and
``CMT_SLURM_PARTITION`` (or the user writes them into the profile); jobs that ask for GPUs can go to another
partition (``CMT_SLURM_GPU_PARTITION``), name a GPU model (``CMT_SLURM_GPU_MODEL``) and use ``--gres`` instead of
``--gpus`` where the site wants it (``CMT_SLURM_GPU_REQUEST=gres``; workflow.md 2.2). Without a check, an unset
account or a GPU job on a partition without GPUs fails only at ``sbatch``, job after job; ``problems`` names them all
at once, before the first submission.
"""

from __future__ import annotations

import getpass
import math
import re
import subprocess
from collections.abc import Iterable, Mapping
from dataclasses import dataclass

from cmt.errors import CmtError

ACCOUNT_VAR, PARTITION_VAR = "CMT_SLURM_ACCOUNT", "CMT_SLURM_PARTITION"
GPU_PARTITION_VAR, GPU_MODEL_VAR, GPU_REQUEST_VAR = (
    "CMT_SLURM_GPU_PARTITION",
    "CMT_SLURM_GPU_MODEL",
    "CMT_SLURM_GPU_REQUEST",
)
GPU_REQUESTS = ("gpus", "gres")  # --gpus=[model:]N (the plugin's `gpu`/`gpu_model`) or --gres=gpu[:model]:N
QUERY_TIMEOUT_S = 30


class SlurmSettingError(CmtError, ValueError):
    """A SLURM setting of this workflow (an environment variable) that cannot be used."""


def gpu_resources(gpu: int, env: Mapping[str, str]) -> dict:
    """The Snakemake resources of a job that asks for ``gpu`` GPUs, in the site's spelling (environment above)."""
    if gpu == 0:
        return {"gpu": 0}
    form = env.get(GPU_REQUEST_VAR) or GPU_REQUESTS[0]
    if form not in GPU_REQUESTS:
        raise SlurmSettingError(f"{GPU_REQUEST_VAR}={form!r}: valid values are {', '.join(GPU_REQUESTS)}")
    model, partition = env.get(GPU_MODEL_VAR), env.get(GPU_PARTITION_VAR)
    found: dict = {"slurm_partition": partition} if partition else {}
    if form == "gres":
        return {**found, "gres": f"gpu:{model}:{gpu}" if model else f"gpu:{gpu}"}
    return {**found, "gpu": gpu, **({"gpu_model": model} if model else {})}


@dataclass(frozen=True)
class Request:
    """What one job asks SLURM for (its evaluated Snakemake resources)."""

    rule: str
    account: str
    partition: str
    gpu: int
    gpu_model: str
    cpus: int
    mem_mb: int
    minutes: int

    @classmethod
    def of(cls, rule: str, resources: Mapping, threads: int) -> "Request":
        gres = parse_gres(str(resources.get("gres") or ""))
        gpu = int(resources.get("gpu") or 0) or sum(gres.values())
        model = str(resources.get("gpu_model") or next((m for m in gres if m), ""))
        return cls(
            rule=rule,
            account=str(resources.get("slurm_account") or ""),
            partition=str(resources.get("slurm_partition") or ""),
            gpu=gpu,
            gpu_model=model,
            cpus=int(resources.get("cpus_per_task") or threads),
            mem_mb=int(resources.get("mem_mb") or 0),
            minutes=int(resources.get("runtime") or 0),
        )


@dataclass(frozen=True)
class Node:
    """One node of one partition, as ``sinfo -N`` lists it."""

    partition: str
    cpus: int
    mem_mb: int
    gpus: dict[str, int]  # GPU model ("" when untyped) -> count
    max_minutes: int | None  # the partition's time limit; None: unlimited


SINFO_FORMAT = "%R|%c|%m|%G|%l"  # partition, CPUs, memory (MB), generic resources, time limit


def parse_gres(text: str) -> dict[str, int]:
    """GPUs in a GRES string (``gpu:a100:4(S:0-1),gpu:2``, ``(null)``): model ("" untyped) -> count."""
    found: dict[str, int] = {}
    for item in text.split(","):
        parts = re.sub(r"\(.*\)$", "", item.strip()).split(":")
        if parts[0] != "gpu" or len(parts) < 2:
            continue
        model, count = (parts[1], parts[2]) if len(parts) > 2 else ("", parts[1])
        if count.isdigit():
            found[model] = found.get(model, 0) + int(count)
    return found


def parse_time_limit(text: str) -> int | None:
    """SLURM's ``[days-]hours:minutes:seconds``, ``minutes:seconds`` or ``minutes`` in whole minutes (rounded up);
    None when unlimited (SLURM's sbatch manual, ``--time``)."""
    text = text.strip()
    if text.lower() in ("infinite", "unlimited", "n/a", ""):
        return None
    days, _, clock = text.rpartition("-")
    parts = [int(p) for p in clock.split(":")]
    hours, minutes, seconds = (0, parts[0], 0) if len(parts) == 1 else ([0, *parts])[-3:]
    return int(days or 0) * 1440 + hours * 60 + minutes + math.ceil(seconds / 60)


def parse_sinfo(text: str) -> list[Node]:
    """The lines of ``sinfo -h -N -o SINFO_FORMAT``."""
    nodes = []
    for line in text.splitlines():
        if line.strip():
            partition, cpus, mem, gres, limit = line.strip().split("|")
            nodes.append(
                Node(partition, int(cpus), int(re.sub(r"\D", "", mem) or 0), parse_gres(gres), parse_time_limit(limit))
            )
    return nodes


def placeholder(value: str) -> bool:
    """A value nobody set: an unexpanded ``$VARIABLE`` (the variable is not exported) or a ``<placeholder>``."""
    return value.startswith("$") or (value.startswith("<") and value.endswith(">"))


def _fits(request: Request, node: Node) -> list[str]:
    """What ``node`` lacks for ``request`` (empty when the job fits)."""
    gpus = node.gpus.get(request.gpu_model, 0) if request.gpu_model else sum(node.gpus.values())
    lacks = []
    if request.gpu > gpus:
        what = f"{request.gpu_model} GPUs" if request.gpu_model else "GPUs"
        lacks.append(f"{request.gpu} {what} (a node has {_describe_gpus(node.gpus)})")
    if request.cpus > node.cpus:
        lacks.append(f"{request.cpus} CPUs (a node has {node.cpus})")
    if request.mem_mb > node.mem_mb:
        lacks.append(f"{request.mem_mb} MB of memory (a node has {node.mem_mb})")
    if node.max_minutes is not None and request.minutes > node.max_minutes:
        lacks.append(f"a runtime of {request.minutes} min (the partition's limit is {node.max_minutes})")
    return lacks


def _describe_gpus(gpus: Mapping[str, int]) -> str:
    return ", ".join(f"{n} {m or 'untyped'}" for m, n in gpus.items()) or "none"


def problems(requests: Iterable[Request], nodes: list[Node], accounts: set[str] | None, profile: str) -> list[str]:
    """Everything that would make ``sbatch`` (or the plugin) refuse these jobs, one message per cause, each saying
    what to set. ``accounts``: the user's SLURM accounts, None on a cluster without accounting (where the plugin
    refuses any account, so none must be given); ``profile``: the file to edit."""
    found: dict[str, None] = {}  # an ordered set: one message per cause, however many jobs share it
    partitions = {n.partition for n in nodes}
    known = f"the cluster's partitions: {', '.join(sorted(partitions))}"
    for r in requests:
        found.update(dict.fromkeys(_account_problems(r.account, accounts, profile)))
        if placeholder(r.partition) or not r.partition:
            how = f"export {PARTITION_VAR}=<partition> or set it in {profile}"
            found[f"slurm_partition is not set ({r.partition or 'empty'}): {how}; {known}"] = None
        elif r.partition not in partitions:
            found[f"partition {r.partition!r} (rule {r.rule}) does not exist; {known}"] = None
        elif all(lacking := [_fits(r, n) for n in nodes if n.partition == r.partition]):
            hint = f"; set {GPU_PARTITION_VAR} to a partition with GPUs" if r.gpu and "GPUs" in lacking[0][0] else ""
            found[f"rule {r.rule} asks partition {r.partition!r} for {'; '.join(lacking[0])}{hint}"] = None
    return list(found)


def _account_problems(account: str, accounts: set[str] | None, profile: str) -> list[str]:
    how = f"export {ACCOUNT_VAR}=<account> or set it in {profile}"
    if placeholder(account):
        none = f" ({ACCOUNT_VAR}= , empty, on a cluster without accounting)" if accounts is None else ""
        return [f"slurm_account is not set ({account}): {how}{none}"]
    if accounts is None and not account:
        return []
    if accounts is None:
        return [
            f"slurm_account {account!r} cannot be used: this cluster has no accounting (sacctmgr and sshare fail), "
            f"and the SLURM plugin refuses an account it cannot check; export {ACCOUNT_VAR}= (empty)"
        ]
    if account.lower() not in accounts:
        given = f"slurm_account {account!r} is not one of your accounts" if account else "slurm_account is empty"
        return [f"{given}: {how}; yours: {', '.join(sorted(accounts))}"]
    return []


def _run(command: list[str]) -> str | None:
    """A query's output; None when the tool is missing or fails (a cluster without accounting has no sacctmgr)."""
    try:
        done = subprocess.run(command, capture_output=True, text=True, timeout=QUERY_TIMEOUT_S)
    except (OSError, subprocess.TimeoutExpired):
        return None
    return done.stdout if done.returncode == 0 else None


def cluster_nodes() -> list[Node]:
    """Every partition's nodes (``sinfo``); an error when SLURM cannot be reached."""
    text = _run(["sinfo", "-h", "-N", "-o", SINFO_FORMAT])
    if text is None:
        raise SlurmSettingError("`sinfo` failed: is this a SLURM login node, and is the controller up?")
    return parse_sinfo(text)


def user_accounts() -> set[str] | None:
    """The user's accounts, found as the SLURM plugin finds them (sacctmgr, else sshare); None without accounting."""
    queries = (
        ["sacctmgr", "-n", "-s", "list", "user", getpass.getuser(), "format=account%256"],
        ["sshare", "-U", "--format", "Account%256", "--noheader"],
    )
    for query in queries:
        accounts = {line.strip().lower() for line in (_run(query) or "").splitlines() if line.strip()}
        if accounts:
            return accounts
    return None
