"""Co-Reg: annotation-free training of two networks on CLIP's noisy partial labels.

    python main_coreg.py --cfg ./config/coreg/cifar10.yaml
    python main_coreg.py --cfg ./config/coreg/cifar100.yaml
    python main_coreg.py --cfg ./config/coreg/fashion_mnist.yaml
    python main_coreg.py --cfg ./config/coreg/cifar10.yaml --opts coreg_labeled_fraction=0.01   # few labelled

1. CLIP annotates every training image with several prompt templates; the candidate set S_i is the
   union of the templates' top-1 labels (cached on disk). The dataset's labels are never read;
   true labels only score the annotation and the pseudo-labels.
2. Warm-up (`warmup` epochs): each network alone, partial cross-entropy on S plus a confidence
   penalty, on strong views.
3. Every later epoch: each network scores the training set (maximum-candidate loss, GMM) and so
   divides it, for the *other* network, into a partial set (credibility > τ_div) and an unlabeled
   set. Network 1 then trains on network 2's division, network 2 on network 1's:
   co-pseudo-labels (sharpened, fused with the other network's prediction restricted to S),
   mixup self-training on strong views (λ_u for the unlabeled set), prototype alignment and
   noisy supervised contrast against a momentum encoder.
4. Test: each network and their ensemble (sum of logits); best and last epoch.
The method is Wang, Xie, Zhang, Liu, Xia, "Bridging Weakly-Supervised Learning and VLM Distillation:
Noisy Partial Label Learning for Efficient Downstream Adaptation"; its maths is in lnl/coreg.py, what
it does and how it differs from its official code in docs/sister_methods.md.
"""
from __future__ import annotations

import dataclasses
import hashlib
import json
import os
from dataclasses import dataclass
from typing import Optional, Sequence

import numpy as np
import torch
import torch.nn.functional as F

from datasets import build_datasets, labels_sha256
from datasets.rendering import Rendering
from datasets.views import MultiViewDataset, strong_transform
from models.annotator import Annotation, annotate_images, load_or_annotate, template_text_features, weights_fingerprint
from models.clip_loader import image_dtype, load_clip, tokenizer_for
from models.coreg import CoRegNetwork, CoRegPair, build_encoder
from models.zero_shot import TEMPLATE_SETS
from utils import distributed
from utils.config import Config, ConfigError, build_arg_parser, resolve_config
from lnl.coreg import (annotation_metrics, append_loss_history, candidate_sets, co_pseudo_labels, credibility,
                       distribution_alignment, max_candidate_loss, mean_over_views, mix, mixup_lambda,
                       negative_entropy, noisy_contrastive_loss, partial_cross_entropy, prototype_alignment, rampup,
                       restrict_to_candidates, self_training_losses, update_prototypes, with_manual_labels)
from utils.engine import (LossTerm, StepOutput, accuracy, accuracy_summary, make_grad_scaler, make_optimizer,
                          make_scheduler, predict, train_one_epoch)
from utils.cli import run_cli
from utils.experiment import Experiment
from lnl.gmm import GMMSettings
from utils.loader import Batch, epoch_seed, make_loader, set_loader_epoch
from utils.methods import run_name
from utils.run_dir import run_mode, run_path

SCRIPT = "coreg"
METHOD = "CoReg"


@dataclass
class Division:
    """One network's split of the training set, used to train the other network (all (N, ...) on the device)."""

    credibility: torch.Tensor  # w_i
    is_partial: torch.Tensor  # w_i > τ_div
    restricted: torch.Tensor  # the network's (aligned) prediction restricted to S_i, (N, C)


def main(argv: Optional[Sequence[str]] = None) -> dict:
    """Run Co-Reg and return its summary."""
    args = build_arg_parser(__doc__, flags=()).parse_args(argv)
    cfg = resolve_config(args)
    check_config(cfg)
    exp = Experiment(cfg, SCRIPT, run_path(cfg, run_name(METHOD, cfg)), run_mode(args))

    # 1. Data and CLIP's annotation: candidate sets S (N, C); no label of the dataset is used.
    data = build_datasets(cfg)
    true_labels = None if data.train.true_labels is None else torch.as_tensor(data.train.true_labels)
    annotation, cache_file = annotate(cfg, exp, data)
    candidates = candidate_sets(annotation.template_top1, annotation.mean_probs, cfg.coreg_candidates,
                                cfg.coreg_topk, cfg.coreg_prob_threshold)
    annotation_summary = annotation_metrics(candidates, annotation.mean_probs, true_labels)
    test_labels = torch.as_tensor(data.test.given_labels)
    annotation_summary["annotator_test_acc"] = accuracy(annotation.test_mean_probs, test_labels)
    manual = manual_labels(cfg, len(data.train), true_labels)  # few-labelled variant; none by default
    if manual.any():
        candidates = with_manual_labels(candidates, true_labels, manual)
    exp.log.info(f"annotation ({cache_file}): {json.dumps(annotation_summary)}; manual labels {int(manual.sum())}")

    # 2. Loaders: strong views for the warm-up, two weak + two strong views for co-training.
    weak = data.train.transform
    strong = strong_transform(weak, cfg.coreg_randaugment_ops, cfg.coreg_randaugment_magnitude)
    shown = annotation.mean_probs.argmax(dim=1).numpy()  # what a batch carries as its label
    warmup_loader = make_loader(MultiViewDataset(data.train, [strong], shown), cfg.batch_size, True,
                                cfg.num_workers, exp.device, cfg.seed)
    cotrain_loader = make_loader(MultiViewDataset(data.train, [weak, weak, strong, strong], shown), cfg.batch_size,
                                 True, cfg.num_workers, exp.device, cfg.seed)
    eval_loader = make_loader(data.eval, cfg.batch_size, False, cfg.num_workers, exp.device, persistent=True)
    test_loader = make_loader(data.test, cfg.batch_size, False, cfg.num_workers, exp.device, persistent=True)

    # 3. Two networks from scratch and their shared prototypes; one SGD (a network without
    #    gradients in a pass is left alone by it).
    pair = build_pair(cfg, data.num_classes, exp.device)
    optimizer = make_optimizer([pair.trainable_parameters()], "sgd", cfg.lr, cfg.weight_decay, cfg.momentum)
    scheduler = make_scheduler(optimizer, cfg)
    scaler = make_grad_scaler(cfg.precision, exp.device)
    state = CoRegState(cfg, exp, pair, optimizer, scaler, candidates.to(exp.device), manual, true_labels)

    # 4. Epochs: warm-up, then co-divide and co-train; test both networks and their ensemble.
    for epoch in exp.epochs(pair, optimizer, scheduler, scaler, warmup_loader):
        set_loader_epoch(cotrain_loader, epoch)
        if epoch <= cfg.warmup:
            record = state.warm_up(warmup_loader, epoch)
        else:
            record = state.co_train(cotrain_loader, eval_loader, epoch)
        record.update(test(pair, test_loader, cfg, exp.device))
        exp.end_epoch(epoch, record)

    last = exp.history[-1]
    summary = {"script": SCRIPT, "method": METHOD, "dataset": cfg.dataset, "backbone": cfg.backbone,
               "annotator": cfg.backbone, "network": cfg.coreg_network, "templates": cfg.coreg_templates,
               "num_templates": len(TEMPLATE_SETS[cfg.coreg_templates]), "candidates": cfg.coreg_candidates,
               "noise": {"mode": "clip_annotation", "source": cache_file}, "num_samples": len(data.train),
               "annotation_cache": cache_file, **annotation_summary, "num_manual_labels": int(manual.sum()),
               "labeled_fraction": cfg.coreg_labeled_fraction,
               **{key: last[key] for key in ("net1_partial_frac", "net2_partial_frac") if key in last},
               **accuracy_summary(exp.history)}
    exp.finish(summary)
    return summary


# ---------------------------------------------------------------- annotation
def annotate(cfg: Config, exp: Experiment, data) -> tuple[Annotation, str]:
    """CLIP's per-template predictions on the training and test images, from the cache or computed now."""
    templates = TEMPLATE_SETS[cfg.coreg_templates]
    resolution = cfg.coreg_annotation_resolution or cfg.resolution
    normalize = cfg.coreg_annotation_normalize or cfg.normalize
    known = data.train.true_labels if data.train.true_labels is not None else data.train.given_labels
    metadata = {"dataset": cfg.dataset, "data_path": os.path.abspath(cfg.data_path), "backbone": cfg.backbone,
                "pretrained": cfg.pretrained, "weights": weights_fingerprint(cfg.pretrained),
                "templates": list(templates), "class_names": list(data.class_names), "resolution": resolution,
                "normalize": normalize, "precision": cfg.precision, "num_samples": len(data.train),
                "labels_sha256": labels_sha256(known), "num_test": len(data.test),
                "sample_ids_sha256": None if data.sample_ids is None else
                hashlib.sha256(json.dumps(list(map(str, data.sample_ids))).encode()).hexdigest()}
    rendering = Rendering.of(cfg)
    if not rendering.is_native:  # other pixels, other annotation (absent when native: older caches stay valid)
        metadata["rendering"] = rendering.describe()

    def compute() -> Annotation:
        clip_model = load_clip(cfg.backbone, cfg.pretrained, cfg.precision, exp.device)
        for param in clip_model.parameters():
            param.requires_grad_(False)
        text = template_text_features(clip_model, tokenizer_for(cfg.backbone), data.class_names, templates)
        views = data if (resolution, normalize) == (cfg.resolution, cfg.normalize) else \
            build_datasets(dataclasses.replace(cfg, resolution=resolution, normalize=normalize))
        dtype = image_dtype(clip_model.visual)

        def encode(images: torch.Tensor) -> torch.Tensor:
            return F.normalize(clip_model.encode_image(images.to(dtype)).float(), dim=-1)

        scale = float(clip_model.logit_scale.exp())
        outputs = []
        for split in (views.eval, views.test):
            loader = make_loader(split, cfg.batch_size, False, cfg.num_workers, exp.device)
            features, _ = predict(encode, loader, cfg.precision, exp.device)
            outputs.append(annotate_images(text.cpu(), features, scale))
        (top1, mean_probs), (_, test_mean_probs) = outputs
        return Annotation(top1, mean_probs, test_mean_probs, {})

    cache_dir = cfg.coreg_annotation_dir or os.path.join(cfg.output_dir, "coreg_annotation")
    annotation, path, _ = load_or_annotate(cache_dir, metadata, compute, exp.log.info)
    return annotation, path


def manual_labels(cfg: Config, num_samples: int, true_labels: Optional[torch.Tensor]) -> torch.Tensor:
    """(N,) bool: the seeded fraction of samples whose true label is given (few-labelled variant)."""
    count = int(round(cfg.coreg_labeled_fraction * num_samples))
    chosen = torch.zeros(num_samples, dtype=torch.bool)
    if count == 0:
        return chosen
    if true_labels is None:
        raise ConfigError("coreg_labeled_fraction > 0 gives a fraction of the training images their true label, but "
                          f"{cfg.dataset} has no true training labels; set coreg_labeled_fraction: 0")
    order = np.random.default_rng(cfg.seed).permutation(num_samples)[:count]
    chosen[torch.from_numpy(order)] = True
    return chosen


# ---------------------------------------------------------------- networks
def build_pair(cfg: Config, num_classes: int, device: torch.device) -> CoRegPair:
    """Two students (each with projection head, momentum encoder and queue) and the shared prototypes."""
    nets = [CoRegNetwork(build_encoder(cfg.coreg_network, cfg.coreg_width, cfg.resolution, cfg.timm_pretrained,
                                       cfg.weights_path), num_classes, cfg.coreg_proj_dim, cfg.coreg_queue_size)
            for _ in range(2)]
    return CoRegPair(*nets, num_classes=num_classes, proj_dim=cfg.coreg_proj_dim).to(device)


def test(pair: CoRegPair, loader, cfg: Config, device: torch.device) -> dict:
    """Test accuracy of each network and of the ensemble (sum of the two networks' logits)."""
    distributed.broadcast_buffers(pair)  # rank 0's BatchNorm statistics everywhere
    pair.eval()
    outputs = [predict(lambda x, net=net: net(x)[0], loader, cfg.precision, device) for net in pair.nets]
    pair.train()
    (logits1, labels), (logits2, _) = outputs
    return {"test_acc": accuracy(logits1 + logits2, labels), "test_acc_net1": accuracy(logits1, labels),
            "test_acc_net2": accuracy(logits2, labels)}


# ---------------------------------------------------------------- training
class CoRegState:
    """What the epochs share: the pair, its optimiser, the candidate sets and the loss histories."""

    def __init__(self, cfg: Config, exp: Experiment, pair: CoRegPair, optimizer, scaler, candidates: torch.Tensor,
                 manual: torch.Tensor, true_labels: Optional[torch.Tensor]) -> None:
        self.cfg, self.exp, self.pair, self.optimizer, self.scaler = cfg, exp, pair, optimizer, scaler
        self.candidates = candidates  # (N, C) bool on the device
        self.manual = manual  # (N,) bool, CPU
        self.true_labels = true_labels  # metrics only

    def _train(self, step, loader, epoch: int) -> dict:
        return train_one_epoch(step, loader, self.optimizer, self.scaler, self.cfg.precision, self.exp.device, epoch,
                               self.cfg.progress, self.cfg.micro_batch_size)

    # ------------------------------------------------------------ warm-up
    def warm_up(self, loader, epoch: int) -> dict:
        """Each network alone: partial CE on its candidate set + confidence penalty, strong views."""
        record = {}
        num_classes = self.candidates.shape[1]
        for k, net in enumerate(self.pair.nets, 1):
            def step(batch: Batch, weights_only: bool, net=net) -> StepOutput:
                sets = self.candidates[batch.indices]
                informative = (sets.sum(dim=1) < num_classes).float()  # a set of every class says nothing
                if weights_only:
                    return StepOutput({"partial_ce": LossTerm(None, informative), "penalty": LossTerm(None)})
                logits, _ = net(batch.images[:, 0].contiguous())  # the one (strong) view
                return StepOutput({"partial_ce": LossTerm(partial_cross_entropy(logits, sets), informative),
                                   "penalty": LossTerm(negative_entropy(logits))})

            net.train()
            result = self._train(step, loader, epoch)
            record.update({f"net{k}_{key}": value for key, value in result.record.items()})
        return record

    # ------------------------------------------------------------ co-training
    def divide(self, k: int, eval_loader, epoch: int) -> tuple[Division, dict]:
        """Network k's division of the training set (for the other network) and its metrics."""
        cfg, net = self.cfg, self.pair.nets[k - 1]
        net.eval()
        logits, _ = predict(lambda x: net(x)[0], eval_loader, cfg.precision, self.exp.device)
        net.train()
        candidates = self.candidates.cpu()
        probs = logits.float().softmax(dim=1)
        if cfg.coreg_distribution_alignment:
            probs = distribution_alignment(probs)
        history = append_loss_history(self.exp.extra.get(f"loss_history_net{k}"),
                                      max_candidate_loss(probs, candidates).numpy(), cfg.coreg_loss_history)
        self.exp.extra[f"loss_history_net{k}"] = history  # state: the next epochs average over it
        settings = GMMSettings(cfg.gmm_max_iter, cfg.gmm_tol, cfg.gmm_reg_covar,
                               random_state=epoch_seed(cfg.seed, epoch) + k)
        weight = torch.from_numpy(credibility(history, settings)).float()
        weight[self.manual] = 1.0  # a given true label is credible
        is_partial = weight > cfg.coreg_tau_div
        metrics = {f"net{k}_partial_frac": float(is_partial.float().mean())}
        if self.true_labels is not None:
            truth_in_set = candidates.gather(1, self.true_labels.view(-1, 1)).squeeze(1)
            metrics[f"net{k}_partial_true_in_set"] = _mean(truth_in_set[is_partial])
            metrics[f"net{k}_unlabeled_true_in_set"] = _mean(truth_in_set[~is_partial])
        device = self.exp.device
        division = Division(weight.to(device), is_partial.to(device),
                            restrict_to_candidates(probs, candidates).to(device))
        return division, metrics

    def co_train(self, loader, eval_loader, epoch: int) -> dict:
        """Both divisions first, then network 1 on network 2's division and network 2 on network 1's."""
        cfg = self.cfg
        for net in self.pair.nets:
            net.reset_key_encoder()
        record: dict = {}
        divisions = []
        for k in (1, 2):
            division, metrics = self.divide(k, eval_loader, epoch)
            divisions.append(division)
            record.update(metrics)
        lambda_u = rampup(epoch, cfg.warmup, cfg.coreg_rampup_epochs, cfg.coreg_lambda_u)
        contrast_on = epoch - 1 > cfg.warmup + cfg.coreg_contrastive_start  # the official test, epochs from 0
        record.update({"lambda_u": lambda_u, "contrast_on": int(contrast_on)})
        for k in (1, 2):
            trainee, partner = self.pair.nets[k - 1], self.pair.nets[2 - k]
            step = self.co_training_step(trainee, partner, divisions[2 - k], lambda_u, contrast_on)
            trainee.train()
            partner.eval()  # fixed while the other learns
            result = self._train(step, loader, epoch)
            partner.train()
            record.update({f"net{k}_{key}": value for key, value in result.record.items()})
            if self.true_labels is not None:
                pseudo = torch.from_numpy(result.per_sample["pseudo_label"]).long()
                correct = pseudo == self.true_labels
                partial = divisions[2 - k].is_partial.cpu()
                record[f"net{k}_pseudo_acc_partial"] = _percent(correct[partial])
                record[f"net{k}_pseudo_acc_unlabeled"] = _percent(correct[~partial])
        return record

    def co_training_step(self, trainee: CoRegNetwork, partner: CoRegNetwork, division: Division, lambda_u: float,
                         contrast_on: bool):
        """The step that trains `trainee` on `partner`'s division: the four parts of the paper's Figures 2 and 3."""
        cfg, pair = self.cfg, self.pair
        names = ("x", "u") + (("proto_x", "proto_u", "cont") if contrast_on else ())

        def step(batch: Batch, weights_only: bool) -> StepOutput:
            partial = division.is_partial[batch.indices]
            w_partial, w_unlabeled = partial.float(), (~partial).float()
            if weights_only:  # the division was made before the epoch
                weights = {"x": w_partial, "u": w_unlabeled, "proto_x": w_partial, "proto_u": w_unlabeled,
                           "cont": None}
                return StepOutput({name: LossTerm(None, weights[name]) for name in names})
            weak1, weak2, strong1, strong2 = (view.contiguous() for view in batch.images.unbind(dim=1))

            # Co-Pseudo-Labeling (Figure 2): the other network's division fuses both networks' weak-view predictions.
            own, other, weak_features = weak_view_predictions(trainee, partner, weak1, weak2)
            targets = co_pseudo_labels(own, other, division.restricted[batch.indices],
                                       division.credibility[batch.indices], partial, cfg.coreg_sharpen_T)
            pseudo_labels = targets.argmax(dim=1)

            # Self-training on the mixed-up strong views: soft CE (partial set), λ_u·squared error (unlabeled set).
            mixed = mixup_forward(trainee, strong1, strong2, targets, cfg.coreg_mixup_alpha)
            loss_x, loss_u = self_training_losses(mixed.logits, mixed.targets)
            terms = {"x": LossTerm(loss_x, w_partial), "u": LossTerm(lambda_u * loss_u, w_unlabeled)}

            # Prototypical similarity alignment: prototypes from the weak views, aligned with the strong ones.
            update_shared_prototypes(pair, weak_features, pseudo_labels, partial & batch.valid,
                                     cfg.coreg_proto_momentum)
            if contrast_on:
                kl, se = prototype_alignment(mixed.features @ pair.prototypes.t(), mixed.row_targets,
                                             mixed.row_targets[mixed.partners], mixed.lam, cfg.coreg_proto_temperature)
                terms["proto_x"] = LossTerm(cfg.coreg_proto_weight * mean_over_views(kl), w_partial)
                terms["proto_u"] = LossTerm(cfg.coreg_proto_weight * cfg.coreg_lambda_u * mean_over_views(se),
                                            w_unlabeled)

            # Noisy supervised contrast: strong view 1's queries against the momentum encoder's keys and queue.
            queries = trainee(strong1)[1] if contrast_on else None  # no query pass before the contrastive start
            keys = trainee.key_features(strong2, cfg.coreg_key_momentum)
            if contrast_on:
                terms["cont"] = LossTerm(cfg.coreg_contrast_weight * noisy_contrastive_loss(
                    queries, keys, pseudo_labels, partial, trainee.queue, trainee.queue_labels,
                    trainee.queue_partial, cfg.coreg_contrast_temperature))
            enqueue_keys(trainee, keys, pseudo_labels, partial, batch.valid)
            return StepOutput(terms, per_sample={"pseudo_label": pseudo_labels})

        return step


# ---------------------------------------------------------------- the parts of a co-training step
@dataclass
class MixedViews:
    """The trainee's outputs on the mixed-up strong views: row i mixes view 1 of sample i, row b + i view 2."""

    logits: torch.Tensor  # (2b, C)
    features: torch.Tensor  # (2b, d′) projected, normalised
    row_targets: torch.Tensor  # (2b, C) each row's own co-pseudo-label, before mixing
    targets: torch.Tensor  # (2b, C) the mixed co-pseudo-labels
    partners: torch.Tensor  # (2b,) the row each row is mixed with
    lam: float  # the mixing weight l


@torch.no_grad()
def weak_view_predictions(trainee: CoRegNetwork, partner: CoRegNetwork, weak1: torch.Tensor,
                          weak2: torch.Tensor) -> tuple[list[torch.Tensor], list[torch.Tensor], torch.Tensor]:
    """Each network's predictions on the two weak views, and the trainee's projected features of view 1."""
    own_logits1, own_features1 = trainee(weak1)
    own = [own_logits1.float().softmax(dim=1), trainee(weak2)[0].float().softmax(dim=1)]
    other = [partner(view)[0].float().softmax(dim=1) for view in (weak1, weak2)]
    return own, other, own_features1


def mixup_forward(trainee: CoRegNetwork, strong1: torch.Tensor, strong2: torch.Tensor, targets: torch.Tensor,
                  alpha: float) -> MixedViews:
    """Mixup of the 2b strong views among themselves (l from Beta(α, α)), through the trainee, with their targets."""
    lam = mixup_lambda(alpha)
    partners = torch.randperm(2 * len(targets), device=strong1.device)
    row_targets = torch.cat([targets, targets])
    logits, features = trainee(mix(torch.cat([strong1, strong2]), partners, lam))
    return MixedViews(logits, features, row_targets, mix(row_targets, partners, lam), partners, lam)


def update_shared_prototypes(pair: CoRegPair, weak_features: torch.Tensor, pseudo_labels: torch.Tensor,
                             keep: torch.Tensor, momentum: float) -> None:
    """EMA of the prototypes both networks share with the kept samples' weak-view features, by pseudo-label.

    Gathered over the ranks in sample order, so every rank makes the same update.
    """
    features, labels, kept = (distributed.interleave_ranks(t) for t in (weak_features.float(), pseudo_labels, keep))
    with torch.no_grad():
        pair.prototypes.copy_(update_prototypes(pair.prototypes, features[kept], labels[kept], momentum))


def enqueue_keys(net: CoRegNetwork, keys: torch.Tensor, pseudo_labels: torch.Tensor, is_partial: torch.Tensor,
                 valid: torch.Tensor) -> None:
    """Push the batch's momentum keys with their pseudo-labels and division into the queue (all ranks' keys)."""
    keys, labels, partial, valid = (distributed.interleave_ranks(t) for t in (keys, pseudo_labels, is_partial, valid))
    net.enqueue(keys[valid], labels[valid], partial[valid])


def _mean(values: torch.Tensor) -> Optional[float]:
    """The mean of a vector; None for an empty one (an empty set has no rate)."""
    return float(values.float().mean()) if len(values) else None


def _percent(flags: torch.Tensor) -> Optional[float]:
    mean = _mean(flags)
    return None if mean is None else 100.0 * mean


def check_config(cfg: Config) -> None:
    """Settings Co-Reg cannot honour, with what to do instead."""
    if cfg.noise_mode not in ("", "none") or cfg.noise_ratio:
        raise ConfigError(f"Co-Reg is annotation-free: it never reads the dataset's labels, so noise_mode "
                          f"{cfg.noise_mode!r} / noise_ratio {cfg.noise_ratio} would change nothing; set noise_mode: none "
                          "and noise_ratio: 0")
    if cfg.coreg_templates not in TEMPLATE_SETS:
        raise ConfigError(f"coreg_templates must be one of {sorted(TEMPLATE_SETS)} (models/zero_shot.py), "
                          f"got {cfg.coreg_templates!r}")
    if cfg.few_shot:
        raise ConfigError("few_shot draws k images per labelled class, which reads labels; Co-Reg is annotation-free. "
                          "Set few_shot: null")
    if cfg.coreg_network != "preact_resnet18":
        import timm

        if not timm.is_model(cfg.coreg_network):
            raise ConfigError(f"coreg_network must be preact_resnet18 (the paper's students) or a timm model name, "
                              f"got {cfg.coreg_network!r}")


if __name__ == "__main__":
    run_cli(main)
