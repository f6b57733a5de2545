"""The offline miniature's named variants: which demo YAMLs a variant runs and how its tiny CLIP is pre-trained.

- `in_distribution`: the original miniature (the tables in results/miniature/). The downstream images
  are drawn exactly as the tiny CLIP's pre-training images, so its zero-shot head is already about as
  good as fine-tuning on 2,000 images gets, and there is little left to adapt.
- `shifted`: the paper's world in small. The same tiny CLIP (one pre-training serves both variants),
  but the downstream images, training and test, are rendered unlike any pre-training image: 10 px
  thumbnails up-sampled to 28 px on a grey background (datasets/rendering.py; the YAMLs' render_size
  and render_floor), as CIFAR's 32 px photos are for CLIP's 224 px input. Its settings were fixed from
  clean-label measurements alone (tools/miniature_regime.py, results/miniature/regime.json).

A variant's pre-training settings come from its PEFT YAML (data_path, backbone, resolution,
pretrain_split) and its checkpoint is that YAML's `pretrained`.
"""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Sequence

from tools.pretrain_tiny_clip import PretrainSettings
from utils.config import Config, apply_overrides, load_yaml, parse_opts

ROOT = Path(__file__).resolve().parent.parent
DEMO = ROOT / "config" / "demo"
PRETRAINING = ("tiny CLIP deft-mini-vit (4-layer width-128 ViT, patch 7 at 28 px; 2-layer text tower) pre-trained "
               "contrastively for 3 epochs on 20,000 Fashion-MNIST training images (28 px, bright garments on black) "
               "with class-name captions in 5 templates")


@dataclass(frozen=True)
class Variant:
    """One miniature: its YAMLs, what it is, and the scale of its grid runs."""

    name: str
    peft: Path  # phase 1, label-match and the PEFT runs
    fft: Path  # phase 2 and the fine-tuned baselines
    description: str  # what was pre-trained on what, and what the downstream images are
    grid_opts: tuple[str, ...] = ()  # --opts of the grid-scale runs (image counts; the grid adds the schedule)

    def config(self, yaml: Path | None = None, opts: Sequence[str] = ()) -> Config:
        """The variant's PEFT (or the given) YAML as a Config, with `opts` (key=value) applied."""
        path = str(yaml or self.peft)
        cfg = apply_overrides(Config(), load_yaml(path), path)
        return apply_overrides(cfg, parse_opts(opts), "--opts")

    def settings(self, cfg: Config | None = None) -> PretrainSettings:
        """The tiny CLIP's pre-training settings (the checkpoint cache key) for the resolved PEFT config."""
        cfg = cfg or self.config()
        return PretrainSettings(data_path=cfg.data_path, model=cfg.backbone, resolution=cfg.resolution,
                                pretrain_split=cfg.pretrain_split)

    def checkpoint(self, cfg: Config | None = None) -> Path:
        """Where the pre-trained tiny CLIP is cached: the config's `pretrained`, from the repository root."""
        return ROOT / (cfg or self.config()).pretrained


VARIANTS: dict[str, Variant] = {
    "in_distribution": Variant(
        name="in_distribution",
        peft=DEMO / "PEFT" / "fashion_mnist.yaml",
        fft=DEMO / "FFT" / "fashion_mnist.yaml",
        description=(f"{PRETRAINING}; downstream: disjoint Fashion-MNIST training images with their real labels, "
                     "drawn the same way (in distribution)"),
        grid_opts=("max_train_samples=2000", "max_test_samples=2000"),
    ),
    "shifted": Variant(
        name="shifted",
        peft=DEMO / "shifted" / "PEFT" / "fashion_mnist.yaml",
        fft=DEMO / "shifted" / "FFT" / "fashion_mnist.yaml",
        description=(f"{PRETRAINING}; downstream: disjoint Fashion-MNIST training images with their real labels, "
                     "rendered unlike any pre-training image: area-averaged to 10 px and up-sampled back to 28 px "
                     "(as CIFAR's 32 px photos for CLIP's 224 px), on a grey background (intensities 0..255 "
                     "mapped onto 50..255)"),
        grid_opts=("max_train_samples=2000", "max_test_samples=2000"),
    ),
}
DEFAULT_VARIANT = "shifted"


def get_variant(name: str) -> Variant:
    """The variant called `name`, or a ValueError that lists the names."""
    if name not in VARIANTS:
        raise ValueError(f"unknown miniature variant {name!r}; expected one of {sorted(VARIANTS)}")
    return VARIANTS[name]
