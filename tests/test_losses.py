"""Phase-1 loss, selection and pseudo-labels on a hand-made logits tensor; SCE; NaN guard."""
import math

import numpy as np
import pytest
import torch

from lnl.losses import deft_phase1_loss, masked_mean, sce_loss
from utils.engine import check_finite
from lnl.selection import BatchMeanScores, detection_scores

POS = [[2.0, 0.0, -1.0], [0.5, 1.5, 0.0]]
NEG = [[1.0, 0.5, 0.0], [1.0, 1.0, 2.0]]
GIVEN = [0, 2]
COMP = [1, 0]


def sig(x):
    return 1 / (1 + math.exp(-x))


def _run(in_warmup, given_for_prompts, requires_argmax=False, warmup_loss="ce"):
    pos = torch.tensor(POS, requires_grad=True)
    neg = torch.tensor(NEG, requires_grad=True)
    return pos, neg, deft_phase1_loss(pos, neg, torch.tensor(GIVEN), torch.tensor(COMP), in_warmup,
                                      given_for_prompts, requires_argmax, warmup_loss)


def test_selection_and_pseudo_labels_after_warmup():
    _, _, out = _run(in_warmup=False, given_for_prompts=False)
    # p_yes[0,0] = sig(2-1) = .731 > .5 -> clean; p_yes[1,2] = sig(0-2) = .119 -> noisy
    assert out.selected.tolist() == [True, False]
    assert out.predictions.tolist() == [0, 1]
    assert out.prompt_labels.tolist() == [0, 1]  # given if selected, else the prediction


def test_loss_value_after_warmup_matches_hand_computation():
    _, _, out = _run(in_warmup=False, given_for_prompts=False)
    ce0 = math.log(math.exp(2) + 1 + math.exp(-1)) - 2  # only sample 0 is selected
    l_no = (-math.log(1 - sig(0.0 - 0.5)) - math.log(1 - sig(0.5 - 1.0))) / 2  # comp labels 1, 0
    l_yes = (-math.log(sig(2 - 1)) - math.log(sig(1.5 - 1))) / 2  # prompt labels 0, 1
    assert float(out.loss_cls) == pytest.approx(ce0, abs=1e-6)
    assert float(out.loss_dp) == pytest.approx(l_no + l_yes, abs=1e-6)
    assert float(out.loss) == pytest.approx(ce0 + l_no + l_yes, abs=1e-6)


def test_warmup_uses_all_samples_and_given_labels():
    _, _, out = _run(in_warmup=True, given_for_prompts=True)
    ce0 = math.log(math.exp(2) + 1 + math.exp(-1)) - 2
    ce1 = math.log(math.exp(0.5) + math.exp(1.5) + 1) - 0
    l_no = (-math.log(1 - sig(-0.5)) - math.log(1 - sig(-0.5))) / 2
    l_yes = (-math.log(sig(1)) - math.log(sig(-2))) / 2  # given labels 0, 2
    assert float(out.loss_cls) == pytest.approx((ce0 + ce1) / 2, abs=1e-6)
    assert float(out.loss_dp) == pytest.approx(l_no + l_yes, abs=1e-6)


def test_sce_warmup_and_argmax_condition():
    _, _, out = _run(in_warmup=True, given_for_prompts=True, warmup_loss="sce")
    expected = sce_loss(torch.tensor(POS), torch.tensor(GIVEN)).mean()
    assert float(out.loss_cls) == pytest.approx(float(expected), abs=1e-6)
    # argmax condition: row 0's argmax p_yes is class 0 (.731 vs .378, .269) -> still selected
    _, _, out = _run(in_warmup=False, given_for_prompts=False, requires_argmax=True)
    assert out.selected.tolist() == [True, False]


def test_sce_hand_value():
    logits = torch.tensor([[1.0, 0.0]])
    p = [math.exp(1) / (math.exp(1) + 1), 1 / (math.exp(1) + 1)]
    ce = -math.log(p[0])
    rce = -math.log(1e-4) * p[1]  # A * sum of the other classes' probabilities
    assert float(sce_loss(logits, torch.tensor([0]))) == pytest.approx(ce + rce, rel=1e-5)


def test_gradient_routing_of_the_two_terms():
    pos, neg, out = _run(in_warmup=False, given_for_prompts=False)
    g_pos, g_neg = torch.autograd.grad(out.loss_dp, [pos, neg], allow_unused=True)
    assert g_pos is None  # L_dp sees the positive logits only detached
    assert g_neg.abs().sum() > 0
    g_pos, g_neg = torch.autograd.grad(out.loss_cls, [pos, neg], allow_unused=True)
    assert g_neg is None and g_pos[0].abs().sum() > 0
    assert torch.all(g_pos[1] == 0)  # the unselected sample gives no CE gradient


def test_empty_selection_gives_zero_term_not_nan():
    pos = torch.tensor([[0.0, 1.0]], requires_grad=True)
    neg = torch.tensor([[3.0, 0.0]], requires_grad=True)
    out = deft_phase1_loss(pos, neg, torch.tensor([0]), torch.tensor([1]), False, False)
    assert out.selected.tolist() == [False]
    assert float(out.loss_cls) == 0.0 and math.isfinite(float(out.loss))
    out.loss.backward()
    assert torch.isfinite(pos.grad).all() and torch.isfinite(neg.grad).all()


def test_masked_mean_and_check_finite():
    values = torch.tensor([1.0, 2.0, 4.0])
    assert float(masked_mean(values, torch.tensor([True, False, True]))) == 2.5
    assert float(masked_mean(values, torch.tensor([False, False, False]))) == 0.0
    with pytest.raises(FloatingPointError, match="non-finite loss"):
        check_finite(torch.tensor(float("nan")), "epoch 1, batch 0")


def test_detection_scores_dataset_level_and_batch_mean():
    selected = np.array([1, 1, 0, 1, 0, 0], bool)
    clean = np.array([1, 0, 1, 1, 0, 1], bool)
    s = detection_scores(selected, clean)
    assert (s.precision, s.recall) == (pytest.approx(2 / 3), pytest.approx(2 / 4))
    assert s.f1 == pytest.approx(2 * (2 / 3) * 0.5 / (2 / 3 + 0.5))
    meter = BatchMeanScores()
    meter.update(selected[:3], clean[:3])  # p = 1/2, r = 1/2
    meter.update(np.zeros(3, bool), clean[3:])  # empty selection: adds 0, still counts
    assert meter.result() == {"batch_mean_precision": 0.25, "batch_mean_recall": 0.25}
