"""Data parallelism on CPU with gloo: shared draws, gradient averaging, N processes training the weights of one,
resume with another process count, and training jobs launched by ``accelerate launch`` writing one set of outputs."""

import json
import os
import signal
import subprocess
import sys
from functools import partial
from pathlib import Path

import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp
from helpers.training import killed_at, loop, regression_problem
from safetensors.torch import load_file

from cmt.config import load_config
from cmt.formats.checkpoints import save_denoiser
from cmt.stages.teacher import build_denoiser
from cmt.training import parallel
from cmt.training.loop import RESUME_FILE, fit
from cmt.training.preemption import Preempted
from cmt.workflow.launch import launcher

ROOT = Path(__file__).resolve().parents[1]
ACCELERATE = Path(sys.executable).parent / "accelerate"
CFG = loop(iterations=12, batch_size=32, lr=1e-2, ema_beta=0.9, checkpoint_every=4)


def sharded_regression():
    """``regression_problem`` without dropout, its batch drawn for the whole world and shared out."""
    model, _ = regression_problem()
    model[1].p = 0.0
    w = torch.randn(4, 1, generator=torch.Generator().manual_seed(7))

    def loss_fn(net, step, gen):
        x = parallel.randn((parallel.local_count(32, "batch"), 4), gen)
        return (net(x) - x @ w).square().mean()

    return model, loss_fn


def _worker(rank: int, world: int, store: str, task, out: str) -> None:
    dist.init_process_group("gloo", init_method=f"file://{store}", rank=rank, world_size=world)
    try:
        result = task()
        if rank == 0:
            torch.save(result, out)
    finally:
        dist.destroy_process_group()


def in_processes(world: int, task, tmp_path: Path):
    """``task()`` in ``world`` gloo processes; rank 0's result."""
    out, store = tmp_path / f"result-{world}.pt", tmp_path / f"store-{world}-{os.getpid()}"
    mp.start_processes(_worker, args=(world, str(store), task, str(out)), nprocs=world, start_method="spawn")
    return torch.load(out, weights_only=False)


def draws():
    gen = torch.Generator().manual_seed(0)
    return {
        "rank": parallel.rank(),
        "normal": [parallel.randn((2, 3), gen) for _ in range(2)],
        "columns": parallel.randn((2, 2), gen, dim=1),
        "ints": parallel.randint(10, (4,), gen),
    }


def gathered_draws():
    mine = draws()
    everyone = [None] * parallel.world()
    dist.all_gather_object(everyone, mine)
    return everyone


def test_the_ranks_shares_make_up_the_global_batchs_draws(tmp_path):
    ranks = in_processes(2, gathered_draws, tmp_path)
    assert [r["rank"] for r in ranks] == [0, 1]
    gen = torch.Generator().manual_seed(0)  # one process drawing the global batch of 4 rows
    for k in range(2):
        assert torch.equal(torch.cat([r["normal"][k] for r in ranks]), torch.randn(4, 3, generator=gen))
    assert torch.equal(torch.cat([r["columns"] for r in ranks], dim=1), torch.randn(2, 4, generator=gen))
    assert torch.equal(torch.cat([r["ints"] for r in ranks]), torch.randint(10, (8,), generator=gen))
    assert draws()["normal"][0].shape == (2, 3)  # without a process group: a world of one


def train_sharded(work: str, iterations: int = 12, kill: int | None = None):
    model, loss_fn = sharded_regression()
    fn = killed_at(kill, loss_fn) if kill is not None else loss_fn
    result = fit(model, fn, loop(**{**CFG.__dict__, "iterations": iterations}), work, "p", seed=5)
    return {
        "model": [p.detach().clone() for p in model.parameters()],
        "ema": [p.clone() for p in result.ema.parameters()],
        "losses": [h["loss"] for h in result.history],
        "spread": result.replica_spread,
        "resumed_from": result.resumed_from,
    }


def test_two_processes_train_the_weights_and_losses_of_one(tmp_path):
    one = train_sharded(str(tmp_path / "one"))
    two = in_processes(2, partial(train_sharded, str(tmp_path / "two")), tmp_path)
    assert two["spread"] == 0.0  # the replicas agree bit for bit
    start = [p.detach() for p in sharded_regression()[0].parameters()]
    moved = max(float((a - b).abs().max()) for a, b in zip(one["model"], start))
    for a, b in zip(one["model"] + one["ema"], two["model"] + two["ema"]):
        assert float((a - b).abs().max()) < 1e-5 * moved  # fp32 summation order only
    assert two["losses"] == pytest.approx(one["losses"], rel=1e-5)  # rank 0 logs the global batch's loss


def test_a_run_checkpointed_by_one_process_resumes_with_two(tmp_path):
    one = train_sharded(str(tmp_path / "ref"))
    with pytest.raises(KeyboardInterrupt):
        train_sharded(str(tmp_path / "run"), kill=10)  # last checkpoint: step 8
    resumed = in_processes(2, partial(train_sharded, str(tmp_path / "run")), tmp_path)
    assert resumed["resumed_from"] == 8
    for a, b in zip(one["ema"], resumed["ema"]):
        assert torch.allclose(a, b, atol=1e-6)


def _signalled_on_rank_one(work: str):
    """A two-process fit in which only rank 1 receives SIGTERM (during step 6); what each rank stopped with."""
    model, loss_fn = sharded_regression()

    def loss(net, step, gen):
        if step == 5 and parallel.rank() == 1:
            os.kill(os.getpid(), signal.SIGTERM)
        return loss_fn(net, step, gen)

    try:
        fit(model, loss, CFG, work, "p", seed=5)
        stopped = "finished"
    except Preempted as err:
        stopped = str(err)
    everyone = [None] * parallel.world()
    dist.all_gather_object(everyone, stopped)
    return everyone


def test_a_signal_to_one_rank_stops_every_rank_after_the_same_step_and_the_run_resumes_exactly(tmp_path):
    one = train_sharded(str(tmp_path / "ref"))
    stops = in_processes(2, partial(_signalled_on_rank_one, str(tmp_path / "run")), tmp_path)
    assert all(message.startswith("p: stopped by a signal after step 6;") for message in stops), stops
    assert torch.load(tmp_path / "run" / RESUME_FILE, weights_only=True)["step"] == 6  # periodic ones: 4, 8
    resumed = train_sharded(str(tmp_path / "run"))
    assert resumed["resumed_from"] == 6
    for a, b in zip(one["ema"], resumed["ema"]):
        assert torch.allclose(a, b, atol=1e-6)


def _unsynchronised():
    model, loss_fn = sharded_regression()
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    loss_fn(model, 0, torch.Generator().manual_seed(1)).backward()
    opt.step()
    before = parallel.replica_spread(model)
    model, loss_fn = sharded_regression()
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    loss_fn(model, 0, torch.Generator().manual_seed(1)).backward()
    parallel.average_gradients(model)
    opt.step()
    return before, parallel.replica_spread(model)


def test_without_the_gradient_average_the_replicas_drift_apart(tmp_path):
    unsynced, synced = in_processes(2, _unsynchronised, tmp_path)
    assert unsynced > 1e-3 and synced == 0.0


# --- jobs started by accelerate launch ------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def teacher_dir(tmp_path_factory):
    folder = tmp_path_factory.mktemp("teacher")
    cfg = load_config(ROOT / "config" / "config.yaml")
    save_denoiser(folder, build_denoiser(cfg["network"], cfg["precond"], 0), {"stage": "teacher"})
    return folder


def post_job(method: str, processes: int, teacher: Path, out: Path) -> dict:
    """Post-train ``method`` for 12 steps of a batch of 16 (dropout 0: masks are per-rank streams), with
    ``processes`` processes; the run record."""
    settings = {"iterations": 12, "batch_size": 16, "dropout": 0.0, "eval_every": 0, "checkpoint_every": 0}
    params = json.dumps({"posttrain": {method: settings}, "seed": 0})
    args = ["-m", "cmt", "posttrain", "--method", method, "--init", "diffusion", "--teacher", str(teacher)]
    args += ["--init-dir", str(teacher), "--out", str(out), "--work", str(out) + "-work", "--params", params]
    start = [sys.executable] if processes == 1 else [str(ACCELERATE), *launcher(processes, "fp32").split()[1:]]
    proc = subprocess.run([*start, *args], capture_output=True, text=True, timeout=300, env={**os.environ})
    assert proc.returncode == 0, proc.stderr[-3000:]
    return json.loads((out / "run.json").read_text())


@pytest.mark.parametrize("method", ["ect", "meanflow"])
def test_a_two_process_job_writes_the_weights_of_a_one_process_job(teacher_dir, tmp_path, method):
    one = post_job(method, 1, teacher_dir, tmp_path / "one")
    two = post_job(method, 2, teacher_dir, tmp_path / "two")
    assert (one["params"]["processes"], two["params"]["processes"]) == (1, 2)
    assert two["metrics"]["replica_spread"] == 0.0
    a, b = load_file(tmp_path / "one" / "model.safetensors"), load_file(tmp_path / "two" / "model.safetensors")
    init = load_file(teacher_dir / "model.safetensors")
    moved = max(float((a[k] - init[k]).abs().max()) for k in init)
    assert moved > 1e-5
    assert max(float((a[k] - b[k]).abs().max()) for k in a) < 1e-3 * moved
    assert sorted(p.name for p in (tmp_path / "one").iterdir()) == sorted(p.name for p in (tmp_path / "two").iterdir())
