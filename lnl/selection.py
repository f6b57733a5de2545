"""Clean-sample selection rules and how good a selection is.

`dual_prompt_selection` is DeFT's rule (HotanLee/DeFT main_phase1.py:53-57; the
real-noise variant adds an argmax condition, main_real_phase1.py:49-52); the
metrics score a selection against the truly clean samples at dataset level (our default)
and as the official per-batch mean (for comparison with the official progress line).
The small-loss baseline's forget-rate schedule and per-batch rule (HotanLee/DeFT
main_small_loss.py:141-146, :41-54) are at the end; the GMM rules (the GMM baseline, TURN) are in `lnl/gmm.py`.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Optional

import numpy as np
import torch


def pair_probabilities(pos_logits: torch.Tensor, neg_logits: torch.Tensor) -> torch.Tensor:
    """p_yes[i, c] = softmax over the pair (sg(l+), l-)[0] = sigmoid(l+ - l-), in fp32.

    The positive logits are detached: the pair probability trains only the negative prompts.
    """
    return torch.sigmoid(pos_logits.detach().float() - neg_logits.float())  # (batch, num_classes)


def dual_prompt_selection(p_yes: torch.Tensor, given_labels: torch.Tensor,
                          requires_argmax: bool = False) -> torch.Tensor:
    """Selected (clean) when p_yes[i, given_i] > 0.5, strictly; optionally also argmax_c p_yes = given."""
    p_clean = p_yes.gather(1, given_labels.view(-1, 1)).squeeze(1)
    selected = p_clean > 0.5
    if requires_argmax:  # main_real_phase1.py's extra condition
        selected = selected & (p_yes.argmax(dim=1) == given_labels)
    return selected


@dataclass
class DetectionScores:
    """Precision, recall and F1 of a selection against the truly clean samples."""

    precision: float
    recall: float
    f1: float
    num_selected: int
    num_clean: int

    def as_dict(self, prefix: str = "") -> dict:
        return {f"{prefix}{k}": v for k, v in self.__dict__.items()}


def detection_scores(selected: np.ndarray, is_clean: np.ndarray) -> DetectionScores:
    """Dataset-level precision |S∩K|/|S|, recall |S∩K|/|K| and their F1 (0 where undefined)."""
    selected = np.asarray(selected, dtype=bool)
    is_clean = np.asarray(is_clean, dtype=bool)
    hits = int(np.sum(selected & is_clean))
    n_sel, n_clean = int(selected.sum()), int(is_clean.sum())
    precision = hits / n_sel if n_sel else 0.0
    recall = hits / n_clean if n_clean else 0.0
    f1 = 2 * precision * recall / (precision + recall) if precision + recall > 0 else 0.0
    return DetectionScores(precision, recall, f1, n_sel, n_clean)


def clean_auroc(scores: np.ndarray, is_clean: np.ndarray) -> Optional[float]:
    """AUROC of a clean-sample score (higher = more likely clean) against the truly clean samples.

    It says how separable clean and noisy samples are, whatever threshold the detector uses;
    None when only one kind of sample exists.
    """
    from sklearn.metrics import roc_auc_score

    is_clean = np.asarray(is_clean, dtype=bool)
    if is_clean.all() or not is_clean.any():
        return None
    return float(roc_auc_score(is_clean, np.asarray(scores, dtype=np.float64)))


def selection_record(selection: np.ndarray, is_clean: Optional[np.ndarray], prefix: str = "",
                     batch_ids: Optional[np.ndarray] = None, scores: Optional[np.ndarray] = None) -> dict:
    """Selected count and dataset-level precision/recall/F1 of a selection, the AUROC of the
    detector's `scores`, and the official per-batch means when the samples' `batch_ids` are given.

    Without true labels (real noise) the record says so instead of reporting zeros.
    """
    record = {f"{prefix}num_selected": int(np.sum(selection))}
    if is_clean is None:
        return {**record, "detection": "unavailable: no true labels"}
    result = detection_scores(selection, is_clean)
    record.update({f"{prefix}precision": result.precision, f"{prefix}recall": result.recall,
                   f"{prefix}f1": result.f1})
    if scores is not None:
        record[f"{prefix}auroc"] = clean_auroc(scores, is_clean)
    if batch_ids is not None:
        record.update(batch_mean_scores(selection, is_clean, batch_ids))
    return record


def class_selection_rates(selection: np.ndarray, given_labels: np.ndarray, num_classes: int) -> np.ndarray:
    """Per class c, the fraction of the samples whose given label is c that are selected; NaN where c has none.

    A detector that trains on its own selection can drop whole classes (a class rarely selected is
    rarely predicted, so rarely pseudo-labelled, so rarely selected): these rates show it.
    """
    given_labels = np.asarray(given_labels)
    totals = np.bincount(given_labels, minlength=num_classes).astype(np.float64)
    kept = np.bincount(given_labels[np.asarray(selection, dtype=bool)], minlength=num_classes).astype(np.float64)
    with np.errstate(invalid="ignore", divide="ignore"):
        return np.where(totals > 0, kept / totals, np.nan)


def underselected_classes(rates: np.ndarray, overall_rate: float, fraction: float = 0.5) -> list[int]:
    """The classes whose selection rate (`class_selection_rates`) is under `fraction` x the overall rate
    (classes with no sample, NaN, are not among them)."""
    return [int(c) for c in np.flatnonzero(np.nan_to_num(rates, nan=np.inf) < fraction * overall_rate)]


def mask_scores(mask: np.ndarray, is_clean: Optional[np.ndarray], scores: Optional[np.ndarray] = None) -> dict:
    """The `mask_*` precision/recall/F1 (and AUROC of `scores`) fields of a saved mask, or why there are none."""
    if is_clean is None:
        return {"detection_metrics": "unavailable: no true labels"}
    result = {**detection_scores(mask, is_clean).as_dict("mask_"), "detection_metrics": "computed"}
    if scores is not None:
        result["mask_auroc"] = clean_auroc(scores, is_clean)
    return result


def batch_mean_scores(selected: np.ndarray, is_clean: np.ndarray, batch_ids: np.ndarray) -> dict:
    """The official per-batch means of precision and recall, from each sample's (global) batch."""
    meter = BatchMeanScores()
    selected, is_clean, batch_ids = (np.asarray(a) for a in (selected, is_clean, batch_ids))
    for batch in np.unique(batch_ids):
        members = batch_ids == batch
        meter.update(selected[members].astype(bool), is_clean[members].astype(bool))
    return meter.result()


class BatchMeanScores:
    """The official per-batch mean of precision_b and recall_b (HotanLee/DeFT main_phase1.py:83-89).

    A batch with no selected sample adds nothing but still counts in the denominator; a batch
    with no clean sample adds nothing to recall (the official code would add NaN/inf there).
    """

    def __init__(self) -> None:
        self.precision_sum = 0.0
        self.recall_sum = 0.0
        self.num_batches = 0

    def update(self, selected: np.ndarray, is_clean: np.ndarray) -> None:
        self.num_batches += 1
        n_sel = int(selected.sum())
        if n_sel == 0:
            return
        hits = int(np.sum(selected & is_clean))
        self.precision_sum += hits / n_sel
        n_clean = int(is_clean.sum())
        if n_clean:
            self.recall_sum += hits / n_clean

    def result(self) -> dict:
        n = max(self.num_batches, 1)
        return {"batch_mean_precision": self.precision_sum / n, "batch_mean_recall": self.recall_sum / n}


# ---------------------------------------------------------------- small-loss baseline
def oracle_forget_rate(noise_mode: str, noise_ratio: float) -> float:
    """The official small-loss forget rate: the configured noise ratio, halved for 'str'
    (HotanLee/DeFT main_small_loss.py:141-146)."""
    return noise_ratio / 2 if noise_mode == "str" else noise_ratio


def forget_rate_schedule(rate: float, epochs: int, warmup: int) -> np.ndarray:
    """τ_e for e = 1..E: `rate` everywhere, the first `warmup` entries linspace(0, rate, warmup)
    (HotanLee/DeFT main_small_loss.py:141-146).

    With warmup = 1 the first epoch keeps every sample (τ_1 = 0). Index with epoch - 1.
    """
    schedule = np.full(epochs, rate, dtype=np.float64)
    if warmup > 0:
        schedule[:warmup] = np.linspace(0.0, rate, warmup)
    return schedule


def small_loss_selection(losses: torch.Tensor, forget_rate: float) -> torch.Tensor:
    """Per-batch small-loss rule: keep the int((1 - τ)·B) smallest losses; returns a (B,) bool mask."""
    num_keep = int((1.0 - forget_rate) * losses.shape[0])
    order = torch.argsort(losses.detach(), stable=True)  # ascending; ties keep batch order
    keep = torch.zeros(losses.shape[0], dtype=torch.bool, device=losses.device)
    keep[order[:num_keep]] = True
    return keep
