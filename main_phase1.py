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
from utils.clean_mask import save_clean_mask
from utils.config import Config, build_arg_parser, resolve_config
from utils.engine import (Experiment, accuracy, make_grad_scaler, make_loader, make_scheduler, make_sgd,
                          predict, train_one_epoch)
from utils.errors import run_cli
from utils.losses import deft_phase1_loss
from utils.run_dir import run_path
from utils.selection import BatchMeanScores, detection_scores, dual_prompt_selection, pair_probabilities

SCRIPT = "phase1"


def main(argv: Optional[Sequence[str]] = None, script: str = SCRIPT) -> dict:
    """Run phase 1 and return its summary."""
    args = build_arg_parser(__doc__, flags=("noise_mode", "noise_ratio")).parse_args(argv)
    cfg = resolve_config(args)
    exp = Experiment(cfg, script, run_path(cfg, script), resume=args.resume, overwrite=args.overwrite)

    # 1. Data: the noisy training set (given labels) and, where known, which labels are truly clean.
    data = build_datasets(cfg)
    train_loader = make_loader(data.train, cfg.batch_size, True, cfg.num_workers, exp.device)
    test_loader = make_loader(data.test, cfg.batch_size, False, cfg.num_workers, exp.device)
    num_samples = len(data.train)
    is_clean = None if data.train.is_noisy is None else ~np.asarray(data.train.is_noisy)
    exp.log.info(f"train {num_samples} samples, test {len(data.test)}, noise {data.noise_info}")

    # 2. Model: frozen CLIP + tuner + dual prompts; SGD over [tuner] and [prompt contexts].
    model = build_deft_model(cfg, data.class_names, exp.device)
    tuner_params, prompt_params = model.trainable_groups()
    exp.log.info(f"trainable: tuner {count_parameters(tuner_params)}, prompts {count_parameters(prompt_params)}")
    optimizer = make_sgd([tuner_params, prompt_params], cfg)
    scheduler = make_scheduler(optimizer, cfg)
    scaler = make_grad_scaler(cfg.precision, exp.device)
    prompt_labels_given_until = cfg.warmup if cfg.noisy_prompt_labels_until is None else cfg.noisy_prompt_labels_until

    # 3. Epochs: train with online selection, test the positive-prompt classifier, score the selection.
    for epoch in exp.epochs(model, optimizer, scheduler, scaler, train_loader):
        selection = np.zeros(num_samples, dtype=bool)
        batch_scores = BatchMeanScores()

        def step(batch: list) -> tuple[torch.Tensor, dict]:
            images, given_labels, complementary_labels, indices = batch
            pos_logits, neg_logits = model(images)
            out = deft_phase1_loss(pos_logits, neg_logits, given_labels, complementary_labels,
                                   in_warmup=epoch <= cfg.warmup,
                                   prompt_labels_are_given=epoch <= prompt_labels_given_until,
                                   requires_argmax=cfg.select_requires_argmax, warmup_loss=cfg.warmup_loss)
            selected, idx = out.selected.cpu().numpy(), indices.cpu().numpy()
            selection[idx] = selected
            if is_clean is not None:
                batch_scores.update(selected, is_clean[idx])
            train_acc = float((out.predictions == given_labels).float().mean()) * 100
            return out.loss, {"loss_cls": float(out.loss_cls.detach()), "loss_dp": float(out.loss_dp.detach()),
                              "train_acc_given": train_acc, "selected_frac": float(out.selected.float().mean())}

        model.train()
        record = train_one_epoch(step, train_loader, optimizer, scaler, cfg.precision, exp.device, epoch,
                                 cfg.progress)
        record["test_acc"] = evaluate(model, test_loader, cfg, exp.device)
        record.update(selection_record(selection, is_clean, batch_scores))
        exp.extra["selection"] = selection
        exp.end_epoch(epoch, record)

    # 4. The clean mask: the last epoch's online decisions (official), or a clean scoring pass.
    clean_mask = exp.extra["selection"]
    if cfg.mask_source == "eval_pass":
        clean_mask = scoring_pass(model, data.eval, cfg, exp.device)
    mask_scores = detection_scores(clean_mask, is_clean).as_dict("mask_") if is_clean is not None else {}
    metadata = mask_metadata(cfg, data, num_samples, script)
    metadata.update(mask_scores)
    mask_path = save_clean_mask(exp.run_dir, clean_mask, metadata)

    summary = {"script": script, "dataset": cfg.dataset, "noise": data.noise_info,
               "num_samples": num_samples, "num_selected": int(clean_mask.sum()),
               "clean_mask": mask_path, "mask_source": cfg.mask_source, **mask_scores,
               "last_test_acc": exp.history[-1]["test_acc"],
               "best_test_acc": max(r["test_acc"] for r in exp.history),
               "detection_metrics": "computed" if is_clean is not None else "unavailable: no true labels"}
    exp.finish(summary)
    return summary


def evaluate(model, loader, cfg: Config, device: torch.device) -> float:
    """Test accuracy of the positive-prompt classifier; text features computed once."""
    model.eval()
    with torch.no_grad():
        text_features = model.text_features()
    logits, labels = predict(lambda x: model(x, text_features)[0], loader, cfg.precision, device)
    model.train()
    return accuracy(logits, labels)


def scoring_pass(model, eval_set, cfg: Config, device: torch.device) -> np.ndarray:
    """`mask_source: eval_pass`: select on the training images without augmentation, after training."""
    model.eval()
    loader = make_loader(eval_set, cfg.batch_size, False, cfg.num_workers, device)
    with torch.no_grad():
        text_features = model.text_features()
    p_yes, given_labels = predict(lambda x: pair_probabilities(*model(x, text_features)), loader,
                                  cfg.precision, device)
    return dual_prompt_selection(p_yes, given_labels, cfg.select_requires_argmax).numpy()


def selection_record(selection: np.ndarray, is_clean: Optional[np.ndarray], batch_scores: BatchMeanScores) -> dict:
    """Dataset-level precision/recall/F1 of this epoch's selection, plus the official batch means."""
    record = {"num_selected": int(selection.sum())}
    if is_clean is None:
        record["detection"] = "unavailable: no true labels"
        return record
    scores = detection_scores(selection, is_clean)
    record.update({"precision": scores.precision, "recall": scores.recall, "f1": scores.f1})
    record.update(batch_scores.result())
    return record


def mask_metadata(cfg: Config, data, num_samples: int, script: str) -> dict:
    """What identifies the data a mask belongs to, and how it was made."""
    rule = "p_yes[i, given_i] > 0.5" + (" and argmax_c p_yes[i, c] == given_i" if cfg.select_requires_argmax else "")
    return {"dataset": cfg.dataset, "num_samples": num_samples, "noise_mode": cfg.noise_mode,
            "noise_ratio": cfg.noise_ratio, "noise_seed": data.noise_info.get("seed"), "seed": cfg.seed,
            "actual_noise_rate": data.noise_info.get("actual_rate"),
            "given_labels_sha256": data.given_labels_sha256, "sample_ids": getattr(data, "sample_ids", None),
            "selection_rule": rule, "mask_source": cfg.mask_source, "epochs": cfg.epochs, "created_by": script}


if __name__ == "__main__":
    run_cli(main)
