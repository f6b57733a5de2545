"""DeFT phase 1: noisy-label detection with dual prompts on a PEFT-tuned CLIP.

    python main_phase1.py --cfg ./config/PEFT/cifar100.yaml --noise_mode sym --noise_ratio 0.2

Per batch: positive logits s·z·t+ and negative logits s·sg(z)·t-; a sample is clean when
p_yes[i, given_i] = σ(l+ - l-) > 0.5; L = L_sim (CE over the positive prompts, all samples
during warm-up, selected samples after) + L_dp (dual-prompt negative learning). The last
epoch's online decisions are saved as the clean mask that phase 2 trains on.
"""
from __future__ import annotations

from typing import Optional, Sequence

import numpy as np
import torch

from datasets import build_datasets
from models.build import build_deft_model, count_parameters
from utils.clean_mask import mask_metadata as shared_mask_metadata, mask_warnings, save_clean_mask
from utils.config import Config, build_arg_parser, resolve_config
from utils.engine import (LossTerm, StepOutput, accuracy_summary, evaluate, make_grad_scaler, make_optimizer,
                          make_scheduler, make_test_loaders, predict, train_one_epoch)
from utils.cli import run_cli
from utils.experiment import Experiment
from utils.loader import Batch, make_loader
from lnl.losses import deft_phase1_loss
from utils.methods import run_name
from utils.run_dir import run_mode, run_path
from lnl.selection import (class_selection_rates, dual_prompt_selection, mask_scores, pair_probabilities,
                           selection_record)

SCRIPT = "phase1"


def main(argv: Optional[Sequence[str]] = None, script: str = SCRIPT, defaults: Optional[dict] = None,
         description: Optional[str] = None) -> dict:
    """Run phase 1 and return its summary (`defaults`: config values applied before the YAML)."""
    args = build_arg_parser(description or __doc__, flags=("noise_mode", "noise_ratio")).parse_args(argv)
    cfg = resolve_config(args, defaults)
    exp = Experiment(cfg, script, run_path(cfg, run_name("DeFT", cfg, real=script.startswith("real_"))),
                     run_mode(args))

    # 1. Data: the noisy training set (given labels) and, where known, which labels are truly clean.
    data = build_datasets(cfg)
    train_loader = make_loader(data.train, cfg.batch_size, True, cfg.num_workers, exp.device, cfg.seed)
    test_loaders = make_test_loaders(data, cfg.batch_size, cfg.num_workers, exp.device)  # + WebVision's ImageNet val
    num_samples = len(data.train)
    is_clean, given_labels = data.train.is_clean, data.train.given_labels
    exp.log.info(f"train {num_samples} samples, test {len(data.test)}, noise {data.noise_info}")

    # 2. Model: frozen CLIP + tuner + dual prompts; SGD over [tuner] and [prompt contexts].
    model = build_deft_model(cfg, data.class_names, exp.device)
    tuner_params, prompt_params = model.trainable_groups()
    exp.log.info(f"trainable: tuner {count_parameters(tuner_params)}, prompts {count_parameters(prompt_params)}")
    optimizer = make_optimizer([tuner_params, prompt_params], "sgd", cfg.lr, cfg.weight_decay, cfg.momentum)
    scheduler = make_scheduler(optimizer, cfg)
    scaler = make_grad_scaler(cfg.precision, exp.device)
    prompt_labels_given_until = cfg.warmup if cfg.noisy_prompt_labels_until is None else cfg.noisy_prompt_labels_until

    # 3. Epochs: train with online selection, test the positive-prompt classifier, score the selection.
    for epoch in exp.epochs(model, optimizer, scheduler, scaler, train_loader):
        def step(batch: Batch, weights_only: bool, text_features: tuple) -> StepOutput:
            pos_logits, neg_logits = model(batch.images, text_features)
            out = deft_phase1_loss(pos_logits, neg_logits, batch.given_labels, batch.complementary_labels,
                                   in_warmup=epoch <= cfg.warmup,
                                   prompt_labels_are_given=epoch <= prompt_labels_given_until,
                                   requires_argmax=cfg.select_requires_argmax, warmup_loss=cfg.warmup_loss)
            return StepOutput(terms={"cls": LossTerm(out.cls_values, out.cls_weights),  # L_sim
                                     "dp": LossTerm(out.dp_values)},  # L_dp
                              per_sample={"selected": out.selected, "p_clean": out.p_clean,
                                          "correct": out.predictions == batch.given_labels})

        model.train()
        result = train_one_epoch(step, train_loader, optimizer, scaler, cfg.precision, exp.device, epoch,
                                 cfg.progress, cfg.micro_batch_size, shared=model.text_features)
        selection, outputs = result.per_sample["selected"], result.per_sample
        record = {**result.record, "train_acc_given": 100.0 * float(outputs["correct"].mean()),
                  "selected_frac": float(selection.mean()),
                  # the least-selected class: a slide towards 0 is the selection collapsing onto a few classes
                  "min_class_selected_frac": float(np.nanmin(class_selection_rates(selection, given_labels,
                                                                                   data.num_classes)))}
        with torch.no_grad():
            text_features = model.text_features()  # once per evaluation, not per test batch
        record.update(evaluate(model, test_loaders, cfg.precision, exp.device,
                               forward=lambda x: model(x, text_features)[0]))  # positive-prompt classifier
        record.update(selection_record(selection, is_clean, batch_ids=outputs["batch"], scores=outputs["p_clean"]))
        exp.extra["selection"], exp.extra["p_clean"] = selection, outputs["p_clean"]
        exp.end_epoch(epoch, record)

    # 4. The clean mask: the last epoch's online decisions (official), or a clean scoring pass.
    clean_mask, p_clean = exp.extra["selection"], exp.extra["p_clean"]
    if cfg.mask_source == "eval_pass":
        clean_mask, p_clean = scoring_pass(model, data.eval, cfg, exp.device)
    scores = mask_scores(clean_mask, is_clean, p_clean)
    mask_path = save_clean_mask(exp.artifact_dir(), clean_mask, {**mask_metadata(cfg, data, num_samples, script), **scores},
                                clean_scores=p_clean, is_clean=is_clean)

    warnings = mask_warnings(clean_mask, given_labels, data.num_classes, cfg.batch_size)
    for warning in warnings:
        exp.log.warning(f"WARNING: {warning}")
    per_class = class_selection_rates(clean_mask, given_labels, data.num_classes)
    summary = {"script": script, "dataset": cfg.dataset, "noise": data.noise_info,
               "num_samples": num_samples, "num_selected": int(clean_mask.sum()),
               "clean_mask": mask_path, "mask_source": cfg.mask_source, **scores,
               "selected_frac_per_class": [None if np.isnan(rate) else float(rate) for rate in per_class],
               **({"warnings": warnings} if warnings else {}), **accuracy_summary(exp.history)}
    exp.finish(summary)
    return summary


def scoring_pass(model, eval_set, cfg: Config, device: torch.device) -> tuple[np.ndarray, np.ndarray]:
    """`mask_source: eval_pass`: select on the training images without augmentation, after training.

    Returns the mask and p_clean = p_yes[i, given_i], both (N,).
    """
    model.eval()
    loader = make_loader(eval_set, cfg.batch_size, False, cfg.num_workers, device)
    with torch.no_grad():
        text_features = model.text_features()
    p_yes, given_labels = predict(lambda x: pair_probabilities(*model(x, text_features)), loader,
                                  cfg.precision, device)
    p_clean = p_yes.gather(1, given_labels.view(-1, 1)).squeeze(1)
    return dual_prompt_selection(p_yes, given_labels, cfg.select_requires_argmax).numpy(), p_clean.numpy()


def mask_metadata(cfg: Config, data, num_samples: int, script: str) -> dict:
    """What identifies the data a mask belongs to, and how it was made."""
    rule = "p_yes[i, given_i] > 0.5" + (" and argmax_c p_yes[i, c] == given_i" if cfg.select_requires_argmax else "")
    return shared_mask_metadata(cfg, data, num_samples, script, rule, cfg.mask_source, method="DeFT")


if __name__ == "__main__":
    run_cli(main)
