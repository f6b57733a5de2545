"""Config and assertions shared by the tests of the dataset readers."""
from __future__ import annotations

from pathlib import Path

import torchvision.transforms as T

from utils.config import Config, apply_overrides


def reader_config(tmp_path: Path, **values) -> Config:
    """A validated Config for reading a miniature: 32-pixel images, no workers, a private noise cache."""
    base = {"resolution": 32, "num_workers": 0, "download": False, "batch_size": 4,
            "noise_cache_dir": str(tmp_path / "noise_cache"), "output_dir": str(tmp_path / "output")}
    return apply_overrides(Config(), {**base, **values}, "test")


def normalize_of(transform) -> tuple:
    """(mean, std) of the Normalize step of a torchvision Compose."""
    step = next(t for t in transform.transforms if isinstance(t, T.Normalize))
    return tuple(step.mean), tuple(step.std)
