"""The gradient-bias experiment (cmt/studies/gradient_bias.py, cmt/stages/gradient_bias.py): the oracle objective
against its closed form, the gradient statistics, and the job end to end."""

import csv
import json

import pytest
import torch
from helpers.figures import assert_plot
from helpers.project import ROOT

from cmt.cli import main
from cmt.config import load_config
from cmt.objectives.distances import squared_l2
from cmt.studies.gradient_bias import Gaussian, GradientEstimate, compare, expected_gradient, oracle_loss

DATA = Gaussian(mu=0.3, s=0.5, shape=(1, 4, 4))


class Affine(torch.nn.Module):
    """f(x, t) = alpha x + beta, whatever t."""

    def __init__(self, alpha: float, beta: float):
        super().__init__()
        self.alpha = torch.nn.Parameter(torch.tensor(alpha, dtype=torch.float64))
        self.beta = torch.nn.Parameter(torch.tensor(beta, dtype=torch.float64))

    def forward(self, x, t):
        return self.alpha * x + self.beta


@pytest.mark.parametrize("t", [0.3, 2.0, 20.0])
def test_the_oracle_objective_of_an_affine_model_has_its_closed_form(t):
    """x_t ~ N(mu, s^2 + t^2) per pixel and f* = mu + kappa (x - mu), kappa = s / sqrt(s^2 + t^2) (numerics.md 6), so
    E ||alpha x + beta - f*||^2 = P [(alpha - kappa)^2 (s^2 + t^2) + (alpha mu + beta - mu)^2] over P pixels."""
    alpha, beta, pixels = 0.7, -0.1, 16
    model = Affine(alpha, beta)
    gen = torch.Generator().manual_seed(0)
    z = torch.randn((100_000, *DATA.shape), generator=gen, dtype=torch.float64)
    x_t = DATA.mu + (DATA.s**2 + t**2) ** 0.5 * torch.cat([z, -z])  # antithetic: the sample mean is exactly mu
    times = torch.full((x_t.shape[0],), t, dtype=torch.float64)
    loss = oracle_loss(model, x_t, times, torch.ones_like(times), squared_l2, DATA)
    mu, s = DATA.mu, DATA.s
    var, kappa, offset = s**2 + t**2, s / (s**2 + t**2) ** 0.5, alpha * mu + beta - mu
    assert float(loss) == pytest.approx(pixels * ((alpha - kappa) ** 2 * var + offset**2), rel=0.01)
    grad_alpha, grad_beta = torch.autograd.grad(loss, [model.alpha, model.beta])
    assert float(grad_beta) == pytest.approx(2 * pixels * offset, rel=1e-9)
    assert float(grad_alpha) == pytest.approx(2 * pixels * ((alpha - kappa) * var + mu * offset), rel=0.01)


def test_gradient_statistics():
    a = GradientEstimate(torch.tensor([3.0, 4.0], dtype=torch.float64), 0.1, 4)
    b = GradientEstimate(torch.tensor([4.0, 3.0], dtype=torch.float64), 0.2, 4)
    assert compare(a, b) == pytest.approx(
        {"cosine": 24 / 25, "norm_ratio": 1.0, "oracle_norm": 5.0, "bias": 2**0.5, "se_ect": 0.1, "se_oracle": 0.2}
    )
    model, gen = Affine(0.5, 0.0), torch.Generator().manual_seed(0)

    def fixed(model, y, gen, cfg, stage, distance, data):  # the same loss for every minibatch: no standard error
        return (model.alpha - 2) ** 2 + 0 * y.sum()

    estimate = expected_gradient(model, fixed, ({}, 0, squared_l2, DATA, 8), gen, 5)
    assert estimate.mean.tolist() == [-3.0, 0.0] and estimate.relative_se == 0.0 and estimate.batches == 5


def test_the_gradient_bias_job_writes_its_table_plot_and_record(tmp_path):
    config = load_config(ROOT / "config" / "config.yaml")
    small = {"pretrain_steps": 20, "cmt_steps": 10, "batches": 2, "batch_size": 32, "qs": [4, 256], "post_steps": [2]}
    params = {k: config[k] for k in ("network", "precond", "seed")}
    params |= {"gradient_bias": {**config["gradient_bias"], **small}, "posttrain": {"ect": config["posttrain"]["ect"]}}
    params["teacher"] = {"train": config["teacher"]["train"]}
    assert main(["gradient-bias", "--params", json.dumps(params), "--out", str(tmp_path)]) == 0
    rows = list(csv.DictReader((tmp_path / "gradient_bias.csv").open()))
    measured = (("0", "4"), ("0", "256"), ("2", "256"))  # each q at the start, then after 2 ECT steps at ECT's q
    inits = ("random", "diffusion-like", "CMT-like")
    assert [(r["init"], r["ect_step"], r["q"]) for r in rows] == [(i, step, q) for i in inits for step, q in measured]
    assert all(-1 <= float(r["cosine"]) <= 1 and float(r["norm_ratio"]) > 0 for r in rows)
    record = json.loads((tmp_path / "run.json").read_text())
    assert record["metrics"]["cosine_CMT-like_q256_step2"] == pytest.approx(float(rows[-1]["cosine"]))
    assert_plot(tmp_path / "gradient_bias.png", (1620, 432))
