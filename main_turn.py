"""TURN: linear probing with a robust loss, then per-epoch cleansing and full fine-tuning.

    python main_turn.py --cfg ./config/FFT/cifar100.yaml --noise_mode sym --noise_ratio 0.2
    python main_turn.py --cfg ./config/FFT/cifar100.yaml --noise_mode sym --noise_ratio 0.2 --backbone resnet

Algorithm 1 of Ahn, Kim, Ko, Yun, "Fine-tuning Pre-trained Models for Robustness Under Noisy Labels",
on DeFT's data, noise and run files (docs/baselines.md):
1. Linear probing: the features z_i = f(x_i) of the training images are extracted once from the
   frozen backbone; the head alone trains on them with GCE (q = gce_q) for turn_lp_epochs.
2. For turn_fft_epochs epochs (they replace `epochs`; linear probing replaces the warm-up): one
   two-component GMM per given class on the per-sample CE keeps p_clean > turn_tau; the same
   number of samples is drawn from every class (the smallest clean count; turn_class_balance);
   the whole model is fine-tuned with CE on that subset.
The last epoch's subset is saved as `clean_mask.npy` in phase 1's format (`main_phase2.py
--clean_mask PATH`) with detection precision/recall/F1. Runs go to output/turn[_<backbone>]/;
on Clothing1M, WebVision and CIFAR-N, main_real_turn.py runs it with the real-noise defaults.
"""
from __future__ import annotations

import copy
import dataclasses
from typing import Optional, Sequence

import numpy as np
import torch
import torch.nn.functional as F
from torch.utils.data import Subset, TensorDataset

from models.timm_backbones import backbone_run_suffix, linear_probe_settings
from utils.baseline_run import (baseline_data, build_training, check_config, finish, gmm_settings, per_sample_ce,
                                 save_mask)
from utils.cli import run_cli
from utils.config import Config, build_arg_parser, resolve_config
from utils.engine import (LossTerm, StepOutput, accuracy, accuracy_summary, evaluate, make_grad_scaler,
                          make_optimizer, make_test_loaders, predict, train_one_epoch)
from utils.experiment import Experiment, start_epoch_rng
from utils.loader import Batch, epoch_seed, make_loader
from utils.methods import run_name
from utils.run_dir import run_mode, run_path
from lnl.gmm import class_balanced_subsample, per_class_gmm_selection
from lnl.losses import gce_loss
from lnl.selection import selection_record

SCRIPT = "turn"
METHOD = "TURN"


def main(argv: Optional[Sequence[str]] = None, script: str = SCRIPT, defaults: Optional[dict] = None,
         description: Optional[str] = None) -> dict:
    """Run TURN and return its summary."""
    args = build_arg_parser(description or __doc__, flags=("noise_mode", "noise_ratio", "backbone")).parse_args(argv)
    cfg = resolve_config(args, defaults)
    check_config(cfg)
    cfg = dataclasses.replace(cfg, epochs=cfg.turn_fft_epochs, warmup=0)  # step 2's epochs; step 1 is the warm-up
    real = script.startswith("real_")  # main_real_turn.py: its runs go to real_turn[_<backbone>]
    name = run_name(METHOD, cfg, backbone_run_suffix(cfg.backbone), real=real)
    exp = Experiment(cfg, script, run_path(cfg, name), run_mode(args))
    data = baseline_data(cfg, exp, METHOD)
    eval_loader = make_loader(data.eval, cfg.batch_size, False, cfg.num_workers, exp.device, persistent=True)
    test_loaders = make_test_loaders(data, cfg.batch_size, cfg.num_workers, exp.device)
    given_labels = np.asarray(data.train.given_labels)
    is_clean = data.train.is_clean
    model, optimizer, scheduler, scaler = build_training(cfg, exp, data)
    subset = Subset(data.train, list(range(len(data.train))))  # its indices change every epoch
    subset_loader = make_loader(subset, cfg.batch_size, True, cfg.num_workers, exp.device, cfg.seed)

    # Step 1: features z_i = f(x_i) extracted once from the frozen backbone; the head learns with GCE.
    train_features = None
    if not exp.resuming:  # a resumed run restores the probed head (and later epochs) from the checkpoint
        model.eval()
        train_features, _ = predict(model.features, eval_loader, cfg.precision, exp.device)  # (N, D), once
        test_features, test_labels = predict(model.features, test_loaders["test_acc"], cfg.precision, exp.device)
        exp.extra["linear_probe"] = linear_probe(model.head, train_features, given_labels, test_features,
                                                 test_labels, cfg, exp)

    # Step 2: each epoch, per-class GMM cleansing + class-balanced subsample, then FFT on the subset.
    for epoch in exp.epochs(model, optimizer, scheduler, scaler, subset_loader):
        if epoch == 1 and train_features is not None:  # the model is still backbone + probed head
            losses = head_ce(model.head, train_features, given_labels, exp.device)
        else:
            losses = per_sample_ce(model, eval_loader, cfg, exp.device)
        clean, p_clean = per_class_gmm_selection(losses, given_labels, data.num_classes, cfg.turn_tau,
                                                 gmm_settings(cfg, epoch))
        chosen = clean
        if cfg.turn_class_balance:
            rng = np.random.default_rng(epoch_seed(cfg.seed, epoch))
            chosen = class_balanced_subsample(clean, given_labels, data.num_classes, rng)
        subset.indices = np.flatnonzero(chosen).tolist()
        record = {**selection_record(clean, is_clean, "gmm_", scores=p_clean), **selection_record(chosen, is_clean)}
        exp.extra["selection"], exp.extra["p_clean"] = chosen, p_clean

        def step(batch: Batch, weights_only: bool) -> StepOutput:
            if weights_only:
                return StepOutput({"ce": LossTerm(None)})
            return StepOutput({"ce": LossTerm(F.cross_entropy(model(batch.images).float(), batch.given_labels,
                                                              reduction="none"))})

        model.train()
        if subset.indices:
            result = train_one_epoch(step, subset_loader, optimizer, scaler, cfg.precision, exp.device, epoch,
                                     cfg.progress, cfg.micro_batch_size)
            record = {**result.record, **record}
        else:
            exp.log.info(f"epoch {epoch}: the cleansed subset is empty (a class has no sample with "
                         f"p_clean > {cfg.turn_tau}); no training this epoch")
        record.update(evaluate(model, test_loaders, cfg.precision, exp.device))
        exp.end_epoch(epoch, record)

    # The last epoch's subset as the clean mask; the per-class GMM's own scores beside it.
    lp = exp.extra.get("linear_probe", {})
    summary = {"script": script, "method": METHOD, "lp_test_acc": lp.get("test_acc"), **accuracy_summary(exp.history)}
    rule = (f"per-class 2-component GMM on per-sample CE, p_clean > {cfg.turn_tau}"
            + (", class-balanced uniform subsample" if cfg.turn_class_balance else ""))
    summary.update(save_mask(cfg, exp, data, script, exp.extra["selection"], rule, "eval_pass_before_last_epoch",
                             METHOD, exp.extra["p_clean"]))
    if is_clean is not None:
        summary.update({k: v for k, v in exp.history[-1].items() if k.startswith("gmm_")})
    return finish(cfg, exp, data, summary)


def linear_probe(head: torch.nn.Module, features: torch.Tensor, given_labels: np.ndarray,
                 test_features: torch.Tensor, test_labels: torch.Tensor, cfg: Config, exp: Experiment) -> dict:
    """TURN step 1: train only the head with GCE on pre-extracted features for turn_lp_epochs.

    The head trains as an fp32 copy that is written back into `head` at the end: with `precision:
    fp16` the head is fp16, and AdamW's eps (1e-8) is 0 in fp16, so a weight whose gradient is
    (or underflows to) 0 would be updated by 0/0 and the head would turn NaN at the first step.
    """
    labels = torch.as_tensor(given_labels, dtype=torch.long)
    dataset = TensorDataset(features.float(), labels, labels, torch.arange(len(labels)))
    loader = make_loader(dataset, cfg.batch_size, True, 0, exp.device, cfg.seed)
    settings = linear_probe_settings(cfg)
    probe = copy.deepcopy(head).float()
    optimizer = make_optimizer([list(probe.parameters())], **settings)
    scaler = make_grad_scaler(cfg.precision, exp.device)
    exp.log.info(f"TURN step 1: linear probing for {cfg.turn_lp_epochs} epochs on {tuple(features.shape)} "
                 f"features, {settings}, head in fp32")

    def step(batch: Batch, weights_only: bool) -> StepOutput:
        if weights_only:
            return StepOutput({"gce": LossTerm(None)})
        return StepOutput({"gce": LossTerm(gce_loss(probe(batch.images), batch.given_labels, cfg.gce_q))})

    probe.train()
    losses = []
    for lp_epoch in range(1, cfg.turn_lp_epochs + 1):
        start_epoch_rng(loader, cfg.seed, lp_epoch)
        losses.append(train_one_epoch(step, loader, optimizer, scaler, cfg.precision, exp.device, lp_epoch,
                                      False, cfg.micro_batch_size).record["loss"])
    with torch.no_grad():
        test_acc = accuracy(probe(test_features.to(exp.device).float()).cpu(), test_labels)
        for target, trained in zip(head.parameters(), probe.parameters()):
            target.copy_(trained)  # back into the head's own dtype
    exp.log.info(f"TURN step 1 done: linear-probe test accuracy {test_acc:.2f}, GCE loss per epoch {losses}")
    return {"test_acc": test_acc, "losses": losses, "optimizer": settings}


@torch.no_grad()
def head_ce(head: torch.nn.Module, features: torch.Tensor, given_labels: np.ndarray,
            device: torch.device) -> np.ndarray:
    """Per-sample CE of the head on cached features (N,): the model's loss while the backbone is frozen."""
    dtype = next(head.parameters()).dtype
    logits = head(features.to(device, dtype)).float().cpu()
    return F.cross_entropy(logits, torch.as_tensor(given_labels, dtype=torch.long), reduction="none").numpy()


if __name__ == "__main__":
    run_cli(main)
