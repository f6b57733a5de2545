"""Fashion-MNIST (the offline miniature's data): IDX files, and the pre-training / downstream split.

Looked for, in order: `data_path` itself, torchvision's `data_path/FashionMNIST/raw/`, and
Debian's `dataset-fashion-mnist` package (`/usr/share/datasets/fashion-mnist/`). With
`download: true` torchvision downloads it into `data_path`. The 60,000 training images are split
once, reproducibly, into a part that pre-trains the tiny CLIP and a disjoint downstream part that
DeFT sees with noisy labels; the 10,000 test images are the test set.
"""
from __future__ import annotations

import gzip
from pathlib import Path

import numpy as np

from .errors import DatasetNotFoundError

CLASS_NAMES = ["T-shirt/top", "trouser", "pullover", "dress", "coat", "sandal", "shirt", "sneaker", "bag",
               "ankle boot"]
DEBIAN_DIR = Path("/usr/share/datasets/fashion-mnist")
_FILES = {"train": ("train-images-idx3-ubyte", "train-labels-idx1-ubyte"),
          "test": ("t10k-images-idx3-ubyte", "t10k-labels-idx1-ubyte")}
SPLIT_SEED = 20240929  # fixed: the pre-training / downstream split never depends on the run seed


def read_fashion_mnist(data_path: str, split: str, download: bool = False) -> tuple[np.ndarray, np.ndarray]:
    """Return (images uint8 (N, 28, 28, 3) RGB, int64 labels) of the train or test split."""
    if split not in _FILES:
        raise ValueError(f"expected split 'train' or 'test', found {split!r}")
    folder = _find(data_path, split)
    download_error = None
    if folder is None and download:
        download_error = _download(data_path)
        folder = _find(data_path, split)
    if folder is None:
        raise DatasetNotFoundError(_not_found_message(data_path, split, download_error))
    image_file, label_file = (_existing(folder / name) for name in _FILES[split])
    images = _read_idx(image_file, magic=2051)
    labels = _read_idx(label_file, magic=2049).astype(np.int64)
    if images.ndim != 3 or len(images) != len(labels):
        raise ValueError(f"{image_file}: expected (N, 28, 28) images matching {len(labels)} labels, "
                         f"found {images.shape}")
    # Grey to RGB: CLIP's stem and the shared transforms expect three channels.
    return np.repeat(images[..., None], 3, axis=3), labels


def pretrain_downstream_split(num_samples: int, pretrain_size: int) -> tuple[np.ndarray, np.ndarray]:
    """Disjoint sorted index sets (pre-training part, downstream part) of the training images."""
    if not 0 <= pretrain_size <= num_samples:
        raise ValueError(f"pretrain_split must lie in [0, {num_samples}], found {pretrain_size}")
    order = np.random.default_rng(SPLIT_SEED).permutation(num_samples)
    return np.sort(order[:pretrain_size]), np.sort(order[pretrain_size:])


def _read_idx(path: Path, magic: int) -> np.ndarray:
    opener = gzip.open if path.suffix == ".gz" else open
    with opener(path, "rb") as handle:
        data = handle.read()
    found = int.from_bytes(data[:4], "big")
    if found != magic:
        raise ValueError(f"{path}: expected an IDX file with magic number {magic}, found {found}; "
                         "the file is damaged or not Fashion-MNIST")
    ndim = data[3]
    shape = tuple(int.from_bytes(data[4 + 4 * i: 8 + 4 * i], "big") for i in range(ndim))
    body = np.frombuffer(data, dtype=np.uint8, offset=4 + 4 * ndim)
    if body.size != int(np.prod(shape)):
        raise ValueError(f"{path}: header says {shape} but the file holds {body.size} bytes; truncated?")
    return body.reshape(shape)


def _existing(stem: Path) -> Path:
    return stem if stem.is_file() else stem.with_name(stem.name + ".gz")


def _candidates(data_path: str) -> list[Path]:
    root = Path(data_path)
    return [root, root / "FashionMNIST" / "raw", DEBIAN_DIR]


def _find(data_path: str, split: str) -> Path | None:
    for folder in _candidates(data_path):
        if all(_existing(folder / name).is_file() for name in _FILES[split]):
            return folder
    return None


def _download(data_path: str) -> str | None:
    try:
        import torchvision.datasets as tv

        tv.FashionMNIST(root=data_path, train=True, download=True)
        tv.FashionMNIST(root=data_path, train=False, download=True)
    except Exception as exc:  # offline: URLError, socket errors, ...
        return f"{type(exc).__name__}: {exc}"
    return None


def _not_found_message(data_path: str, split: str, download_error: str | None) -> str:
    files = ", ".join(f"{name}[.gz]" for name in _FILES[split])
    looked = "; ".join(str(p) for p in _candidates(data_path))
    message = (f"Fashion-MNIST {split} split not found: expected {files} in one of: {looked}. "
               "Install Debian's package (sudo apt-get install dataset-fashion-mnist) or set "
               "download: true on a machine with internet (torchvision downloads it into data_path).")
    if download_error:
        message += f" The download failed: {download_error}"
    return message
