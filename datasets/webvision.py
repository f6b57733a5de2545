"""Mini-WebVision (HotanLee/DeFT dataloader/dataloader_webvision.py:47-58): the Google subset of WebVision 1.0, first `num_class` classes,
tested on the WebVision validation set and on the ImageNet (ILSVRC2012) validation images of the
same classes.

Under `data_path`: `info/train_filelist_google.txt` ("google/q0001/x.jpg label", paths relative to
`data_path`), `info/val_filelist.txt` ("val000001.jpg label") with images in `val_images_256/`.
ImageNet val (`imagenet_val_path`, default `data_path/imagenet/val`): class folders named by class
index, `0/ ... 49/` (the DivideMix layout the official loader reads), or by WordNet id,
`n01440764/ ...` (the standard layout torchvision's ImageFolder reads, e.g. after valprep.sh), in
which case class c is the c-th wnid of WebVision's `info/synsets.txt` when present, else the c-th
in sorted order (ImageNet's class order). There are no true labels for the training images.
"""
from __future__ import annotations

import re
from pathlib import Path
from typing import Optional

from .errors import DatasetNotFoundError
from .folder_layout import ImageSplit, check_files_exist, not_found, read_table
from .images import sorted_images, sorted_subfolders

NAME = "WebVision"
TRAIN_LIST = "info/train_filelist_google.txt"
VAL_LIST = "info/val_filelist.txt"
LAYOUT = (f"{TRAIN_LIST} and the google/ image folders it lists, {VAL_LIST} with val_images_256/, and "
          "ImageNet val as imagenet/val/<class index>/ or imagenet/val/<wnid>/")
_WNID = re.compile(r"^n\d{8}$")


def read_webvision(data_path: str, num_classes: int,
                   imagenet_val_path: Optional[str]) -> tuple[ImageSplit, ImageSplit, Optional[ImageSplit]]:
    """Return (train with the web labels, WebVision val, ImageNet val or None when switched off)."""
    root = Path(data_path)
    missing = [f for f in (TRAIN_LIST, VAL_LIST) if not (root / f).is_file()]
    if missing:
        raise not_found(NAME, data_path, (), LAYOUT, f"missing {', '.join(missing)}")
    train = _read_list(root / TRAIN_LIST, root, num_classes)
    val = _read_list(root / VAL_LIST, root / "val_images_256", num_classes)
    check_files_exist(train.paths, NAME, "training")
    check_files_exist(val.paths, NAME, "validation")
    imagenet = None
    if imagenet_val_path != "":  # "" switches the ImageNet evaluation off
        imagenet = read_imagenet_val(Path(imagenet_val_path) if imagenet_val_path else root / "imagenet" / "val",
                                     num_classes, root / "info" / "synsets.txt")
    return train, val, imagenet


def read_imagenet_val(folder: Path, num_classes: int, synsets_file: Path) -> ImageSplit:
    """ImageNet val images of the first num_classes classes, from index or wnid class folders."""
    layout = "class folders 0/ ... {0}/ (DivideMix) or n01440764/ ... (standard ImageNet val)"
    if not folder.is_dir():
        raise DatasetNotFoundError(
            f"ImageNet val for {NAME} not found at {folder}; expected {layout.format(num_classes - 1)}. Pass "
            "--opts imagenet_val_path=/path/to/imagenet/val, or imagenet_val_path='' to skip that evaluation")
    names = sorted_subfolders(folder)
    by_index = {int(n): n for n in names if n.isdigit()}
    if by_index:
        folders = {c: by_index.get(c) for c in range(num_classes)}
    else:
        wnids = [n for n in names if _WNID.match(n)]
        order = _synsets(synsets_file) or wnids
        folders = {c: order[c] if c < len(order) and order[c] in wnids else None for c in range(num_classes)}
    absent = [c for c, name in folders.items() if name is None]
    if absent:
        raise DatasetNotFoundError(
            f"ImageNet val at {folder} lacks the folders of classes {absent[:5]}; expected "
            f"{layout.format(num_classes - 1)}")
    split = ImageSplit()
    for label, name in folders.items():
        files = sorted_images(folder / name)
        if not files:
            raise DatasetNotFoundError(f"ImageNet val: no images in {folder / name}")
        split.add(files, label)
    return split


def _read_list(path: Path, image_root: Path, num_classes: int) -> ImageSplit:
    """Rows "relative_path label" with label < num_classes, in file order."""
    split = ImageSplit()
    for relative, label, *_ in read_table(path, 2, NAME):
        if not label.isdigit():
            raise DatasetNotFoundError(f"{NAME}: {path} has a non-integer label {label!r} for {relative}")
        if int(label) < num_classes:
            split.add([image_root / relative], int(label))
    if not split.paths:
        raise DatasetNotFoundError(f"{NAME}: {path} lists no image of the first {num_classes} classes")
    return split


def _synsets(path: Path) -> list[str]:
    if not path.is_file():
        return []
    return [line.split()[0] for line in path.read_text().splitlines() if line.strip()]
