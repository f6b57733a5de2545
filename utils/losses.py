"""Loss functions, as pure functions of logits and labels.

`deft_phase1_loss` is DeFT's phase-1 objective L = L_sim + L_dp (official-behaviour.md §1.1
steps 6-9; §1.2 for the real-noise variants). The baselines' robust losses follow: SCE (§4.3),
GCE (TURN's step 1 and the GCE baseline) and ELR (§4.4, with its target memory). All maths runs
in fp32 whatever the model dtype.
"""
from __future__ import annotations

import math
from dataclasses import dataclass

import torch
import torch.nn.functional as F

from utils.selection import dual_prompt_selection, pair_probabilities

LOG_CLAMP = 1e-5  # official clamp of the pair probabilities before the log


def masked_mean(values: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """Mean of `values` over `mask`; exactly 0 (with a graph) when the mask is empty, never NaN."""
    mask = mask.to(values.dtype)
    return (values * mask).sum() / mask.sum().clamp(min=1.0)


def sce_loss(logits: torch.Tensor, labels: torch.Tensor, alpha: float = 1.0, beta: float = 1.0) -> torch.Tensor:
    """Per-sample symmetric cross-entropy α·CE + β·RCE (official §4.3; A = -ln 1e-4)."""
    logits = logits.float()
    ce = F.cross_entropy(logits, labels, reduction="none")
    probs = F.softmax(logits, dim=1).clamp(min=1e-7, max=1.0)
    one_hot = F.one_hot(labels, logits.shape[1]).float().clamp(min=1e-4, max=1.0)
    rce = -(probs * torch.log(one_hot)).sum(dim=1)
    return alpha * ce + beta * rce


def gce_loss(logits: torch.Tensor, labels: torch.Tensor, q: float = 0.7) -> torch.Tensor:
    """Per-sample generalized cross-entropy (1 - p_y^q) / q (Zhang & Sabuncu 2018; TURN uses q = 0.7)."""
    log_p_y = F.log_softmax(logits.float(), dim=1).gather(1, labels.view(-1, 1)).squeeze(1)
    return (1.0 - torch.exp(q * log_p_y)) / q  # p_y^q as exp(q·log p_y): no clamp needed


class ELRLoss:
    """Early-learning regularisation with a per-sample target memory (official §4.4).

    For each batch: p = clamp(softmax, 1e-4, 1 - 1e-4); first t_i <- β·t_i + (1-β)·sg(p_i)/Σ sg(p_i),
    then loss_i = CE_i + λ·ln(1 - <t_i, p_i>) (p keeps its gradient). The memory (N, C) starts at
    zero, lives on the model's device, and is state to checkpoint (`targets`).
    """

    def __init__(self, num_samples: int, num_classes: int, lam: float = 5.0, beta: float = 0.3,
                 device: torch.device | str = "cpu") -> None:
        self.lam, self.beta = lam, beta
        self.targets = torch.zeros(num_samples, num_classes, device=device)  # (N, C)

    def __call__(self, logits: torch.Tensor, labels: torch.Tensor, indices: torch.Tensor) -> torch.Tensor:
        """Per-sample ELR loss (batch,); updates the memory rows of `indices`."""
        logits = logits.float()
        probs = F.softmax(logits, dim=1).clamp(min=1e-4, max=1.0 - 1e-4)
        detached = probs.detach()
        self.targets[indices] = self.beta * self.targets[indices] + \
            (1.0 - self.beta) * detached / detached.sum(dim=1, keepdim=True)
        ce = F.cross_entropy(logits, labels, reduction="none")
        regulariser = torch.log(1.0 - (self.targets[indices] * probs).sum(dim=1))
        return ce + self.lam * regulariser


@dataclass
class Phase1LossOutput:
    """The loss and what it decided for the batch."""

    loss: torch.Tensor
    loss_cls: torch.Tensor  # L_sim: CE of the positive-prompt classifier
    loss_dp: torch.Tensor  # L_dp: dual-prompt negative-learning loss
    selected: torch.Tensor  # (batch,) bool, p_clean > 0.5
    prompt_labels: torch.Tensor  # labels the positive side of L_dp used (given or pseudo)
    predictions: torch.Tensor  # argmax of the positive logits


def deft_phase1_loss(pos_logits: torch.Tensor, neg_logits: torch.Tensor, given_labels: torch.Tensor,
                     complementary_labels: torch.Tensor, in_warmup: bool, prompt_labels_are_given: bool,
                     requires_argmax: bool = False, warmup_loss: str = "ce") -> Phase1LossOutput:
    """DeFT phase-1 loss on one batch.

    pos_logits, neg_logits: (batch, num_classes) = s·z·t+ and s·sg(z)·t-.
    Warm-up: L_sim = mean CE (or SCE) over all samples. After: mean CE over the selected samples.
    L_dp = mean -log p_no[i, ȳ_i] + mean -log p_yes[i, ŷ_i], ŷ = given label while
    `prompt_labels_are_given`, else the given label if selected and the prediction otherwise.
    """
    p_yes = pair_probabilities(pos_logits, neg_logits)  # (batch, C), grad only to neg side
    p_no = torch.sigmoid(neg_logits.float() - pos_logits.detach().float())
    selected = dual_prompt_selection(p_yes, given_labels, requires_argmax)
    predictions = pos_logits.detach().argmax(dim=1)

    if in_warmup:
        per_sample = (sce_loss(pos_logits, given_labels) if warmup_loss == "sce"
                      else F.cross_entropy(pos_logits.float(), given_labels, reduction="none"))
        loss_cls = per_sample.mean()
    else:
        ce = F.cross_entropy(pos_logits.float(), given_labels, reduction="none")
        loss_cls = masked_mean(ce, selected)

    prompt_labels = given_labels if prompt_labels_are_given else torch.where(selected, given_labels, predictions)
    log_no = torch.log(p_no.clamp(min=LOG_CLAMP, max=1.0))
    log_yes = torch.log(p_yes.clamp(min=LOG_CLAMP, max=1.0))
    loss_dp = (-log_no.gather(1, complementary_labels.view(-1, 1))).mean() + \
              (-log_yes.gather(1, prompt_labels.view(-1, 1))).mean()
    return Phase1LossOutput(loss_cls + loss_dp, loss_cls, loss_dp, selected, prompt_labels, predictions)


def check_finite(loss: torch.Tensor, where: str) -> None:
    """Stop the run with a message on a NaN or infinite loss."""
    value = float(loss.detach())
    if not math.isfinite(value):
        raise FloatingPointError(
            f"non-finite loss ({value}) at {where}; stopping. Lower the learning rate or use "
            "precision: fp32, then rerun with --overwrite (or --resume from the last good epoch)")
