"""Image transforms and normalisation constants of the official loaders."""
from __future__ import annotations

from typing import Callable, Sequence

import torchvision.transforms as T

# (mean, std) per statistics set, as in the official loaders (HotanLee/DeFT dataloader/dataloader_cifar.py:236,
# :249; dataloader_stanford_cars.py:44-45; dataloader_cub.py:50; dataloader_clothing1M.py:91; dataloader_webvision.py:95).
NORMALIZATION = {
    "cifar10": ((0.4914, 0.4822, 0.4465), (0.2023, 0.1994, 0.2010)),
    "cifar100": ((0.507, 0.487, 0.441), (0.267, 0.256, 0.276)),
    "clip": ((0.48145466, 0.4578275, 0.40821073), (0.26862954, 0.26130258, 0.27577711)),
    "imagenet": ((0.485, 0.456, 0.406), (0.229, 0.224, 0.225)),
    "clothing1m": ((0.6959, 0.6537, 0.6371), (0.3113, 0.3192, 0.3214)),
    "fashion_mnist": ((0.2860, 0.2860, 0.2860), (0.3530, 0.3530, 0.3530)),  # grey repeated to RGB
}


def _pad_crop_resize_flip(native: int, padding: int, resolution: int, mean: Sequence[float],
                          std: Sequence[float]) -> tuple[Callable, Callable]:
    """(train, test) for small images: pad-and-crop at the native size, then resize, flip, normalise."""
    # The official CIFAR pipeline crops before resizing, so the padding is at the native scale.
    resize = [] if resolution == native else [T.Resize(resolution)]
    finish = [T.ToTensor(), T.Normalize(mean, std)]
    train = T.Compose([T.RandomCrop(native, padding=padding), *resize, T.RandomHorizontalFlip(), *finish])
    test = T.Compose([*resize, *finish])
    return train, test


def cifar_transforms(resolution: int, mean: Sequence[float],
                     std: Sequence[float]) -> tuple[Callable, Callable]:
    """Return (train, test) transforms: crop at 32 px (padding 4), then resize, flip, tensor, normalise."""
    return _pad_crop_resize_flip(32, 4, resolution, mean, std)


def fashion_mnist_transforms(resolution: int, mean: Sequence[float],
                             std: Sequence[float]) -> tuple[Callable, Callable]:
    """Return (train, test) transforms of the miniature: crop at 28 px (padding 2), resize, flip."""
    return _pad_crop_resize_flip(28, 2, resolution, mean, std)


def _resize_size(resolution: int) -> int:
    """The official 256-pixel resize for 224-pixel crops, scaled to other resolutions."""
    return int(round(resolution * 256 / 224))


def folder_transforms(resolution: int, mean: Sequence[float],
                      std: Sequence[float]) -> tuple[Callable, Callable]:
    """CUB-200-2011, Stanford Cars, Tiny-ImageNet: train Resize((256, 256)), RandomCrop(224), flip;
    test Resize((224, 224)) without a crop (HotanLee/DeFT dataloader/dataloader_cub.py:44-57,
    dataloader_stanford_cars.py:46-59, dataloader_tiny_imagenet.py:44-57)."""
    size = _resize_size(resolution)
    finish = [T.ToTensor(), T.Normalize(mean, std)]
    train = T.Compose([T.Resize((size, size)), T.RandomCrop(resolution), T.RandomHorizontalFlip(), *finish])
    test = T.Compose([T.Resize((resolution, resolution)), *finish])
    return train, test


def clothing1m_transforms(resolution: int, mean: Sequence[float],
                          std: Sequence[float]) -> tuple[Callable, Callable]:
    """Clothing1M (HotanLee/DeFT dataloader/dataloader_clothing1M.py:86-98): shorter side to 256, RandomCrop(224) and flip for training,
    CenterCrop(224) for testing."""
    size = _resize_size(resolution)
    finish = [T.ToTensor(), T.Normalize(mean, std)]
    train = T.Compose([T.Resize(size), T.RandomCrop(resolution), T.RandomHorizontalFlip(), *finish])
    test = T.Compose([T.Resize(size), T.CenterCrop(resolution), *finish])
    return train, test


def webvision_transforms(resolution: int, mean: Sequence[float],
                         std: Sequence[float]) -> tuple[Callable, Callable]:
    """WebVision and its ImageNet val (HotanLee/DeFT dataloader/dataloader_webvision.py:90-108): Resize((256, 256)), then RandomCrop(224) and
    flip for training, CenterCrop(224) for testing."""
    size = _resize_size(resolution)
    finish = [T.ToTensor(), T.Normalize(mean, std)]
    train = T.Compose([T.Resize((size, size)), T.RandomCrop(resolution), T.RandomHorizontalFlip(), *finish])
    test = T.Compose([T.Resize((size, size)), T.CenterCrop(resolution), *finish])
    return train, test
