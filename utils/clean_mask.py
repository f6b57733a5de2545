"""The clean-sample index: `clean_mask.npy` (bool, dataset order) plus `clean_mask.json` metadata.

Phase 1 (and every baseline that selects samples) writes it; phase 2 reads it and refuses a mask
that was made for another dataset, split size, noise setting or subsample (docs/failure_behaviour.md).
"""
from __future__ import annotations

import json
import os
from typing import Any, Optional

import numpy as np

from lnl.selection import class_selection_rates, underselected_classes
from utils import distributed
from utils.errors import UserError
from utils.io import atomic_save_numpy, atomic_write_json

MASK_FILE = "clean_mask.npy"
META_FILE = "clean_mask.json"
SCORES_FILE = "clean_scores.npy"  # the detector's per-sample clean score (DeFT: p_clean), where it has one
TRUTH_FILE = "truly_clean.npy"  # given label == true label, where true labels are known (for analysis only)

# Metadata fields that must agree between the mask and the dataset phase 2 builds.
IDENTITY_FIELDS = ("dataset", "num_samples", "noise_mode", "noise_ratio", "given_labels_sha256")


class CleanMaskError(UserError, ValueError):
    """A clean mask is missing or does not belong to the dataset it is used with."""


def save_clean_mask(run_dir: str, mask: np.ndarray, metadata: dict, clean_scores: Optional[np.ndarray] = None,
                    is_clean: Optional[np.ndarray] = None) -> str:
    """Write mask, scores and metadata atomically (metadata last: a present .json means a complete set).

    `clean_scores` (N,) is the detector's per-sample score behind the mask (higher = cleaner);
    `is_clean` (N,) which given labels are truly clean, saved for figures and analysis (never read
    by training). Only rank 0 writes; every rank gets the path.
    """
    mask = np.asarray(mask, dtype=bool)
    if mask.ndim != 1 or mask.shape[0] != metadata["num_samples"]:
        raise CleanMaskError(f"mask of shape {mask.shape} does not match num_samples={metadata['num_samples']}")
    meta = dict(metadata, num_selected=int(mask.sum()), mask_file=MASK_FILE)
    if clean_scores is not None:
        clean_scores = np.asarray(clean_scores, dtype=np.float32)
        if clean_scores.shape != mask.shape:
            raise CleanMaskError(f"clean scores of shape {clean_scores.shape} do not match the mask {mask.shape}")
        meta["scores_file"] = SCORES_FILE
    if is_clean is not None:
        meta["truth_file"] = TRUTH_FILE
    if distributed.is_main():
        atomic_save_numpy(os.path.join(run_dir, MASK_FILE), mask)
        if clean_scores is not None:
            atomic_save_numpy(os.path.join(run_dir, SCORES_FILE), clean_scores)
        if is_clean is not None:
            atomic_save_numpy(os.path.join(run_dir, TRUTH_FILE), np.asarray(is_clean, dtype=bool))
        atomic_write_json(os.path.join(run_dir, META_FILE), meta)
    return os.path.join(run_dir, MASK_FILE)


def mask_metadata(cfg: Any, data: Any, num_samples: int, script: str, selection_rule: str,
                  mask_source: str, method: str = "DeFT") -> dict:
    """What identifies the data a mask belongs to (checked by phase 2), and how it was made.

    Every script that saves a mask (phase 1, small-loss, the GMM/TURN/label-match baselines) uses
    this, so all masks carry the same identity fields.
    """
    return {"dataset": cfg.dataset, "num_samples": num_samples, "noise_mode": cfg.noise_mode,
            "noise_ratio": cfg.noise_ratio, "noise_seed": data.noise_info.get("seed"), "seed": cfg.seed,
            "actual_noise_rate": data.noise_info.get("actual_rate"),
            "given_labels_sha256": data.given_labels_sha256, "sample_ids": getattr(data, "sample_ids", None),
            "method": method, "selection_rule": selection_rule, "mask_source": mask_source,
            "epochs": cfg.epochs, "created_by": script}


def mask_metadata_path(mask_path: str) -> str:
    """The clean_mask.json beside a clean_mask.npy."""
    return os.path.join(os.path.dirname(mask_path), META_FILE)


def mask_method(mask_path: str) -> Optional[str]:
    """The `method` recorded beside a mask ('DeFT', 'GMM', 'SmallLoss', ...); None if unreadable."""
    try:
        with open(mask_metadata_path(mask_path), encoding="utf-8") as handle:
            meta = json.load(handle)
    except (OSError, ValueError):
        return None  # load_clean_mask says what is wrong with the file
    return meta.get("method", "DeFT") if isinstance(meta, dict) else None


def load_clean_mask(mask_path: str, expected: dict) -> tuple[np.ndarray, dict]:
    """Load a mask and check it against `expected` identity fields (and `sample_ids` if given)."""
    meta_path = mask_metadata_path(mask_path)
    if not os.path.isfile(mask_path) or not os.path.isfile(meta_path):
        raise CleanMaskError(
            f"no clean mask at {mask_path} (expected {MASK_FILE} and {META_FILE} side by side). "
            "Run phase 1 first with the same --cfg dataset, --noise_mode, --noise_ratio and seed, "
            "or pass --clean_mask PATH")
    try:
        with open(meta_path, encoding="utf-8") as handle:
            meta = json.load(handle)
    except (OSError, UnicodeDecodeError, ValueError) as err:
        raise CleanMaskError(f"{meta_path} is not readable JSON ({type(err).__name__}: {err}); expected the "
                             f"metadata phase 1 writes beside {MASK_FILE}") from None
    if not isinstance(meta, dict):
        raise CleanMaskError(f"{meta_path} holds a {type(meta).__name__}; expected the JSON object phase 1 writes")
    try:
        mask = np.load(mask_path, allow_pickle=False)
    except (OSError, ValueError, EOFError) as err:
        raise CleanMaskError(f"{mask_path} is not a readable .npy array ({type(err).__name__}: {err}); expected "
                             f"the bool vector phase 1 writes (pickled objects are never loaded)") from None
    if not isinstance(mask, np.ndarray) or mask.dtype != bool or mask.ndim != 1 or mask.shape[0] != meta.get("num_samples"):
        raise CleanMaskError(
            f"{mask_path} holds a {mask.dtype} array of shape {mask.shape}; expected a bool vector "
            f"of length {meta.get('num_samples')} as recorded in {meta_path}")
    mismatches = _mismatches(meta, expected)
    if mismatches:
        details = "; ".join(f"{key}: mask has {got!r}, this run has {want!r}" for key, got, want in mismatches)
        raise CleanMaskError(
            f"the clean mask {mask_path} was made for different data ({details}). Use the mask of a "
            "phase-1 run with the same dataset and noise settings, or rerun phase 1")
    if not mask.any():
        raise CleanMaskError(
            f"the clean mask {mask_path} keeps 0 of {mask.size} samples: there is nothing to train on. Check the "
            "phase-1 run (its log.txt and metrics.jsonl: selected counts per epoch) and run it again")
    return mask, meta


RARE_CLASS_RATE = 0.5  # a class kept at under half the overall rate is reported as rare


def mask_warnings(mask: np.ndarray, given_labels: np.ndarray, num_classes: int, batch_size: int) -> list[str]:
    """Loud warnings for a mask that is legal but suspicious: fewer samples than one batch, classes
    with no kept sample (phase 2 could never predict them), or classes kept at under half the overall
    rate (a selection that collapsed onto a few classes: docs/failure_behaviour.md)."""
    warnings = []
    kept = int(mask.sum())
    if kept < batch_size:
        warnings.append(f"the clean mask keeps only {kept} samples, fewer than one batch ({batch_size})")
    rates = class_selection_rates(mask, given_labels, num_classes)
    missing = np.flatnonzero(np.nan_to_num(rates, nan=0.0) == 0)  # also a class no sample is labelled with
    if len(missing):
        shown = ", ".join(str(c) for c in missing[:20]) + (" ..." if len(missing) > 20 else "")
        warnings.append(f"the clean mask keeps no sample of {len(missing)} of {num_classes} classes ({shown})")
    overall = kept / max(mask.size, 1)
    rare = [c for c in underselected_classes(rates, overall, RARE_CLASS_RATE) if rates[c] > 0]  # 0: said above
    if len(rare):
        shown = ", ".join(f"{c}: {100 * rates[c]:.0f}%" for c in rare[:20]) + (" ..." if len(rare) > 20 else "")
        warnings.append(f"the clean mask keeps {len(rare)} of {num_classes} classes at under half its overall rate "
                        f"of {100 * overall:.0f}% ({shown}): the selection may have collapsed onto a few classes")
    return warnings


def _mismatches(meta: dict, expected: dict) -> list[tuple[str, Any, Any]]:
    found = []
    for key in IDENTITY_FIELDS:
        if key not in expected:
            continue
        got, want = meta.get(key), expected[key]
        if key == "noise_ratio":
            same = got is not None and want is not None and abs(float(got) - float(want)) < 1e-12
        else:
            same = got == want
        if not same:
            found.append((key, got, want))
    ids: Optional[list] = expected.get("sample_ids")
    if ids is not None and meta.get("sample_ids") != list(ids):
        found.append(("sample_ids", "a different subsample", "this run's subsample"))
    return found
