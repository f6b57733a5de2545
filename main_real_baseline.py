"""Baselines on real-world label noise: CIFAR-100N (and CIFAR-10N), Clothing1M, WebVision.

    python main_real_baseline.py --cfg ./config/FFT/clothing1m.yaml --lnl_methods GMM
    python main_real_baseline.py --cfg ./config/FFT/cifar100N.yaml --lnl_methods ELR
    python main_real_baseline.py --cfg ./config/FFT/webvision.yaml --lnl_methods CE

The same code path as main_baseline.py (every --lnl_methods value; TURN: main_real_turn.py), with the
official real-noise baseline's behaviour as a default applied before the YAML:
  lr_schedule: constant     the official script builds a cosine scheduler and never steps it
                            (HotanLee/DeFT main_real_baseline.py:152-161)
The official script crashes at the end of epoch 1 (an undefined return name, main_real_baseline.py:104)
and its GMM pass cannot read CIFAR-N batches (line 45); here every method runs on every dataset.
WebVision is also tested on the ImageNet validation images of its 50 classes (test_acc_imagenet), as in
the official script. Detection metrics exist where true labels do (CIFAR-N). Runs go to
output/real_baseline_{method}/.
"""
from __future__ import annotations

from typing import Optional, Sequence

import main_baseline
from utils.cli import run_cli

SCRIPT = "real_baseline"
REAL_NOISE_DEFAULTS = {"lr_schedule": "constant"}


def main(argv: Optional[Sequence[str]] = None) -> dict:
    """Run a baseline with the real-noise defaults and return its summary."""
    return main_baseline.main(argv, script=SCRIPT, defaults=REAL_NOISE_DEFAULTS, description=__doc__)


if __name__ == "__main__":
    run_cli(main)
