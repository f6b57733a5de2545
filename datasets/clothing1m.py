"""Clothing1M: the four key files, a class-balanced training subsample, the clean test set.

Key files (in `data_path` or `data_path/annotations`): `noisy_label_kv.txt` and
`clean_label_kv.txt` ("images/a/b/c.jpg label" lines), `noisy_train_key_list.txt` and
`clean_test_key_list.txt`. Images: `data_path/images/<a>/<b>/<c>.jpg`, or, as the official loader
reads them, `data_path/<a>/<b>/<c>.jpg` (the key's "images/" prefix stripped).

Training set (HotanLee/DeFT dataloader/dataloader_clothing1M.py:46-54, after DivideMix): shuffle the noisy training keys, walk them and
accept an image while its class has fewer than num_samples / C accepted and the total is below
num_samples, then shuffle the accepted list. The official code draws on the global `random`
seeded with the training seed and ties num_samples to 1000 x batch_size; here the draw uses its
own `random.Random(subsample_seed)` in the same call order and num_samples is a config value. The
chosen keys are the dataset's `sample_ids`: phase 1 saves them with the clean mask, and phase 2
(or any script given `subsample_file`) trains on exactly those keys. No true labels are known.
"""
from __future__ import annotations

import json
import random
from pathlib import Path
from typing import Optional, Sequence

import numpy as np

from .errors import DatasetConfigError, DatasetNotFoundError
from .folder_layout import check_files_exist, find_root, not_found, read_table

NAME = "Clothing1M"
KEY_FILES = ("noisy_label_kv.txt", "clean_label_kv.txt", "noisy_train_key_list.txt", "clean_test_key_list.txt")
NESTED = ("annotations",)
LAYOUT = (f"{', '.join(KEY_FILES)} in data_path (or data_path/annotations/), and the image folders "
          "either as data_path/images/0..9/ or directly as data_path/0..9/")
KEY_PREFIX = "images/"


def read_clothing1m(data_path: str, num_classes: int, num_samples: int, seed: int,
                    subsample_file: Optional[str] = None) -> dict:
    """Return {train_paths, train_labels (given), sample_ids (keys), test_paths, test_labels}."""
    key_dir = find_root(data_path, NESTED, lambda p: all((p / f).is_file() for f in KEY_FILES))
    if key_dir is None:
        missing = [f for f in KEY_FILES if not (Path(data_path) / f).is_file()]
        raise not_found(NAME, data_path, NESTED, LAYOUT, f"missing {', '.join(missing)}")
    noisy_kv = _label_map(key_dir / "noisy_label_kv.txt", num_classes)
    clean_kv = _label_map(key_dir / "clean_label_kv.txt", num_classes)
    train_keys = _key_list(key_dir / "noisy_train_key_list.txt", noisy_kv, "noisy_label_kv.txt")
    test_keys = _key_list(key_dir / "clean_test_key_list.txt", clean_kv, "clean_label_kv.txt")
    train_labels = [noisy_kv[k] for k in train_keys]
    if subsample_file:
        chosen = _saved_subsample(subsample_file, set(train_keys))
    else:
        chosen = [train_keys[i] for i in balanced_subsample(train_labels, num_classes, num_samples, seed)]
    image_root = _image_root(Path(data_path), train_keys[0])
    train_paths = [_image_path(image_root, k) for k in chosen]
    test_paths = [_image_path(image_root, k) for k in test_keys]
    check_files_exist(train_paths, NAME, "training")
    check_files_exist(test_paths, NAME, "test")
    return {"train_paths": train_paths, "train_labels": np.array([noisy_kv[k] for k in chosen], dtype=np.int64),
            "sample_ids": chosen, "test_paths": test_paths,
            "test_labels": np.array([clean_kv[k] for k in test_keys], dtype=np.int64)}


def balanced_subsample(labels: Sequence[int], num_classes: int, num_samples: int, seed: int) -> list[int]:
    """Indices of the DivideMix-style near class-balanced subsample, in the official call order."""
    rng = random.Random(seed)
    order = list(range(len(labels)))
    rng.shuffle(order)
    per_class = num_samples / num_classes  # float, as in the official loader: up to ceil() per class
    counts = np.zeros(num_classes, dtype=np.int64)
    chosen = []
    for i in order:
        label = labels[i]
        if counts[label] < per_class and len(chosen) < num_samples:
            chosen.append(i)
            counts[label] += 1
    rng.shuffle(chosen)
    return chosen


def read_subsample_ids(path: str) -> list:
    """Sample ids from a JSON list, or from a JSON object with `sample_ids` (e.g. a clean_mask.json)."""
    try:
        with open(path, encoding="utf-8") as handle:
            content = json.load(handle)
    except FileNotFoundError:
        raise DatasetNotFoundError(f"subsample_file {path} not found; expected a clean_mask.json of a phase-1 "
                                   "run or a JSON list of sample ids") from None
    except ValueError as exc:
        raise DatasetConfigError(f"subsample_file {path} is not valid JSON ({exc})") from None
    ids = content.get("sample_ids") if isinstance(content, dict) else content
    if not isinstance(ids, list) or not ids:
        raise DatasetConfigError(f"subsample_file {path}: expected a non-empty list of sample ids (or an object "
                                 "with 'sample_ids'), found none")
    return ids


def _saved_subsample(path: str, known: set) -> list[str]:
    ids = read_subsample_ids(path)
    unknown = [k for k in ids if k not in known]
    if unknown or len(set(ids)) != len(ids):
        problem = f"unknown keys such as {unknown[:2]}" if unknown else "duplicate keys"
        raise DatasetConfigError(f"subsample_file {path} does not list Clothing1M training keys ({problem}); "
                                 "it belongs to another dataset")
    return ids


def _label_map(path: Path, num_classes: int) -> dict[str, int]:
    labels = {}
    for key, value, *_ in read_table(path, 2, NAME):
        try:
            labels[key] = int(value)
        except ValueError:
            raise DatasetNotFoundError(f"{NAME}: {path} has a non-integer label {value!r} for {key}") from None
    if labels and not all(0 <= v < num_classes for v in labels.values()):
        raise DatasetConfigError(f"{NAME}: {path} has labels outside [0, {num_classes}); check num_class")
    return labels


def _key_list(path: Path, labels: dict[str, int], label_file: str) -> list[str]:
    keys = [row[0] for row in read_table(path, 1, NAME)]
    if not keys:
        raise DatasetNotFoundError(f"{NAME}: {path} is empty")
    unlabelled = [k for k in keys if k not in labels]
    if unlabelled:
        raise DatasetNotFoundError(f"{NAME}: {len(unlabelled)} keys of {path} have no label in {label_file}, "
                                   f"e.g. {unlabelled[0]}; the key files come from different releases?")
    return keys


def _image_path(image_root: Path, key: str) -> Path:
    return image_root / (key[len(KEY_PREFIX):] if key.startswith(KEY_PREFIX) else key)


def _image_root(data_path: Path, first_key: str) -> Path:
    """data_path/images (keys as written) or data_path itself (the official loader's layout)."""
    candidates = [data_path / "images", data_path]
    for root in candidates:
        if _image_path(root, first_key).is_file():
            return root
    tried = " or ".join(str(_image_path(r, first_key)) for r in candidates)
    raise not_found(NAME, str(data_path), (), LAYOUT, f"the first training image {first_key} is not at {tried}")
