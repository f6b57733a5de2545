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

import numpy as np
import torch
import yaml

ROOT = Path(__file__).resolve().parent.parent
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

from datasets.cifar import write_cifar_pickles  # noqa: E402
from models.clip_loader import load_clip  # noqa: E402

TINY_BACKBONE = "deft-tiny-vit"


def coloured_images(labels: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """(N, 32, 32, 3) uint8: a class-dependent grey level plus Gaussian noise."""
    base = (np.asarray(labels)[:, None, None, None] * 23 % 256).astype(np.float32)
    return np.clip(base + rng.normal(0, 30, (len(labels), 32, 32, 3)), 0, 255).astype(np.uint8)


def build_smoke_world(root: Path, per_class_train: int = 12, per_class_test: int = 4, epochs: int = 2,
                      drop_train: int = 0) -> dict:
    """Write the dataset, the tiny checkpoint and PEFT/FFT YAMLs under `root`; return their paths.

    `drop_train` leaves out the last training images (e.g. an odd training-set size).
    """
    root = Path(root)
    rng = np.random.default_rng(0)
    train_labels = np.repeat(np.arange(10), per_class_train)[:10 * per_class_train - drop_train]
    test_labels = np.repeat(np.arange(10), per_class_test)
    write_cifar_pickles(root / "cifar10", "cifar10", coloured_images(train_labels, rng), train_labels,
                        coloured_images(test_labels, rng), test_labels)
    torch.manual_seed(0)
    checkpoint = root / "tiny_clip.pt"
    torch.save(load_clip(TINY_BACKBONE, "none").state_dict(), checkpoint)
    overrides = {"data_path": str(root / "cifar10"), "backbone": TINY_BACKBONE, "pretrained": str(checkpoint),
                 "resolution": 32, "epochs": epochs, "batch_size": 32, "num_workers": 0, "download": False,
                 "progress": False, "output_dir": str(root / "output"), "noise_cache_dir": str(root / "noise")}
    paths = {"root": root, "output": root / "output"}
    for kind in ("PEFT", "FFT"):
        with open(ROOT / "config" / kind / "cifar10.yaml", encoding="utf-8") as handle:
            cfg = yaml.safe_load(handle)
        cfg.update(overrides)
        if kind == "PEFT":
            # 2 VPT tokens; lr 0.003: at the official 0.03 the random tiny CLIP's negative prompts win
            # everywhere by epoch 2 and the mask would be empty (which phase 2 refuses)
            cfg.update(vpt_len=2, lr=0.003)
        paths[kind.lower()] = str(root / f"{kind}.yaml")
        with open(paths[kind.lower()], "w", encoding="utf-8") as handle:
            yaml.safe_dump(cfg, handle, sort_keys=False)
    return paths


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
