"""Several augmented views of each training image in one sample (Co-Reg's weak and strong views).

`MultiViewDataset` returns the training tuple the engine expects, (views, shown label, 0, index),
with `views` a (V, 3, H, W) tensor, one row per transform. The views are drawn one after the
other from a seed of (seed, epoch, index), like `NoisyLabelDataset`'s augmentation, so a sample
looks the same in any worker or process and a resumed epoch replays it. `shown_labels` is what the batch
carries as its label: Co-Reg shows the annotator's top-1, never the dataset's labels.
"""
from __future__ import annotations

from typing import Callable, Sequence

import numpy as np
import torch
import torchvision.transforms as T
from torch.utils.data import Dataset

from .noisy_dataset import NoisyLabelDataset, _sample_key

_VIEW_SALT = 0x5EEE  # view seeds differ from the complementary-label and single-view augmentation keys


class MultiViewDataset(Dataset):
    """The images of `base` under each of `transforms`; labels as given by `shown_labels`."""

    def __init__(self, base: NoisyLabelDataset, transforms: Sequence[Callable], shown_labels: np.ndarray) -> None:
        if len(shown_labels) != len(base):
            raise ValueError(f"expected one shown label per image ({len(base)}), found {len(shown_labels)}")
        self.base = base
        self.transforms = list(transforms)
        self.shown_labels = np.asarray(shown_labels, dtype=np.int64)
        self.epoch = 0

    def set_epoch(self, epoch: int) -> None:
        self.epoch = int(epoch)

    def __len__(self) -> int:
        return len(self.base)

    def __getitem__(self, index: int) -> tuple:
        image = self.base.load_image(self.base.images[index])
        key = _sample_key(self.base.seed + _VIEW_SALT, self.epoch, index).reshape(-1)[0]
        with torch.random.fork_rng(devices=[]):  # leaves the caller's torch RNG as it was
            # the CPU generator only: torch.manual_seed would also (lazily) reseed every accelerator
            torch.random.default_generator.manual_seed(int(key) & 0x7FFF_FFFF_FFFF_FFFF)
            views = [transform(image) for transform in self.transforms]  # drawn one after the other
        return torch.stack(views), int(self.shown_labels[index]), 0, int(index)


def strong_transform(weak: T.Compose, num_ops: int, magnitude: int) -> T.Compose:
    """The weak (training) transform with RandAugment(num_ops, magnitude) just before ToTensor."""
    steps = list(weak.transforms)
    position = next((i for i, step in enumerate(steps) if isinstance(step, T.ToTensor)), None)
    if position is None:
        raise ValueError("expected a training transform with a ToTensor step to insert RandAugment before")
    if num_ops > 0:
        steps.insert(position, T.RandAugment(num_ops=num_ops, magnitude=magnitude))
    return T.Compose(steps)
