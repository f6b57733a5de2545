"""Data loaders whose batches are the same in one process and in N (torchrun).

`EpochSampler` draws the epoch's order from (seed, epoch) and deals it out to the ranks as
DistributedSampler does: the order is padded (by repeating its start) to a multiple of the world
size and rank r takes positions r, r + W, r + 2W, ... With a per-rank batch of `batch_size / W`,
global batch k is then exactly positions [kB, (k+1)B) of the order, the batch one process would
draw. Padded positions are duplicates: `Batch.valid` marks them so that no loss, decision or
metric counts a sample twice.
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Iterator, Optional

import torch
from torch.utils.data import DataLoader, Dataset, Sampler

from utils import distributed
from utils.config import ConfigError


def epoch_seed(seed: int, epoch: int) -> int:
    """A seed for one epoch's shuffling and augmentation, so a resumed epoch replays exactly."""
    return (seed * 1_000_003 + epoch * 7919) % 2**31


class EpochSampler(Sampler[int]):
    """The epoch's sample order (a seeded permutation, or 0..N-1), sharded over the ranks."""

    def __init__(self, dataset: Dataset, shuffle: bool, seed: int = 0, rank: int = 0, world_size: int = 1) -> None:
        self.dataset = dataset  # its length is read at each epoch: TURN's subset changes size
        self.shuffle = shuffle
        self.seed = seed
        self.rank = rank
        self.world_size = world_size
        self.epoch = 0

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch

    @property
    def num_samples(self) -> int:
        """Samples in the dataset (without padding)."""
        return len(self.dataset)

    def __len__(self) -> int:
        return math.ceil(self.num_samples / self.world_size)

    def order(self) -> torch.Tensor:
        """The epoch's positions 0..N-1 in sample order, padded to a multiple of the world size."""
        n = self.num_samples
        if self.shuffle:
            generator = torch.Generator().manual_seed(epoch_seed(self.seed, self.epoch))
            order = torch.randperm(n, generator=generator)
        else:
            order = torch.arange(n)
        padding = len(self) * self.world_size - n
        if padding and n:
            order = torch.cat([order, order.repeat(math.ceil(padding / n))[:padding]])
        return order

    def __iter__(self) -> Iterator[int]:
        return iter(self.order()[self.rank::self.world_size].tolist())

    def valid(self, first_local_position: int, count: int) -> torch.Tensor:
        """(count,) bool: which of this rank's positions first..first+count-1 are real samples."""
        local = torch.arange(first_local_position, first_local_position + count)
        return self.rank + self.world_size * local < self.num_samples


@dataclass
class Batch:
    """One (per-rank) training batch, on the device. `valid` is False for sampler padding."""

    images: torch.Tensor
    given_labels: torch.Tensor
    complementary_labels: torch.Tensor
    indices: torch.Tensor  # positions in the (base) training dataset
    valid: torch.Tensor

    def __len__(self) -> int:
        return len(self.indices)

    def slice(self, start: int, stop: int) -> "Batch":
        """Samples start..stop-1 (a micro-batch)."""
        return Batch(*(t[start:stop] for t in (self.images, self.given_labels, self.complementary_labels,
                                               self.indices, self.valid)))


def make_loader(dataset: Dataset, batch_size: int, shuffle: bool, num_workers: int, device: torch.device,
                seed: int = 0, persistent: bool = False) -> DataLoader:
    """A loader over this rank's shard; `batch_size` is the global batch (split over the ranks).

    Shuffled loaders draw their order from (seed, epoch) (`set_loader_epoch`); drop_last=False.
    `persistent`: keep the worker processes between passes, for a loader that is iterated again and
    again (test and scoring passes) over a dataset that never changes. Not for training loaders: their
    workers must be forked anew each epoch to see the epoch's complementary labels and augmentation
    (`set_epoch` changes the dataset in this process) and TURN's new subset.
    """
    world = distributed.world_size()
    if batch_size % world:
        raise ConfigError(f"batch_size {batch_size} is the global batch and must be divisible by the number of "
                          f"processes ({world}); choose a batch size that is a multiple of {world}")
    sampler = EpochSampler(dataset, shuffle, seed, distributed.rank(), world)
    return DataLoader(dataset, batch_size=batch_size // world, sampler=sampler, num_workers=num_workers,
                      pin_memory=device.type == "cuda", drop_last=False,
                      persistent_workers=persistent and num_workers > 0)


def set_loader_epoch(loader: DataLoader, epoch: int) -> None:
    """Select the epoch's order (sampler) and complementary-label / augmentation draws (dataset)."""
    if isinstance(loader.sampler, EpochSampler):
        loader.sampler.set_epoch(epoch)
    dataset = getattr(loader.dataset, "dataset", loader.dataset)  # unwrap a Subset
    if hasattr(dataset, "set_epoch"):
        dataset.set_epoch(epoch)


def batches(loader: DataLoader, device: torch.device) -> Iterator[Batch]:
    """The loader's training tuples (image, given, complementary, index) as `Batch`es on `device`."""
    sampler: Optional[EpochSampler] = loader.sampler if isinstance(loader.sampler, EpochSampler) else None
    position = 0
    for images, given, complementary, indices in loader:
        count = len(indices)
        valid = sampler.valid(position, count) if sampler is not None else torch.ones(count, dtype=torch.bool)
        position += count
        yield Batch(*(t.to(device, non_blocking=True) for t in (images, given, complementary, indices, valid)))


def dataset_size(loader: DataLoader) -> int:
    """Length of the dataset the batch indices refer to (the base dataset of a Subset)."""
    return len(getattr(loader.dataset, "dataset", loader.dataset))
