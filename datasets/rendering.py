"""How the offline miniature renders its downstream images: the distribution shift from pre-training.

CLIP met CIFAR's 32-pixel photos as blown-up thumbnails unlike most of its training images; the
shifted miniature imitates that with two pixel-level changes to every Fashion-MNIST image a method
sees (training and test alike), neither of which the tiny CLIP saw in pre-training:
a lower resolution (area-averaged down to `size` pixels a side, then bilinearly up-sampled back,
as CIFAR's 32 px images are for a 224 px CLIP) and a grey instead of a black background
(intensities 0..255 mapped linearly onto `floor`..255). `Rendering()` changes nothing.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Optional

import numpy as np
from PIL import Image


@dataclass(frozen=True)
class Rendering:
    """A downstream rendering; the defaults leave the images as they are."""

    size: Optional[int] = None  # pixels a side before up-sampling back; None: native resolution
    floor: int = 0  # intensities 0..255 mapped linearly onto floor..255; 0: black background as drawn

    @property
    def is_native(self) -> bool:
        """True when rendering returns the images unchanged."""
        return self.size is None and self.floor == 0

    @classmethod
    def of(cls, cfg) -> "Rendering":
        """The rendering a config asks for (its render_size and render_floor keys; absent: native)."""
        return cls(size=getattr(cfg, "render_size", None), floor=int(getattr(cfg, "render_floor", 0) or 0))

    def cache_key(self) -> str:
        """'' when native, else e.g. 'render10px-bg50': names caches of what the rendered pixels decide."""
        if self.is_native:
            return ""
        return "render" + ("" if self.size is None else f"{self.size}px") + (f"-bg{self.floor}" if self.floor else "")

    def describe(self) -> str:
        """A short human-readable name, e.g. '10 px up-sampled, background 50'."""
        parts = ([] if self.size is None else [f"{self.size} px up-sampled"]) + \
            ([f"background {self.floor}"] if self.floor else [])
        return ", ".join(parts) or "native"


def render(images: np.ndarray, rendering: Rendering) -> np.ndarray:
    """Render uint8 images (N, H, W, C) or (N, H, W); same shape and dtype out (the input itself when native)."""
    if rendering.is_native:
        return images
    if images.dtype != np.uint8 or images.ndim not in (3, 4):
        raise ValueError(f"expected uint8 images (N, H, W[, C]), found {images.dtype} {images.shape}")
    out = images
    if rendering.size is not None:
        if rendering.size < 1:
            raise ValueError(f"expected a rendering size of at least 1 pixel, found {rendering.size}")
        out = np.stack([_thumbnail(image, rendering.size) for image in out]) if len(out) else out.copy()
    if rendering.floor:
        out = lift_background(out, rendering.floor)
    return out


def lift_background(images: np.ndarray, floor: int) -> np.ndarray:
    """floor + x·(255 - floor)/255 per uint8 pixel, rounded half up: black becomes `floor`, white stays white."""
    if not 0 <= floor <= 255:
        raise ValueError(f"expected a background floor in [0, 255], found {floor}")
    # Integer arithmetic (numerator doubled for the rounding): exact on every platform.
    return (floor + (images.astype(np.int32) * (255 - floor) * 2 + 255) // 510).astype(np.uint8)


def _thumbnail(image: np.ndarray, size: int) -> np.ndarray:
    """Area-average down to size x size, then bilinear back up to the original height and width."""
    height, width = image.shape[:2]
    small = Image.fromarray(image).resize((size, size), Image.BOX)  # BOX: each pixel is an area mean
    return np.asarray(small.resize((width, height), Image.BILINEAR))
