"""Write tiny datasets in their real on-disk formats, for tests."""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np

from datasets.cifar import CIFAR_NUM_CLASSES, write_cifar_pickles


@dataclass
class CifarFixture:
    """What write_cifar_fixture wrote: the data_path and the arrays, for checks."""

    data_path: Path
    train_images: np.ndarray  # (N, 32, 32, 3) uint8
    train_labels: np.ndarray  # (N,) int64; fine labels for CIFAR-100
    test_images: np.ndarray
    test_labels: np.ndarray
    class_names: list[str]
    train_coarse_labels: np.ndarray | None = None  # CIFAR-100 only: fine % 20


def make_class_images(labels: np.ndarray, class_colours: np.ndarray, rng: np.random.Generator,
                      size: int = 32) -> np.ndarray:
    """uint8 (N, size, size, 3) images: the colour of each sample's class plus pixel noise."""
    noise = rng.normal(0, 20, size=(len(labels), size, size, 3))
    return np.clip(class_colours[labels, None, None, :] + noise, 0, 255).astype(np.uint8)


def balanced_labels(num_samples: int, num_classes: int, rng: np.random.Generator) -> np.ndarray:
    """Labels 0..C-1 repeated as evenly as possible, in a random order."""
    return rng.permutation(np.arange(num_samples) % num_classes).astype(np.int64)


def write_cifar_fixture(root: str | Path, name: str = "cifar10", num_train: int = 60,
                        num_test: int = 20, layout: str = "torchvision",
                        seed: int = 0) -> CifarFixture:
    """Write a tiny CIFAR-10/100 in the real pickle format under root; data_path is root."""
    num_classes = CIFAR_NUM_CLASSES[name]
    rng = np.random.default_rng(seed)
    train_labels = balanced_labels(num_train, num_classes, rng)
    test_labels = balanced_labels(num_test, num_classes, rng)
    class_colours = rng.integers(30, 226, size=(num_classes, 3))  # learnable: colour = class
    train_images = make_class_images(train_labels, class_colours, rng)
    test_images = make_class_images(test_labels, class_colours, rng)
    class_names = [f"{name} class {i}" for i in range(num_classes)]
    write_cifar_pickles(root, name, train_images, train_labels, test_images, test_labels,
                        layout=layout, class_names=class_names)
    coarse = train_labels % 20 if name == "cifar100" else None
    return CifarFixture(Path(root), train_images, train_labels, test_images, test_labels,
                        class_names, coarse)
