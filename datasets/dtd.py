"""Describable Textures (DTD) from its official split files (the Robust Similarity paper's dataset).

The archive `dtd-r1.0.1.tar.gz` unpacks to `dtd/images/<class>/<class>_NNNN.jpg` and
`dtd/labels/{train,val,test}<k>.txt`, k = 1..10, each line a path relative to `images/`
(`banded/banded_0002.jpg`). The official splits hold 40 images per class in each of train, val
and test. The class of an image is its folder; class index i is the i-th folder name in sorted
order (47 classes), and must match the YAML's class_names.
"""
from __future__ import annotations

from pathlib import Path

from .errors import DatasetNotFoundError
from .folder_layout import ImageSplit, check_class_names, check_files_exist, find_root, not_found

NAME = "DTD"
NESTED = ("dtd",)
LAYOUT = "images/<class>/<image>.jpg and the official split files labels/train<k>.txt, val<k>.txt, test<k>.txt"


def split_files(split: int, trainval: bool) -> tuple[list[str], str]:
    """(the split files the training set is read from, the test split file) of official split k."""
    train = [f"train{split}.txt"] + ([f"val{split}.txt"] if trainval else [])
    return train, f"test{split}.txt"


def read_dtd(data_path: str, class_names: list[str], split: int = 1,
             trainval: bool = True) -> tuple[ImageSplit, ImageSplit, int, Path]:
    """Return (train, test, number of classes, root) of official split `split`."""
    train_files, test_file = split_files(split, trainval)
    needed = [f"labels/{name}" for name in train_files + [test_file]]
    root = find_root(data_path, NESTED, lambda p: (p / "images").is_dir() and (p / "labels").is_dir())
    if root is None:
        raise not_found(NAME, data_path, NESTED, LAYOUT, "no images/ and labels/ folders")
    missing = [name for name in needed if not (root / name).is_file()]
    if missing:
        raise not_found(NAME, data_path, NESTED, LAYOUT,
                        f"missing {', '.join(missing)} under {root} (dtd_split {split}: the official files are "
                        f"train1.txt ... test10.txt; choose dtd_split 1..10)")
    train_lines = [line for name in train_files for line in _read_lines(root / "labels" / name)]
    test_lines = _read_lines(root / "labels" / test_file)
    classes = sorted({_class_of(line, root) for line in train_lines + test_lines})
    check_class_names(NAME, classes, class_names, f"the class folders named in {root / 'labels'}")
    index = {name: i for i, name in enumerate(classes)}
    train, test = ImageSplit(), ImageSplit()
    for split_set, lines in ((train, train_lines), (test, test_lines)):
        for line in lines:  # file order: train<k> then val<k>, each as listed
            split_set.add([root / "images" / line], index[_class_of(line, root)])
    check_files_exist(train.paths + test.paths, NAME, "train and test")
    return train, test, len(classes), root


def _read_lines(path: Path) -> list[str]:
    """The non-empty lines of a split file, stripped."""
    with open(path, encoding="utf-8") as handle:
        return [line.strip() for line in handle if line.strip()]


def _class_of(line: str, root: Path) -> str:
    """`banded/banded_0002.jpg` -> `banded`; a line without a class folder is an error."""
    parts = line.split("/")
    if len(parts) != 2 or not parts[0] or not parts[1]:
        raise DatasetNotFoundError(f"{NAME}: a split file under {root / 'labels'} holds the line {line!r}; expected "
                                   "<class>/<image>.jpg (the official split files); the file is damaged")
    return parts[0]
