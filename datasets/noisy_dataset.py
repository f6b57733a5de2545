"""A dataset of images with given (possibly noisy) labels, true labels and complementary labels."""
from __future__ import annotations

from typing import Any, Callable, Sequence

import numpy as np
import torch
from PIL import Image
from torch.utils.data import Dataset

MODES = ("train", "eval", "test")
_MASK64 = (1 << 64) - 1
_AUGMENTATION_SALT = 0x5EED  # augmentation keys differ from complementary-label keys


def complementary_labels(given_labels: np.ndarray | int, num_classes: int, seed: int,
                         epoch: int, indices: np.ndarray | int) -> np.ndarray:
    """Draw a label uniformly from the C-1 classes other than the given one (HotanLee/DeFT dataloader/dataloader_cifar.py:134-136).

    The draw is a hash of (seed, epoch, index), so it does not depend on worker count or order.
    """
    if num_classes < 2:
        raise ValueError(f"complementary labels need at least 2 classes, found {num_classes}")
    given, index = np.broadcast_arrays(np.asarray(given_labels, dtype=np.int64),
                                       np.asarray(indices, dtype=np.int64))
    key = _sample_key(seed, epoch, index)
    # 64-bit hash modulo C-1: the bias is below C / 2**64, far under any sampling error.
    offset = 1 + (key % np.uint64(num_classes - 1)).astype(np.int64)
    return ((given.reshape(offset.shape) + offset) % num_classes).reshape(given.shape)


def _sample_key(seed: int, epoch: int, index: np.ndarray | int) -> np.ndarray:
    """A well-mixed 64-bit key per (seed, epoch, sample index)."""
    index = np.asarray(index, dtype=np.int64)
    return _mix64(_mix64(np.full(index.shape, int(seed) & _MASK64, dtype=np.uint64)
                         + np.uint64(int(epoch) & _MASK64)) + index.astype(np.uint64))


def _mix64(x: np.ndarray) -> np.ndarray:
    """SplitMix64 finaliser: a bijective, well-mixed 64-bit hash (wrapping uint64 arithmetic)."""
    x = np.atleast_1d(x).astype(np.uint64) + np.uint64(0x9E3779B97F4A7C15)
    x = (x ^ (x >> np.uint64(30))) * np.uint64(0xBF58476D1CE4E5B9)
    x = (x ^ (x >> np.uint64(27))) * np.uint64(0x94D049BB133111EB)
    return x ^ (x >> np.uint64(31))


def array_to_pil(image: Any) -> Image.Image:
    """Turn a uint8 HWC (or HW) array into a PIL image."""
    return Image.fromarray(np.asarray(image))


class NoisyLabelDataset(Dataset):
    """Images with given labels; returns the tuples of the official loaders (HotanLee/DeFT dataloader/dataloader_cifar.py:129-147).

    mode "train": (img, given, complementary, index); "eval": (img, given, given, index);
    "test": (img, label). Complementary labels change with set_epoch(); DataLoader workers
    receive a fresh copy of the dataset with each new iterator, so call set_epoch before
    iterating (persistent_workers=True would keep the old epoch). The training augmentation of
    a sample is drawn from (seed, epoch, index), so it is the same whichever process or worker
    loads the sample: one process and N (torchrun) see the same images.
    """

    def __init__(self, images: Sequence[Any], given_labels: Sequence[int],
                 true_labels: Sequence[int] | None = None, *, num_classes: int,
                 transform: Callable | None = None, mode: str = "train", seed: int = 0,
                 load_image: Callable[[Any], Image.Image] = array_to_pil):
        if mode not in MODES:
            raise ValueError(f"expected mode in {MODES}, found {mode!r}")
        self.images = images
        self.num_classes = int(num_classes)
        self.given_labels = _checked_labels(given_labels, len(images), self.num_classes, "given")
        self.true_labels = None if true_labels is None else _checked_labels(
            true_labels, len(images), self.num_classes, "true")
        self.is_noisy = None if self.true_labels is None else self.given_labels != self.true_labels
        self.is_clean = None if self.is_noisy is None else ~self.is_noisy  # what a detector should keep
        self.transform = transform
        self.mode = mode
        self.seed = int(seed)
        self.epoch = 0
        self.load_image = load_image

    def set_epoch(self, epoch: int) -> None:
        """Select the complementary-label draw of this epoch."""
        self.epoch = int(epoch)

    def __len__(self) -> int:
        return len(self.images)

    def __getitem__(self, index: int) -> tuple:
        image = self.load_image(self.images[index])
        if self.transform is not None:
            if self.mode == "train":
                with torch.random.fork_rng(devices=[]):  # leaves the caller's torch RNG as it was
                    key = _sample_key(self.seed + _AUGMENTATION_SALT, self.epoch, index).reshape(-1)[0]
                    # the CPU generator only: torch.manual_seed would also (lazily) reseed every accelerator
                    torch.random.default_generator.manual_seed(int(key) & 0x7FFF_FFFF_FFFF_FFFF)
                    image = self.transform(image)
            else:
                image = self.transform(image)
        given = int(self.given_labels[index])
        if self.mode == "test":
            return image, given
        if self.mode == "eval":
            return image, given, given, int(index)
        complementary = complementary_labels(given, self.num_classes, self.seed, self.epoch, index)
        return image, given, int(complementary), int(index)


def _checked_labels(labels: Sequence[int], num_samples: int, num_classes: int,
                    what: str) -> np.ndarray:
    array = np.asarray(labels, dtype=np.int64)
    if array.shape != (num_samples,):
        raise ValueError(f"expected {num_samples} {what} labels (one per image), found shape "
                         f"{array.shape}")
    if num_samples and (array.min() < 0 or array.max() >= num_classes):
        raise ValueError(f"expected {what} labels in [0, {num_classes}), found "
                         f"[{array.min()}, {array.max()}]; check num_classes")
    return array
