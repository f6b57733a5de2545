"""What the file-based readers share: a split of image paths with labels, the first root that
holds a layout, and checks that name the missing files and the path that was looked at."""
from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Iterable, Sequence

import numpy as np

from .errors import DatasetConfigError, DatasetNotFoundError


@dataclass
class ImageSplit:
    """Image paths and their labels, in a stable (sorted) order."""

    paths: list[Path] = field(default_factory=list)
    labels: list[int] = field(default_factory=list)

    def add(self, paths: Iterable[Path], label: int) -> None:
        paths = list(paths)
        self.paths.extend(paths)
        self.labels.extend([label] * len(paths))

    def label_array(self) -> np.ndarray:
        return np.asarray(self.labels, dtype=np.int64)


def find_root(data_path: str, nested: Sequence[str], has_layout: Callable[[Path], bool]) -> Path | None:
    """`data_path`, or the first of its usual archive subfolders (`nested`), that holds the layout."""
    root = Path(data_path)
    for candidate in (root, *(root / name for name in nested)):
        if candidate.is_dir() and has_layout(candidate):
            return candidate
    return None


def not_found(dataset: str, data_path: str, nested: Sequence[str], layout: str, problem: str = "") -> DatasetNotFoundError:
    """The error for a missing or incomplete dataset: what was expected, where it looked, the fix."""
    root = Path(data_path)
    looked = ", ".join(str(p) for p in (root, *(root / n for n in nested)))
    detail = f" ({problem})" if problem else ""
    return DatasetNotFoundError(
        f"{dataset} not found under {data_path}{detail}. Expected layout: {layout}. Looked in: {looked}. "
        "Pass --opts data_path=... pointing at the folder that holds it; the README section 'Datasets' "
        "says where to get it.")


def read_table(path: Path, columns: int, dataset: str) -> list[list[str]]:
    """Whitespace-separated rows of a key file, each with at least `columns` fields."""
    rows = []
    with open(path, encoding="utf-8") as handle:
        for number, line in enumerate(handle, 1):
            fields = line.split()
            if not fields:
                continue
            if len(fields) < columns:
                raise DatasetNotFoundError(
                    f"{dataset}: {path} line {number} is malformed: expected {columns} fields, found "
                    f"{line.strip()!r}; the file is damaged or not the official one")
            rows.append(fields)
    return rows


def check_files_exist(paths: Sequence[Path], dataset: str, what: str) -> None:
    """Fail before training when listed images are missing (a worker would crash mid-epoch)."""
    missing = [p for p in paths if not p.is_file()]
    if missing:
        shown = ", ".join(str(p) for p in missing[:3])
        raise DatasetNotFoundError(
            f"{dataset}: {len(missing)} of {len(paths)} {what} images listed in the key files are "
            f"missing, e.g. {shown}; unpack the complete image archive into the data folder")


def check_class_names(dataset: str, found: Sequence[str], configured: Sequence[str], source: str) -> None:
    """Fail when the dataset's own class names disagree with the YAML's class_names, index by index.

    Names compare case-insensitively with '_' read as ' ' (YAML names keep the official spelling).
    A wrong order would silently pair images with the prompts of other classes.
    """
    def norm(name: str) -> str:
        return " ".join(name.replace("_", " ").split()).casefold()

    if len(found) != len(configured):
        raise DatasetConfigError(
            f"{dataset}: {source} has {len(found)} classes but class_names lists {len(configured)}; "
            "set num_class and class_names to match the data")
    wrong = [(i, f, c) for i, (f, c) in enumerate(zip(found, configured)) if norm(f) != norm(c)]
    if wrong:
        shown = "; ".join(f"index {i}: data {f!r}, config {c!r}" for i, f, c in wrong[:3])
        raise DatasetConfigError(
            f"{dataset}: class_names do not match {source} at {len(wrong)} indices ({shown}). Class index i "
            "is the i-th name in the data's order; use the class_names of config/PEFT for this dataset")
