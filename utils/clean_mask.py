"""The clean-sample index: `clean_mask.npy` (bool, dataset order) plus `clean_mask.json` metadata.

Phase 1 (and every baseline that selects samples) writes it; phase 2 reads it and refuses a mask
that was made for another dataset, split size, noise setting or subsample (decisions.md §3).
"""
from __future__ import annotations

import json
import os
from typing import Any, Optional

import numpy as np

from utils.errors import UserError
from utils.io import atomic_save_numpy, atomic_write_json

MASK_FILE = "clean_mask.npy"
META_FILE = "clean_mask.json"

# Metadata fields that must agree between the mask and the dataset phase 2 builds.
IDENTITY_FIELDS = ("dataset", "num_samples", "noise_mode", "noise_ratio", "given_labels_sha256")


class CleanMaskError(UserError, ValueError):
    """A clean mask is missing or does not belong to the dataset it is used with."""


def save_clean_mask(run_dir: str, mask: np.ndarray, metadata: dict) -> str:
    """Write mask and metadata atomically (metadata last, so a present .json means a complete pair)."""
    mask = np.asarray(mask, dtype=bool)
    if mask.ndim != 1 or mask.shape[0] != metadata["num_samples"]:
        raise CleanMaskError(f"mask of shape {mask.shape} does not match num_samples={metadata['num_samples']}")
    meta = dict(metadata, num_selected=int(mask.sum()), mask_file=MASK_FILE)
    atomic_save_numpy(os.path.join(run_dir, MASK_FILE), mask)
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
            return json.load(handle).get("method", "DeFT")
    except (OSError, ValueError):
        return None


def load_clean_mask(mask_path: str, expected: dict) -> tuple[np.ndarray, dict]:
    """Load a mask and check it against `expected` identity fields (and `sample_ids` if given)."""
    meta_path = mask_metadata_path(mask_path)
    if not os.path.isfile(mask_path) or not os.path.isfile(meta_path):
        raise CleanMaskError(
            f"no clean mask at {mask_path} (expected {MASK_FILE} and {META_FILE} side by side). "
            "Run phase 1 first with the same --cfg dataset, --noise_mode, --noise_ratio and seed, "
            "or pass --clean_mask PATH")
    with open(meta_path, encoding="utf-8") as handle:
        meta = json.load(handle)
    mask = np.load(mask_path, allow_pickle=False)
    if mask.dtype != bool or mask.ndim != 1 or mask.shape[0] != meta.get("num_samples"):
        raise CleanMaskError(
            f"{mask_path} holds a {mask.dtype} array of shape {mask.shape}; expected a bool vector "
            f"of length {meta.get('num_samples')} as recorded in {meta_path}")
    mismatches = _mismatches(meta, expected)
    if mismatches:
        details = "; ".join(f"{key}: mask has {got!r}, this run has {want!r}" for key, got, want in mismatches)
        raise CleanMaskError(
            f"the clean mask {mask_path} was made for different data ({details}). Use the mask of a "
            "phase-1 run with the same dataset and noise settings, or rerun phase 1")
    return mask, meta


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
