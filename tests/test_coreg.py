"""Co-Reg: each component on hand-made tensors, the networks' momentum encoder and queue,
and the script end to end on the tiny fixture world (annotation cache, resume, clear errors)."""
from __future__ import annotations

import json
import math
import os
import subprocess
import sys

import numpy as np
import pytest
import torch
import torchvision.transforms as T

import main_coreg
from fixtures.runs import stop_at_call
from datasets import build_datasets
from datasets.views import MultiViewDataset, strong_transform
from models.annotator import AnnotationCacheError
from models.clip_loader import load_clip, tokenizer_for
from models.coreg import CoRegNetwork, PreActResNet18
from models.zero_shot import TEMPLATE_SETS, class_captions
from fixtures.world import build_smoke_world
from experiments.collect_results import collect
from utils.config import Config, ConfigError, apply_overrides, load_yaml
from models.annotator import template_probabilities
from lnl.coreg import (annotation_metrics, append_loss_history, candidate_sets, contrastive_masks, credibility,
                         distribution_alignment, max_candidate_loss, mix, mixup_lambda, negative_entropy,
                         noisy_supcon_loss, partial_cross_entropy, partial_set_targets, prototype_alignment, rampup,
                         restrict_to_candidates, sharpen, soft_cross_entropy, squared_error,
                         unlabeled_set_targets, update_prototypes, with_manual_labels)
from lnl.gmm import GMMSettings
from utils.run_dir import read_metrics

ROOT = __import__("pathlib").Path(__file__).resolve().parent.parent


def close(a, b, atol=1e-5) -> bool:
    return torch.allclose(torch.as_tensor(a).float(), torch.as_tensor(b).float(), atol=atol)


# ---------------------------------------------------------------- 1. candidate-set annotation
def test_template_probabilities_are_a_softmax_per_template():
    image = torch.tensor([[1.0, 0.0]])
    text = torch.tensor([[[1.0, 0.0], [0.0, 1.0]], [[0.0, 1.0], [1.0, 0.0]]])  # (T=2, C=2, D=2)
    probs = template_probabilities(image, text, logit_scale=2.0)
    e = 1 / (1 + math.exp(-2.0))
    assert probs.shape == (2, 1, 2) and close(probs[:, 0], [[e, 1 - e], [1 - e, e]])


MEAN = torch.tensor([[0.5, 0.3, 0.15, 0.05], [0.1, 0.2, 0.3, 0.4]])


def test_candidate_sets_of_each_mode_by_hand():
    top1 = torch.tensor([[0, 2], [1, 2], [0, 2]])  # (T=3, N=2)
    assert candidate_sets(top1, MEAN, "template_union").int().tolist() == [[1, 1, 0, 0], [0, 0, 1, 0]]
    assert candidate_sets(top1, MEAN, "topk", topk=2).int().tolist() == [[1, 1, 0, 0], [0, 0, 1, 1]]
    assert candidate_sets(top1, MEAN, "prob_threshold", threshold=0.25).int().tolist() == [[1, 1, 0, 0], [0, 0, 1, 1]]
    # nothing reaches 0.6: the top-1 alone, never an empty set
    assert candidate_sets(top1, MEAN, "prob_threshold", threshold=0.6).int().tolist() == [[1, 0, 0, 0], [0, 0, 0, 1]]
    # among the top 3, at least half the top probability: 0.5 -> {0 (0.5), 1 (0.3)}; 0.4 -> {3, 2, 1 (0.2)}
    assert candidate_sets(top1, MEAN, "prob_ratio", topk=3, threshold=0.5).int().tolist() == [[1, 1, 0, 0],
                                                                                             [0, 1, 1, 1]]
    with pytest.raises(ValueError, match="coreg_candidates must be one of"):
        candidate_sets(top1, MEAN, "vote")


def test_annotation_metrics_and_the_manual_labels():
    sets = torch.tensor([[True, True, False, False], [False, False, True, False]])
    metrics = annotation_metrics(sets, MEAN, torch.tensor([1, 0]))
    assert metrics["annotation_candidate_size"] == 1.5 and metrics["annotation_true_in_set"] == 0.5
    assert metrics["annotation_top1_acc"] == 0.0 and metrics["annotation_single_label_rate"] == 0.5  # argmax 0, 3
    assert "annotation_true_in_set" not in annotation_metrics(sets, MEAN, None)
    manual = with_manual_labels(sets, torch.tensor([1, 0]), torch.tensor([False, True]))
    assert manual.int().tolist() == [[1, 1, 0, 0], [1, 0, 0, 0]] and sets[1, 2]  # the input is left alone


# ---------------------------------------------------------------- 2.-3. warm-up and division
P = torch.tensor([[0.5, 0.3, 0.2]])


def test_partial_cross_entropy_entropy_and_maximum_candidate_loss():
    logits = P.log() + 1.0
    assert close(partial_cross_entropy(logits, torch.tensor([[True, False, True]])), [-math.log(0.7)])
    assert close(partial_cross_entropy(logits, torch.ones(1, 3, dtype=torch.bool)), [0.0])
    assert close(negative_entropy(logits), [0.5 * math.log(0.5) + 0.3 * math.log(0.3) + 0.2 * math.log(0.2)])
    assert close(max_candidate_loss(P, torch.tensor([[False, True, True]])), [-math.log(0.3)])


def test_distribution_alignment_by_hand():
    aligned = distribution_alignment(torch.tensor([[0.8, 0.2], [0.4, 0.6]]))  # mean (0.6, 0.4) / prior 0.5
    row0, row1 = [0.8 / 1.2, 0.2 / 0.8], [0.4 / 1.2, 0.6 / 0.8]
    assert close(aligned, [[r / sum(row0) for r in row0], [r / sum(row1) for r in row1]])


def test_credibility_of_the_averaged_normalised_losses():
    history = append_loss_history(None, np.array([0.0, 0.1, 4.0, 3.9, 0.2]), keep=2)
    assert np.allclose(history, [[0.0, 0.025, 1.0, 0.975, 0.05]])
    history = append_loss_history(history, np.array([1.0, 1.0, 5.0, 5.0, 1.0]), keep=2)
    history = append_loss_history(history, np.array([0.0, 0.0, 2.0, 2.0, 0.0]), keep=2)
    assert history.shape == (2, 5) and np.allclose(history[1], [0, 0, 1, 1, 0])  # the oldest epoch dropped
    weight = credibility(history, GMMSettings(random_state=0))
    assert (weight[[0, 1, 4]] > 0.99).all() and (weight[[2, 3]] < 0.01).all()


# ---------------------------------------------------------------- 4. co-pseudo-labels
def test_restriction_fusion_and_sharpening_by_hand():
    assert close(sharpen(torch.tensor([[0.6, 0.4]]), 0.5), [[0.36 / 0.52, 0.16 / 0.52]])
    assert close(restrict_to_candidates(P, torch.tensor([[False, True, True]])), [[0.0, 0.6, 0.4]])
    no_mass = restrict_to_candidates(torch.tensor([[1.0, 0.0, 0.0]]), torch.tensor([[False, True, True]]))
    assert close(no_mass, [[0.0, 0.5, 0.5]])
    own = [torch.tensor([[0.2, 0.8, 0.0]]), torch.tensor([[0.4, 0.6, 0.0]])]  # mean (0.3, 0.7, 0)
    fused = partial_set_targets(own, torch.tensor([[0.0, 0.6, 0.4]]), torch.tensor([0.5]), 0.5)
    squares = [0.15 ** 2, 0.65 ** 2, 0.2 ** 2]  # w·other + (1-w)·own = (0.15, 0.65, 0.2), then ^(1/T)
    assert close(fused, [[s / sum(squares) for s in squares]])
    guessed = unlabeled_set_targets([torch.tensor([[0.5, 0.5]]), torch.tensor([[0.7, 0.3]]),
                                     torch.tensor([[0.9, 0.1]]), torch.tensor([[0.3, 0.7]])], 0.5)
    assert close(guessed, [[0.36 / 0.52, 0.16 / 0.52]])  # mean (0.6, 0.4)


# ---------------------------------------------------------------- 5. self-training
def test_mixup_and_the_self_training_losses():
    values = torch.tensor([[1.0, 0.0], [0.0, 1.0], [0.5, 0.5]])
    assert close(mix(values, torch.tensor([1, 2, 0]), 0.75), [[0.75, 0.25], [0.125, 0.875], [0.625, 0.375]])
    torch.manual_seed(0)
    assert all(0.5 <= mixup_lambda(4.0) <= 1.0 for _ in range(20))
    logits = torch.tensor([[0.7, 0.3]]).log()
    target = torch.tensor([[0.25, 0.75]])
    assert close(soft_cross_entropy(logits, target), [-(0.25 * math.log(0.7) + 0.75 * math.log(0.3))])
    assert close(squared_error(logits, target), [((0.7 - 0.25) ** 2 + (0.3 - 0.75) ** 2) / 2])
    assert [rampup(e, 5, 16, 2.0) for e in (5, 6, 21, 40)] == [0.0, 2.0 / 16, 2.0, 2.0]


# ---------------------------------------------------------------- 6. prototypes
def test_prototype_update_is_the_sequential_ema_then_normalised():
    prototypes = torch.tensor([[0.0, 0.0], [0.0, 1.0], [1.0, 0.0]])
    features = torch.tensor([[1.0, 0.0], [0.0, 1.0], [1.0, 0.0]])
    updated = update_prototypes(prototypes, features, torch.tensor([0, 0, 1]), momentum=0.5)
    # class 0: (0, 0) -> 0.5·(1, 0) -> 0.5·(0.5, 0) + 0.5·(0, 1) = (0.25, 0.5); class 1: (0.5, 0.5); class 2 untouched
    expected = [[0.25 / math.hypot(0.25, 0.5), 0.5 / math.hypot(0.25, 0.5)], [2 ** -0.5, 2 ** -0.5], [1.0, 0.0]]
    assert close(updated, expected) and close(prototypes[0], [0.0, 0.0])  # a new tensor


def test_prototype_alignment_losses_by_hand():
    proto_logits = torch.tensor([[0.7, 0.3]]).log()  # τ_p = 1: q = (0.7, 0.3)
    kl, se = prototype_alignment(proto_logits, torch.tensor([[1.0, 0.0]]), torch.tensor([[0.0, 1.0]]), 0.75, 1.0)
    assert close(kl, [0.75 * -math.log(0.7) + 0.25 * -math.log(0.3)])
    assert close(se, [0.75 * (0.09 + 0.09) / 2 + 0.25 * (0.49 + 0.49) / 2])


# ---------------------------------------------------------------- 7. the contrastive loss with noisy positives
def test_contrastive_masks_and_loss_with_noisy_positives():
    # items: queries q0 (partial), q1 (unlabeled); keys k0, k1; queue: (label 0, partial), (label 1, partial)
    labels = torch.tensor([0, 0, 0, 0, 0, 1])
    partial = torch.tensor([True, False, True, False, True, True])
    positives, ignored = contrastive_masks(labels, partial, batch_size=2)
    assert positives.int().tolist() == [[0, 0, 1, 0, 1, 0], [0, 0, 0, 1, 0, 0]]  # own key; same-label partial items
    assert ignored.int().tolist() == [[0, 1, 0, 1, 0, 0], [1, 0, 1, 0, 1, 0]]  # same label, untrusted
    features = torch.tensor([[1.0, 0.0], [0.0, 1.0], [0.6, 0.8], [0.8, 0.6], [1.0, 0.0], [0.0, 1.0]])
    loss = noisy_supcon_loss(features, positives, ignored, batch_size=2, temperature=1.0)
    log_denominator0 = math.log(math.exp(0.6) + math.exp(1.0) + math.exp(0.0))  # items 2, 4, 5
    expected0 = -0.5 * ((0.6 - log_denominator0) + (1.0 - log_denominator0))
    expected1 = -(0.6 - math.log(math.exp(0.6) + math.exp(1.0)))  # items 3 (own key) and 5
    assert close(loss, [expected0, expected1])
    sharper = noisy_supcon_loss(features, positives, ignored, batch_size=2, temperature=0.5)
    assert close(sharper[1], -(1.2 - math.log(math.exp(1.2) + math.exp(2.0))))


# ---------------------------------------------------------------- the networks
def test_network_queue_momentum_encoder_and_preact_shapes():
    torch.manual_seed(0)
    encoder = PreActResNet18(width=4)
    assert encoder(torch.randn(2, 3, 16, 16)).shape == (2, 32)
    net = CoRegNetwork(encoder, num_classes=3, proj_dim=8, queue_size=5)
    logits, z = net(torch.randn(4, 3, 16, 16))
    assert logits.shape == (4, 3) and close(z.norm(dim=1), torch.ones(4))
    assert all(not p.requires_grad for p in net.key_encoder.parameters())
    with torch.no_grad():
        for p in net.encoder.parameters():
            p.add_(1.0)
    net.reset_key_encoder()
    assert all(torch.equal(k, q) for k, q in zip(net.key_encoder.parameters(), net.encoder.parameters()))
    before = [p.clone() for p in net.key_projector.parameters()]
    with torch.no_grad():
        for p in net.projector.parameters():
            p.add_(1.0)
    net.key_features(torch.randn(2, 3, 16, 16), momentum=0.75)
    assert all(close(k, 0.75 * b + 0.25 * q) for k, b, q in zip(net.key_projector.parameters(), before,
                                                                    net.projector.parameters()))
    net.enqueue(torch.ones(4, 8), torch.tensor([0, 1, 2, 0]), torch.tensor([True, False, True, True]))
    net.enqueue(torch.full((3, 8), 2.0), torch.tensor([1, 1, 1]), torch.tensor([False, False, False]))
    assert net.queue_labels.tolist() == [1, 1, 2, 0, 1] and int(net.queue_ptr) == 2  # a ring of 5
    assert net.queue[:, 0].tolist() == [2.0, 2.0, 1.0, 1.0, 2.0]
    assert net.queue_partial.tolist() == [False, False, True, True, False]


def test_multi_view_dataset_is_seeded_per_sample_and_epoch_and_hides_the_labels(world):
    cfg = apply_overrides(Config(), {**load_yaml(world["fft"]), "noise_mode": "none", "noise_ratio": 0}, "t")
    data = build_datasets(cfg)
    weak = data.train.transform
    strong = strong_transform(weak, num_ops=2, magnitude=9)
    assert isinstance(strong.transforms[strong.transforms.index(next(
        t for t in strong.transforms if isinstance(t, T.ToTensor))) - 1], T.RandAugment)
    shown = np.full(len(data.train), 7)
    views = MultiViewDataset(data.train, [weak, weak, strong], shown)
    views.set_epoch(3)
    first, label, _, index = views[5]
    assert first.shape == (3, 3, 32, 32) and (label, index) == (7, 5)  # the shown label, not the dataset's
    assert torch.equal(first, views[5][0])  # the same (epoch, index): the same views
    assert not torch.equal(first[0], first[1])  # two draws of the weak transform
    views.set_epoch(4)
    assert not torch.equal(first, views[5][0])
    torch.manual_seed(0)
    before = torch.rand(1)
    torch.manual_seed(0)
    views[1]
    assert torch.equal(torch.rand(1), before)  # the caller's RNG is left alone


# ---------------------------------------------------------------- end to end
PER_CLASS = 6  # 60 training images: batches of 32 and 28
OPTS = {"noise_mode": "none", "noise_ratio": 0, "warmup": 1, "epochs": 3, "batch_size": 32, "coreg_width": 4,
        "coreg_proj_dim": 8, "coreg_queue_size": 64, "coreg_contrastive_start": 0, "coreg_templates": "miniature",
        "lr": 0.02, "resolution": 16, "coreg_annotation_resolution": 32}


@pytest.fixture(scope="module")
def world(tmp_path_factory):
    return build_smoke_world(tmp_path_factory.mktemp("coreg"), per_class_train=PER_CLASS, per_class_test=2)


def _run(world, output, extra=(), **opts):
    values = {**OPTS, **opts, "output_dir": output}
    return main_coreg.main(["--cfg", world["fft"], *extra, "--opts", *(f"{k}={v}" for k, v in values.items())])


def test_script_end_to_end_annotates_trains_both_networks_and_caches(world, tmp_path, capsys):
    summary = _run(world, tmp_path)
    run = tmp_path / "coreg" / "cifar10" / "none0.0_seed0"
    records = read_metrics(str(run))
    assert [r["epoch"] for r in records] == [1, 2, 3]
    assert "net1_loss_partial_ce" in records[0] and "net2_loss_penalty" in records[0]  # warm-up
    assert records[1]["contrast_on"] == 0 and "net1_loss_cont" not in records[1]  # the official test: epoch - 1 > 1
    assert records[2]["contrast_on"] == 1 and {"net1_loss_cont", "net2_loss_proto_x"} <= set(records[2])
    assert records[1]["lambda_u"] == pytest.approx(1 / 16) and 0 <= records[2]["net2_partial_frac"] <= 1
    accs = [r["test_acc"] for r in records]
    assert summary["best_test_acc"] == max(accs) and summary["last_test_acc"] == accs[-1]
    assert summary["last_test_acc_net1"] == records[-1]["test_acc_net1"] and "best_test_acc_net2" in summary
    assert (summary["script"], summary["method"], summary["num_manual_labels"]) == ("coreg", "CoReg", 0)
    # the results collector reads this very run: an accuracy row in the column of CLIP's annotation
    (row,) = collect(str(tmp_path))
    assert (row["method"], row["role"], row["noise"], row["dataset"]) == ("CoReg", "accuracy", "clip_annotation",
                                                                          "cifar10")
    assert (row["best_acc"], row["last_acc"]) == (max(accs), accs[-1]) and row["precision"] is None

    # Independent route: the tiny CLIP, each template's argmax, the union; scored against the true labels.
    cfg = load_yaml(world["fft"])
    clip_model = load_clip(cfg["backbone"], cfg["pretrained"])
    data = build_datasets(apply_overrides(Config(), {**cfg, **OPTS, "resolution": 32}, "t"))
    with torch.no_grad():
        tokens = tokenizer_for(cfg["backbone"])(class_captions(data.class_names, TEMPLATE_SETS["miniature"]))
        text = torch.nn.functional.normalize(clip_model.encode_text(tokens), dim=-1).view(5, 10, -1)
        image = torch.nn.functional.normalize(clip_model.encode_image(torch.stack(
            [data.eval[i][0] for i in range(len(data.eval))])), dim=-1)
    top1 = torch.einsum("nd,tcd->tnc", image, text).argmax(dim=-1)  # softmax keeps the argmax
    sets = torch.zeros(len(data.eval), 10, dtype=torch.bool).scatter_(1, top1.t(), True)
    truth = torch.as_tensor(data.train.true_labels)
    assert summary["annotation_candidate_size"] == pytest.approx(float(sets.sum(1).float().mean()))
    assert summary["annotation_true_in_set"] == pytest.approx(float(sets[torch.arange(60), truth].float().mean()))

    # The annotation is cached with its metadata and reused by the next run.
    cache = summary["annotation_cache"]
    meta = json.loads(open(cache[:-3] + ".json").read())
    assert meta["templates"] == list(TEMPLATE_SETS["miniature"]) and meta["resolution"] == 32
    capsys.readouterr()
    again = _run(world, tmp_path / "again", epochs=1, coreg_annotation_dir=str(tmp_path / "coreg_annotation"))
    assert "CLIP annotation reused" in capsys.readouterr().out and again["annotation_cache"] == cache
    state = torch.load(cache, weights_only=True)
    state["metadata"]["templates"] = ["tampered"]
    torch.save(state, cache)
    with pytest.raises(AnnotationCacheError, match="was made with other settings"):
        _run(world, tmp_path / "third", epochs=1, coreg_annotation_dir=str(tmp_path / "coreg_annotation"))


def test_resume_with_manual_labels_gives_the_same_result(world, tmp_path, monkeypatch):
    opts = {"coreg_labeled_fraction": 0.2}
    straight = _run(world, tmp_path / "straight", **opts)
    assert straight["num_manual_labels"] == 12  # 20 % of 60, their sets are their true labels
    real = stop_at_call(monkeypatch, main_coreg, 5)  # epochs 1 and 2 train each network once: die in epoch 3
    with pytest.raises(KeyboardInterrupt):
        _run(world, tmp_path / "resumed", **opts)
    monkeypatch.setattr(main_coreg, "train_one_epoch", real)
    resumed = _run(world, tmp_path / "resumed", extra=["--resume"], **opts)
    runs = [tmp_path / kind / "coreg" / "cifar10" / "none0.0_seed0" for kind in ("straight", "resumed")]
    stable = [[{k: v for k, v in r.items() if k not in ("seconds", "peak_memory_mb")} for r in read_metrics(str(run))]
              for run in runs]
    assert len(stable[0]) == 3 and stable[0] == stable[1]
    assert straight["best_test_acc"] == resumed["best_test_acc"]


@pytest.mark.parametrize("opts, message", [
    ({"noise_mode": "sym", "noise_ratio": 0.4}, r"Co-Reg is annotation-free: it never reads the dataset's labels"),
    ({"coreg_templates": "nonsense"}, r"coreg_templates must be one of \["),
    ({"coreg_network": "no_such_net"}, r"coreg_network must be preact_resnet18 \(the paper's students\) or a timm"),
    ({"coreg_candidates": "vote"}, r"'coreg_candidates' must be one of \['template_union', 'topk'"),
    ({"coreg_tau_div": 1.5}, r"'coreg_tau_div' must lie in \[0.0, 1.0\], got 1.5"),
    ({"few_shot": 2}, r"few_shot draws k images per labelled class"),
])
def test_bad_values_are_refused_with_what_is_allowed(world, tmp_path, opts, message):
    with pytest.raises(ConfigError, match=message):
        _run(world, tmp_path, **opts)
    assert not (tmp_path / "coreg").exists()


def test_shipped_yamls_hold_the_papers_defaults():
    for name, warmup, epochs in (("cifar10", 50, 800), ("cifar100", 100, 800), ("fashion_mnist", 50, 100)):
        path = ROOT / "config" / "coreg" / f"{name}.yaml"
        cfg = apply_overrides(Config(), load_yaml(str(path)), str(path))
        assert (cfg.warmup, cfg.epochs, cfg.batch_size, cfg.lr, cfg.backbone) == (warmup, epochs, 256, 0.01, "ViT-B/32")
        assert (cfg.coreg_tau_div, cfg.coreg_sharpen_T, cfg.coreg_lambda_u, cfg.coreg_proj_dim) == (0.5, 0.5, 1.0, 128)
        assert (cfg.coreg_queue_size, cfg.coreg_key_momentum, cfg.coreg_proto_momentum) == (8192, 0.999, 0.999)
        assert len(cfg.class_names) == cfg.num_class and cfg.coreg_templates == "imagenet_small"
    assert len(TEMPLATE_SETS["imagenet_small"]) == 27


def test_two_processes_and_micro_batches_run_through(world, tmp_path):
    """torchrun (gloo, 2 processes) and micro-batches: the same epochs, records and summary fields.

    Mixup partners are drawn within each process's (micro-)batch, so the figures are not those of
    one process; queue keys and prototype updates are gathered, so every rank holds the same ones.
    """
    values = {**OPTS, "output_dir": tmp_path / "ddp", "epochs": 3}
    command = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2", "main_coreg.py",
               "--cfg", world["fft"], "--opts", *(f"{k}={v}" for k, v in values.items())]
    env = dict(os.environ, HF_HUB_OFFLINE="1", OMP_NUM_THREADS="1", PYTHONPATH=str(ROOT))
    result = subprocess.run(command, cwd=ROOT, env=env, capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr[-3000:]
    summary = json.loads((tmp_path / "ddp" / "coreg" / "cifar10" / "none0.0_seed0" / "summary.json").read_text())
    assert summary["world_size"] == 2 and "best_test_acc_net2" in summary
    micro = _run(world, tmp_path / "micro", micro_batch_size=16)
    assert micro["num_samples"] == summary["num_samples"] == 60
    records = read_metrics(str(tmp_path / "micro" / "coreg" / "cifar10" / "none0.0_seed0"))
    assert records[2]["contrast_on"] == 1 and np.isfinite(records[2]["net1_loss_cont"])
