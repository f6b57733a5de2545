"""Smoke run: DeFT phase 1 and phase 2 end to end on generated data with a tiny CLIP, on CPU.

    python tools/smoke_run.py [--root output/smoke]

Writes a small CIFAR-10-format dataset (real pickle layout; class-coloured noise images) and a
tiny random-weight CLIP checkpoint, then runs the real entry points with 40% symmetric noise and
prints what they report. It checks the pipeline, not the method: the model starts from random
weights, so its numbers say nothing about DeFT (the offline miniature on Fashion-MNIST does that).
"""
from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path


ROOT = Path(__file__).resolve().parent.parent
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

from tests.fixtures.world import build_smoke_world  # noqa: E402


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--root", default=str(ROOT / "output" / "smoke"))
    args = parser.parse_args()
    import main_phase1
    import main_phase2

    world = build_smoke_world(Path(args.root))
    flags = ["--noise_mode", "sym", "--noise_ratio", "0.4", "--overwrite"]
    phase1 = main_phase1.main(["--cfg", world["peft"], *flags])
    phase2 = main_phase2.main(["--cfg", world["fft"], *flags])
    print("\nsmoke run (random tiny CLIP on generated data: pipeline check only)")
    print(f"  phase 1: {phase1['num_selected']}/{phase1['num_samples']} kept, "
          f"precision {phase1['mask_precision']:.3f}, recall {phase1['mask_recall']:.3f}, "
          f"actual noise {phase1['noise']['actual_rate']:.3f}")
    print(f"  phase 2: best test acc {phase2['best_test_acc']:.2f}, last {phase2['last_test_acc']:.2f}")
    print(f"  outputs under {os.path.relpath(world['output'])}")


if __name__ == "__main__":
    main()
