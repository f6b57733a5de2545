"""Robust Similarity: prompt similarity, feature similarity, their blend and the filter.

For every training sample i with noisy label y_i:

- prompt similarity ỹ_i: each of the m prompt blocks is a classifier; their decisions on
  (x_i, y_i) are ensembled: `mean_prob` (ours, default) = (1/m) Σ_b softmax_b(x_i)[y_i], `vote`
  = the fraction of blocks whose argmax is y_i. Both lie in [0, 1].
- feature similarity g_i: frozen image features grouped by noisy label; inside each group the
  mutual-distance matrix; d_i = the mean distance of i to the other members of its group;
  g_i = -d_i, mapped onto [0, 1] by min-max (per group, default, or over all samples) so that
  g and ỹ live on one scale.
- G_i = α·ỹ_i + (1 - α)·g_i with α = 0.2·e^{epoch/35} (seed; epoch counted from 0, capped).
- the filter keeps the samples with high G: `gmm` (a two-component mixture on G, kept where the
  high-mean component's posterior > threshold), `threshold` (G > threshold) or `keep_ratio` (the
  top fraction of each noisy class).

The seed fixes the blend and the α schedule; the ensemble, the distance, the normalisation and
the filter are our choices (README, "Robust Similarity"). Pure functions of tensors and arrays.
"""
from __future__ import annotations

import math
from typing import Optional

import numpy as np
import torch

from lnl.gmm import GMMSettings, clean_probability
from lnl.losses import gce_loss

ENSEMBLES = ("mean_prob", "vote")
DISTANCES = ("cosine", "euclidean")
FEATURE_NORMS = ("class_minmax", "global_minmax")
FILTERS = ("gmm", "threshold", "keep_ratio")


# ---------------------------------------------------------------- prompt similarity
def ensemble_probabilities(block_logits: torch.Tensor) -> torch.Tensor:
    """(N, m, C) logits of the m blocks -> (N, C) mean of their softmax: the matrix's classifier."""
    return block_logits.float().softmax(dim=-1).mean(dim=1)


def prompt_similarity(block_logits: torch.Tensor, labels: torch.Tensor, mode: str = "mean_prob") -> torch.Tensor:
    """ỹ_i (N,) in [0, 1]: the m blocks' ensembled decision on the noisy label y_i."""
    if mode not in ENSEMBLES:
        raise ValueError(f"rs_ensemble must be one of {ENSEMBLES}, got {mode!r}")
    labels = labels.view(-1, 1, 1).expand(-1, block_logits.shape[1], 1)  # (N, m, 1)
    if mode == "mean_prob":
        return block_logits.float().softmax(dim=-1).gather(2, labels).squeeze(2).mean(dim=1)
    votes = block_logits.argmax(dim=-1, keepdim=True) == labels  # (N, m, 1)
    return votes.float().squeeze(2).mean(dim=1)


# ---------------------------------------------------------------- feature similarity
def feature_distance(features: torch.Tensor, labels: torch.Tensor, num_classes: int, distance: str = "cosine",
                     chunk: int = 1024) -> torch.Tensor:
    """d_i (N,): the mean distance of sample i to the other samples with its noisy label.

    The group's matrix is built `chunk` rows at a time (a 10,000-sample group would need 400 MB
    at once). A sample alone in its group has no distance to measure: d_i = 0.
    """
    distances = torch.zeros(len(labels), dtype=torch.float32)
    for c in range(num_classes):
        members = torch.nonzero(labels.cpu() == c).view(-1)
        n = len(members)
        if n < 2:
            continue
        group = features[members].float()
        sums = torch.cat([distance_rows(group[start:start + chunk], group, distance).sum(dim=1)
                          for start in range(0, n, chunk)])
        distances[members] = (sums / (n - 1)).cpu()  # the diagonal is 0: the mean over the others
    return distances


def distance_rows(rows: torch.Tensor, group: torch.Tensor, distance: str) -> torch.Tensor:
    """Rows of a group's mutual-distance matrix, (r, n): from each of `rows` to every member of
    `group`, 1 - cos (cosine) or the L2 distance."""
    if distance == "cosine":
        unit = torch.nn.functional.normalize(group, dim=1)
        return (1.0 - torch.nn.functional.normalize(rows, dim=1) @ unit.t()).clamp(min=0.0)
    if distance == "euclidean":
        return torch.cdist(rows, group)
    raise ValueError(f"rs_distance must be one of {DISTANCES}, got {distance!r}")


def feature_similarity(distances: torch.Tensor, labels: torch.Tensor, num_classes: int,
                       norm: str = "class_minmax") -> torch.Tensor:
    """g_i = -d_i, min-max normalised onto [0, 1] per noisy class (`class_minmax`) or over all samples.

    A group (or the whole set) whose distances are all equal cannot be ranked: every g there is 1.
    """
    if norm not in FEATURE_NORMS:
        raise ValueError(f"rs_feature_norm must be one of {FEATURE_NORMS}, got {norm!r}")
    similarity = -distances.float()
    if norm == "global_minmax":
        return _minmax(similarity)
    result = torch.ones_like(similarity)
    for c in range(num_classes):
        members = labels.cpu() == c
        if members.any():
            result[members] = _minmax(similarity[members])
    return result


def _minmax(values: torch.Tensor) -> torch.Tensor:
    span = values.max() - values.min()
    return torch.ones_like(values) if span <= 0 else (values - values.min()) / span


# ---------------------------------------------------------------- the blend and the filter
def alpha_schedule(epoch: int, base: float = 0.2, tau: float = 35.0, cap: float = 1.0) -> float:
    """α = base · e^{(epoch - 1) / tau}, capped at `cap`; `epoch` is 1-based (the Robust Similarity paper counts from 0)."""
    return min(cap, base * math.exp((epoch - 1) / tau))


def robust_similarity(prompt_sim: torch.Tensor, feature_sim: torch.Tensor, alpha: float) -> torch.Tensor:
    """G_i = α·ỹ_i + (1 - α)·g_i."""
    return alpha * prompt_sim.float() + (1.0 - alpha) * feature_sim.float()


def filter_samples(scores: np.ndarray, labels: np.ndarray, num_classes: int, rule: str = "gmm",
                   threshold: float = 0.5, keep_ratio: Optional[float] = None,
                   settings: GMMSettings = GMMSettings()) -> tuple[np.ndarray, np.ndarray]:
    """Which samples keep their place in the loss: (kept (N,) bool, clean score (N,), higher = cleaner).

    gmm: a two-component GMM on G; kept where the posterior of the high-mean component exceeds
    `threshold` (the score is that posterior). threshold: kept where G > `threshold`. keep_ratio:
    the ceil(keep_ratio · n_c) highest G of each noisy class c. The last two score with G itself.
    """
    scores = np.asarray(scores, dtype=np.float64)
    labels = np.asarray(labels)
    if rule == "gmm":
        # the mixture helper returns the low-mean component's posterior: fit on -G
        posterior = clean_probability(-scores, settings) if len(np.unique(scores)) > 1 else np.ones_like(scores)
        return posterior > threshold, posterior
    if rule == "threshold":
        return scores > threshold, scores
    if rule == "keep_ratio":
        if keep_ratio is None:
            raise ValueError("rs_filter: keep_ratio needs a ratio (rs_keep_ratio, or noise_ratio to derive it)")
        kept = np.zeros(len(scores), dtype=bool)
        for c in range(num_classes):
            members = np.flatnonzero(labels == c)
            count = math.ceil(keep_ratio * len(members) - 1e-9)  # 0.6 · 5 is 3.0000000000000004 in floats
            order = members[np.argsort(-scores[members], kind="stable")]  # ties: dataset order
            kept[order[:count]] = True
        return kept, scores
    raise ValueError(f"rs_filter must be one of {FILTERS}, got {rule!r}")


# ---------------------------------------------------------------- the prompt-learning loss
def block_loss(block_logits: torch.Tensor, labels: torch.Tensor, loss: str = "gce", q: float = 0.7) -> torch.Tensor:
    """Per-sample loss (N,): the mean over the m blocks of GCE (PTNL, q) or CE against the noisy label."""
    blocks = block_logits.shape[1]
    flat = block_logits.float().reshape(-1, block_logits.shape[2])  # (N·m, C), sample-major
    repeated = labels.repeat_interleave(blocks)
    if loss == "gce":
        values = gce_loss(flat, repeated, q)
    elif loss == "ce":
        values = torch.nn.functional.cross_entropy(flat, repeated, reduction="none")
    else:
        raise ValueError(f"rs_loss must be 'gce' or 'ce', got {loss!r}")
    return values.view(-1, blocks).mean(dim=1)
