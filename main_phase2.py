"""DeFT phase 2: model adaptation, i.e. full fine-tuning on the clean subset found by phase 1.

    python main_phase2.py --cfg ./config/FFT/cifar100.yaml --noise_mode sym --noise_ratio 0.2

Starts again from the pretrained weights (phase-1 weights are not used), trains the visual
blocks and a new linear head with cross-entropy on the samples the clean mask keeps, and tests
every epoch; reports the best and the last test accuracy. The mask is the phase-1 run's with the
same dataset, --noise_mode, --noise_ratio and seed, or the file given with --clean_mask.
"""
from __future__ import annotations

import os
from typing import Optional, Sequence

import torch
import torch.nn.functional as F
from torch.utils.data import Subset

from datasets import build_datasets
from models.build import build_clip_classifier, count_parameters
from utils.clean_mask import MASK_FILE, load_clean_mask
from utils.config import build_arg_parser, resolve_config
from utils.engine import (Experiment, accuracy, make_grad_scaler, make_loader, make_scheduler, make_sgd,
                          predict, train_one_epoch)
from utils.errors import run_cli
from utils.losses import masked_mean
from utils.run_dir import run_path

SCRIPT = "phase2"


def main(argv: Optional[Sequence[str]] = None, script: str = SCRIPT, mask_script: str = "phase1") -> dict:
    """Run phase 2 and return its summary."""
    parser = build_arg_parser(__doc__, flags=("noise_mode", "noise_ratio", "backbone", "clean_mask"))
    args = parser.parse_args(argv)
    cfg = resolve_config(args)
    mask_path = cfg.clean_mask or os.path.join(run_path(cfg, mask_script), MASK_FILE)
    exp = Experiment(cfg, script, run_path(cfg, script), resume=args.resume, overwrite=args.overwrite)

    # 1. Data, and the clean mask checked against it (same dataset, size, noise and labels).
    data = build_datasets(cfg)
    clean_mask, mask_meta = load_clean_mask(mask_path, expected={
        "dataset": cfg.dataset, "num_samples": len(data.train), "noise_mode": cfg.noise_mode,
        "noise_ratio": cfg.noise_ratio, "given_labels_sha256": data.given_labels_sha256,
        "sample_ids": getattr(data, "sample_ids", None)})
    exp.log.info(f"clean mask {mask_path}: {int(clean_mask.sum())} of {len(clean_mask)} samples")
    train_set = data.train
    if cfg.phase2_batches == "clean_only":  # full batches of clean samples instead of masked batches
        train_set = Subset(data.train, clean_mask.nonzero()[0].tolist())
    train_loader = make_loader(train_set, cfg.batch_size, True, cfg.num_workers, exp.device)
    test_loader = make_loader(data.test, cfg.batch_size, False, cfg.num_workers, exp.device)

    # 2. Model: fresh pretrained CLIP visual tower, fine-tuned, with a new linear head.
    model = build_clip_classifier(cfg, data.class_names, exp.device)
    params = model.trainable_parameters()
    exp.log.info(f"trainable parameters: {count_parameters(params)}")
    optimizer = make_sgd([params], cfg)
    scheduler = make_scheduler(optimizer, cfg)
    scaler = make_grad_scaler(cfg.precision, exp.device)
    keep = torch.from_numpy(clean_mask).to(exp.device)

    # 3. Epochs: CE on the kept samples of each batch, then test.
    for epoch in exp.epochs(model, optimizer, scheduler, scaler, train_loader):
        def step(batch: list) -> tuple[torch.Tensor, dict]:
            images, given_labels, _, indices = batch
            logits = model(images)
            per_sample = F.cross_entropy(logits.float(), given_labels, reduction="none")
            kept = keep[indices]
            return masked_mean(per_sample, kept), {"kept_frac": float(kept.float().mean())}

        model.train()
        record = train_one_epoch(step, train_loader, optimizer, scaler, cfg.precision, exp.device, epoch,
                                 cfg.progress)
        model.eval()
        logits, labels = predict(model, test_loader, cfg.precision, exp.device)
        record["test_acc"] = accuracy(logits, labels)
        exp.end_epoch(epoch, record)

    accs = [r["test_acc"] for r in exp.history]
    summary = {"script": script, "dataset": cfg.dataset, "backbone": cfg.backbone, "noise": data.noise_info,
               "clean_mask": mask_path, "num_train_samples": int(clean_mask.sum()),
               "mask_precision": mask_meta.get("mask_precision"), "mask_recall": mask_meta.get("mask_recall"),
               "best_test_acc": max(accs), "last_test_acc": accs[-1]}
    exp.log.info(f"Best Acc: {max(accs):.2f} Last Acc: {accs[-1]:.2f}")
    exp.finish(summary)
    return summary


if __name__ == "__main__":
    run_cli(main)
