"""Small-loss baseline: per-batch small-loss selection on a PEFT-tuned CLIP classifier.

    python main_small_loss.py --cfg ./config/PEFT/cifar100.yaml --noise_mode sym --noise_ratio 0.2

The official "coteaching" baseline (HotanLee/DeFT main_small_loss.py:41-54, :141-146): one network, no cross
update. Each batch keeps its int((1 - τ_e)·B) smallest cross-entropy losses and trains on their
mean; τ_e ramps linearly from 0 over the warm-up epochs to the forget rate. The forget rate is the
**oracle** noise ratio (halved for `str`), as in the paper, unless `forget_rate` is set. Each sample
is judged once per epoch (in its batch); the last epoch's decisions are saved as the clean mask,
in phase 1's format, so `main_phase2.py --clean_mask` can train on it.
"""
from __future__ import annotations

from typing import Optional, Sequence

import numpy as np
import torch.nn.functional as F

from datasets import build_datasets
from models.build import build_classifier, count_parameters
from models.timm_backbones import backbone_normalization, backbone_run_suffix, optimizer_settings
from utils.clean_mask import mask_metadata, save_clean_mask
from utils.config import build_arg_parser, resolve_config
from utils.engine import (LossTerm, StepOutput, accuracy_summary, evaluate, make_grad_scaler, make_optimizer,
                          make_scheduler, make_test_loaders, train_one_epoch)
from utils.cli import run_cli
from utils.experiment import Experiment
from utils.loader import Batch, make_loader
from utils.methods import run_name
from utils.run_dir import run_mode, run_path
from lnl.selection import (forget_rate_schedule, mask_scores, oracle_forget_rate, selection_record,
                             small_loss_selection)

SCRIPT = "small_loss"
METHOD = "SmallLoss"


def main(argv: Optional[Sequence[str]] = None, script: str = SCRIPT, defaults: Optional[dict] = None,
         description: Optional[str] = None) -> dict:
    """Run the small-loss baseline and return its summary."""
    args = build_arg_parser(description or __doc__, flags=("noise_mode", "noise_ratio")).parse_args(argv)
    cfg = resolve_config(args, defaults)
    exp = Experiment(cfg, script, run_path(cfg, run_name("SmallLoss", cfg, backbone_run_suffix(cfg.backbone))),
                     run_mode(args))

    # 1. Data.
    data = build_datasets(cfg, normalization=backbone_normalization(cfg))
    train_loader = make_loader(data.train, cfg.batch_size, True, cfg.num_workers, exp.device, cfg.seed)
    test_loaders = make_test_loaders(data, cfg.batch_size, cfg.num_workers, exp.device)
    num_samples = len(data.train)
    is_clean = data.train.is_clean

    # 2. Model: CLIP visual tower with the config's tuner (PEFT YAML: VPT-deep) and a linear head.
    model = build_classifier(cfg, data.class_names, exp.device)
    params = model.trainable_parameters()
    exp.log.info(f"trainable parameters: {count_parameters(params)}")
    optimizer = make_optimizer([params], **optimizer_settings(cfg))
    scheduler = make_scheduler(optimizer, cfg)
    scaler = make_grad_scaler(cfg.precision, exp.device)

    # 3. The forget-rate schedule τ_1..τ_E (the oracle noise ratio unless forget_rate is set).
    oracle = cfg.forget_rate is None
    rate = oracle_forget_rate(cfg.noise_mode, cfg.noise_ratio) if oracle else cfg.forget_rate
    schedule = forget_rate_schedule(rate, cfg.epochs, cfg.warmup)
    exp.log.info(f"forget rate {rate} ({'oracle: the noise ratio' if oracle else 'forget_rate'}), "
                 f"schedule {np.round(schedule, 4).tolist()}")

    # 4. Epochs: keep each (global) batch's smallest losses, train on their mean, test, score the selection.
    for epoch in exp.epochs(model, optimizer, scheduler, scaler, train_loader):
        forget = float(schedule[epoch - 1])

        def step(batch: Batch, weights_only: bool) -> StepOutput:
            per_sample = F.cross_entropy(model(batch.images).float(), batch.given_labels, reduction="none")
            keep_smallest = LossTerm(per_sample, batch_rule=lambda losses: small_loss_selection(losses, forget))
            return StepOutput({"ce": keep_smallest}, per_sample={"loss": per_sample})

        model.train()
        result = train_one_epoch(step, train_loader, optimizer, scaler, cfg.precision, exp.device, epoch,
                                 cfg.progress, cfg.micro_batch_size)
        selection, losses = result.per_sample["weight_ce"] > 0, result.per_sample["loss"]
        record = {**result.record, "kept_frac": float(selection.mean())}
        record.update(evaluate(model, test_loaders, cfg.precision, exp.device))
        record["forget_rate"] = forget
        # the detector's score: a smaller loss means more likely clean
        record.update(selection_record(selection, is_clean, batch_ids=result.per_sample["batch"], scores=-losses))
        record.update(clean_and_noisy_losses(losses, is_clean))
        exp.extra["selection"], exp.extra["losses"] = selection, losses
        exp.end_epoch(epoch, record)

    # 5. The clean mask: the last epoch's per-batch decisions.
    clean_mask = exp.extra["selection"]
    scores = mask_scores(clean_mask, is_clean, -exp.extra["losses"])
    rule = f"per batch: the int((1 - tau_e) * B) smallest CE losses, tau_E = {rate}" + (" (oracle)" if oracle else "")
    metadata = mask_metadata(cfg, data, num_samples, script, rule, mask_source="online", method=METHOD)
    mask_path = save_clean_mask(exp.artifact_dir(), clean_mask, {**metadata, **scores},
                                clean_scores=-exp.extra["losses"], is_clean=is_clean)
    summary = {"script": script, "method": METHOD, "dataset": cfg.dataset, "backbone": cfg.backbone,
               "noise": data.noise_info, "forget_rate": rate, "oracle_forget_rate": oracle,
               "num_samples": num_samples, "num_selected": int(clean_mask.sum()), "clean_mask": mask_path,
               **scores, **accuracy_summary(exp.history)}
    exp.finish(summary)
    return summary


def clean_and_noisy_losses(losses: np.ndarray, is_clean: Optional[np.ndarray]) -> dict:
    """Mean CE of the truly clean and the truly noisy samples (the official progress line's losses)."""
    if is_clean is None:
        return {}
    return {"loss_clean": float(losses[is_clean].mean()) if is_clean.any() else 0.0,
            "loss_noisy": float(losses[~is_clean].mean()) if (~is_clean).any() else 0.0}


if __name__ == "__main__":
    run_cli(main)
