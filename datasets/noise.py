"""Synthetic label noise, reproducing the official generators with local RNGs, and its cache.

sym / asym / str and the class-pair variants replay the official Python-`random` call order
(HotanLee/DeFT dataloader/dataloader_cifar.py:74-105), so the same seed gives the same labels as the official code. idn
follows Xia et al. 2020 as the official code does, but on a private NumPy RandomState.
"""
from __future__ import annotations

import hashlib
import json
import logging
import random
from contextlib import nullcontext
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable

import numpy as np

from utils.config import NOISE_MODES
from utils.io import atomic_write_json

log = logging.getLogger(__name__)

# Bump when a change makes the same (mode, ratio, seed, options) give different labels.
GENERATOR_VERSION = 1
# Classic CIFAR-10 pairs: truck->automobile, bird->airplane, deer->horse, cat<->dog.
CIFAR10_ASYM_PAIRS = {9: 1, 2: 0, 4: 7, 3: 5, 5: 3}
_IDN_STD = 0.1  # std of the per-sample flip rate, as in Xia et al. and the official code
_IDN_BATCH = 4096  # samples per matmul; bounds memory at batch x (D + C) floats
_OPTION_NAMES = ("sym_exclude_true", "coarse_labels", "str_flip")
STR_FLIPS = ("random", "cyclic")  # official str: CIFAR redraws uniformly, Cars/Tiny flip y -> y+1


@dataclass(frozen=True)
class LazyImages:
    """idn pixels that are computed only when the cache misses (file datasets: decoding and
    resizing every training image takes minutes); `fingerprint` stands for them in the cache."""

    fingerprint: str
    load: Callable[[], np.ndarray]  # -> uint8 (N, H, W, 3) or flat (N, D) features


def make_noisy_labels(true_labels: np.ndarray, num_classes: int, mode: str, ratio: float,
                      seed: int, images: np.ndarray | None = None,
                      sym_exclude_true: bool = False,
                      coarse_labels: np.ndarray | None = None,
                      str_flip: str = "random") -> np.ndarray:
    """Return int64 noisy labels for `mode` at noise ratio `ratio` (as HotanLee/DeFT dataloader/dataloader_cifar.py:74-105).

    str_flip: what `str` does to a noise-set sample of a noise class: "random" redraws it
    uniformly (official CIFAR), "cyclic" flips it to y+1 (official Stanford Cars / Tiny-ImageNet).
    """
    labels = _as_labels(true_labels, num_classes, "true_labels")
    mode = _check_mode(mode)
    ratio = _check_ratio(ratio)
    if mode == "none":
        if ratio != 0:
            raise ValueError(f"noise_mode 'none' expects noise_ratio 0, found {ratio}; "
                             f"choose a noise mode from {NOISE_MODES} or set the ratio to 0")
        return labels.copy()
    if mode == "idn":
        if images is None:
            raise ValueError("noise_mode 'idn' needs the training images (raw pixels define "
                             "the flips); pass images=...")
        return idn_noisy_labels(labels, num_classes, ratio, seed, images)
    flip = _class_flip_map(mode, labels, num_classes, coarse_labels)
    if str_flip not in STR_FLIPS:
        raise ValueError(f"expected str_flip in {STR_FLIPS}, found {str_flip!r}")
    return _replay_official_noise(labels, num_classes, mode, ratio, seed, flip, sym_exclude_true,
                                  str_flip)


def _replay_official_noise(labels: np.ndarray, num_classes: int, mode: str, ratio: float,
                           seed: int, flip: np.ndarray | None,
                           sym_exclude_true: bool, str_flip: str = "random") -> np.ndarray:
    """sym / str / flip-map noise, consuming a local random.Random in the official order."""
    rng = random.Random(seed)
    order = list(range(len(labels)))
    rng.shuffle(order)
    in_noise_set = np.zeros(len(labels), dtype=bool)
    in_noise_set[order[: int(ratio * len(labels))]] = True
    classes = list(range(num_classes))
    rng.shuffle(classes)  # consumed in every mode, so later draws line up with the official code
    noise_class = set(classes[: num_classes // 2])

    noisy = labels.copy()
    # Samples outside the noise set draw nothing, so visiting only the noise set in ascending
    # index order keeps the official call order (the official loop is O(N^2) list membership).
    for i in np.flatnonzero(in_noise_set):
        y = int(labels[i])
        if mode == "sym" and sym_exclude_true:
            noisy[i] = _draw_other(rng, num_classes, y)
        elif mode == "sym":
            noisy[i] = rng.randint(0, num_classes - 1)  # may redraw y: effective rate r(C-1)/C
        elif mode == "str":
            if y in noise_class and str_flip == "cyclic":
                noisy[i] = (y + 1) % num_classes  # draws nothing, as the official Cars/Tiny branch
            elif y in noise_class:
                noisy[i] = rng.randint(0, num_classes - 1)
        else:
            noisy[i] = flip[y]
    return noisy


def _draw_other(rng: random.Random, num_classes: int, y: int) -> int:
    """Uniform draw from the num_classes - 1 classes other than y."""
    draw = rng.randint(0, num_classes - 2)
    return draw + 1 if draw >= y else draw


def _class_flip_map(mode: str, labels: np.ndarray, num_classes: int,
                    coarse_labels: np.ndarray | None) -> np.ndarray | None:
    """Class -> noisy class for the deterministic modes (None for sym and str)."""
    if mode == "asym":
        return (np.arange(num_classes) + 1) % num_classes
    if mode == "asym_cifar10":
        if num_classes != 10:
            raise ValueError(f"noise_mode 'asym_cifar10' expects 10 classes, found "
                             f"{num_classes}; use 'asym' for other datasets")
        flip = np.arange(10)
        flip[list(CIFAR10_ASYM_PAIRS)] = list(CIFAR10_ASYM_PAIRS.values())
        return flip
    if mode == "asym_cifar100":
        return _superclass_flip_map(labels, num_classes, coarse_labels)
    return None


def _superclass_flip_map(labels: np.ndarray, num_classes: int,
                         coarse_labels: np.ndarray | None) -> np.ndarray:
    """Map each fine class to the next fine class (ascending, circular) of its superclass."""
    if coarse_labels is None:
        raise ValueError("noise_mode 'asym_cifar100' needs coarse_labels (the CIFAR-100 "
                         "superclass of each training sample); pass coarse_labels=...")
    coarse = np.asarray(coarse_labels, dtype=np.int64)
    if coarse.shape != labels.shape:
        raise ValueError(f"expected one coarse label per sample {labels.shape}, "
                         f"found {coarse.shape}")
    pairs = np.unique(np.stack([labels, coarse]), axis=1)  # distinct (fine, coarse) pairs
    if len(np.unique(pairs[0])) != pairs.shape[1]:
        raise ValueError("expected each fine class to belong to exactly one superclass, "
                         "found a fine class with several coarse labels; check coarse_labels")
    flip = np.arange(num_classes)
    for superclass in np.unique(coarse):
        members = np.unique(labels[coarse == superclass])  # ascending fine classes
        flip[members] = np.roll(members, -1)
    return flip


def idn_noisy_labels(true_labels: np.ndarray, num_classes: int, ratio: float, seed: int,
                     images: np.ndarray) -> np.ndarray:
    """Instance-dependent noise (Xia et al. 2020) as the official code, on a local RNG.

    images: uint8 (N, H, W, 3), flattened in CHW order as the official CIFAR loader does, or
    already-flat (N, D) features used as given. The stream is np.random.RandomState(seed):
    flip rates (truncated normal), then W (C, D, C) class by class, then one choice per sample.
    """
    from scipy.stats import truncnorm

    labels = _as_labels(true_labels, num_classes, "true_labels")
    ratio = _check_ratio(ratio)
    num_samples = len(labels)
    features = _idn_features(images, num_samples)
    rs = np.random.RandomState(seed)
    flip_rates = truncnorm((0 - ratio) / _IDN_STD, (1 - ratio) / _IDN_STD, loc=ratio,
                           scale=_IDN_STD).rvs(num_samples, random_state=rs)
    probs = np.empty((num_samples, num_classes), dtype=np.float32)  # (N, C)
    with _single_blas_thread():
        for c in range(num_classes):
            # W[c] comes next in the stream whether or not class c has samples.
            weights = rs.randn(features.dim, num_classes).astype(np.float32)  # (D, C)
            members = np.flatnonzero(labels == c)
            for start in range(0, len(members), _IDN_BATCH):
                rows = members[start:start + _IDN_BATCH]
                logits = features.rows(rows) @ weights  # (batch, C)
                probs[rows] = _idn_row_probs(logits, c, flip_rates[rows])
    # One np.random.choice per sample, in sample order, on float32 rows as the official code.
    return np.array([rs.choice(num_classes, p=probs[i]) for i in range(num_samples)],
                    dtype=np.int64)


def _single_blas_thread():
    """Limit BLAS to one thread: the per-class matmuls are small, and multi-threaded BLAS
    slows them down many times over on a busy CPU (measured 22 s vs 6 s for 200 classes)."""
    try:
        from threadpoolctl import threadpool_limits
    except ImportError:  # only speed depends on it
        return nullcontext()
    return threadpool_limits(limits=1, user_api="blas")


def _idn_row_probs(logits: np.ndarray, label: int, flip_rates: np.ndarray) -> np.ndarray:
    """p = q * softmax(logits without the true class); p[true] += 1 - q (float32)."""
    logits[:, label] = -np.inf
    logits -= logits.max(axis=1, keepdims=True)
    np.exp(logits, out=logits)
    logits /= logits.sum(axis=1, keepdims=True)
    probs = logits * flip_rates.astype(np.float32)[:, None]
    probs[:, label] += (1.0 - flip_rates).astype(np.float32)
    return probs


class _IdnFeatures:
    """Flattened raw-pixel rows, converted to float32 one batch at a time (memory-light)."""

    def __init__(self, images: np.ndarray):
        self.images = images
        self.dim = int(np.prod(images.shape[1:]))

    def rows(self, index: np.ndarray) -> np.ndarray:
        batch = self.images[index]
        if batch.ndim == 4:  # HWC -> CHW, the order of the official CIFAR pickle rows
            batch = batch.transpose(0, 3, 1, 2)
        return batch.reshape(len(index), self.dim).astype(np.float32)


def _idn_features(images: np.ndarray, num_samples: int) -> _IdnFeatures:
    images = np.asarray(images)
    if images.ndim not in (2, 4) or len(images) != num_samples:
        raise ValueError(f"expected idn images as (N, H, W, C) or (N, D) with N={num_samples}, "
                         f"found shape {images.shape}")
    return _IdnFeatures(images)


def actual_noise_rate(true_labels: np.ndarray, noisy_labels: np.ndarray) -> float:
    """Fraction of samples whose noisy label differs from the true label."""
    true = np.asarray(true_labels)
    noisy = np.asarray(noisy_labels)
    if true.shape != noisy.shape:
        raise ValueError(f"expected label arrays of equal shape, found {true.shape} and "
                         f"{noisy.shape}")
    return float(np.mean(true != noisy)) if true.size else 0.0


def labels_sha256(labels: np.ndarray) -> str:
    """SHA-256 hex digest of the labels as int64 little-endian bytes."""
    return hashlib.sha256(np.ascontiguousarray(labels, dtype="<i8").tobytes()).hexdigest()


# ---------------------------------------------------------------------------------------------
# Cache

def noise_cache_file(cache_dir: str | Path, dataset: str, mode: str, ratio: float,
                     seed: int) -> Path:
    """Path of the cached noisy labels for these settings."""
    return Path(cache_dir) / f"{dataset}_{mode}_{float(ratio)}_seed{seed}.json"


def load_or_make_noisy_labels(cache_dir: str, dataset: str, true_labels: np.ndarray,
                              num_classes: int, mode: str, ratio: float, seed: int,
                              images: np.ndarray | None = None,
                              **options: Any) -> tuple[np.ndarray, dict]:
    """Reuse cached noisy labels when every metadata field matches, else generate and cache."""
    unknown = set(options) - set(_OPTION_NAMES)
    if unknown:
        raise TypeError(f"unknown noise options {sorted(unknown)}; expected {_OPTION_NAMES}")
    true = _as_labels(true_labels, num_classes, "true_labels")
    mode = _check_mode(mode)
    ratio = _check_ratio(ratio)
    metadata = {
        "generator_version": GENERATOR_VERSION, "dataset": dataset, "mode": mode,
        "ratio": ratio, "seed": int(seed), "num_classes": int(num_classes),
        "options": _options_metadata(mode, images, options), "num_samples": len(true),
        "true_labels_sha256": labels_sha256(true),
    }
    if mode == "none":  # nothing random to cache
        noisy = make_noisy_labels(true, num_classes, mode, ratio, seed)
        return noisy, _info(true, noisy, metadata, None, False)
    path = noise_cache_file(cache_dir, dataset, mode, ratio, seed)
    noisy, problem = _read_cache(path, metadata)
    if noisy is not None:
        return noisy, _info(true, noisy, metadata, path, True)
    if problem is not None:
        log.warning("regenerating noisy labels: cache %s %s", path, problem)
    pixels = images.load() if isinstance(images, LazyImages) else images
    noisy = make_noisy_labels(true, num_classes, mode, ratio, seed, images=pixels, **options)
    atomic_write_json(str(path), {**metadata, "noisy_labels": noisy.tolist()}, indent=None)
    return noisy, _info(true, noisy, metadata, path, False)


def _read_cache(path: Path, metadata: dict) -> tuple[np.ndarray | None, str | None]:
    """Return (labels, None) on a match, else (None, why); why is None if there is no file."""
    if not path.exists():
        return None, None
    try:
        with open(path) as f:
            cached = json.load(f)
    except (OSError, ValueError) as exc:
        return None, f"is unreadable ({type(exc).__name__}: {exc})"
    if not isinstance(cached, dict):
        return None, f"holds a {type(cached).__name__} without metadata (old format?)"
    for key, expected in metadata.items():
        if cached.get(key) != expected:
            return None, f"has {key}={cached.get(key)!r}, expected {expected!r}"
    try:
        noisy = _as_labels(cached.get("noisy_labels"), metadata["num_classes"], "noisy_labels")
    except (TypeError, ValueError) as exc:
        return None, f"holds invalid noisy_labels ({exc})"
    if len(noisy) != metadata["num_samples"]:
        return None, f"holds {len(noisy)} labels, expected {metadata['num_samples']}"
    return noisy, None


def _options_metadata(mode: str, images: np.ndarray | None, options: dict) -> dict:
    """JSON form of everything besides mode/ratio/seed that changes the labels."""
    coarse = options.get("coarse_labels")
    meta = {"sym_exclude_true": bool(options.get("sym_exclude_true", False)),
            "coarse_labels_sha256": None if coarse is None else labels_sha256(coarse)}
    if mode == "str" and options.get("str_flip", "random") != "random":
        meta["str_flip"] = options["str_flip"]  # absent for the default: older caches stay valid
    if mode == "idn":  # the pixels decide the flips, so a different image set is a miss
        if isinstance(images, LazyImages):
            meta["images_sha256"] = images.fingerprint
        else:
            meta["images_sha256"] = None if images is None else hashlib.sha256(
                np.ascontiguousarray(images).tobytes()).hexdigest()
    return meta


def _info(true: np.ndarray, noisy: np.ndarray, metadata: dict, path: Path | None,
          reused: bool) -> dict:
    return {"cache_file": None if path is None else str(path), "reused": reused,
            "actual_rate": actual_noise_rate(true, noisy), **metadata}


# ---------------------------------------------------------------------------------------------
# Validation

def _as_labels(labels: Any, num_classes: int, what: str) -> np.ndarray:
    array = np.asarray(labels)
    if array.ndim != 1 or (array.size and not np.issubdtype(array.dtype, np.integer)):
        raise ValueError(f"expected {what} as a 1-D integer array, found {array.dtype} "
                         f"{array.shape}")
    array = array.astype(np.int64)
    if array.size and (array.min() < 0 or array.max() >= num_classes):
        raise ValueError(f"expected {what} in [0, {num_classes}), found "
                         f"[{array.min()}, {array.max()}]; check num_classes")
    return array


def _check_mode(mode: str | None) -> str:
    mode = "none" if mode in (None, "") else mode
    if mode not in NOISE_MODES:
        raise ValueError(f"unknown noise mode {mode!r}; valid modes: {', '.join(NOISE_MODES)}")
    return mode


def _check_ratio(ratio: float) -> float:
    ratio = float(ratio)
    if not 0.0 <= ratio <= 1.0:
        raise ValueError(f"expected a noise ratio in [0, 1], found {ratio}")
    return ratio
