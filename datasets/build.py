"""Build the train / eval / test datasets of a run from its config.

Each dataset family has a reader that returns a `RawData` (items, labels, transforms); this
module applies the (cached) synthetic noise and wraps everything in `NoisyLabelDataset`s. A new
dataset is one reader function plus one line in `READERS`.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Optional, Sequence

import numpy as np

from .cifar import CIFAR_NUM_CLASSES, read_cifar, read_cifar100_coarse_labels
from .errors import DatasetConfigError
from .fashion_mnist import pretrain_downstream_split, read_fashion_mnist
from .noise import NOISE_MODES, labels_sha256, load_or_make_noisy_labels
from .noisy_dataset import NoisyLabelDataset, array_to_pil
from .transforms import NORMALIZATION, cifar_transforms, fashion_mnist_transforms


@dataclass
class RawData:
    """What a reader returns: the two splits, how to load and transform an item, and extras."""

    train_items: Sequence[Any]  # uint8 HWC arrays or file paths, in a stable order
    train_labels: np.ndarray  # true labels (synthetic noise) or the given labels (real noise)
    test_items: Sequence[Any]
    test_labels: np.ndarray
    num_classes: int
    normalization: str  # key of NORMALIZATION used when normalize: dataset
    transforms: Callable[[int, Sequence[float], Sequence[float]], tuple[Callable, Callable]]
    load_image: Callable[[Any], Any] = array_to_pil
    noise_options: dict = field(default_factory=dict)  # extra inputs of the noise generator
    sample_ids: Optional[list] = None  # set when the training set is a subsample


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
    sample_ids: Optional[list] = None


def _read_cifar_family(cfg: Any) -> RawData:
    name, download = cfg.dataset, bool(getattr(cfg, "download", False))
    # Read both splits first so a missing file fails before any noise is generated.
    train_images, train_labels = read_cifar(name, cfg.data_path, "train", download)
    test_images, test_labels = read_cifar(name, cfg.data_path, "test", download)
    options = {}
    if cfg.noise_mode == "asym_cifar100":
        options["coarse_labels"] = read_cifar100_coarse_labels(cfg.data_path, "train")
    return RawData(train_images, train_labels, test_images, test_labels, CIFAR_NUM_CLASSES[name],
                   normalization=name, transforms=cifar_transforms, noise_options=options)


def _read_fashion_mnist(cfg: Any) -> RawData:
    download = bool(getattr(cfg, "download", False))
    train_images, train_labels = read_fashion_mnist(cfg.data_path, "train", download)
    test_images, test_labels = read_fashion_mnist(cfg.data_path, "test", download)
    _, downstream = pretrain_downstream_split(len(train_labels), int(cfg.pretrain_split))
    if cfg.max_train_samples is not None:  # a seeded, class-agnostic subset of the downstream part
        keep = np.random.default_rng(cfg.seed).permutation(len(downstream))[: cfg.max_train_samples]
        downstream = np.sort(downstream[keep])
    return RawData(train_images[downstream], train_labels[downstream], test_images, test_labels, 10,
                   normalization="fashion_mnist", transforms=fashion_mnist_transforms,
                   sample_ids=downstream.tolist())


READERS: dict[str, Callable[[Any], RawData]] = {
    "cifar10": _read_cifar_family,
    "cifar100": _read_cifar_family,
    "fashion_mnist": _read_fashion_mnist,
}
SUPPORTED_DATASETS = tuple(READERS)
# Modes that only make sense for one dataset's class structure.
_DATASET_ONLY_MODES = {"asym_cifar10": "cifar10", "asym_cifar100": "cifar100"}


def build_datasets(cfg: Any) -> DataBundle:
    """Read the dataset named by cfg.dataset, apply (cached) synthetic noise, wrap it."""
    reader = _check_dataset(cfg.dataset)
    noise_mode = _check_noise_mode(cfg.noise_mode, cfg.dataset)
    raw = reader(cfg)
    _check_num_classes(cfg, raw.num_classes)
    given_labels, noise_info = _noisy_labels(cfg, noise_mode, raw)
    mean, std = _normalization(cfg, raw.normalization)
    train_tf, test_tf = raw.transforms(int(cfg.resolution), mean, std)
    common = {"num_classes": raw.num_classes, "seed": int(cfg.seed), "load_image": raw.load_image}
    return DataBundle(
        train=NoisyLabelDataset(raw.train_items, given_labels, raw.train_labels, transform=train_tf,
                                mode="train", **common),
        eval=NoisyLabelDataset(raw.train_items, given_labels, raw.train_labels, transform=test_tf,
                               mode="eval", **common),
        test=NoisyLabelDataset(raw.test_items, raw.test_labels, raw.test_labels, transform=test_tf,
                               mode="test", **common),
        class_names=list(cfg.class_names),
        num_classes=raw.num_classes,
        noise_info=noise_info,
        given_labels_sha256=labels_sha256(given_labels),
        sample_ids=raw.sample_ids,
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


def _noisy_labels(cfg: Any, noise_mode: str, raw: RawData) -> tuple[np.ndarray, dict]:
    cache_dir = getattr(cfg, "noise_cache_dir", None) or str(Path(cfg.data_path) / "noise_file")
    # A subsample gets its own cache name: its labels are not those of the full training set.
    dataset_key = cfg.dataset if raw.sample_ids is None else f"{cfg.dataset}-n{len(raw.train_labels)}"
    options = {"sym_exclude_true": bool(getattr(cfg, "sym_exclude_true", False)), **raw.noise_options}
    images = raw.train_items if noise_mode == "idn" else None
    return load_or_make_noisy_labels(cache_dir, dataset_key, raw.train_labels, raw.num_classes, noise_mode,
                                     float(cfg.noise_ratio), resolve_noise_seed(cfg, noise_mode),
                                     images=images, **options)


def _check_dataset(name: str) -> Callable[[Any], RawData]:
    if name not in READERS:
        raise DatasetConfigError(f"dataset {name!r} is not supported yet; supported: "
                                 f"{', '.join(SUPPORTED_DATASETS)}")
    return READERS[name]


def _check_num_classes(cfg: Any, expected: int) -> None:
    if int(cfg.num_class) != expected:
        raise DatasetConfigError(f"{cfg.dataset} has {expected} classes, but num_class is {cfg.num_class}; "
                                 f"set num_class: {expected}")
    if len(cfg.class_names) != expected:
        raise DatasetConfigError(f"{cfg.dataset} has {expected} classes, but class_names lists "
                                 f"{len(cfg.class_names)} names; give one name per class")


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
