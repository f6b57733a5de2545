"""Few-shot training sets drawn from the noisy training set (the PTNL / CoOp protocol).

PTNL (Wu et al., ICCV 2023) prompt-tunes on k shots per class, a fixed number of which carry a
wrong label ("false positives per class"); the Robust Similarity paper's ablation uses 16 shots on
DTD with 0 / 12.5 / 25 / 50 % noise, i.e. 0 / 2 / 4 / 8 wrong labels per class. Here the noise is
made on the whole training set first (any noise mode), then each *given* class keeps k samples:
`exact` takes round(k · noise_ratio) of them among its wrongly labelled samples and the rest among
its correctly labelled ones (true labels pick the draw, as they pick the noise; training never
sees them); `random` draws the k uniformly, so the noise rate of the shots varies around the set's.
"""
from __future__ import annotations

from typing import Optional

import numpy as np

from .errors import DatasetConfigError

FEW_SHOT_NOISE = ("exact", "random")


def noisy_shots_per_class(shots: int, noise_ratio: float) -> int:
    """round(k · r), halves rounded up (16 shots at 12.5 % noise: 2 wrong labels per class)."""
    return int(np.floor(shots * noise_ratio + 0.5))


def few_shot_indices(given_labels: np.ndarray, true_labels: Optional[np.ndarray], num_classes: int, shots: int,
                     noise_ratio: float, mode: str, seed: int) -> np.ndarray:
    """Sorted indices of k samples per given class; `mode` "exact" or "random" (see the module doc)."""
    if mode not in FEW_SHOT_NOISE:
        raise DatasetConfigError(f"few_shot_noise must be one of {FEW_SHOT_NOISE}, found {mode!r}")
    given = np.asarray(given_labels)
    if mode == "exact" and true_labels is None:
        raise DatasetConfigError("few_shot_noise: exact needs the true training labels to place round(k * noise_ratio) "
                                 "wrong labels per class, and this dataset has none (real noise); use "
                                 "few_shot_noise: random")
    is_clean = None if true_labels is None else given == np.asarray(true_labels)
    rng = np.random.default_rng(seed)
    chosen = []
    for c in range(num_classes):  # class order fixes the RNG calls, so the seed fixes the set
        members = np.flatnonzero(given == c)
        if mode == "random":
            chosen.append(_draw(rng, members, shots, f"given class {c}"))
            continue
        n_noisy = noisy_shots_per_class(shots, noise_ratio)
        chosen.append(_draw(rng, members[~is_clean[members]], n_noisy, f"wrongly labelled samples of given class {c}"))
        chosen.append(_draw(rng, members[is_clean[members]], shots - n_noisy,
                            f"correctly labelled samples of given class {c}"))
    return np.sort(np.concatenate(chosen)).astype(np.int64)


def _draw(rng: np.random.Generator, pool: np.ndarray, count: int, what: str) -> np.ndarray:
    """`count` members of `pool` without replacement, or a DatasetConfigError saying what is short."""
    if count > len(pool):
        raise DatasetConfigError(f"few_shot: need {count} {what} but the noisy training set has {len(pool)}; "
                                 "lower few_shot (or noise_ratio), or use few_shot_noise: random")
    return rng.choice(pool, size=count, replace=False)
