"""The offline miniature's named variants: which demo YAMLs and grid a variant runs, how its tiny CLIP is
pre-trained, where its tables and its clean-label regime are, and the one-line summary of that regime.

- `shifted` (the default, `make demo` and `make miniature-tables`): the paper's world in small. The
  tiny CLIP is pre-trained on 28 px Fashion-MNIST images on black, and the downstream images, training
  and test, are rendered unlike any pre-training image: 10 px thumbnails up-sampled to 28 px on a grey
  background (datasets/rendering.py; the YAMLs' render_size and render_floor), as CIFAR's 32 px photos
  are for CLIP's 224 px input. Its settings were fixed from clean-label measurements alone
  (tools/miniature_regime.py, results/miniature/regime.json); grids/miniature.yaml, results/miniature/.
- `in_distribution`: the first miniature. The same tiny CLIP (one pre-training serves both variants),
  the downstream images drawn exactly as its pre-training images, so its zero-shot head is already
  about as good as fine-tuning on 2,000 images gets, and there is little left to adapt;
  grids/miniature_in_distribution.yaml, results/miniature_in_distribution/.

A variant's pre-training settings come from its PEFT YAML (data_path, backbone, resolution,
pretrain_split) and its checkpoint is that YAML's `pretrained`.
"""
from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Mapping, Optional, Sequence

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
    grid: str = ""  # its noise grid (tools/miniature_tables.py), relative to the repository root
    results: str = ""  # where that grid's tables go
    regime: str = ""  # its clean-label regime JSON (tools/miniature_regime.py writes it)

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
        grid="grids/miniature_in_distribution.yaml",
        results="results/miniature_in_distribution",
        regime="results/miniature/regime_in_distribution.json",
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
        grid="grids/miniature.yaml",
        results="results/miniature",
        regime="results/miniature/regime.json",
    ),
}
DEFAULT_VARIANT = "shifted"


def get_variant(name: str) -> Variant:
    """The variant called `name`, or a ValueError that lists the names."""
    if name not in VARIANTS:
        raise ValueError(f"unknown miniature variant {name!r}; expected one of {sorted(VARIANTS)}")
    return VARIANTS[name]


def read_regime(variant: Variant) -> Optional[dict]:
    """The variant's regime JSON (tools/miniature_regime.py), or None when it was not measured."""
    path = ROOT / variant.regime
    if not variant.regime or not path.is_file():
        return None
    return json.loads(path.read_text(encoding="utf-8"))


def regime_line(regime: Mapping) -> str:
    """One line: a regime's four clean-label test accuracies and what there is to gain over zero-shot."""
    seeds = len(regime.get("seeds") or [])
    images = (regime.get("settings") or {}).get("train_images")
    scale = ", ".join([f"{seeds} seed{'' if seeds == 1 else 's'}"] + ([f"{images:,} images"] if images else []))
    gain = regime["clean_fft"] - regime["zero_shot"]
    return (f"the {regime.get('variant', '')} miniature's regime (clean labels, {scale}; test accuracy %): "
            f"zero-shot {regime['zero_shot']:.1f}, linear probe {regime['linear_probe']:.1f}, "
            f"clean PEFT {regime['clean_peft']:.1f}, clean full fine-tuning {regime['clean_fft']:.1f}: "
            f"what there is to gain, {gain:.1f} points from zero-shot to clean full fine-tuning")
