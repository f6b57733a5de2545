"""Dataset readers, synthetic label noise and the noisy-label dataset wrapper."""
from .build import READERS, DataBundle, RawData, build_datasets
from .cifar import read_cifar, read_cifar100_coarse_labels, write_cifar_pickles
from .errors import DatasetConfigError, DatasetNotFoundError
from .noise import (actual_noise_rate, labels_sha256, load_or_make_noisy_labels,
                    make_noisy_labels)
from .noisy_dataset import NoisyLabelDataset, complementary_labels
from .transforms import NORMALIZATION, cifar_transforms

__all__ = [
    "DataBundle", "DatasetConfigError", "DatasetNotFoundError", "READERS", "RawData", "NORMALIZATION", "NoisyLabelDataset",
    "actual_noise_rate", "build_datasets", "cifar_transforms", "complementary_labels",
    "labels_sha256", "load_or_make_noisy_labels", "make_noisy_labels", "read_cifar",
    "read_cifar100_coarse_labels", "write_cifar_pickles",
]
