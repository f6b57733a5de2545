"""CIFAR-10N / CIFAR-100N: human-annotated training labels for the CIFAR training images.

The label files of Wei et al. (2022) are torch-saved dicts of NumPy arrays in CIFAR training
order: `CIFAR-100_human.pt` has `noisy_label` (the official choice) and `clean_label`;
`CIFAR-10_human.pt` has `worse_label` (official), `aggre_label`, `random_label1..3` and
`clean_label`. The official code reads them from a hard-coded `./data/cifar-1x/`; here the file
is `cifar_n_label_file` (default: in `data_path`) and the key `cifar_n_label_key`.
"""
from __future__ import annotations

from pathlib import Path
from typing import Optional

import numpy as np

from .errors import DatasetConfigError, DatasetNotFoundError

LABEL_FILE = {"cifar10": "CIFAR-10_human.pt", "cifar100": "CIFAR-100_human.pt"}
DEFAULT_LABEL_KEY = {"cifar10": "worse_label", "cifar100": "noisy_label"}
_TORCHVISION_FOLDER = {"cifar10": "cifar-10-batches-py", "cifar100": "cifar-100-python"}
# Pickle globals a dict of NumPy arrays needs; anything else in the file is refused.
_NUMPY_GLOBALS = ("numpy.ndarray", "numpy.dtype", "numpy.core.multiarray._reconstruct",
                  "numpy._core.multiarray._reconstruct", "numpy.core.multiarray.scalar",
                  "numpy._core.multiarray.scalar")


def label_key(name: str, key: Optional[str]) -> str:
    """The configured key, or the official one (noisy_label for CIFAR-100N, worse_label for CIFAR-10N)."""
    return key or DEFAULT_LABEL_KEY[name]


def label_file_candidates(name: str, data_path: str, label_file: Optional[str]) -> list[Path]:
    """Where the label file is looked for: the configured path, else data_path (and torchvision's folder)."""
    if label_file:
        return [Path(label_file)]
    root = Path(data_path)
    return [root / LABEL_FILE[name], root / _TORCHVISION_FOLDER[name] / LABEL_FILE[name]]


def read_human_labels(name: str, data_path: str, label_file: Optional[str], key: Optional[str],
                      true_labels: np.ndarray, num_classes: int) -> tuple[np.ndarray, str]:
    """Return (given labels int64 (N,), 'file:key') and check them against the CIFAR training set."""
    key = label_key(name, key)
    candidates = label_file_candidates(name, data_path, label_file)
    path = next((p for p in candidates if p.is_file()), None)
    if path is None:
        raise DatasetNotFoundError(
            f"{name.upper()}N label file not found: expected {LABEL_FILE[name]} at "
            f"{' or '.join(str(p) for p in candidates)}. Download it from "
            "https://github.com/UCSC-REAL/cifar-10-100n (data/) and put it there, or pass "
            "--opts cifar_n_label_file=/path/to/the/file")
    content = _load_label_dict(path)
    if key not in content:
        raise DatasetConfigError(f"{path} has no key {key!r}; its keys are {sorted(content)}. "
                                 "Set cifar_n_label_key to one of them")
    given = np.asarray(content[key]).astype(np.int64).reshape(-1)
    if given.shape != true_labels.shape:
        raise DatasetNotFoundError(f"{path}[{key!r}] holds {given.size} labels but the CIFAR training set has "
                                   f"{true_labels.size} images; the file belongs to another dataset")
    if given.min() < 0 or given.max() >= num_classes:
        raise DatasetConfigError(f"{path}[{key!r}] holds labels in [{given.min()}, {given.max()}], expected "
                                 f"[0, {num_classes}); is it a label file of another dataset?")
    if "clean_label" in content:
        clean = np.asarray(content["clean_label"]).astype(np.int64).reshape(-1)
        if clean.shape != true_labels.shape or not np.array_equal(clean, true_labels):
            raise DatasetNotFoundError(
                f"{path}['clean_label'] does not match the labels of the CIFAR training set under {data_path}; "
                "the label file and the CIFAR files are not in the same sample order")
    return given, f"{path}:{key}"


def _load_label_dict(path: Path) -> dict:
    """torch.load of a dict of NumPy arrays, refusing any other pickled object."""
    import torch

    try:
        content = torch.load(path, map_location="cpu", weights_only=True)
    except Exception:  # NumPy arrays are not on torch's weights-only allow list
        try:
            unsafe = torch.serialization.get_unsafe_globals_in_checkpoint(str(path))
        except Exception as exc:
            raise DatasetNotFoundError(f"{path} is not a readable torch file ({type(exc).__name__}: {exc}); "
                                       "download it again") from None
        others = [g for g in unsafe if g not in _NUMPY_GLOBALS and not g.startswith("numpy.dtypes.")]
        if others:
            raise DatasetNotFoundError(f"{path} holds objects other than arrays ({others[:3]}); refusing to "
                                       "load it. Expected a dict of label arrays") from None
        content = torch.load(path, map_location="cpu", weights_only=False)
    if not isinstance(content, dict):
        raise DatasetNotFoundError(f"{path}: expected a dict of label arrays, found {type(content).__name__}")
    return content
