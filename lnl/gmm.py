"""Loss-based clean-sample selection with two-component Gaussian mixtures.

`gmm_selection` is the DivideMix-style rule of the official GMM baseline (HotanLee/DeFT
main_baseline.py:45-72, in fp32 instead of fp16); `per_class_gmm_selection` and `class_balanced_subsample` are
TURN's cleansing step (the TURN paper, Section 4.1.2, Step 2-1):
D_clean = ∪_c U(D_clean^c, N), D_clean^c = {i : ỹ_i = c, p_l^c(ℓ_i) > τ}, N = min_c |D_clean^c|.
All functions are pure: NumPy arrays in, NumPy arrays out.
"""
from __future__ import annotations

import warnings
from dataclasses import dataclass
from typing import Optional

import numpy as np
from sklearn.exceptions import ConvergenceWarning
from sklearn.mixture import GaussianMixture


@dataclass(frozen=True)
class GMMSettings:
    """sklearn GaussianMixture settings; the defaults are the official ones (HotanLee/DeFT main_baseline.py:64)."""

    max_iter: int = 10
    tol: float = 1e-2
    reg_covar: float = 5e-4
    random_state: Optional[int] = None  # official: None (NumPy's global RNG); we pass a seed


def minmax_normalize(losses: np.ndarray) -> np.ndarray:
    """(ℓ - min) / (max - min) in fp32; all zeros when every loss is the same."""
    losses = np.asarray(losses, dtype=np.float32)
    span = float(losses.max() - losses.min()) if losses.size else 0.0
    if span == 0.0:
        return np.zeros_like(losses)
    return (losses - losses.min()) / np.float32(span)


def clean_probability(values: np.ndarray, settings: GMMSettings = GMMSettings()) -> np.ndarray:
    """Posterior of the smaller-mean component of a 2-component GMM fitted on `values` (N,)."""
    values = np.asarray(values, dtype=np.float64).reshape(-1, 1)
    gmm = GaussianMixture(n_components=2, max_iter=settings.max_iter, tol=settings.tol,
                          reg_covar=settings.reg_covar, random_state=settings.random_state)
    with warnings.catch_warnings():  # 10 EM iterations rarely "converge"; that is the official setting
        warnings.simplefilter("ignore", ConvergenceWarning)
        gmm.fit(values)
        posterior = gmm.predict_proba(values)  # (N, 2)
    clean_component = int(np.argmin(gmm.means_.reshape(-1)))
    return posterior[:, clean_component]


def gmm_selection(losses: np.ndarray, threshold: float = 0.5,
                  settings: GMMSettings = GMMSettings()) -> tuple[np.ndarray, np.ndarray]:
    """DivideMix-style selection: min-max normalise all losses, one GMM, clean when w_i > threshold.

    Returns (clean mask (N,) bool, clean probability w (N,)).
    """
    prob = clean_probability(minmax_normalize(losses), settings)
    return prob > threshold, prob


def per_class_gmm_selection(losses: np.ndarray, labels: np.ndarray, num_classes: int, tau: float = 0.6,
                            settings: GMMSettings = GMMSettings()) -> tuple[np.ndarray, np.ndarray]:
    """TURN Step 2-1: one GMM per given class on the (globally min-max normalised) losses.

    A sample of class c is clean when p_l^c(ℓ_i) > τ, p_l^c the posterior of the lower-mean
    component of class c's mixture. A class with fewer than two samples cannot be split: its
    samples count as clean (probability 1). Returns (clean mask, clean probability), both (N,).
    """
    labels = np.asarray(labels)
    values = minmax_normalize(losses)
    prob = np.ones(len(values), dtype=np.float64)
    for c in range(num_classes):
        members = np.flatnonzero(labels == c)
        if members.size >= 2:
            prob[members] = clean_probability(values[members], settings)
    return prob > tau, prob


def class_balanced_subsample(clean: np.ndarray, labels: np.ndarray, num_classes: int,
                             rng: np.random.Generator) -> np.ndarray:
    """TURN's U(D_clean^c, N) for every class, N = the smallest clean count over the classes present.

    Classes that no sample is labelled with are left out of the minimum (they cannot contribute).
    Returns a bool mask (N_total,) with exactly N samples drawn uniformly without replacement per class.
    """
    clean = np.asarray(clean, dtype=bool)
    labels = np.asarray(labels)
    present = [c for c in range(num_classes) if np.any(labels == c)]
    per_class = {c: np.flatnonzero(clean & (labels == c)) for c in present}
    n_keep = min((len(idx) for idx in per_class.values()), default=0)
    keep = np.zeros(len(clean), dtype=bool)
    for c in present:  # class order fixes the RNG call order, so a seed fixes the subset
        keep[rng.choice(per_class[c], size=n_keep, replace=False)] = True
    return keep
