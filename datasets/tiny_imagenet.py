"""Tiny-ImageNet (200 classes, 64x64): training images by class folder, and the labelled test split.

Train: `train/<wnid>/images/*.JPEG`, class index = position of the wnid in sorted order (the
official YAML's names are in that order: goldfish ... acorn). Test split, first found of:
- `test/<wnid>/images/*` : the reorganised layout the official loader reads;
- `val/<wnid>/images/*`  : the same reorganisation done in place;
- `val/val_annotations.txt` + `val/images/*` : the official download, read directly.
The official `test/images/` holds unlabelled images and is never used. Files are sorted, and the
test split is ordered by (class, file name) whichever layout it comes from.
"""
from __future__ import annotations

from pathlib import Path

from .errors import DatasetNotFoundError
from .folder_layout import ImageSplit, find_root, not_found, read_table
from .images import sorted_images, sorted_subfolders

NAME = "Tiny-ImageNet"
NESTED = ("tiny-imagenet-200",)
LAYOUT = ("train/<wnid>/images/*.JPEG, and for testing either val/val_annotations.txt with val/images/*.JPEG "
          "(the official download) or test/<wnid>/images/* (the official loader's reorganised layout)")


def read_tiny_imagenet(data_path: str) -> tuple[ImageSplit, ImageSplit, list[str], Path]:
    """Return (train, test, sorted wnids, root)."""
    root = find_root(data_path, NESTED, lambda p: (p / "train").is_dir())
    if root is None:
        raise not_found(NAME, data_path, NESTED, LAYOUT, "no train/ folder")
    wnids = sorted_subfolders(root / "train")
    if not wnids:
        raise not_found(NAME, data_path, NESTED, LAYOUT, f"{root / 'train'} has no class folders")
    _check_wnids_file(root, wnids)
    train = ImageSplit()
    for label, wnid in enumerate(wnids):
        folder = root / "train" / wnid / "images"
        files = sorted_images(folder) if folder.is_dir() else []
        if not files:
            raise not_found(NAME, data_path, NESTED, LAYOUT, f"no images in {folder}")
        train.add(files, label)
    return train, _read_test_split(root, wnids, data_path), wnids, root


def _read_test_split(root: Path, wnids: list[str], data_path: str) -> ImageSplit:
    index = {wnid: i for i, wnid in enumerate(wnids)}
    for split in ("test", "val"):
        folder = root / split
        class_folders = [n for n in sorted_subfolders(folder) if n in index] if folder.is_dir() else []
        if class_folders:
            return _read_class_folders(folder, index, data_path)
    annotations = root / "val" / "val_annotations.txt"
    if annotations.is_file():
        return _read_val_annotations(annotations, index)
    hint = (" (test/images/ is the official unlabelled test set and cannot be used)"
            if (root / "test" / "images").is_dir() else "")
    raise not_found(NAME, data_path, NESTED, LAYOUT, f"no labelled test split in {root}{hint}")


def _read_class_folders(folder: Path, index: dict[str, int], data_path: str) -> ImageSplit:
    unknown = [n for n in sorted_subfolders(folder) if n not in index]
    if unknown:
        raise DatasetNotFoundError(
            f"{NAME}: {folder} has class folders that are not training classes: {unknown[:5]}; expected "
            f"{folder}/<wnid>/images/ for wnids of train/")
    split = ImageSplit()
    for wnid in sorted_subfolders(folder):
        images = folder / wnid / "images"
        files = sorted_images(images) if images.is_dir() else []
        if not files:
            raise not_found(NAME, data_path, NESTED, LAYOUT, f"no images in {images}")
        split.add(files, index[wnid])
    return split


def _read_val_annotations(path: Path, index: dict[str, int]) -> ImageSplit:
    rows = read_table(path, 2, NAME)  # file, wnid, box
    unknown = sorted({wnid for _, wnid, *_ in rows if wnid not in index})
    if unknown:
        raise DatasetNotFoundError(f"{NAME}: {path} names wnids that are not training classes: {unknown[:5]}; "
                                   "train/ and val/ come from different downloads?")
    entries = sorted((index[wnid], name) for name, wnid, *_ in rows)
    split = ImageSplit()
    for label, name in entries:
        split.add([path.parent / "images" / name], label)
    missing = [p for p in split.paths if not p.is_file()]
    if missing:
        raise DatasetNotFoundError(f"{NAME}: {len(missing)} images listed in {path} are missing from "
                                   f"{path.parent / 'images'}, e.g. {missing[0]}")
    return split


def _check_wnids_file(root: Path, wnids: list[str]) -> None:
    """wnids.txt (shipped with the dataset) must list exactly the training class folders."""
    listed_file = root / "wnids.txt"
    if not listed_file.is_file():
        return
    listed = sorted(line.strip() for line in listed_file.read_text().splitlines() if line.strip())
    if listed != wnids:
        extra, missing = sorted(set(wnids) - set(listed)), sorted(set(listed) - set(wnids))
        raise DatasetNotFoundError(
            f"{NAME}: {root / 'train'} does not hold the classes of {listed_file} (missing folders: "
            f"{missing[:5]}, unexpected folders: {extra[:5]}); unpack the complete archive")
