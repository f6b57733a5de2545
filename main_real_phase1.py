"""DeFT phase 1 on real-world label noise: CIFAR-100N (and CIFAR-10N), Clothing1M, WebVision.

    python main_real_phase1.py --cfg ./config/PEFT/clothing1m.yaml
    python main_real_phase1.py --cfg ./config/PEFT/cifar100N.yaml
    python main_real_phase1.py --cfg ./config/PEFT/webvision.yaml

The same code path as main_phase1.py, started with the defaults of the official real-noise
script (HotanLee/DeFT main_real_phase1.py:49-71); each is a config key the YAML or --opts may change:
  select_requires_argmax: true     a sample is clean when p_yes[i, given_i] > 0.5 AND
                                   argmax_c p_yes[i, c] == given_i
  warmup_loss: sce                 symmetric cross-entropy (alpha = beta = 1) during warm-up
  noisy_prompt_labels_until: 1     the dual-prompt loss uses the given labels in epoch 1 only,
                                   the pseudo-labels from epoch 2 on (whatever the warm-up length)
  lr_schedule: constant            the official script never steps its scheduler
WebVision is also tested on the ImageNet validation images of its 50 classes (test_acc_imagenet).
Detection precision/recall/F1 are reported where true labels exist (CIFAR-N); for Clothing1M and
WebVision the metrics say they are unavailable. Runs go to output/real_phase1/{dataset}/seed{seed}/.
"""
from __future__ import annotations

from typing import Optional, Sequence

import main_phase1
from utils.cli import run_cli

SCRIPT = "real_phase1"
REAL_NOISE_DEFAULTS = {"select_requires_argmax": True, "warmup_loss": "sce", "noisy_prompt_labels_until": 1,
                       "lr_schedule": "constant"}


def main(argv: Optional[Sequence[str]] = None) -> dict:
    """Run phase 1 with the real-noise defaults and return its summary."""
    return main_phase1.main(argv, script=SCRIPT, defaults=REAL_NOISE_DEFAULTS, description=__doc__)


if __name__ == "__main__":
    run_cli(main)
