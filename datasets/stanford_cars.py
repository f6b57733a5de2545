"""Stanford Cars (196 classes) in class-folder layout (HotanLee/DeFT@dafcc14 dataloader/dataloader_stanford_cars.py:119-131).

`train/<class name>/*.jpg` and `test/<class name>/*.jpg`. Class index = position of the folder
name in sorted order (Python string sort, so 'smart fortwo ...' comes last), and the folder names
must be the YAML's class_names in that order. Files are sorted inside each folder. A test folder
is labelled by the training class of the same name, so a missing test class cannot shift labels.
"""
from __future__ import annotations

from pathlib import Path

from .errors import DatasetNotFoundError
from .folder_layout import ImageSplit, check_class_names, find_root, not_found
from .images import sorted_images, sorted_subfolders

NAME = "Stanford Cars"
NESTED = ("car_data", "car_data/car_data")  # the Kaggle "by classes folder" archive
LAYOUT = "train/<class name>/*.jpg and test/<class name>/*.jpg, one folder per make/model/year"


def read_stanford_cars(data_path: str, class_names: list[str]) -> tuple[ImageSplit, ImageSplit, list[str], Path]:
    """Return (train, test, sorted class folder names, root)."""
    root = find_root(data_path, NESTED, lambda p: (p / "train").is_dir() and (p / "test").is_dir())
    if root is None:
        raise not_found(NAME, data_path, NESTED, LAYOUT, "no train/ and test/ folders")
    classes = sorted_subfolders(root / "train")
    if not classes:
        raise not_found(NAME, data_path, NESTED, LAYOUT, f"{root / 'train'} has no class folders")
    check_class_names(NAME, classes, class_names, f"the class folders of {root / 'train'}")
    index = {name: i for i, name in enumerate(classes)}
    unknown = [n for n in sorted_subfolders(root / "test") if n not in index]
    if unknown:
        raise DatasetNotFoundError(f"{NAME}: {root / 'test'} has class folders that train/ lacks: {unknown[:3]}; "
                                   "both splits must use the same folder names")
    train, test = ImageSplit(), ImageSplit()
    for split, folder in ((train, root / "train"), (test, root / "test")):
        for name in sorted_subfolders(folder):
            files = sorted_images(folder / name)
            if not files:
                raise not_found(NAME, data_path, NESTED, LAYOUT, f"no images in {folder / name}")
            split.add(files, index[name])
    return train, test, classes, root
