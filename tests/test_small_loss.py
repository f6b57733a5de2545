"""The small-loss baseline's forget-rate schedule and per-batch selection (HotanLee/DeFT
main_small_loss.py:141-146, :41-54)."""
import numpy as np
import pytest
import torch

from lnl.selection import forget_rate_schedule, oracle_forget_rate, small_loss_selection


def test_schedule_ramps_over_the_warmup_then_stays_at_the_rate():
    assert forget_rate_schedule(0.4, 10, 1).tolist() == [0.0] + [0.4] * 9  # W = 1: epoch 1 keeps all
    assert forget_rate_schedule(0.4, 5, 3).tolist() == pytest.approx([0.0, 0.2, 0.4, 0.4, 0.4])
    assert forget_rate_schedule(0.6, 4, 5 - 1).tolist() == pytest.approx([0.0, 0.2, 0.4, 0.6])
    assert forget_rate_schedule(0.3, 3, 0).tolist() == [0.3, 0.3, 0.3]


def test_oracle_rate_is_the_noise_ratio_halved_for_str():
    assert oracle_forget_rate("sym", 0.4) == 0.4
    assert oracle_forget_rate("idn", 0.2) == 0.2
    assert oracle_forget_rate("str", 0.4) == 0.2


def test_per_batch_selection_keeps_the_int_of_one_minus_tau_times_b_smallest():
    losses = torch.tensor([0.5, 0.1, 0.9, 0.3, 0.7])
    assert small_loss_selection(losses, 0.4).tolist() == [True, True, False, True, False]  # int(0.6*5) = 3
    assert small_loss_selection(losses, 0.3).sum() == 3  # int(3.5) = 3: truncation, as the official code
    assert small_loss_selection(losses, 0.0).all()
    assert not small_loss_selection(losses, 1.0).any()
    ties = torch.tensor([0.2, 0.2, 0.2, 0.1])
    assert small_loss_selection(ties, 0.5).tolist() == [True, False, False, True]  # ties: batch order


def test_selection_is_per_batch_not_over_the_dataset():
    # Two batches: the dataset-level 50% smallest would be the whole first batch; per batch, each
    # batch keeps its own smaller half.
    batch_a, batch_b = torch.tensor([0.1, 0.2, 0.3, 0.4]), torch.tensor([5.0, 6.0, 7.0, 8.0])
    kept = torch.cat([small_loss_selection(batch_a, 0.5), small_loss_selection(batch_b, 0.5)])
    assert kept.tolist() == [True, True, False, False, True, True, False, False]
    per_dataset = np.argsort(torch.cat([batch_a, batch_b]).numpy())[:4]
    assert sorted(per_dataset.tolist()) == [0, 1, 2, 3]  # differs: the rule is per batch


def test_selection_does_not_track_gradients():
    losses = torch.tensor([0.3, 0.1], requires_grad=True)
    keep = small_loss_selection(losses * 2, 0.5)
    assert keep.dtype == torch.bool and not keep.requires_grad and keep.tolist() == [False, True]
