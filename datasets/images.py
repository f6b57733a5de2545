"""Image files on disk: the one loader every file-based reader uses, sorted folder listings, and
the small fixed-size pixels the idn noise generator reads.
"""
from __future__ import annotations

import hashlib
import os
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Sequence

import numpy as np
from PIL import Image

IMAGE_EXTENSIONS = (".jpg", ".jpeg", ".png", ".bmp", ".webp", ".tif", ".tiff")


def load_rgb(path: str | os.PathLike) -> Image.Image:
    """Open an image file as RGB (the official loaders read BGR with cv2 and convert to RGB)."""
    with Image.open(path) as image:
        return image.convert("RGB")


def is_image_file(path: str | os.PathLike) -> bool:
    """True for a file name with a known image extension (case-insensitive)."""
    return str(path).lower().endswith(IMAGE_EXTENSIONS)


def sorted_images(folder: Path) -> list[Path]:
    """The image files directly in `folder`, sorted by name, so indices never depend on the
    filesystem's listing order (the official loaders use unsorted os.listdir)."""
    return sorted(p for p in folder.iterdir() if p.is_file() and is_image_file(p.name))


def sorted_subfolders(folder: Path) -> list[str]:
    """Names of the subfolders of `folder`, sorted as Python sorts strings (the official class order)."""
    return sorted(p.name for p in folder.iterdir() if p.is_dir())


def resized_pixels(paths: Sequence[str | os.PathLike], size: int,
                   num_threads: int | None = None) -> np.ndarray:
    """uint8 (N, size, size, 3) RGB pixels of every image, resized with PIL bilinear.

    The idn generator of the later official CUB/Cars loaders reads 64x64 images (cv2 bilinear,
    BGR->RGB, HWC). Memory is N*size*size*3 bytes: 1.2 GB for Tiny-ImageNet's 100,000 images at 64.
    """
    pixels = np.empty((len(paths), size, size, 3), dtype=np.uint8)

    def fill(i: int) -> None:
        pixels[i] = np.asarray(load_rgb(paths[i]).resize((size, size), Image.BILINEAR))

    workers = num_threads or min(8, os.cpu_count() or 1)
    with ThreadPoolExecutor(max_workers=workers) as pool:  # PIL decodes and resizes without the GIL
        for _ in pool.map(fill, range(len(paths)), chunksize=256):
            pass
    return pixels


def files_fingerprint(paths: Sequence[str | os.PathLike], root: str | os.PathLike, extra: str = "") -> str:
    """SHA-256 of the files' paths relative to `root`, their sizes and `extra`: identifies an image
    set in a noise cache without decoding it (a changed file of the same size is not detected)."""
    digest = hashlib.sha256(extra.encode())
    root = Path(root)
    for path in paths:
        path = Path(path)
        digest.update(f"{path.relative_to(root).as_posix()}\t{path.stat().st_size}\n".encode())
    return digest.hexdigest()
