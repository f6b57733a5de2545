"""A linear probe: multinomial logistic regression on frozen features, its strength chosen without the test set.

As CLIP's linear-probe evaluation (Radford et al. 2021, Appendix A.3: scikit-learn's L-BFGS logistic
regression, the L2 strength swept on a validation split): here the inverse strength C is picked from
decades 0.01..10,000 on a seeded held-out fifth of the training features, then the probe is refitted
on all of them.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Sequence

import numpy as np
from sklearn.linear_model import LogisticRegression

C_GRID = (0.01, 0.1, 1.0, 10.0, 100.0, 1000.0, 10000.0)  # decades; unit-norm features want large C
HELD_OUT = 0.2  # share of the training features that chooses C


@dataclass
class ProbeResult:
    """The chosen C, its held-out accuracy and the test accuracy of the refitted probe (%)."""

    C: float
    held_out_acc: float
    test_acc: float


def linear_probe(train_features: np.ndarray, train_labels: np.ndarray, test_features: np.ndarray,
                 test_labels: np.ndarray, seed: int, c_grid: Sequence[float] = C_GRID) -> ProbeResult:
    """Fit a probe on (N, D) training features, C chosen on a held-out part; score it on the test features."""
    order = np.random.default_rng(seed).permutation(len(train_labels))
    cut = max(1, int(round(HELD_OUT * len(order))))
    held_out, fit = order[:cut], order[cut:]
    scores = [_accuracy(_fit(train_features[fit], train_labels[fit], c), train_features[held_out],
                        train_labels[held_out]) for c in c_grid]
    best = int(np.argmax(scores))  # the first (strongest regularisation) on ties
    probe = _fit(train_features, train_labels, c_grid[best])
    return ProbeResult(C=float(c_grid[best]), held_out_acc=scores[best],
                       test_acc=_accuracy(probe, test_features, test_labels))


def _fit(features: np.ndarray, labels: np.ndarray, c: float) -> LogisticRegression:
    return LogisticRegression(C=c, max_iter=5000).fit(features, labels)


def _accuracy(probe: LogisticRegression, features: np.ndarray, labels: np.ndarray) -> float:
    return 100.0 * float((probe.predict(features) == labels).mean())
