"""CUB-200-2011 from its own key files (HotanLee/DeFT@dafcc14 dataloader/dataloader_cub.py:102-116).

`images.txt` (id, relative path), `image_class_labels.txt` (id, 1-based class) and
`train_test_split.txt` (id, is_train) are joined on the image id in `images.txt` order; images
are read from `images/<relative path>`. Label = class - 1. When `classes.txt` is present, its
names (without the numeric prefix) must match the YAML's class_names in order.
"""
from __future__ import annotations

from pathlib import Path

from .errors import DatasetNotFoundError
from .folder_layout import ImageSplit, check_class_names, check_files_exist, find_root, not_found, read_table

NAME = "CUB-200-2011"
NESTED = ("CUB_200_2011",)
KEY_FILES = ("images.txt", "image_class_labels.txt", "train_test_split.txt")
LAYOUT = "images.txt, image_class_labels.txt, train_test_split.txt and images/<class folder>/<image>.jpg"


def read_cub(data_path: str, class_names: list[str]) -> tuple[ImageSplit, ImageSplit, int, Path]:
    """Return (train, test, number of classes, root)."""
    root = find_root(data_path, NESTED, lambda p: all((p / f).is_file() for f in KEY_FILES))
    if root is None:
        missing = [f for f in KEY_FILES if not (Path(data_path) / f).is_file()]
        raise not_found(NAME, data_path, NESTED, LAYOUT, f"missing {', '.join(missing)}")
    paths = _id_map(root / "images.txt")
    labels = _id_map(root / "image_class_labels.txt")
    is_train = _id_map(root / "train_test_split.txt")
    for name, table in (("image_class_labels.txt", labels), ("train_test_split.txt", is_train)):
        if set(table) != set(paths):
            raise DatasetNotFoundError(f"{NAME}: {root / name} does not list the same image ids as "
                                       f"{root / 'images.txt'} ({len(table)} vs {len(paths)} ids)")
    train, test = ImageSplit(), ImageSplit()
    for image_id, relative in paths.items():  # images.txt order
        label, flag = _as_int(labels[image_id], "class", root), _as_int(is_train[image_id], "is_train", root)
        if label < 1 or flag not in (0, 1):
            raise DatasetNotFoundError(f"{NAME}: image id {image_id} has class {label} and is_train {flag}; "
                                       "expected a 1-based class and 0/1")
        (train if flag == 1 else test).add([root / "images" / relative], label - 1)
    check_files_exist(train.paths + test.paths, NAME, "train and test")
    num_classes = max(train.labels + test.labels) + 1
    classes_file = root / "classes.txt"
    if classes_file.is_file():
        names = [row[1].split(".", 1)[-1] for row in read_table(classes_file, 2, NAME)]
        check_class_names(NAME, names, class_names, str(classes_file))
        num_classes = len(names)
    return train, test, num_classes, root


def _id_map(path: Path) -> dict[str, str]:
    """First column -> second column, in file order."""
    return {row[0]: row[1] for row in read_table(path, 2, NAME)}


def _as_int(value: str, what: str, root: Path) -> int:
    try:
        return int(value)
    except ValueError:
        raise DatasetNotFoundError(f"{NAME}: expected an integer {what} in the key files under {root}, "
                                   f"found {value!r}") from None
