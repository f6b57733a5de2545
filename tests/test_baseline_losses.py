"""The baselines' losses (GCE, ELR with its memory, SCE with weights) and the optimiser factory."""
import math

import pytest
import torch
import torch.nn.functional as F

from utils.engine import make_optimizer
from lnl.losses import elr_loss, gce_loss, sce_loss

LN3 = math.log(3.0)


def test_gce_hand_values():
    # softmax([0, ln 3]) = [1/4, 3/4]
    logits = torch.tensor([[0.0, LN3], [0.0, LN3]])
    loss = gce_loss(logits, torch.tensor([1, 0]), q=0.5)
    assert loss.tolist() == pytest.approx([(1 - math.sqrt(0.75)) / 0.5, (1 - math.sqrt(0.25)) / 0.5], rel=1e-6)
    assert float(gce_loss(logits[:1], torch.tensor([1]), q=1.0)) == pytest.approx(0.25, rel=1e-6)  # MAE: 1 - p_y
    assert float(gce_loss(logits[:1], torch.tensor([1]), q=0.7)) == pytest.approx((1 - 0.75 ** 0.7) / 0.7, rel=1e-6)


def test_gce_gradient_is_ce_gradient_weighted_by_p_y_to_the_q():
    logits = torch.tensor([[0.3, -1.2, 2.0]], requires_grad=True)
    labels = torch.tensor([1])
    gce_loss(logits, labels, q=0.7).sum().backward()
    grad_gce = logits.grad.clone()
    logits.grad = None
    F.cross_entropy(logits, labels).backward()
    p_y = F.softmax(logits.detach(), dim=1)[0, 1]
    assert torch.allclose(grad_gce, p_y ** 0.7 * logits.grad, atol=1e-6)


def test_gce_is_finite_for_a_vanishing_probability():
    loss = gce_loss(torch.tensor([[0.0, 200.0]]), torch.tensor([0]), q=0.7)
    assert float(loss) == pytest.approx(1 / 0.7)


def test_sce_weighted_hand_value():
    # p = [1/4, 3/4], label 1: CE = -ln 0.75, RCE = -ln(1e-4) * 1/4
    loss = sce_loss(torch.tensor([[0.0, LN3]]), torch.tensor([1]), alpha=0.5, beta=2.0)
    assert float(loss) == pytest.approx(0.5 * -math.log(0.75) + 2.0 * -math.log(1e-4) * 0.25, rel=1e-6)


def test_elr_memory_update_and_loss_by_hand():
    memory = torch.zeros(3, 2)
    logits = torch.tensor([[0.0, LN3], [0.0, 0.0]], requires_grad=True)  # samples 2 and 0
    indices = torch.tensor([2, 0])
    loss, rows = elr_loss(logits, torch.tensor([1, 0]), memory[indices], lam=5.0, beta=0.3)
    memory[indices] = rows
    # memory starts at 0: t <- 0.7 * p
    assert torch.allclose(memory, torch.tensor([[0.35, 0.35], [0.0, 0.0], [0.175, 0.525]]))
    expected_2 = -math.log(0.75) + 5 * math.log(1 - (0.175 * 0.25 + 0.525 * 0.75))
    expected_0 = math.log(2.0) + 5 * math.log(1 - 0.35)
    assert loss.tolist() == pytest.approx([expected_2, expected_0], rel=1e-5)
    loss.sum().backward()  # the gradient reaches the logits; the memory is not part of the graph
    assert logits.grad is not None and not rows.requires_grad

    _, rows = elr_loss(torch.tensor([[LN3, 0.0]]), torch.tensor([0]), memory[[2]], lam=5.0, beta=0.3)  # p = [3/4, 1/4]
    assert rows[0].tolist() == pytest.approx([0.3 * 0.175 + 0.7 * 0.75, 0.3 * 0.525 + 0.7 * 0.25])


def test_elr_clamps_probabilities_then_normalises_the_memory_target():
    _, rows = elr_loss(torch.tensor([[0.0, 100.0]]), torch.tensor([1]), torch.zeros(1, 2), lam=5.0, beta=0.3)
    clamped = torch.tensor([1e-4, 1 - 1e-4])
    assert torch.allclose(rows[0], 0.7 * clamped / clamped.sum())


def test_make_optimizer_builds_sgd_and_adamw_with_the_given_settings():
    params = [torch.nn.Parameter(torch.zeros(2))]
    sgd = make_optimizer([params], "sgd", lr=1e-2, weight_decay=1e-5, momentum=0.0)
    assert isinstance(sgd, torch.optim.SGD)
    assert (sgd.defaults["lr"], sgd.defaults["weight_decay"], sgd.defaults["momentum"]) == (1e-2, 1e-5, 0.0)
    adamw = make_optimizer([params, []], "adamw", lr=1e-3, weight_decay=1e-4, momentum=0.9)
    assert isinstance(adamw, torch.optim.AdamW) and len(adamw.param_groups) == 1
    assert adamw.defaults["betas"] == (0.9, 0.999) and adamw.defaults["weight_decay"] == 1e-4
    with pytest.raises(ValueError, match="'sgd' or 'adamw'"):
        make_optimizer([params], "adam", lr=1e-3, weight_decay=0.0)
