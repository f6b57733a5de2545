"""Loss functions, as pure functions of logits and labels.

`deft_phase1_loss` is DeFT's phase-1 objective L = L_sim + L_dp (HotanLee/DeFT
main_phase1.py:64-75; main_real_phase1.py:57-74 for the real-noise variants). The baselines' robust
losses follow: SCE (HotanLee/DeFT utils/lnl_methods.py:4-29), GCE (TURN's step 1 and the GCE baseline)
and ELR (utils/lnl_methods.py:31-49, with its target memory). All maths runs
in fp32 whatever the model dtype.
"""
from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F

from lnl.selection import dual_prompt_selection, pair_probabilities

LOG_CLAMP = 1e-5  # official clamp of the pair probabilities before the log


def masked_mean(values: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """Mean of `values` over `mask`; exactly 0 (with a graph) when the mask is empty, never NaN."""
    mask = mask.to(values.dtype)
    return (values * mask).sum() / mask.sum().clamp(min=1.0)


def sce_loss(logits: torch.Tensor, labels: torch.Tensor, alpha: float = 1.0, beta: float = 1.0) -> torch.Tensor:
    """Per-sample symmetric cross-entropy α·CE + β·RCE (HotanLee/DeFT utils/lnl_methods.py:14-29; A = -ln 1e-4)."""
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


def elr_loss(logits: torch.Tensor, labels: torch.Tensor, targets: torch.Tensor, lam: float = 5.0,
             beta: float = 0.3) -> tuple[torch.Tensor, torch.Tensor]:
    """Early-learning regularisation (HotanLee/DeFT utils/lnl_methods.py:41-49): the per-sample loss and the updated targets.

    p = clamp(softmax, 1e-4, 1 - 1e-4); first t_i <- β·t_i + (1-β)·sg(p_i)/Σ sg(p_i) (the rows of the
    N×C target memory for this batch, `targets`), then loss_i = CE_i + λ·ln(1 - <t_i, p_i>), p keeping
    its gradient. Returns (loss (batch,), new target rows (batch, C)); the caller writes the rows back
    into the memory, which is state to checkpoint. Each sample is visited once per epoch, so the
    memory can be updated after the epoch as well as in place.
    """
    logits = logits.float()
    probs = F.softmax(logits, dim=1).clamp(min=1e-4, max=1.0 - 1e-4)
    detached = probs.detach()
    new_targets = beta * targets.float() + (1.0 - beta) * detached / detached.sum(dim=1, keepdim=True)
    ce = F.cross_entropy(logits, labels, reduction="none")
    regulariser = torch.log(1.0 - (new_targets * probs).sum(dim=1))
    return ce + lam * regulariser, new_targets


@dataclass
class Phase1LossOutput:
    """The per-sample terms of the loss and what it decided for the batch.

    The engine averages each term over the global batch (`utils/engine.py`); `loss_cls`,
    `loss_dp` and `loss` are the same means over this batch alone.
    """

    cls_values: torch.Tensor  # (batch,) L_sim per sample: CE (or SCE in warm-up) of the positive prompts
    cls_weights: torch.Tensor  # (batch,) 1 for the samples L_sim averages over (all in warm-up, else selected)
    dp_values: torch.Tensor  # (batch,) L_dp per sample: -log p_no[i, comp_i] - log p_yes[i, prompt_label_i]
    selected: torch.Tensor  # (batch,) bool, p_clean > 0.5
    p_clean: torch.Tensor  # (batch,) p_yes[i, given_i], fp32, detached
    prompt_labels: torch.Tensor  # labels the positive side of L_dp used (given or pseudo)
    predictions: torch.Tensor  # argmax of the positive logits

    @property
    def loss_cls(self) -> torch.Tensor:
        return masked_mean(self.cls_values, self.cls_weights)

    @property
    def loss_dp(self) -> torch.Tensor:
        return self.dp_values.mean()

    @property
    def loss(self) -> torch.Tensor:
        return self.loss_cls + self.loss_dp


def deft_phase1_loss(pos_logits: torch.Tensor, neg_logits: torch.Tensor, given_labels: torch.Tensor,
                     complementary_labels: torch.Tensor, in_warmup: bool, prompt_labels_are_given: bool,
                     requires_argmax: bool = False, warmup_loss: str = "ce") -> Phase1LossOutput:
    """DeFT phase-1 loss on one batch, as per-sample terms.

    pos_logits, neg_logits: (batch, num_classes) = s·z·t+ and s·sg(z)·t-.
    Warm-up: L_sim = mean CE (or SCE) over all samples. After: mean CE over the selected samples.
    L_dp = mean -log p_no[i, ȳ_i] + mean -log p_yes[i, ŷ_i], ŷ = given label while
    `prompt_labels_are_given`, else the given label if selected and the prediction otherwise.
    Both L_dp means run over the same samples, so L_dp is one mean of the per-sample sums.
    """
    p_yes = pair_probabilities(pos_logits, neg_logits)  # (batch, C), grad only to neg side
    p_no = torch.sigmoid(neg_logits.float() - pos_logits.detach().float())
    selected = dual_prompt_selection(p_yes, given_labels, requires_argmax)
    predictions = pos_logits.detach().argmax(dim=1)

    if in_warmup:
        cls_values = (sce_loss(pos_logits, given_labels) if warmup_loss == "sce"
                      else F.cross_entropy(pos_logits.float(), given_labels, reduction="none"))
        cls_weights = torch.ones_like(cls_values)
    else:
        cls_values = F.cross_entropy(pos_logits.float(), given_labels, reduction="none")
        cls_weights = selected.float()

    prompt_labels = given_labels if prompt_labels_are_given else torch.where(selected, given_labels, predictions)
    log_no = torch.log(p_no.clamp(min=LOG_CLAMP, max=1.0))
    log_yes = torch.log(p_yes.clamp(min=LOG_CLAMP, max=1.0))
    dp_values = -log_no.gather(1, complementary_labels.view(-1, 1)).squeeze(1) \
        - log_yes.gather(1, prompt_labels.view(-1, 1)).squeeze(1)
    p_clean = p_yes.detach().gather(1, given_labels.view(-1, 1)).squeeze(1)
    return Phase1LossOutput(cls_values, cls_weights, dp_values, selected, p_clean, prompt_labels, predictions)
