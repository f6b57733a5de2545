"""Read and write CIFAR-10/100 in the original Python-pickle format.

Two layouts are accepted: the pickle files directly in `data_path` (the official DeFT layout)
and torchvision's `data_path/cifar-10-batches-py/` or `data_path/cifar-100-python/`.
"""
from __future__ import annotations

import pickle
import struct
from pathlib import Path
from typing import Any, Sequence

import numpy as np

from .errors import DatasetNotFoundError

CIFAR_NUM_CLASSES = {"cifar10": 10, "cifar100": 100}
CIFAR100_NUM_COARSE = 20
_DISPLAY_NAME = {"cifar10": "CIFAR-10", "cifar100": "CIFAR-100"}
_TORCHVISION_FOLDER = {"cifar10": "cifar-10-batches-py", "cifar100": "cifar-100-python"}
_SPLIT_FILES = {
    ("cifar10", "train"): tuple(f"data_batch_{i}" for i in range(1, 6)),
    ("cifar10", "test"): ("test_batch",),
    ("cifar100", "train"): ("train",),
    ("cifar100", "test"): ("test",),
}
_LABEL_KEY = {"cifar10": b"labels", "cifar100": b"fine_labels"}
_PIXELS = 3 * 32 * 32


def read_cifar(name: str, data_path: str, split: str,
               download: bool = False) -> tuple[np.ndarray, np.ndarray]:
    """Return (images uint8 (N,32,32,3) HWC, int64 labels); fine labels for CIFAR-100."""
    return _read_split(name, data_path, split, download, _LABEL_KEY[_check_name(name)],
                       CIFAR_NUM_CLASSES[name])


def read_cifar100_coarse_labels(data_path: str, split: str = "train",
                                download: bool = False) -> np.ndarray:
    """Return the CIFAR-100 superclass (coarse) labels of a split as int64 (N,)."""
    _, coarse = _read_split("cifar100", data_path, split, download, b"coarse_labels",
                            CIFAR100_NUM_COARSE)
    return coarse


def find_cifar_folder(name: str, data_path: str, split: str) -> Path | None:
    """Return the folder holding every pickle file of the split, or None."""
    files = _SPLIT_FILES[(_check_name(name), _check_split(split))]
    for folder in _candidate_folders(name, data_path):
        if all((folder / f).is_file() for f in files):
            return folder
    return None


def _read_split(name: str, data_path: str, split: str, download: bool, label_key: bytes,
                num_labels: int) -> tuple[np.ndarray, np.ndarray]:
    folder = find_cifar_folder(name, data_path, split)
    download_error = None
    if folder is None and download:
        download_error = _download(name, data_path)
        folder = find_cifar_folder(name, data_path, split)
    if folder is None:
        raise DatasetNotFoundError(_not_found_message(name, data_path, split, download,
                                                      download_error))
    parts = [_read_batch(folder / f, label_key, num_labels) for f in _SPLIT_FILES[(name, split)]]
    images = np.concatenate([p[0] for p in parts])
    labels = np.concatenate([p[1] for p in parts])
    return images, labels


def _read_batch(path: Path, label_key: bytes, num_labels: int) -> tuple[np.ndarray, np.ndarray]:
    batch = _load_pickle(path)
    for key in (b"data", label_key):
        if key not in batch:
            raise ValueError(f"{path}: expected a CIFAR pickle with key {key.decode()!r}, found "
                             f"keys {sorted(k.decode() for k in batch)}; re-download the dataset")
    data = np.asarray(batch[b"data"])
    if data.dtype != np.uint8 or data.ndim != 2 or data.shape[1] != _PIXELS:
        raise ValueError(f"{path}: expected 'data' as uint8 (N, {_PIXELS}), found "
                         f"{data.dtype} {data.shape}; the file is truncated or not CIFAR")
    labels = np.asarray(batch[label_key], dtype=np.int64)
    if labels.shape != (len(data),):
        raise ValueError(f"{path}: expected {len(data)} labels under {label_key.decode()!r} "
                         f"(one per image), found shape {labels.shape}")
    if len(labels) and (labels.min() < 0 or labels.max() >= num_labels):
        raise ValueError(f"{path}: expected labels in [0, {num_labels}), found "
                         f"[{labels.min()}, {labels.max()}]; wrong dataset name for this file?")
    # The pickle stores each image as 3 colour planes (CHW); the transforms want HWC.
    images = np.ascontiguousarray(data.reshape(-1, 3, 32, 32).transpose(0, 2, 3, 1))
    return images, labels


class _ArraysOnlyUnpickler(pickle.Unpickler):
    """Unpickles dicts, lists, strings, numbers and NumPy arrays only: a planted object is refused,
    never constructed (plain pickle.load would run whatever a file asks for)."""

    ALLOWED = {("numpy.core.multiarray", "_reconstruct"), ("numpy._core.multiarray", "_reconstruct"),
               ("numpy", "ndarray"), ("numpy", "dtype"), ("numpy.core.multiarray", "scalar"),
               ("numpy._core.multiarray", "scalar"), ("_codecs", "encode")}  # bytes in protocol-2 pickles

    def find_class(self, module: str, name: str):
        if (module, name) in self.ALLOWED:
            return super().find_class(module, name)
        raise pickle.UnpicklingError(f"refusing to load {module}.{name}: a CIFAR file holds arrays and lists only")


def _load_pickle(path: Path) -> dict[bytes, Any]:
    try:
        with open(path, "rb") as f:
            obj = _ArraysOnlyUnpickler(f, encoding="bytes").load()
    except Exception as exc:  # truncated files raise EOFError, UnpicklingError, ValueError...
        raise ValueError(f"{path} is not a readable CIFAR pickle file "
                         f"({type(exc).__name__}: {exc}); delete it and download again") from exc
    if not isinstance(obj, dict):
        raise ValueError(f"{path}: expected a pickled dict, found {type(obj).__name__}")
    # Files pickled by Python 2 load with bytes keys, files written by Python 3 with str keys.
    return {k.encode() if isinstance(k, str) else k: v for k, v in obj.items()}


def _download(name: str, data_path: str) -> str | None:
    """Download with torchvision; return the error text, or None on success."""
    try:
        import torchvision.datasets as tv

        cls = tv.CIFAR10 if name == "cifar10" else tv.CIFAR100
        cls(root=data_path, train=True, download=True)
    except Exception as exc:  # offline machines fail in many ways (URLError, socket, ...)
        return f"{type(exc).__name__}: {exc}"
    return None


def _not_found_message(name: str, data_path: str, split: str, download: bool,
                       download_error: str | None) -> str:
    files = _SPLIT_FILES[(name, split)]
    looked = []
    for folder in _candidate_folders(name, data_path):
        missing = [f for f in files if not (folder / f).is_file()]
        looked.append(f"{folder} (missing: {', '.join(missing)})")
    message = (f"{_DISPLAY_NAME[name]} {split} split not found; expected the pickle file(s) "
               f"{', '.join(files)} in one of: {'; '.join(looked)}. Pass --opts data_path=... "
               f"pointing at a folder that holds them, or set download: true on a machine with "
               f"internet.")
    if download and download_error:
        message += f" The download failed: {download_error}"
    return message


def _candidate_folders(name: str, data_path: str) -> list[Path]:
    root = Path(data_path)
    return [root, root / _TORCHVISION_FOLDER[name]]


def _check_name(name: str) -> str:
    if name not in CIFAR_NUM_CLASSES:
        raise ValueError(f"expected a CIFAR name in {sorted(CIFAR_NUM_CLASSES)}, found {name!r}")
    return name


def _check_split(split: str) -> str:
    if split not in ("train", "test"):
        raise ValueError(f"expected split 'train' or 'test', found {split!r}")
    return split


# ---------------------------------------------------------------------------------------------
# Writing (tests, fixtures and conversion tools)

class _Py2Str(bytes):
    """Bytes that pickle as a Python 2 `str`, as in the real CIFAR files."""


class _Py2Pickler(pickle._Pickler):  # the pure-Python pickler lets us emit one extra opcode
    dispatch = pickle._Pickler.dispatch.copy()

    def _save_py2_str(self, obj: _Py2Str) -> None:
        # A Python 2 str loads as bytes with encoding="bytes" and as str with "latin1",
        # so the files read like the originals in both torchvision's and the official loader.
        if len(obj) < 256:
            self.write(pickle.SHORT_BINSTRING + bytes([len(obj)]) + bytes(obj))
        else:
            self.write(pickle.BINSTRING + struct.pack("<i", len(obj)) + bytes(obj))
        self.memoize(obj)

    dispatch[_Py2Str] = _save_py2_str


def write_cifar_pickles(root: str | Path, name: str, train_images: np.ndarray,
                        train_labels: Sequence[int], test_images: np.ndarray,
                        test_labels: Sequence[int], layout: str = "torchvision", *,
                        class_names: Sequence[str] | None = None,
                        train_coarse_labels: Sequence[int] | None = None,
                        test_coarse_labels: Sequence[int] | None = None) -> Path:
    """Write images (N,32,32,3) uint8 and labels as CIFAR pickle files; return their folder.

    CIFAR-100 coarse labels default to fine % 20, a placeholder superclass split.
    """
    _check_name(name)
    if layout not in ("torchvision", "flat"):
        raise ValueError(f"expected layout 'torchvision' or 'flat', found {layout!r}")
    folder = Path(root) / _TORCHVISION_FOLDER[name] if layout == "torchvision" else Path(root)
    folder.mkdir(parents=True, exist_ok=True)
    num_classes = CIFAR_NUM_CLASSES[name]
    names = list(class_names) if class_names is not None else [
        f"class_{i}" for i in range(num_classes)]
    splits = {"train": (train_images, train_labels, train_coarse_labels),
              "test": (test_images, test_labels, test_coarse_labels)}
    for split, (images, labels, coarse) in splits.items():
        data = _to_pickle_rows(images)
        labels = np.asarray(labels, dtype=np.int64)
        files = _SPLIT_FILES[(name, split)]
        chunks = np.array_split(np.arange(len(data)), len(files))
        for file_name, rows in zip(files, chunks):
            batch = {_Py2Str(b"batch_label"): _Py2Str(f"{file_name} (synthetic)".encode()),
                     _Py2Str(b"data"): data[rows],
                     _Py2Str(b"filenames"): [_Py2Str(f"img_{i:06d}.png".encode()) for i in rows]}
            if name == "cifar10":
                batch[_Py2Str(b"labels")] = [int(v) for v in labels[rows]]
            else:
                coarse_arr = labels % CIFAR100_NUM_COARSE if coarse is None else np.asarray(coarse)
                batch[_Py2Str(b"fine_labels")] = [int(v) for v in labels[rows]]
                batch[_Py2Str(b"coarse_labels")] = [int(v) for v in coarse_arr[rows]]
            _dump(folder / file_name, batch)
    _dump(folder / ("batches.meta" if name == "cifar10" else "meta"), _meta(name, names))
    return folder


def _to_pickle_rows(images: np.ndarray) -> np.ndarray:
    images = np.asarray(images)
    if images.dtype != np.uint8 or images.ndim != 4 or images.shape[1:] != (32, 32, 3):
        raise ValueError(f"expected images as uint8 (N, 32, 32, 3), found "
                         f"{images.dtype} {images.shape}")
    return np.ascontiguousarray(images.transpose(0, 3, 1, 2).reshape(len(images), _PIXELS))


def _meta(name: str, names: list[str]) -> dict:
    if name == "cifar10":
        return {_Py2Str(b"label_names"): [_Py2Str(n.encode()) for n in names],
                _Py2Str(b"num_cases_per_batch"): 10000, _Py2Str(b"num_vis"): _PIXELS}
    coarse = [_Py2Str(f"superclass_{i}".encode()) for i in range(CIFAR100_NUM_COARSE)]
    return {_Py2Str(b"fine_label_names"): [_Py2Str(n.encode()) for n in names],
            _Py2Str(b"coarse_label_names"): coarse}


def _dump(path: Path, obj: Any) -> None:
    with open(path, "wb") as f:
        _Py2Pickler(f, protocol=2).dump(obj)
