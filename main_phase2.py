"""DeFT phase 2: model adaptation, i.e. full fine-tuning on the clean subset found by phase 1.

    python main_phase2.py --cfg ./config/FFT/cifar100.yaml --noise_mode sym --noise_ratio 0.2

Starts again from the pretrained weights (phase-1 weights are not used), trains the visual
blocks and a new linear head with cross-entropy on the samples the clean mask keeps, and tests
every epoch; reports the best and the last test accuracy. The mask is the phase-1 run's with the
same dataset, --noise_mode, --noise_ratio and seed, or the file given with --clean_mask.
With a PEFT YAML (`--cfg ./config/PEFT/...`) the model adapts with the tuner instead of full
fine-tuning (the paper's Figure 3 ablation); such runs go to output/phase2_peft/.
"""
from __future__ import annotations

import os
from typing import Optional, Sequence

import numpy as np
import torch
import torch.nn.functional as F
from torch.utils.data import Subset

from datasets import build_datasets
from datasets.build import pin_subsample
from models.build import build_classifier, count_parameters
from models.timm_backbones import backbone_normalization, backbone_run_suffix, is_clip_backbone, optimizer_settings
from utils.clean_mask import MASK_FILE, load_clean_mask, mask_metadata_path, mask_method, mask_warnings
from utils.config import build_arg_parser, resolve_config
from utils.engine import (LossTerm, StepOutput, accuracy_summary, evaluate, make_grad_scaler, make_optimizer,
                          make_scheduler, make_test_loaders, train_one_epoch)
from utils.cli import run_cli
from utils.experiment import Experiment
from utils.loader import Batch, make_loader
from utils.methods import adaptation_run_name, run_name
from utils.run_dir import run_mode, run_path

SCRIPT = "phase2"


def main(argv: Optional[Sequence[str]] = None, script: str = SCRIPT, defaults: Optional[dict] = None,
         description: Optional[str] = None) -> dict:
    """Run phase 2 and return its summary (`defaults`: config values applied before the YAML)."""
    parser = build_arg_parser(description or __doc__, flags=("noise_mode", "noise_ratio", "backbone", "clean_mask"))
    args = parser.parse_args(argv)
    cfg = resolve_config(args, defaults)
    real = script.startswith("real_")
    mask_path = cfg.clean_mask or os.path.join(run_path(cfg, run_name("DeFT", cfg, real=real)), MASK_FILE)
    cfg = pin_subsample(cfg, mask_metadata_path(mask_path))  # Clothing1M: exactly phase 1's subsample
    # A timm backbone, PEFT adaptation (a PEFT YAML: the Figure 3 ablation) or a baseline's mask
    # (GMM, TURN, ...) gets its own run: phase2_resnet_from_gmm/..., phase2_peft/...
    method = mask_method(mask_path)
    adaptation = "FFT" if cfg.finetune or not is_clip_backbone(cfg.backbone) else "PEFT"
    name = adaptation_run_name(backbone_run_suffix(cfg.backbone), adaptation == "PEFT", method, real)
    exp = Experiment(cfg, script, run_path(cfg, name), run_mode(args))

    # 1. Data, and the clean mask checked against it (same dataset, size, noise and labels).
    data = build_datasets(cfg, normalization=backbone_normalization(cfg))
    clean_mask, mask_meta = load_clean_mask(mask_path, expected={
        "dataset": cfg.dataset, "num_samples": len(data.train), "noise_mode": cfg.noise_mode,
        "noise_ratio": cfg.noise_ratio, "given_labels_sha256": data.given_labels_sha256,
        "sample_ids": getattr(data, "sample_ids", None)})
    exp.log.info(f"clean mask {mask_path}: {int(clean_mask.sum())} of {len(clean_mask)} samples")
    warnings = mask_warnings(clean_mask, data.train.given_labels, data.num_classes, cfg.batch_size)
    for warning in warnings:
        exp.log.warning(f"WARNING: {warning}")
    train_set = data.train
    if cfg.phase2_batches == "clean_only":  # full batches of clean samples instead of masked batches
        train_set = Subset(data.train, clean_mask.nonzero()[0].tolist())
    train_loader = make_loader(train_set, cfg.batch_size, True, cfg.num_workers, exp.device, cfg.seed)
    test_loaders = make_test_loaders(data, cfg.batch_size, cfg.num_workers, exp.device)

    # 2. Model: fresh pretrained CLIP visual tower (or timm model, --backbone), with a new linear head.
    model = build_classifier(cfg, data.class_names, exp.device)
    params = model.trainable_parameters()
    opt_settings = optimizer_settings(cfg)  # SGD for CLIP; the official optimiser of a timm backbone
    exp.log.info(f"trainable parameters: {count_parameters(params)}, optimizer {opt_settings}")
    optimizer = make_optimizer([params], **opt_settings)
    scheduler = make_scheduler(optimizer, cfg)
    scaler = make_grad_scaler(cfg.precision, exp.device)
    keep = torch.from_numpy(clean_mask).to(exp.device)

    # 3. Epochs: CE on the kept samples of each batch, then test.
    for epoch in exp.epochs(model, optimizer, scheduler, scaler, train_loader):
        def step(batch: Batch, weights_only: bool) -> StepOutput:
            kept = keep[batch.indices]
            if weights_only:  # the mask decides the weights: no forward needed
                return StepOutput({"ce": LossTerm(None, kept)})
            per_sample = F.cross_entropy(model(batch.images).float(), batch.given_labels, reduction="none")
            return StepOutput({"ce": LossTerm(per_sample, kept)})

        model.train()
        result = train_one_epoch(step, train_loader, optimizer, scaler, cfg.precision, exp.device, epoch,
                                 cfg.progress, cfg.micro_batch_size)
        record = {**result.record, "kept_frac": float(np.mean(result.per_sample["weight_ce"][result.seen]))}
        record.update(evaluate(model, test_loaders, cfg.precision, exp.device))
        exp.end_epoch(epoch, record)

    results = accuracy_summary(exp.history)
    summary = {"script": script, "dataset": cfg.dataset, "backbone": cfg.backbone, "adaptation": adaptation,
               "noise": data.noise_info,
               "clean_mask": mask_path, "mask_method": mask_meta.get("method", "DeFT"),
               "num_train_samples": int(clean_mask.sum()),
               "mask_precision": mask_meta.get("mask_precision"), "mask_recall": mask_meta.get("mask_recall"),
               **({"warnings": warnings} if warnings else {}), **results}
    exp.log.info(f"Best Acc: {results['best_test_acc']:.2f} Last Acc: {results['last_test_acc']:.2f}")
    exp.finish(summary)
    return summary


if __name__ == "__main__":
    run_cli(main)
