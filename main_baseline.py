"""Baselines on DeFT's data, noise and output pipeline: CE, GMM, ELR, SCE, GCE, TURN, CLIP label-match.

    python main_baseline.py --cfg ./config/FFT/cifar100.yaml --noise_mode sym --noise_ratio 0.2 --lnl_methods GMM
    python main_baseline.py --cfg ./config/FFT/cifar100.yaml --noise_mode sym --noise_ratio 0.2 \\
        --lnl_methods TURN --backbone resnet
    python main_baseline.py --cfg ./config/PEFT/cifar100.yaml --noise_mode sym --noise_ratio 0.2 \\
        --lnl_methods LabelMatch

- CE, SCE, GCE, ELR: fine-tune (FFT YAML) on every sample with that loss (official-behaviour.md
  §1.6, §4.3-§4.5; GCE with q = gce_q).
- GMM: before each epoch after warm-up, a two-component GMM on the min-max normalised per-sample
  CE of all training images (test transform, same samples as training, fp32) keeps the samples
  whose clean posterior exceeds gmm_threshold; CE on those (§4.2).
- TURN (seed 003, Algorithm 1): step 1 trains the head alone with GCE for turn_lp_epochs on
  features extracted once from the frozen backbone; step 2, for turn_fft_epochs, fits one GMM per
  given class on the per-sample CE, keeps p_clean > turn_tau, draws the same number of samples
  from every class (the smallest clean count) and fully fine-tunes on that subset.
- LabelMatch: a sample is clean when zero-shot CLIP (prompt ensemble label_match_templates)
  predicts its given label. No training.
GMM, TURN and LabelMatch report detection precision/recall/F1 and save `clean_mask.npy` in phase
1's format (`main_phase2.py --clean_mask PATH`). Runs go to output/baseline_{method}[_{backbone}]/.
"""
from __future__ import annotations

import copy
import dataclasses
from typing import Callable, Optional, Sequence

import numpy as np
import torch
import torch.nn.functional as F
from torch.utils.data import Subset, TensorDataset

from datasets import build_datasets
from models.build import build_classifier, count_parameters
from models.clip_loader import load_clip, tokenizer_for
from models.timm_backbones import (backbone_normalization, backbone_run_suffix, clip_backbone_name,
                                   is_clip_backbone, linear_probe_settings, optimizer_settings)
from models.zero_shot import TEMPLATE_SETS, zero_shot_classifier, zero_shot_logits
from utils.clean_mask import mask_metadata, save_clean_mask
from utils.config import Config, ConfigError, build_arg_parser, resolve_config
from utils.engine import (LossTerm, StepOutput, accuracy, accuracy_summary, evaluate, make_grad_scaler,
                          make_optimizer, make_scheduler, make_test_loaders, predict, train_one_epoch)
from utils.errors import run_cli
from utils.experiment import Experiment, start_epoch_rng
from utils.gmm import GMMSettings, class_balanced_subsample, gmm_selection, per_class_gmm_selection
from utils.loader import Batch, epoch_seed, make_loader
from utils.losses import elr_loss, gce_loss, sce_loss
from utils.run_dir import run_mode, run_path
from utils.selection import mask_scores, selection_record

SCRIPT = "baseline"


def main(argv: Optional[Sequence[str]] = None, script: str = SCRIPT, defaults: Optional[dict] = None,
         description: Optional[str] = None) -> dict:
    """Run the baseline named by --lnl_methods and return its summary."""
    parser = build_arg_parser(description or __doc__, flags=("noise_mode", "noise_ratio", "lnl_methods", "backbone"))
    args = parser.parse_args(argv)
    cfg = resolve_config(args, defaults)
    method = cfg.lnl_methods
    if cfg.is_coop:
        raise ConfigError("is_coop (the official positive-prompt classifier with frozen random contexts) is not "
                          "supported by the baselines; set is_coop: false")
    if method == "TURN":  # step 2 runs turn_fft_epochs; linear probing replaces the warm-up
        cfg = dataclasses.replace(cfg, epochs=cfg.turn_fft_epochs, warmup=0)
    run_name = f"{script}_{method.lower()}" + backbone_run_suffix(cfg.backbone)
    exp = Experiment(cfg, script, run_path(cfg, run_name), run_mode(args))
    data = build_datasets(cfg, normalization=backbone_normalization(cfg))
    if len(data.eval) != len(data.train):
        raise RuntimeError("the eval set must hold the training samples (same subsample, same order)")
    exp.log.info(f"{method}: train {len(data.train)} samples, test {len(data.test)}, noise {data.noise_info}")
    if method == "LabelMatch":
        return label_match(cfg, exp, data, script)
    if method == "TURN":
        return turn(cfg, exp, data, script)
    return train_with_loss(cfg, exp, data, script, method)


# ---------------------------------------------------------------- CE, SCE, GCE, ELR, GMM
def train_with_loss(cfg: Config, exp: Experiment, data, script: str, method: str) -> dict:
    """Fine-tune with a robust loss (CE/SCE/GCE/ELR) on all samples, or CE on the GMM clean set."""
    # 1. Data, model, optimiser (the backbone's official one; SGD for CLIP).
    train_loader = make_loader(data.train, cfg.batch_size, True, cfg.num_workers, exp.device, cfg.seed)
    eval_loader = make_loader(data.eval, cfg.batch_size, False, cfg.num_workers, exp.device, persistent=True)
    test_loaders = make_test_loaders(data, cfg.batch_size, cfg.num_workers, exp.device)
    is_clean = data.train.is_clean
    model, optimizer, scheduler, scaler = build_training(cfg, exp, data)
    loss_fn = per_sample_loss(cfg, method)
    elr_targets = torch.zeros(len(data.train), data.num_classes, device=exp.device)  # ELR's memory (N, C)

    # 2. Epochs: [GMM selection] -> train -> test.
    for epoch in exp.epochs(model, optimizer, scheduler, scaler, train_loader):
        record: dict = {}
        clean = None  # None: every sample counts
        if method == "GMM" and epoch > cfg.warmup:
            losses = per_sample_ce(model, eval_loader, cfg, exp.device)
            selection, p_clean = gmm_selection(losses, cfg.gmm_threshold, gmm_settings(cfg, epoch))
            record.update(selection_record(selection, is_clean, scores=p_clean))
            exp.extra["selection"], exp.extra["p_clean"] = selection, p_clean
            clean = torch.from_numpy(selection).to(exp.device)
        if method == "ELR" and "elr_targets" in exp.extra:  # the memory is checkpointed state
            elr_targets = exp.extra["elr_targets"].to(exp.device)

        def step(batch: Batch, weights_only: bool) -> StepOutput:
            weights = None if clean is None else clean[batch.indices]
            if weights_only:  # the weights never depend on the forward here
                return StepOutput({"loss": LossTerm(None, weights)})
            logits = model(batch.images)
            if method == "ELR":
                values, rows = elr_loss(logits, batch.given_labels, elr_targets[batch.indices], cfg.elr_lambda,
                                        cfg.elr_beta)
                return StepOutput({"loss": LossTerm(values, weights)}, per_sample={"elr_target": rows})
            return StepOutput({"loss": LossTerm(loss_fn(logits, batch.given_labels), weights)})

        model.train()
        result = train_one_epoch(step, train_loader, optimizer, scaler, cfg.precision, exp.device, epoch,
                                 cfg.progress, cfg.micro_batch_size)
        record = {**result.record, **record}
        record.update(evaluate(model, test_loaders, cfg.precision, exp.device))
        if method == "ELR":  # each sample is visited once per epoch: its new row replaces the old one
            seen = torch.from_numpy(result.seen).to(exp.device)
            elr_targets[seen] = torch.from_numpy(result.per_sample["elr_target"]).to(exp.device)[seen]
            exp.extra["elr_targets"] = elr_targets.cpu()
        exp.end_epoch(epoch, record)

    summary = {"script": script, "method": method, **accuracy_summary(exp.history)}
    if method == "GMM":
        if "selection" not in exp.extra:  # every epoch was warm-up: select once after training
            exp.extra["selection"], exp.extra["p_clean"] = gmm_selection(
                per_sample_ce(model, eval_loader, cfg, exp.device), cfg.gmm_threshold,
                gmm_settings(cfg, cfg.epochs + 1))
        rule = f"2-component GMM on min-max normalised per-sample CE, p_clean > {cfg.gmm_threshold}"
        summary.update(save_mask(cfg, exp, data, script, exp.extra["selection"], is_clean, rule,
                                 "eval_pass_before_last_epoch", method, exp.extra["p_clean"]))
    return finish(cfg, exp, data, summary)


def per_sample_loss(cfg: Config, method: str) -> Callable[[torch.Tensor, torch.Tensor], torch.Tensor]:
    """loss(logits, given_labels) -> (batch,) for CE, GMM, SCE and GCE; all in fp32."""
    if method == "SCE":
        return lambda logits, labels: sce_loss(logits, labels, cfg.sce_alpha, cfg.sce_beta)
    if method == "GCE":
        return lambda logits, labels: gce_loss(logits, labels, cfg.gce_q)
    return lambda logits, labels: F.cross_entropy(logits.float(), labels, reduction="none")  # CE, GMM


# ---------------------------------------------------------------- TURN
def turn(cfg: Config, exp: Experiment, data, script: str) -> dict:
    """TURN (seed 003, Algorithm 1): linear probing with GCE, then per-epoch cleansing and FFT."""
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

    lp = exp.extra.get("linear_probe", {})
    summary = {"script": script, "method": "TURN", "lp_test_acc": lp.get("test_acc"), **accuracy_summary(exp.history)}
    rule = (f"per-class 2-component GMM on per-sample CE, p_clean > {cfg.turn_tau}"
            + (", class-balanced uniform subsample" if cfg.turn_class_balance else ""))
    summary.update(save_mask(cfg, exp, data, script, exp.extra["selection"], is_clean, rule,
                             "eval_pass_before_last_epoch", "TURN", exp.extra["p_clean"]))
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


# ---------------------------------------------------------------- CLIP label-match
def label_match(cfg: Config, exp: Experiment, data, script: str) -> dict:
    """Zero-shot CLIP: clean when the prompt-ensemble prediction equals the given label."""
    if not is_clip_backbone(cfg.backbone):
        raise ConfigError(f"LabelMatch needs a CLIP backbone (zero-shot text classifier), got {cfg.backbone!r}")
    if cfg.label_match_templates not in TEMPLATE_SETS:
        raise ConfigError(f"label_match_templates must be one of {sorted(TEMPLATE_SETS)}, "
                          f"got {cfg.label_match_templates!r}")
    backbone = clip_backbone_name(cfg.backbone)
    templates = TEMPLATE_SETS[cfg.label_match_templates]
    clip_model = load_clip(backbone, cfg.pretrained, cfg.precision, exp.device)
    classifier = zero_shot_classifier(clip_model, tokenizer_for(backbone), data.class_names, templates)  # (C, D)

    def zero_shot(images: torch.Tensor) -> torch.Tensor:
        return zero_shot_logits(clip_model, classifier, images)

    eval_loader = make_loader(data.eval, cfg.batch_size, False, cfg.num_workers, exp.device)
    logits, given_labels = predict(zero_shot, eval_loader, cfg.precision, exp.device)
    clean = (logits.argmax(dim=1) == given_labels).numpy()
    # the detector's score: the zero-shot probability of the given label
    p_given = logits.float().softmax(dim=1).gather(1, given_labels.view(-1, 1)).squeeze(1).numpy()
    is_clean = data.train.is_clean
    summary = {"script": script, "method": "LabelMatch", "templates": list(templates)}
    for key, loader in make_test_loaders(data, cfg.batch_size, cfg.num_workers, exp.device).items():  # zero-shot test accuracy
        summary[f"zero_shot_{key}"] = accuracy(*predict(zero_shot, loader, cfg.precision, exp.device))
    rule = f"zero-shot CLIP argmax == given label ({len(templates)} templates: {cfg.label_match_templates})"
    summary.update(save_mask(cfg, exp, data, script, clean, is_clean, rule, "zero_shot", "LabelMatch", p_given))
    exp.log.info(", ".join(f"{k} {v:.4f}" for k, v in summary.items() if isinstance(v, float)))
    return finish(cfg, exp, data, summary)


# ---------------------------------------------------------------- shared pieces
def build_training(cfg: Config, exp: Experiment, data) -> tuple:
    """The classifier on the configured backbone, its optimiser, the cosine schedule and the scaler."""
    model = build_classifier(cfg, data.class_names, exp.device)
    params = model.trainable_parameters()
    settings = optimizer_settings(cfg)
    exp.log.info(f"backbone {cfg.backbone}: trainable parameters {count_parameters(params)}, optimizer {settings}")
    optimizer = make_optimizer([params], **settings)
    return model, optimizer, make_scheduler(optimizer, cfg), make_grad_scaler(cfg.precision, exp.device)


def per_sample_ce(model: torch.nn.Module, eval_loader, cfg: Config, device: torch.device) -> np.ndarray:
    """Per-sample CE (N,) over the training images with the test transform, in dataset order, fp32."""
    model.eval()
    logits, given_labels = predict(model, eval_loader, cfg.precision, device)
    model.train()
    return F.cross_entropy(logits, given_labels, reduction="none").numpy()


def gmm_settings(cfg: Config, epoch: int) -> GMMSettings:
    """The official GMM settings, seeded per (seed, epoch) instead of NumPy's global RNG."""
    return GMMSettings(cfg.gmm_max_iter, cfg.gmm_tol, cfg.gmm_reg_covar, random_state=epoch_seed(cfg.seed, epoch))


def save_mask(cfg: Config, exp: Experiment, data, script: str, mask: np.ndarray, is_clean: Optional[np.ndarray],
              rule: str, source: str, method: str, clean_scores: np.ndarray) -> dict:
    """Save the selection and its per-sample clean scores in phase 1's format; return the summary fields."""
    scores = mask_scores(mask, is_clean, clean_scores)
    metadata = mask_metadata(cfg, data, len(data.train), f"{script}_{method.lower()}", rule, source, method)
    path = save_clean_mask(exp.artifact_dir(), mask, {**metadata, **scores}, clean_scores=clean_scores, is_clean=is_clean)
    return {"clean_mask": path, "num_selected": int(np.sum(mask)), **scores}


def finish(cfg: Config, exp: Experiment, data, summary: dict) -> dict:
    """Add what identifies the run, write summary.json and return it."""
    summary = {**summary, "dataset": cfg.dataset, "backbone": cfg.backbone, "noise": data.noise_info,
               "num_samples": len(data.train)}
    if "best_test_acc" in summary:
        exp.log.info(f"Best Acc: {summary['best_test_acc']:.2f} Last Acc: {summary['last_test_acc']:.2f}")
    exp.finish(summary)
    return summary


if __name__ == "__main__":
    run_cli(main)
