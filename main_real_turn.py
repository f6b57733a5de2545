"""TURN on real-world label noise: CIFAR-100N (and CIFAR-10N), Clothing1M, WebVision.

    python main_real_turn.py --cfg ./config/FFT/clothing1m.yaml
    python main_real_turn.py --cfg ./config/FFT/clothing1m.yaml --backbone convnext

The same code path as main_turn.py, with the defaults main_real_baseline.py applies before the YAML
(lr_schedule: constant, as the official real-noise baseline script), so TURN meets the other
baselines of the real-noise tables on the same schedule. Runs go to output/real_turn[_<backbone>]/.
"""
from __future__ import annotations

from typing import Optional, Sequence

import main_turn
from main_real_baseline import REAL_NOISE_DEFAULTS
from utils.cli import run_cli

SCRIPT = "real_turn"


def main(argv: Optional[Sequence[str]] = None) -> dict:
    """Run TURN with the real-noise defaults and return its summary."""
    return main_turn.main(argv, script=SCRIPT, defaults=REAL_NOISE_DEFAULTS, description=__doc__)


if __name__ == "__main__":
    run_cli(main)
