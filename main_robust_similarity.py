"""Robust Similarity: a prompt matrix on a frozen CLIP, trained on the samples whose
robust similarity G = α·(prompt similarity) + (1 - α)·(feature similarity) is high.

    python main_robust_similarity.py --cfg ./config/robust_similarity/dtd.yaml --noise_mode sym --noise_ratio 0.125
    python main_robust_similarity.py --cfg ./config/robust_similarity/dtd.yaml --noise_mode sym --noise_ratio 0.5 \\
        --opts rs_blocks=4

The Robust Similarity paper's ablation: DTD, 16 shots per class (PTNL protocol), noise 0 / 12.5 / 25 / 50 %, m = 1 / 2 / 4 / 6.
Per run: (1) frozen image features of every training image, grouped by noisy label -> feature
similarity g (minus the mean distance to the own group, normalised); (2) every epoch: prompt
similarity ỹ of the m blocks (ensembled) on the same features, G = α·ỹ + (1 - α)·g with
α = 0.2·e^{epoch/35}, filter on G, then one epoch of prompt learning (GCE, the PTNL base) on the
kept samples; (3) after training, the same rule with the trained prompts is saved as the clean mask.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Optional, Sequence

import numpy as np
import torch

from datasets import build_datasets
from models.build import build_robust_similarity_model, count_parameters
from utils.clean_mask import mask_metadata, save_clean_mask
from utils.config import Config, ConfigError, build_arg_parser, resolve_config
from utils.engine import (LossTerm, StepOutput, accuracy_summary, evaluate, make_grad_scaler, make_optimizer,
                          make_scheduler, make_test_loaders, predict, train_one_epoch)
from utils.cli import run_cli
from utils.experiment import Experiment
from lnl.gmm import GMMSettings
from utils.loader import Batch, epoch_seed, make_loader
from lnl.robust_similarity import (alpha_schedule, block_loss, ensemble_probabilities, feature_distance,
                                     feature_similarity, filter_samples, prompt_similarity, robust_similarity)
from utils.methods import run_name
from utils.run_dir import run_mode, run_path
from lnl.selection import clean_auroc, mask_scores, selection_record

SCRIPT = "robust_similarity"
METHOD = "RobustSimilarity"


@dataclass
class Selection:
    """One application of the filter: the blend, its parts and what it keeps, all (N,) NumPy."""

    alpha: float
    prompt_sim: np.ndarray  # ỹ
    robust_sim: np.ndarray  # G
    kept: np.ndarray  # bool
    filter_score: np.ndarray  # what the rule thresholded (GMM posterior or G)


def main(argv: Optional[Sequence[str]] = None) -> dict:
    """Run Robust Similarity and return its summary."""
    args = build_arg_parser(__doc__, flags=("noise_mode", "noise_ratio")).parse_args(argv)
    cfg = resolve_config(args)
    check_config(cfg)
    exp = Experiment(cfg, SCRIPT, run_path(cfg, run_name("RobustSimilarity", cfg)), run_mode(args))  # m in the name

    # 1. Data: the noisy (few-shot) training set; true labels only score the selection.
    data = build_datasets(cfg)
    train_loader = make_loader(data.train, cfg.batch_size, True, cfg.num_workers, exp.device, cfg.seed)
    eval_loader = make_loader(data.eval, cfg.batch_size, False, cfg.num_workers, exp.device, persistent=True)
    test_loaders = make_test_loaders(data, cfg.batch_size, cfg.num_workers, exp.device)
    given_labels = torch.as_tensor(data.train.given_labels)
    is_clean = data.train.is_clean
    exp.log.info(f"train {len(data.train)} samples, test {len(data.test)}, noise {data.noise_info}")

    # 2. Model: frozen CLIP + a prompt matrix of m blocks; SGD over the contexts only.
    model = build_robust_similarity_model(cfg, data.class_names, exp.device)
    exp.log.info(f"prompt matrix: {cfg.rs_blocks} blocks x {cfg.N_CTX} tokens, "
                 f"{count_parameters(model.trainable_parameters())} trainable parameters")
    optimizer = make_optimizer([model.trainable_parameters()], "sgd", cfg.lr, cfg.weight_decay, cfg.momentum)
    scheduler = make_scheduler(optimizer, cfg)
    scaler = make_grad_scaler(cfg.precision, exp.device)

    # 3. Feature similarity g, once: the frozen features of every training image (test transform).
    model.eval()
    features, _ = predict(model.image_features, eval_loader, cfg.precision, exp.device)  # (N, D)
    distances = feature_distance(features, given_labels, data.num_classes, cfg.rs_distance)
    feature_sim = feature_similarity(distances, given_labels, data.num_classes, cfg.rs_feature_norm).numpy()
    feature_auroc = None if is_clean is None else clean_auroc(feature_sim, is_clean)
    exp.log.info(f"feature similarity: AUROC against the truly clean samples {feature_auroc}")

    # 4. Epochs: select on G, learn the prompts on the kept samples, test the matrix's ensemble.
    for epoch in exp.epochs(model, optimizer, scheduler, scaler, train_loader):
        selection = select(model, features, given_labels, feature_sim, cfg, epoch, data.num_classes, exp.device)
        weights = torch.from_numpy(selection.kept).float().to(exp.device)

        def step(batch: Batch, weights_only: bool) -> StepOutput:
            kept = weights[batch.indices]
            if weights_only:  # the selection was made before the epoch
                return StepOutput({"loss": LossTerm(None, kept)})
            block_logits = model(batch.images)  # (b, m, C)
            values = block_loss(block_logits, batch.given_labels, cfg.rs_loss, cfg.gce_q)
            predictions = ensemble_probabilities(block_logits.detach()).argmax(dim=1)
            return StepOutput({"loss": LossTerm(values, kept)},
                              per_sample={"correct": predictions == batch.given_labels})

        model.train()
        result = train_one_epoch(step, train_loader, optimizer, scaler, cfg.precision, exp.device, epoch,
                                 cfg.progress, cfg.micro_batch_size)
        if not selection.kept.any():
            exp.log.info(f"epoch {epoch}: the filter kept no sample; the prompts did not move")
        record = {**result.record, "alpha": selection.alpha, "selected_frac": float(selection.kept.mean()),
                  "train_acc_given": 100.0 * float(result.per_sample["correct"].mean())}
        record.update(selection_record(selection.kept, is_clean, scores=selection.robust_sim))
        with torch.no_grad():
            text_features = model.text_features()  # once per evaluation
        record.update(evaluate(model, test_loaders, cfg.precision, exp.device,
                               forward=lambda x: ensemble_probabilities(model(x, text_features))))
        exp.end_epoch(epoch, record)

    # 5. The clean mask: the rule once more, with the trained prompts and α after the last epoch.
    final = select(model, features, given_labels, feature_sim, cfg, cfg.epochs + 1, data.num_classes, exp.device)
    scores = mask_scores(final.kept, is_clean, final.robust_sim)
    metadata = mask_metadata(cfg, data, len(data.train), SCRIPT, selection_rule(cfg), "eval_pass_after_training",
                             method=METHOD)
    mask_path = save_clean_mask(exp.artifact_dir(), final.kept, {**metadata, **scores, "alpha": final.alpha},
                                clean_scores=final.robust_sim, is_clean=is_clean)
    summary = {"script": SCRIPT, "method": METHOD, "dataset": cfg.dataset, "backbone": cfg.backbone,
               "noise": data.noise_info, "num_samples": len(data.train), "num_selected": int(final.kept.sum()),
               "clean_mask": mask_path, "rs_blocks": cfg.rs_blocks, "few_shot": cfg.few_shot,
               "alpha_final": final.alpha, "feature_similarity_auroc": feature_auroc,
               "prompt_similarity_auroc": None if is_clean is None else clean_auroc(final.prompt_sim, is_clean),
               **scores, **accuracy_summary(exp.history)}
    exp.finish(summary)
    return summary


def select(model, features: torch.Tensor, given_labels: torch.Tensor, feature_sim: np.ndarray, cfg: Config,
           epoch: int, num_classes: int, device: torch.device, chunk: int = 4096) -> Selection:
    """ỹ of the current prompts on the cached features, G = α·ỹ + (1 - α)·g, and the filter on G."""
    alpha = alpha_schedule(epoch, cfg.rs_alpha_base, cfg.rs_alpha_tau, cfg.rs_alpha_max)
    with torch.no_grad():
        text_features = model.text_features()
        prompt_sim = torch.cat([
            prompt_similarity(model.logits(features[start:start + chunk].to(device), text_features).cpu(),
                              given_labels[start:start + chunk], cfg.rs_ensemble)
            for start in range(0, len(features), chunk)])
    robust_sim = robust_similarity(prompt_sim, torch.from_numpy(feature_sim), alpha).numpy()
    settings = GMMSettings(cfg.gmm_max_iter, cfg.gmm_tol, cfg.gmm_reg_covar, random_state=epoch_seed(cfg.seed, epoch))
    kept, filter_score = filter_samples(robust_sim, given_labels.numpy(), num_classes, cfg.rs_filter, cfg.rs_threshold,
                                        keep_ratio(cfg), settings)
    return Selection(alpha, prompt_sim.numpy(), robust_sim, kept, filter_score)


def keep_ratio(cfg: Config) -> Optional[float]:
    """rs_keep_ratio, or 1 - noise_ratio (the oracle, as the small-loss baseline's forget rate)."""
    return cfg.rs_keep_ratio if cfg.rs_keep_ratio is not None else 1.0 - cfg.noise_ratio


def selection_rule(cfg: Config) -> str:
    """The filter in words, for clean_mask.json."""
    blend = (f"G = α·ỹ + (1-α)·g, α = min({cfg.rs_alpha_max}, {cfg.rs_alpha_base}·exp((epoch-1)/{cfg.rs_alpha_tau})), "
             f"ỹ: {cfg.rs_ensemble} of {cfg.rs_blocks} blocks, g: -mean {cfg.rs_distance} distance to the noisy "
             f"class, {cfg.rs_feature_norm}")
    if cfg.rs_filter == "gmm":
        return f"{blend}; 2-component GMM on G, high-mean posterior > {cfg.rs_threshold}"
    if cfg.rs_filter == "threshold":
        return f"{blend}; G > {cfg.rs_threshold}"
    return f"{blend}; the top {keep_ratio(cfg):.3f} of G in each noisy class"


def check_config(cfg: Config) -> None:
    """Settings this script cannot honour, with what to do instead."""
    if cfg.CLASS_TOKEN_POSITION != "end":
        raise ConfigError(f"Robust Similarity places the class name after the contexts (CLASS_TOKEN_POSITION: end); "
                          f"got {cfg.CLASS_TOKEN_POSITION!r}")
    if cfg.rs_filter == "keep_ratio" and cfg.rs_keep_ratio is None and cfg.noise_ratio >= 1.0:
        raise ConfigError("rs_filter: keep_ratio with rs_keep_ratio: null keeps 1 - noise_ratio of each class, which "
                          "is nothing at noise_ratio 1; set rs_keep_ratio")
    if cfg.is_coop:
        raise ConfigError("is_coop (DeFT's frozen random contexts) does not apply to Robust Similarity; set is_coop: false")


if __name__ == "__main__":
    run_cli(main)
