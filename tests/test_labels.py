"""Class labels: one-hot convention, per-sample uniform draws, binding labels to a denoiser."""

import pytest
import torch
from helpers.models import conditional_denoiser

from cmt.data.labels import class_grid_order, conditioned, draw_labels, label_dim_of, one_hot


def test_one_hot_follows_edm_and_refuses_what_the_network_cannot_take():
    assert torch.equal(one_hot(torch.tensor([2, 0]), 3), torch.tensor([[0.0, 0, 1], [1, 0, 0]]))
    assert one_hot(None, 0) is None
    with pytest.raises(ValueError, match="needs class labels"):
        one_hot(None, 10)
    with pytest.raises(ValueError, match="unconditional"):
        one_hot(torch.tensor([1]), 0)
    with pytest.raises(ValueError, match=r"\[0, 10\); got 3..10"):
        one_hot(torch.tensor([3, 10]), 10)


def test_drawn_labels_are_fixed_per_sample_and_uniform():
    whole = draw_labels(12, 10, seed=7)
    assert torch.equal(torch.cat([draw_labels(5, 10, seed=7), draw_labels(7, 10, seed=7, first=5)]), whole)
    assert not torch.equal(draw_labels(12, 10, seed=8), whole)
    counts = torch.bincount(draw_labels(20_000, 10, seed=0), minlength=10).double()
    chi2 = ((counts - 2000) ** 2 / 2000).sum()
    assert chi2 < 27.9  # chi-square, 9 degrees of freedom, p = 0.001


def test_bound_labels_condition_every_call():
    denoiser = conditional_denoiser()
    assert label_dim_of(denoiser) == 10
    x, sigma = torch.randn(3, 1, 8, 8), torch.tensor([0.1, 1.0, 10.0])
    labels = torch.tensor([1, 4, 9])
    with torch.no_grad():
        bound = conditioned(denoiser, labels)(x, sigma)
        assert torch.equal(bound, denoiser(x, sigma, None, one_hot(labels, 10)))
        assert not torch.allclose(bound, conditioned(denoiser, labels.flip(0))(x, sigma))


def test_a_class_grid_puts_class_k_in_column_k():
    labels = draw_labels(200, 10, seed=3)
    order = class_grid_order(labels, 10, rows=6)
    grid = labels[order].reshape(6, 10)
    assert torch.equal(grid, torch.arange(10).expand(6, 10))
    assert len(set(order.tolist())) == 60  # each sample at most once
    few = torch.tensor([0, 1, 1, 2, 2, 2])
    assert torch.equal(few[class_grid_order(few, 3, rows=10)], torch.tensor([0, 1, 2]))  # as deep as the rarest
