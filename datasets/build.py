"""Build the train / eval / test datasets of a run from its config."""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from .cifar import CIFAR_NUM_CLASSES, read_cifar, read_cifar100_coarse_labels
from .noise import NOISE_MODES, labels_sha256, load_or_make_noisy_labels
from .errors import DatasetConfigError
from .noisy_dataset import NoisyLabelDataset
from .transforms import NORMALIZATION, cifar_transforms

SUPPORTED_DATASETS = tuple(CIFAR_NUM_CLASSES)
# Modes that only make sense for one dataset's class structure.
_DATASET_ONLY_MODES = {"asym_cifar10": "cifar10", "asym_cifar100": "cifar100"}


@dataclass
class DataBundle:
    """Everything a phase script needs from the data side."""

    train: NoisyLabelDataset  # train images, given labels, train transform, complementary labels
    eval: NoisyLabelDataset  # the same images and labels with the test transform
    test: NoisyLabelDataset
    class_names: list[str]
    num_classes: int
    noise_info: dict[str, Any]
    given_labels_sha256: str


def build_datasets(cfg: Any) -> DataBundle:
    """Read the dataset named by cfg.dataset, apply (cached) synthetic noise, wrap it."""
    name = _check_dataset(cfg.dataset)
    num_classes = _check_num_classes(cfg, name)
    noise_mode = _check_noise_mode(cfg.noise_mode, name)
    download = bool(getattr(cfg, "download", False))
    # Read both splits first so a missing file fails before any noise is generated.
    train_images, true_labels = read_cifar(name, cfg.data_path, "train", download)
    test_images, test_labels = read_cifar(name, cfg.data_path, "test", download)

    given_labels, noise_info = _noisy_labels(cfg, name, noise_mode, train_images, true_labels,
                                             num_classes)
    mean, std = _normalization(cfg, name)
    train_tf, test_tf = cifar_transforms(int(cfg.resolution), mean, std)
    common = {"num_classes": num_classes, "seed": int(cfg.seed)}
    return DataBundle(
        train=NoisyLabelDataset(train_images, given_labels, true_labels, transform=train_tf,
                                mode="train", **common),
        eval=NoisyLabelDataset(train_images, given_labels, true_labels, transform=test_tf,
                               mode="eval", **common),
        test=NoisyLabelDataset(test_images, test_labels, test_labels, transform=test_tf,
                               mode="test", **common),
        class_names=list(cfg.class_names),
        num_classes=num_classes,
        noise_info=noise_info,
        given_labels_sha256=labels_sha256(given_labels),
    )


def resolve_noise_seed(cfg: Any, noise_mode: str) -> int:
    """noise_seed, or the official default: 1 for idn (hard-coded there), cfg.seed otherwise."""
    seed = getattr(cfg, "noise_seed", None)
    if seed is None:
        seed = 1 if noise_mode == "idn" else cfg.seed
    if seed is None:
        raise DatasetConfigError("expected an integer seed for the noise, found seed=None and "
                         "noise_seed=None; set seed (or noise_seed) in the config")
    return int(seed)


def _noisy_labels(cfg: Any, name: str, noise_mode: str, train_images: np.ndarray,
                  true_labels: np.ndarray, num_classes: int) -> tuple[np.ndarray, dict]:
    cache_dir = getattr(cfg, "noise_cache_dir", None) or str(Path(cfg.data_path) / "noise_file")
    options: dict[str, Any] = {"sym_exclude_true": bool(getattr(cfg, "sym_exclude_true", False))}
    if noise_mode == "asym_cifar100":
        options["coarse_labels"] = read_cifar100_coarse_labels(cfg.data_path, "train")
    labels, info = load_or_make_noisy_labels(
        cache_dir, name, true_labels, num_classes, noise_mode, float(cfg.noise_ratio),
        resolve_noise_seed(cfg, noise_mode), images=train_images, **options)
    return labels, info


def _check_dataset(name: str) -> str:
    if name not in SUPPORTED_DATASETS:
        raise DatasetConfigError(f"dataset {name!r} is not supported yet; supported: "
                         f"{', '.join(SUPPORTED_DATASETS)}")
    return name


def _check_num_classes(cfg: Any, name: str) -> int:
    expected = CIFAR_NUM_CLASSES[name]
    if int(cfg.num_class) != expected:
        raise DatasetConfigError(f"{name} has {expected} classes, but num_class is {cfg.num_class}; "
                         f"set num_class: {expected}")
    if len(cfg.class_names) != expected:
        raise DatasetConfigError(f"{name} has {expected} classes, but class_names lists "
                         f"{len(cfg.class_names)} names; give one name per class")
    return expected


def _check_noise_mode(mode: str | None, name: str) -> str:
    mode = "none" if mode in (None, "") else mode
    if mode == "real":
        raise DatasetConfigError("noise_mode 'real' (CIFAR-N human labels) is handled by "
                         "main_real_phase1.py, which is not available yet; use a synthetic "
                         f"mode: {', '.join(NOISE_MODES)}")
    if mode not in NOISE_MODES:
        raise DatasetConfigError(f"unknown noise_mode {mode!r}; valid modes: {', '.join(NOISE_MODES)}")
    if _DATASET_ONLY_MODES.get(mode, name) != name:
        raise DatasetConfigError(f"noise_mode {mode!r} is defined for {_DATASET_ONLY_MODES[mode]} "
                         f"only, found dataset {name!r}; use 'asym' (cyclic) instead")
    return mode


def _normalization(cfg: Any, name: str) -> tuple:
    choice = getattr(cfg, "normalize", "dataset")
    if choice not in ("dataset", "clip"):
        raise DatasetConfigError(f"expected normalize 'dataset' or 'clip', found {choice!r}")
    return NORMALIZATION[name if choice == "dataset" else "clip"]
