"""Baselines on DeFT's data, noise and output pipeline: CE, GMM, ELR, SCE, GCE, CLIP label-match.

    python main_baseline.py --cfg ./config/FFT/cifar100.yaml --noise_mode sym --noise_ratio 0.2 --lnl_methods GMM
    python main_baseline.py --cfg ./config/FFT/cifar100.yaml --noise_mode sym --noise_ratio 0.2 \\
        --lnl_methods ELR --backbone resnet
    python main_baseline.py --cfg ./config/PEFT/cifar100.yaml --noise_mode sym --noise_ratio 0.2 \\
        --lnl_methods LabelMatch

- CE, SCE, GCE, ELR: fine-tune (FFT YAML) on every sample with that loss (the official loop:
  HotanLee/DeFT main_baseline.py:85-99; SCE and ELR: utils/lnl_methods.py:4-29 and 31-49;
  GCE, not in the official code, with q = gce_q).
- GMM: before each epoch after warm-up, a two-component GMM on the min-max normalised per-sample
  CE of all training images (test transform, same samples as training, fp32) keeps the samples
  whose clean posterior exceeds gmm_threshold; CE on those (HotanLee/DeFT main_baseline.py:45-72
  and 91-96).
- LabelMatch: a sample is clean when zero-shot CLIP (prompt ensemble label_match_templates)
  predicts its given label. No training.
GMM and LabelMatch report detection precision/recall/F1 and save `clean_mask.npy` in phase 1's
format (`main_phase2.py --clean_mask PATH`). Runs go to output/baseline_{method}[_{backbone}]/
(output/real_baseline_... from main_real_baseline.py). TURN has its own scripts, main_turn.py and
main_real_turn.py.
"""
from __future__ import annotations

import argparse
from typing import Callable, Optional, Sequence

import torch
import torch.nn.functional as F

from models.clip_loader import load_clip, tokenizer_for
from models.timm_backbones import backbone_run_suffix, clip_backbone_name, is_clip_backbone
from models.zero_shot import TEMPLATE_SETS, zero_shot_classifier, zero_shot_logits
from utils.baseline_run import (baseline_data, build_training, check_config, finish, gmm_settings, per_sample_ce,
                                 save_mask)
from utils.cli import run_cli
from utils.config import Config, ConfigError, build_arg_parser, resolve_config
from utils.engine import (LossTerm, StepOutput, accuracy, accuracy_summary, evaluate, make_test_loaders, predict,
                          train_one_epoch)
from utils.experiment import Experiment
from utils.loader import Batch, make_loader
from utils.methods import run_name
from utils.run_dir import run_mode, run_path
from lnl.gmm import gmm_selection
from lnl.losses import elr_loss, gce_loss, sce_loss
from lnl.selection import selection_record

SCRIPT = "baseline"


def main(argv: Optional[Sequence[str]] = None, script: str = SCRIPT, defaults: Optional[dict] = None,
         description: Optional[str] = None) -> dict:
    """Run the baseline named by --lnl_methods and return its summary."""
    parser = build_arg_parser(description or __doc__, flags=("noise_mode", "noise_ratio", "lnl_methods", "backbone"))
    args = parser.parse_args(argv)
    real = script.startswith("real_")  # main_real_baseline.py: its runs go to real_baseline_<method>
    refuse_turn(args, real)
    cfg = resolve_config(args, defaults)
    method = cfg.lnl_methods
    check_config(cfg)
    name = run_name(method, cfg, backbone_run_suffix(cfg.backbone), real=real)
    exp = Experiment(cfg, script, run_path(cfg, name), run_mode(args))
    data = baseline_data(cfg, exp, method)
    if method == "LabelMatch":
        return label_match(cfg, exp, data, script)
    return train_with_loss(cfg, exp, data, script, method)


def refuse_turn(args: argparse.Namespace, real: bool) -> None:
    """TURN left --lnl_methods for main_turn.py / main_real_turn.py: say so, with the command that runs it."""
    if getattr(args, "lnl_methods", None) != "TURN":
        return
    name = "real_turn" if real else "turn"
    flags = "".join(f" --{key} {getattr(args, key)}" for key in ("noise_mode", "noise_ratio", "backbone")
                    if getattr(args, key, None) is not None)
    raise ConfigError(f"TURN has its own script: python main_{name}.py --cfg {args.cfg}{flags} (the same flags "
                      f"without --lnl_methods; runs go to output/{name}[_<backbone>]/...)")


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
        summary.update(save_mask(cfg, exp, data, f"{script}_{method.lower()}", exp.extra["selection"], rule,
                                 "eval_pass_before_last_epoch", method, exp.extra["p_clean"]))
    return finish(cfg, exp, data, summary)


def per_sample_loss(cfg: Config, method: str) -> Callable[[torch.Tensor, torch.Tensor], torch.Tensor]:
    """loss(logits, given_labels) -> (batch,) for CE, GMM, SCE and GCE; all in fp32."""
    if method == "SCE":
        return lambda logits, labels: sce_loss(logits, labels, cfg.sce_alpha, cfg.sce_beta)
    if method == "GCE":
        return lambda logits, labels: gce_loss(logits, labels, cfg.gce_q)
    return lambda logits, labels: F.cross_entropy(logits.float(), labels, reduction="none")  # CE, GMM


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
    summary = {"script": script, "method": "LabelMatch", "templates": list(templates)}
    for key, loader in make_test_loaders(data, cfg.batch_size, cfg.num_workers, exp.device).items():  # zero-shot
        summary[f"zero_shot_{key}"] = accuracy(*predict(zero_shot, loader, cfg.precision, exp.device))
    rule = f"zero-shot CLIP argmax == given label ({len(templates)} templates: {cfg.label_match_templates})"
    summary.update(save_mask(cfg, exp, data, f"{script}_labelmatch", clean, rule, "zero_shot", "LabelMatch", p_given))
    exp.log.info(", ".join(f"{k} {v:.4f}" for k, v in summary.items() if isinstance(v, float)))
    return finish(cfg, exp, data, summary)


if __name__ == "__main__":
    run_cli(main)
