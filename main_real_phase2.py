"""DeFT phase 2 on real-world label noise: full fine-tuning on the clean subset of main_real_phase1.py.

    python main_real_phase2.py --cfg ./config/FFT/clothing1m.yaml
    python main_real_phase2.py --cfg ./config/FFT/cifar100N.yaml
    python main_real_phase2.py --cfg ./config/FFT/webvision.yaml

The same code path as main_phase2.py, with the official real-noise script's behaviour as defaults
(HotanLee/DeFT main_real_phase2.py:24, :119-128), applied before the YAML so the YAML or --opts may change them:
  epochs: 5                 the official script forces 5 epochs over the YAML's 10 (our real-noise
                            FFT YAMLs therefore leave `epochs` unset; the baselines get the default 10)
  lr_schedule: constant     the official script never steps its scheduler
The mask is that of output/real_phase1/{dataset}/seed{seed}/ (or --clean_mask PATH). Clothing1M
trains on exactly the subsample phase 1 recorded in clean_mask.json, whatever the batch size.
Only the WebVision validation set is tested, as in the official script.
"""
from __future__ import annotations

from typing import Optional, Sequence

import main_phase2
from utils.cli import run_cli

SCRIPT = "real_phase2"
REAL_NOISE_DEFAULTS = {"epochs": 5, "lr_schedule": "constant"}


def main(argv: Optional[Sequence[str]] = None) -> dict:
    """Run phase 2 with the real-noise defaults and return its summary."""
    return main_phase2.main(argv, script=SCRIPT, defaults=REAL_NOISE_DEFAULTS,
                            description=__doc__)


if __name__ == "__main__":
    run_cli(main)
