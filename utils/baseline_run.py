"""What the baseline scripts (main_baseline.py, main_turn.py) share around their training loops.

The settings they refuse; their data, checked so that the eval pass sees the training samples; the
classifier with the backbone's optimiser; the per-sample CE pass over the training set; the seeded
GMM settings; the clean mask in phase 1's format; the summary that closes a run.
"""
from __future__ import annotations

from typing import Any

import numpy as np
import torch
import torch.nn.functional as F

from datasets import build_datasets
from models.build import build_classifier, count_parameters
from models.timm_backbones import backbone_normalization, optimizer_settings
from utils.clean_mask import mask_metadata, save_clean_mask
from utils.config import Config, ConfigError
from utils.engine import make_grad_scaler, make_optimizer, make_scheduler, predict
from utils.experiment import Experiment
from utils.loader import epoch_seed
from lnl.gmm import GMMSettings
from lnl.selection import mask_scores


def check_config(cfg: Config) -> None:
    """Settings the baselines cannot honour, refused before a run folder exists."""
    if cfg.is_coop:
        raise ConfigError("is_coop (the official positive-prompt classifier with frozen random contexts) is not "
                          "supported by the baselines; set is_coop: false")


def baseline_data(cfg: Config, exp: Experiment, method: str) -> Any:
    """The datasets in the backbone's normalisation; the eval set must be the training samples in order."""
    data = build_datasets(cfg, normalization=backbone_normalization(cfg))
    if len(data.eval) != len(data.train):  # per-sample passes index the training set by eval position
        raise RuntimeError("the eval set must hold the training samples (same subsample, same order)")
    exp.log.info(f"{method}: train {len(data.train)} samples, test {len(data.test)}, noise {data.noise_info}")
    return data


def build_training(cfg: Config, exp: Experiment, data: Any) -> tuple:
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


def save_mask(cfg: Config, exp: Experiment, data: Any, created_by: str, mask: np.ndarray, rule: str, source: str,
              method: str, clean_scores: np.ndarray) -> dict:
    """Save the selection and its per-sample clean scores in phase 1's format; return the summary fields."""
    is_clean = data.train.is_clean
    scores = mask_scores(mask, is_clean, clean_scores)
    metadata = mask_metadata(cfg, data, len(data.train), created_by, rule, source, method)
    path = save_clean_mask(exp.artifact_dir(), mask, {**metadata, **scores}, clean_scores=clean_scores,
                           is_clean=is_clean)
    return {"clean_mask": path, "num_selected": int(np.sum(mask)), **scores}


def finish(cfg: Config, exp: Experiment, data: Any, summary: dict) -> dict:
    """Add what identifies the run, write summary.json and return it."""
    summary = {**summary, "dataset": cfg.dataset, "backbone": cfg.backbone, "noise": data.noise_info,
               "num_samples": len(data.train)}
    if "best_test_acc" in summary:
        exp.log.info(f"Best Acc: {summary['best_test_acc']:.2f} Last Acc: {summary['last_test_acc']:.2f}")
    exp.finish(summary)
    return summary
