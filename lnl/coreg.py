"""Co-Reg: the maths of learning from CLIP's noisy partial labels with two networks.

Wang, Xie, Zhang, Liu, Xia, "Bridging Weakly-Supervised Learning and VLM Distillation: Noisy Partial
Label Learning for Efficient Downstream Adaptation" (extending the AAAI 2025 "Pre-Trained
Vision-Language Models as Noisy Partial Annotators"). Every function is pure: tensors or arrays in,
out. The numbered parts follow the paper's pipeline (docs/sister_methods.md): 1 is its Figure 1,
3-4 its Co-Pseudo-Labeling (Figure 2), 5-7 its self-training, prototypical similarity alignment
(Proposition 1: the prototype of class j is the mean projected feature of that class) and noisy
supervised contrastive learning (Figure 3).

1. Annotation: CLIP with d prompt templates; the candidate set S_i of image i is the union of the
   templates' top-1 predictions (paper, official default) or comes from the template-averaged
   distribution p̄_i (top-k, a probability threshold, or a ratio to the top probability).
2. Warm-up: partial cross-entropy -log Σ_{j∈S_i} p_ij plus a confidence penalty Σ_j p_ij log p_ij.
3. Division (by one network, for the other): distribution alignment of the predictions, the
   maximum-candidate loss -log max_{j∈S_i} p_ij, min-max normalised and averaged over the last
   epochs, a two-component GMM; credibility w_i = the low-loss posterior; partial set: w_i > τ_div.
4. Co-pseudo-labels: partial set: sharpen(w·p_other|S + (1-w)·p_own) where p_other|S is the
   other network's prediction restricted to S and renormalised; unlabeled set:
   sharpen(mean of both networks' predictions on two weak views); sharpen(p) = p^{1/T} / Σ p^{1/T}.
5. Self-training on mixed-up strong views: soft cross-entropy on partial-set rows, squared error
   (weighted λ_u, ramped up) on unlabeled-set rows.
6. Prototypes o_c (EMA of the weak view's projected features per pseudo-label, normalised) and the
   alignment of softmax(z·oᵀ/τ_p) with the (mixed) pseudo-labels: KL / squared error.
7. Noisy supervised contrastive learning against a momentum encoder's queue: positives are the
   own key and samples of the partial set with the same pseudo-label; for an unlabeled-set anchor
   only its own key; same-label samples that cannot be trusted are left out of the denominator.
"""
from __future__ import annotations

import numpy as np
import torch
import torch.nn.functional as F

from lnl.gmm import GMMSettings, clean_probability, minmax_normalize

CANDIDATE_MODES = ("template_union", "topk", "prob_threshold", "prob_ratio")


# ---------------------------------------------------------------- 1. annotation
def candidate_sets(template_top1: torch.Tensor, mean_probs: torch.Tensor, mode: str = "template_union",
                   topk: int = 5, threshold: float = 0.5) -> torch.Tensor:
    """(N, C) bool candidate sets from the templates' top-1 labels (T, N) and the mean distribution (N, C).

    template_union: {top-1 of template t : t = 1..T}. topk: the k most probable labels of p̄.
    prob_threshold: {j : p̄_j ≥ threshold} ∪ {argmax p̄}. prob_ratio: the labels among the top k
    with p̄_j ≥ threshold · max p̄ (the official `prob_ratio_thres`). No set is ever empty.
    """
    num_samples, num_classes = mean_probs.shape
    if mode == "template_union":
        sets = torch.zeros(num_samples, num_classes, dtype=torch.bool)
        sets.scatter_(1, template_top1.t().long(), True)  # (N, T) labels
        return sets
    if mode == "topk":
        return _top_k_mask(mean_probs, topk)
    if mode == "prob_threshold":
        return (mean_probs >= threshold) | _top_k_mask(mean_probs, 1)
    if mode == "prob_ratio":
        return _top_k_mask(mean_probs, topk) & (mean_probs >= threshold * mean_probs.max(dim=1, keepdim=True).values)
    raise ValueError(f"coreg_candidates must be one of {CANDIDATE_MODES}, got {mode!r}")


def _top_k_mask(probs: torch.Tensor, k: int) -> torch.Tensor:
    k = min(k, probs.shape[1])
    return torch.zeros_like(probs, dtype=torch.bool).scatter_(1, probs.topk(k, dim=1).indices, True)


def annotation_metrics(candidates: torch.Tensor, mean_probs: torch.Tensor,
                       true_labels: torch.Tensor | None) -> dict:
    """Mean candidate-set size, how often the true label is in the set, and the annotator's top-1 accuracy."""
    sizes = candidates.sum(dim=1).float()
    metrics = {"annotation_candidate_size": float(sizes.mean()),
               "annotation_single_label_rate": float((sizes == 1).float().mean()),
               "annotation_full_set_rate": float((sizes == candidates.shape[1]).float().mean())}
    if true_labels is None:
        return {**metrics, "annotation_truth": "unavailable: no true labels"}
    true_labels = true_labels.long().view(-1, 1)
    metrics["annotation_true_in_set"] = float(candidates.gather(1, true_labels).float().mean())
    metrics["annotation_top1_acc"] = 100.0 * float((mean_probs.argmax(dim=1) == true_labels.view(-1)).float().mean())
    return metrics


def with_manual_labels(candidates: torch.Tensor, true_labels: torch.Tensor, labeled: torch.Tensor) -> torch.Tensor:
    """The few-labelled variant (our construction): the chosen samples' sets become {true label}."""
    sets = candidates.clone()
    rows = torch.nonzero(labeled).view(-1)
    sets[rows] = False
    sets[rows, true_labels[rows].long()] = True
    return sets


# ---------------------------------------------------------------- 2. warm-up
def partial_cross_entropy(logits: torch.Tensor, candidates: torch.Tensor) -> torch.Tensor:
    """Per-sample -log Σ_{j∈S} softmax(logits)_j, (N,), computed as a log-sum-exp difference (no clamp)."""
    logits = logits.float()
    inside = logits.masked_fill(~candidates, float("-inf"))
    return torch.logsumexp(logits, dim=1) - torch.logsumexp(inside, dim=1)


def negative_entropy(logits: torch.Tensor) -> torch.Tensor:
    """Per-sample Σ_j p_j log p_j (N,): minimising it keeps the warm-up predictions from over-confidence."""
    log_p = F.log_softmax(logits.float(), dim=1)
    return (log_p.exp() * log_p).sum(dim=1)


# ---------------------------------------------------------------- 3. division
def distribution_alignment(probs: torch.Tensor, prior: torch.Tensor | None = None) -> torch.Tensor:
    """p_i / (mean_i p_i / prior), rows renormalised (prior: uniform by default)."""
    probs = probs.float()
    prior = torch.full((probs.shape[1],), 1.0 / probs.shape[1]) if prior is None else prior.float()
    aligned = probs / (probs.mean(dim=0) / prior)
    return aligned / aligned.sum(dim=1, keepdim=True)


def max_candidate_loss(probs: torch.Tensor, candidates: torch.Tensor) -> torch.Tensor:
    """Per-sample -log max_{j∈S} p_j (N,): small when a candidate is confidently predicted."""
    best = (probs.float() * candidates.float()).max(dim=1).values
    return -torch.log(best.clamp(min=1e-12))


def credibility(loss_history: np.ndarray, settings: GMMSettings = GMMSettings()) -> np.ndarray:
    """w_i (N,): posterior of the low-loss component of a GMM on the mean of the (h, N) normalised losses."""
    return clean_probability(np.asarray(loss_history, dtype=np.float64).mean(axis=0), settings)


def append_loss_history(history: np.ndarray | None, losses: np.ndarray, keep: int) -> np.ndarray:
    """The last `keep` epochs' min-max normalised losses, (h, N), with this epoch's `losses` appended."""
    row = minmax_normalize(losses)[None]
    return row if history is None else np.concatenate([history, row])[-keep:]


def restrict_to_candidates(probs: torch.Tensor, candidates: torch.Tensor) -> torch.Tensor:
    """p restricted to S and renormalised; uniform over S where p gives S no mass at all."""
    inside = probs.float() * candidates.float()
    total = inside.sum(dim=1, keepdim=True)
    uniform = candidates.float() / candidates.float().sum(dim=1, keepdim=True)
    return torch.where(total > 0, inside / total.clamp(min=1e-30), uniform)


# ---------------------------------------------------------------- 4. co-pseudo-labels
def sharpen(probs: torch.Tensor, temperature: float) -> torch.Tensor:
    """p^{1/T} / Σ_j p_j^{1/T}."""
    powered = probs.float() ** (1.0 / temperature)
    return powered / powered.sum(dim=1, keepdim=True)


def partial_set_targets(own_probs: list[torch.Tensor], other_restricted: torch.Tensor, weight: torch.Tensor,
                        temperature: float) -> torch.Tensor:
    """sharpen(w·p_other|S + (1 - w)·mean(own views)): the partial set's co-pseudo-labels (b, C)."""
    own = torch.stack(own_probs).float().mean(dim=0)
    w = weight.float().view(-1, 1)
    return sharpen(w * other_restricted.float() + (1.0 - w) * own, temperature)


def unlabeled_set_targets(probs: list[torch.Tensor], temperature: float) -> torch.Tensor:
    """sharpen(mean of both networks' predictions on both weak views): co-guessing for the unlabeled set."""
    return sharpen(torch.stack(probs).float().mean(dim=0), temperature)


def co_pseudo_labels(own_probs: list[torch.Tensor], other_probs: list[torch.Tensor], other_restricted: torch.Tensor,
                     credibility: torch.Tensor, is_partial: torch.Tensor, temperature: float) -> torch.Tensor:
    """The paper's Co-Pseudo-Labeling (Figure 2): each sample's target (b, C) for the trainee.

    own_probs / other_probs: the trainee's / the other network's predictions on the two weak views;
    other_restricted, credibility, is_partial: the other network's division. Partial-set rows get
    `partial_set_targets`, unlabeled-set rows `unlabeled_set_targets` of all four predictions.
    """
    return torch.where(is_partial.view(-1, 1),
                       partial_set_targets(own_probs, other_restricted, credibility, temperature),
                       unlabeled_set_targets(own_probs + other_probs, temperature))


# ---------------------------------------------------------------- 5. self-training with mixup
def mixup_lambda(alpha: float) -> float:
    """l ~ Beta(α, α) from torch's global RNG (seeded per epoch), folded to max(l, 1 - l) so each
    mixed row stays closest to its own input."""
    lam = float(torch.distributions.Beta(alpha, alpha).sample())
    return max(lam, 1.0 - lam)


def mix(values: torch.Tensor, partner: torch.Tensor, lam: float) -> torch.Tensor:
    """l·values + (1 - l)·values[partner]."""
    return lam * values + (1.0 - lam) * values[partner]


def soft_cross_entropy(logits: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
    """Per-row -Σ_j t_j log softmax(logits)_j."""
    return -(targets.float() * F.log_softmax(logits.float(), dim=1)).sum(dim=1)


def squared_error(logits: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
    """Per-row mean_j (softmax(logits)_j - t_j)² (the unlabeled-set loss)."""
    return ((logits.float().softmax(dim=1) - targets.float()) ** 2).mean(dim=1)


def mean_over_views(rows: torch.Tensor) -> torch.Tensor:
    """(2b,) values of the two strong-view rows of each sample (rows i and b + i) -> (b,) their mean."""
    return rows.view(2, -1).mean(dim=0)


def self_training_losses(logits: torch.Tensor, mixed_targets: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Per-sample (soft CE, squared error), (b,) each, of the mixed strong-view rows (2b, C) and their targets.

    The caller keeps the soft CE for the partial set and λ_u times the squared error for the unlabeled set.
    """
    return (mean_over_views(soft_cross_entropy(logits, mixed_targets)),
            mean_over_views(squared_error(logits, mixed_targets)))


def rampup(epoch: int, warmup: int, length: int, weight: float) -> float:
    """λ_u · clip((epoch - warmup) / length, 0, 1), epochs 1-based (first co-training epoch: λ_u / length)."""
    return weight * float(np.clip((epoch - warmup) / length, 0.0, 1.0))


# ---------------------------------------------------------------- 6. prototypes
def update_prototypes(prototypes: torch.Tensor, features: torch.Tensor, labels: torch.Tensor,
                      momentum: float) -> torch.Tensor:
    """o_y ← m·o_y + (1 - m)·z for each (z, y) in order, then every o_c normalised; returns new (C, d′).

    A class met k times in the batch gets o ← m^k·o + (1 - m)·Σ_i m^{k-1-i}·z_i, the result of the
    sequential update, computed at once.
    """
    result = prototypes.float().clone()
    features = features.float()
    for c in torch.unique(labels).tolist():
        members = features[labels == c]  # in batch order
        k = len(members)
        powers = momentum ** torch.arange(k - 1, -1, -1, dtype=torch.float32, device=features.device)
        result[c] = momentum ** k * result[c] + (1.0 - momentum) * (powers.view(-1, 1) * members).sum(dim=0)
    return F.normalize(result, dim=1)


def kl_to_targets(log_probs: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
    """Per-row KL(t ‖ p) = Σ_j t_j (log t_j - log p_j), with 0·log 0 = 0."""
    return (torch.xlogy(targets.float(), targets.float()) - targets.float() * log_probs).sum(dim=1)


def prototype_alignment(proto_logits: torch.Tensor, target_a: torch.Tensor, target_b: torch.Tensor, lam: float,
                        temperature: float) -> tuple[torch.Tensor, torch.Tensor]:
    """Per-row (KL loss, squared-error loss) of q = softmax(z·oᵀ/τ_p) against the mixed pair of targets.

    KL: l·KL(t_a ‖ q) + (1 - l)·KL(t_b ‖ q) (partial-set rows); squared error: l·mean(q - t_a)² +
    (1 - l)·mean(q - t_b)² (unlabeled-set rows). The caller picks the rows and weights.
    """
    log_q = F.log_softmax(proto_logits.float() / temperature, dim=1)
    kl = lam * kl_to_targets(log_q, target_a) + (1.0 - lam) * kl_to_targets(log_q, target_b)
    q = log_q.exp()
    se = lam * ((q - target_a.float()) ** 2).mean(dim=1) + (1.0 - lam) * ((q - target_b.float()) ** 2).mean(dim=1)
    return kl, se


# ---------------------------------------------------------------- 7. noisy supervised contrast
def contrastive_masks(labels: torch.Tensor, is_partial: torch.Tensor, batch_size: int) -> tuple[torch.Tensor, torch.Tensor]:
    """(positives, ignored), both (b, K) bool, for anchors 0..b-1 against K = [queries, keys, queue].

    `labels` (K,) pseudo-labels (-1: none) and `is_partial` (K,) the set each item came from; item
    b + i is anchor i's own key. Positives: the own key, and for a partial-set anchor the other
    partial-set items with its pseudo-label. Ignored (neither positive nor negative): same-label
    items from the unlabeled set for a partial-set anchor, every same-label item for an
    unlabeled-set anchor (the official "modified" mode). The anchor itself is never contrasted.
    """
    anchor_labels, anchor_partial = labels[:batch_size].view(-1, 1), is_partial[:batch_size].view(-1, 1)
    same = (anchor_labels == labels.view(1, -1)) & (anchor_labels >= 0)
    positives = same & anchor_partial & is_partial.view(1, -1)
    ignored = same & ~positives
    rows = torch.arange(batch_size, device=labels.device)
    positives[rows, rows + batch_size] = True  # the own key
    ignored[rows, rows + batch_size] = False
    positives[rows, rows] = False  # the anchor itself
    ignored[rows, rows] = False
    return positives, ignored


def noisy_supcon_loss(features: torch.Tensor, positives: torch.Tensor, ignored: torch.Tensor, batch_size: int,
                      temperature: float = 0.07) -> torch.Tensor:
    """Per-anchor loss (b,): -mean_{p∈P_i} log( exp(q_i·f_p/τ) / Σ_{k ∉ {i} ∪ ignored_i} exp(q_i·f_k/τ) )."""
    logits = features[:batch_size].float() @ features.float().t() / temperature  # (b, K)
    logits = logits - logits.max(dim=1, keepdim=True).values.detach()  # numerical stability
    rows = torch.arange(batch_size, device=features.device)
    in_denominator = ~ignored
    in_denominator[rows, rows] = False
    log_denominator = torch.logsumexp(logits.masked_fill(~in_denominator, float("-inf")), dim=1, keepdim=True)
    log_prob = logits - log_denominator
    positives = positives.float()
    return -(positives * log_prob).sum(dim=1) / positives.sum(dim=1).clamp(min=1.0)


def noisy_contrastive_loss(queries: torch.Tensor, keys: torch.Tensor, labels: torch.Tensor, is_partial: torch.Tensor,
                           queue: torch.Tensor, queue_labels: torch.Tensor, queue_partial: torch.Tensor,
                           temperature: float) -> torch.Tensor:
    """Per-anchor noisy supervised contrast (b,) of the queries (b, d′) against [queries, own keys, queue].

    labels / is_partial: the batch's pseudo-labels and division; queue*: the momentum encoder's
    earlier keys with theirs. Masks from `contrastive_masks`, loss from `noisy_supcon_loss`.
    """
    size = len(queries)
    positives, ignored = contrastive_masks(torch.cat([labels, labels, queue_labels]),
                                           torch.cat([is_partial, is_partial, queue_partial]), size)
    return noisy_supcon_loss(torch.cat([queries, keys, queue]), positives, ignored, size, temperature)
