"""The shared training loop: schedules, EMA, resume after a kill, NaN stop, gradient hygiene."""

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
from helpers.training import CFG, killed_at, loop, regression_problem
from torch import nn

from cmt.errors import BadInput
from cmt.formats.atomic import PART_SUFFIX
from cmt.training.loop import (
    RESUME_FILE,
    Compute,
    FitOptions,
    NonFiniteLoss,
    clean_gradients,
    ema_beta_halflife,
    fit,
    learning_rate,
    make_optimizer,
    set_determinism,
)
from cmt.training.preemption import Preempted


def test_schedules():
    cfg = loop(iterations=100, batch_size=8, lr=1.0, lr_schedule="linear_decay", warmup_iterations=10)
    assert learning_rate(cfg, 0) == pytest.approx(0.1)
    assert learning_rate(cfg, 50) == pytest.approx(0.5)
    assert learning_rate(cfg, 99) == pytest.approx(0.01)
    assert ema_beta_halflife(128, 10**9, 1280) == pytest.approx(0.5**0.1)
    assert ema_beta_halflife(128, 128, 10**6) == pytest.approx(0.5 ** (128 / 6.4))  # ramp-up: 5% of images


def test_the_step_schedule_and_sgd_of_the_latent_lpips_backbone():
    """torchvision's ImageNet recipe, the authors' for their latent VGG: x0.1 every 30 epochs; SGD with momentum and
    weight decay (docs/latent.md 8.5)."""
    cfg = loop(iterations=100, batch_size=8, lr=0.1, lr_schedule="step", lr_step_every=30, lr_step_gamma=0.1)
    assert [learning_rate(cfg, k) for k in (0, 29, 30, 59, 60, 99)] == pytest.approx([0.1, 0.1, 0.01, 0.01, 1e-3, 1e-4])
    with pytest.raises(BadInput, match="lr_step_every"):
        learning_rate(loop(iterations=10, batch_size=8, lr=0.1, lr_schedule="step"), 0)
    sgd = make_optimizer(
        loop(iterations=1, batch_size=1, lr=0.1, optimizer="sgd", weight_decay=1e-4), [nn.Parameter(torch.ones(2))]
    )
    assert isinstance(sgd, torch.optim.SGD)
    assert sgd.defaults["momentum"] == 0.9 and sgd.defaults["weight_decay"] == 1e-4


def test_training_reduces_loss_and_ema_lags(tmp_path):
    model, loss_fn = regression_problem()
    result = fit(model, loss_fn, CFG, tmp_path, "t", seed=1)
    losses = [h["loss"] for h in result.history]
    assert sum(losses[-5:]) < 0.5 * sum(losses[:5])
    differs = any(not torch.equal(a, b) for a, b in zip(result.ema.parameters(), model.parameters()))
    assert differs


def test_resume_after_kill_reproduces_uninterrupted_run(tmp_path, capsys):
    ref_model, loss_fn = regression_problem()
    ref = fit(ref_model, loss_fn, CFG, tmp_path / "ref", "ref", seed=3)

    model, loss_fn = regression_problem()
    with pytest.raises(KeyboardInterrupt):
        fit(model, killed_at(25, loss_fn), CFG, tmp_path / "run", "run", seed=3)
    assert (tmp_path / "run" / RESUME_FILE).exists()
    model2, loss_fn2 = regression_problem()
    capsys.readouterr()
    resumed = fit(model2, loss_fn2, CFG, tmp_path / "run", "run", seed=3)
    assert resumed.resumed_from == 20
    assert f"run: resumed from step 20 (checkpoint {tmp_path / 'run' / RESUME_FILE})" in capsys.readouterr().err
    assert resumed.history == ref.history
    for a, b in zip(resumed.ema.parameters(), ref.ema.parameters()):
        assert torch.equal(a, b)


def signalled_at(step_hit, loss_fn, signum=signal.SIGTERM):
    """The loss function of a run that receives ``signum`` (as from SLURM) while computing step ``step_hit``."""

    def loss(net, step, gen):
        if step == step_hit:
            os.kill(os.getpid(), signum)
        return loss_fn(net, step, gen)

    return loss


@pytest.mark.parametrize(("signum", "sync_every", "saved"), [(signal.SIGTERM, 1, 23), (signal.SIGUSR1, 4, 24)])
def test_a_signal_saves_the_step_reached_and_the_resumed_run_ends_on_the_uninterrupted_bytes(
    tmp_path, capsys, signum, sync_every, saved
):
    """A signal during the 23rd step (the last periodic checkpoint holds 20): the run finishes that step, saves 23
    steps and raises Preempted; reading the loss back every 4 steps, the stop waits for the next read (24)."""
    compute = fast(sync_every=sync_every)
    ref_model, loss_fn = regression_problem()
    ref = fit(ref_model, loss_fn, CFG, tmp_path / "ref", "ref", seed=3, options=FitOptions(compute=compute))
    model, loss_fn = regression_problem()
    with pytest.raises(Preempted, match=f"run: stopped by a signal after step {saved}; checkpoint .*{RESUME_FILE}"):
        fit(
            model,
            signalled_at(22, loss_fn, signum),
            CFG,
            tmp_path / "run",
            "run",
            seed=3,
            options=FitOptions(compute=compute),
        )
    assert torch.load(tmp_path / "run" / RESUME_FILE, weights_only=True)["step"] == saved
    assert signal.getsignal(signum) is signal.SIG_DFL  # the default action is back once fit returns
    model2, loss_fn2 = regression_problem()
    resumed = fit(model2, loss_fn2, CFG, tmp_path / "run", "run", seed=3, options=FitOptions(compute=compute))
    assert resumed.resumed_from == saved
    assert resumed.history == ref.history
    assert all(torch.equal(a, b) for a, b in zip(resumed.ema.parameters(), ref.ema.parameters()))


def test_a_signal_on_the_last_step_finishes_the_run_instead(tmp_path):
    model, loss_fn = regression_problem()
    result = fit(model, signalled_at(CFG.iterations - 1, loss_fn), CFG, tmp_path, "end", seed=3)
    assert len([h for h in result.history if "loss" in h]) == CFG.iterations
    assert not (tmp_path / RESUME_FILE).exists() or torch.load(tmp_path / RESUME_FILE)["step"] < CFG.iterations


def test_wall_seconds_add_up_over_a_resume(tmp_path):
    """The record's training time is the interrupted attempt's (to its checkpoint) plus the resumed one's."""
    model, loss_fn = regression_problem()
    slow = 0.05

    def sleepy(net, step, gen):
        time.sleep(slow)
        return loss_fn(net, step, gen)

    with pytest.raises(Preempted):
        fit(model, signalled_at(14, sleepy), CFG, tmp_path, "w", seed=3)
    first = torch.load(tmp_path / RESUME_FILE, weights_only=True)["seconds"]
    assert first >= 15 * slow
    model2, _ = regression_problem()
    resumed = fit(model2, sleepy, CFG, tmp_path, "w", seed=3)
    assert resumed.resumed_from == 15
    assert resumed.wall_seconds >= first + (CFG.iterations - 15) * slow


def test_resume_checkpoint_of_other_settings_is_not_used(tmp_path):
    model, loss_fn = regression_problem()
    killed = killed_at(15, loss_fn)
    with pytest.raises(KeyboardInterrupt):
        fit(model, killed, CFG, tmp_path, "run", seed=3, options=FitOptions(fingerprint="settings-a"))
    model2, _ = regression_problem()
    assert (
        fit(model2, loss_fn, CFG, tmp_path, "run", seed=3, options=FitOptions(fingerprint="settings-b")).resumed_from
        == 0
    )
    model3, _ = regression_problem()
    with pytest.raises(KeyboardInterrupt):
        fit(model3, killed, CFG, tmp_path / "c", "run", seed=3, options=FitOptions(fingerprint="settings-a"))
    model4, _ = regression_problem()
    assert (
        fit(
            model4, loss_fn, CFG, tmp_path / "c", "run", seed=3, options=FitOptions(fingerprint="settings-a")
        ).resumed_from
        == 10
    )


def nan_at(bad_step, loss_fn):
    """The loss function of a run whose loss turns NaN at ``bad_step``."""

    def loss(net, step, gen):
        value = loss_fn(net, step, gen)
        return value * float("nan") if step == bad_step else value

    return loss


def test_nan_loss_stops_with_step_and_keeps_checkpoint(tmp_path):
    model, loss_fn = regression_problem()
    with pytest.raises(NonFiniteLoss, match="at step 15.*last good checkpoint kept"):
        fit(model, nan_at(15, loss_fn), CFG, tmp_path, "boom", seed=0)
    state = torch.load(tmp_path / RESUME_FILE, weights_only=True)
    assert state["step"] == 10


def test_damaged_resume_checkpoint_is_named_and_kept(tmp_path):
    model, loss_fn = regression_problem()
    with pytest.raises(KeyboardInterrupt):
        fit(model, killed_at(15, loss_fn), CFG, tmp_path, "x", seed=0)
    checkpoint = tmp_path / RESUME_FILE
    truncated = checkpoint.read_bytes()[: checkpoint.stat().st_size // 2]
    checkpoint.write_bytes(truncated)
    model, loss_fn = regression_problem()
    with pytest.raises(ValueError, match=f"{checkpoint}: cannot resume.*delete it to start this job over"):
        fit(model, loss_fn, CFG, tmp_path, "x", seed=0)
    assert checkpoint.read_bytes() == truncated  # the run starts over only when the user deletes it


# A training process whose second checkpoint write stops halfway (the bytes so far flushed to the
# temporary file) and waits there to be killed.
KILLED_MID_WRITE = """
import os, sys, time
sys.path.insert(0, {tests!r})
from helpers.training import CFG, regression_problem
from cmt.training.loop import fit

real_fdopen, writes = os.fdopen, []

class HalfWritten:
    def __init__(self, fh):
        self.fh = fh
    def __enter__(self):
        return self
    def __exit__(self, *exc):
        return self.fh.__exit__(*exc)
    def write(self, data):
        writes.append(len(data))
        if len(writes) < 2:
            return self.fh.write(data)
        self.fh.write(data[: len(data) // 2])
        self.fh.flush()
        open({marker!r}, "w").close()
        time.sleep(120)
    def __getattr__(self, name):
        return getattr(self.fh, name)

os.fdopen = lambda fd, mode: HalfWritten(real_fdopen(fd, mode))
model, loss_fn = regression_problem()
fit(model, loss_fn, CFG, {work!r}, "run", seed=3)
"""


def test_a_kill_in_the_middle_of_a_checkpoint_write_leaves_the_last_checkpoint_in_force(tmp_path, capsys):
    """SIGKILL while the step-20 checkpoint is half written: the `.part` file is never read; the run resumes
    from step 10, removes the remnant, and ends on the uninterrupted run's weights."""
    work, marker = tmp_path / "run", tmp_path / "writing"
    script = KILLED_MID_WRITE.format(tests=str(Path(__file__).parent), marker=str(marker), work=str(work))
    proc = subprocess.Popen([sys.executable, "-c", script], stderr=subprocess.PIPE, text=True)
    deadline = time.monotonic() + 120
    while not marker.exists() and proc.poll() is None and time.monotonic() < deadline:
        time.sleep(0.05)
    assert marker.exists(), f"the training process never reached its second checkpoint write:\n{proc.stderr.read()}"
    proc.kill()
    proc.wait()
    (part,) = work.glob(f".{RESUME_FILE}.*{PART_SUFFIX}")
    assert 0 < part.stat().st_size < (work / RESUME_FILE).stat().st_size
    assert torch.load(work / RESUME_FILE, weights_only=True)["step"] == 10

    ref_model, ref_loss = regression_problem()
    ref = fit(ref_model, ref_loss, CFG, tmp_path / "ref", "ref", seed=3)
    model, loss_fn = regression_problem()
    capsys.readouterr()
    resumed = fit(model, loss_fn, CFG, work, "run", seed=3)
    err = capsys.readouterr().err
    assert f"run: removed {part}, a checkpoint write cut short" in err
    assert f"run: resumed from step 10 (checkpoint {work / RESUME_FILE})" in err
    assert not part.exists()
    assert resumed.history == ref.history
    for a, b in zip(resumed.ema.parameters(), ref.ema.parameters()):
        assert torch.equal(a, b)


def test_gradient_hygiene():
    p = nn.Parameter(torch.zeros(3))
    p.grad = torch.tensor([float("nan"), float("inf"), -float("inf")])
    clean_gradients(nn.ParameterList([p]))
    assert p.grad.tolist() == [0.0, 1e5, -1e5]


class Seen:
    """An objective's own state: how many distinct random draws it has made."""

    def __init__(self):
        self.values = set()

    def state_dict(self) -> dict:
        return {"values": sorted(self.values)}

    def load_state_dict(self, state: dict) -> None:
        self.values = set(state["values"])


def counting(loss_fn, seen):
    def loss(net, step, gen):
        seen.values.add(int(torch.randint(1000, (1,), generator=gen)))
        return loss_fn(net, step, gen)

    return loss


def test_an_objectives_state_survives_a_resume(tmp_path):
    ref_seen, run_seen = Seen(), Seen()
    model, loss_fn = regression_problem()
    fit(model, counting(loss_fn, ref_seen), CFG, tmp_path / "ref", "ref", seed=3, options=FitOptions(extra=ref_seen))
    model, loss_fn = regression_problem()
    with pytest.raises(KeyboardInterrupt):
        fit(
            model,
            killed_at(25, counting(loss_fn, run_seen)),
            CFG,
            tmp_path / "run",
            "run",
            seed=3,
            options=FitOptions(extra=run_seen),
        )
    fresh = Seen()  # a new process: nothing of the killed run's memory survives but the checkpoint
    model, loss_fn = regression_problem()
    fit(model, counting(loss_fn, fresh), CFG, tmp_path / "run", "run", seed=3, options=FitOptions(extra=fresh))
    assert fresh.values == ref_seen.values and len(ref_seen.values) > 20


def test_deterministic_kernels_change_no_bit_on_cpu(tmp_path, monkeypatch):
    """`deterministic: true` switches torch to deterministic kernels; on CPU ours already are, so the switch
    leaves every weight as it was (the README's claim), and it switches back."""
    monkeypatch.delenv("CUBLAS_WORKSPACE_CONFIG", raising=False)
    runs = []
    for enabled in (False, True, False):
        set_determinism(enabled)
        assert torch.are_deterministic_algorithms_enabled() is enabled
        assert torch.backends.cudnn.benchmark is not enabled
        model, loss_fn = regression_problem()
        runs.append(fit(model, loss_fn, CFG, tmp_path / str(len(runs)), "run", seed=5).ema.state_dict())
    assert os.environ["CUBLAS_WORKSPACE_CONFIG"] == ":4096:8"
    for name, value in runs[0].items():
        assert torch.equal(value, runs[1][name]) and torch.equal(value, runs[2][name])


def fast(**switches) -> Compute:
    return Compute.from_dict(switches)


def test_reading_the_loss_back_every_k_steps_changes_no_bit(tmp_path):
    runs = {}
    for k in (1, 4, 7):
        model, loss_fn = regression_problem()
        runs[k] = fit(
            model, loss_fn, CFG, tmp_path / str(k), "k", seed=2, options=FitOptions(compute=fast(sync_every=k))
        )
    for k in (4, 7):
        assert runs[k].history == runs[1].history
        assert all(torch.equal(a, b) for a, b in zip(runs[k].ema.parameters(), runs[1].ema.parameters()))


def test_a_nan_loss_read_back_late_still_names_its_step_and_keeps_the_checkpoint_before_it(tmp_path):
    model, loss_fn = regression_problem()
    with pytest.raises(NonFiniteLoss, match="at step 13.*last good checkpoint kept"):
        fit(model, nan_at(13, loss_fn), CFG, tmp_path, "boom", seed=0, options=FitOptions(compute=fast(sync_every=4)))
    assert torch.load(tmp_path / RESUME_FILE, weights_only=True)["step"] == 10


def test_foreach_ema_is_the_tensor_by_tensor_ema_and_optimiser_kernels_agree(tmp_path):
    results = {}
    for name, switches in {
        "plain": {"optimizer_kernel": "loop", "ema_foreach": False},
        "foreach": {"optimizer_kernel": "foreach", "ema_foreach": True},
        "fused": {"optimizer_kernel": "fused"},
    }.items():
        model, loss_fn = regression_problem()
        results[name] = fit(
            model, loss_fn, CFG, tmp_path / name, name, seed=4, options=FitOptions(compute=fast(**switches))
        ).ema
    for name in ("foreach", "fused"):
        for a, b in zip(results[name].parameters(), results["plain"].parameters()):
            assert torch.allclose(a, b, atol=1e-6), name
    with pytest.raises(ValueError, match="optimizer_kernel 'fused' exists for adam only"):
        make_optimizer(
            loop(iterations=1, batch_size=1, lr=1.0, optimizer="radam"), [nn.Parameter(torch.ones(1))], "fused"
        )
