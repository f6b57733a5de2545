"""Robust Similarity: each component on hand-made tensors, the prompt matrix, and the
script end to end on the tiny fixture world (mask, resume, clear errors)."""
from __future__ import annotations

import json
import math
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

import main_robust_similarity
from fixtures.runs import stop_at_call
from models.prompt_matrix import PromptMatrix, RobustSimilarityModel
from fixtures.world import build_smoke_world
from experiments.collect_results import collect
from utils.config import ConfigError
from lnl.gmm import GMMSettings
from lnl.robust_similarity import (alpha_schedule, block_loss, ensemble_probabilities, feature_distance,
                                     feature_similarity, filter_samples, distance_rows, prompt_similarity,
                                     robust_similarity)
from utils.run_dir import read_metrics

# ---------------------------------------------------------------- the block ensemble
# sample 0 (label 1): block 0 gives (0.5, 0.3, 0.2), block 1 gives (0.1, 0.6, 0.3)
# sample 1 (label 2): block 0 gives (0.2, 0.2, 0.6), block 1 gives (0.1, 0.1, 0.8)
PROBS = torch.tensor([[[0.5, 0.3, 0.2], [0.1, 0.6, 0.3]],
                      [[0.2, 0.2, 0.6], [0.1, 0.1, 0.8]]])
LABELS = torch.tensor([1, 2])


def test_prompt_similarity_ensembles_the_blocks():
    logits = PROBS.log() + 3.0  # a shift per row leaves the softmax unchanged
    assert torch.allclose(prompt_similarity(logits, LABELS, "mean_prob"), torch.tensor([0.45, 0.7]))
    assert torch.allclose(prompt_similarity(logits, LABELS, "vote"), torch.tensor([0.5, 1.0]))  # argmax 0 and 1; 2 and 2
    assert torch.allclose(ensemble_probabilities(logits), torch.tensor([[0.3, 0.45, 0.25], [0.15, 0.15, 0.7]]))
    with pytest.raises(ValueError, match="rs_ensemble must be one of"):
        prompt_similarity(logits, LABELS, "median")


def test_block_loss_is_the_mean_over_blocks_of_gce_or_ce():
    logits = PROBS.log()
    q = 0.7
    gce = [((1 - 0.3 ** q) / q + (1 - 0.6 ** q) / q) / 2, ((1 - 0.6 ** q) / q + (1 - 0.8 ** q) / q) / 2]
    assert torch.allclose(block_loss(logits, LABELS, "gce", q), torch.tensor(gce), atol=1e-6)
    ce = [-(math.log(0.3) + math.log(0.6)) / 2, -(math.log(0.6) + math.log(0.8)) / 2]
    assert torch.allclose(block_loss(logits, LABELS, "ce"), torch.tensor(ce), atol=1e-6)


# ---------------------------------------------------------------- the mutual-distance similarity
# class 0: a = (1, 0), b = (2, 0) (same direction), c = (0, 1); class 1: d alone
FEATURES = torch.tensor([[1.0, 0.0], [2.0, 0.0], [0.0, 1.0], [0.6, 0.8]])
GROUPS = torch.tensor([0, 0, 0, 1])


def test_mutual_distance_matrix_by_hand():
    cosine = distance_rows(FEATURES[:3], FEATURES[:3], "cosine")
    assert torch.allclose(cosine, torch.tensor([[0.0, 0.0, 1.0], [0.0, 0.0, 1.0], [1.0, 1.0, 0.0]]), atol=1e-6)
    euclid = distance_rows(FEATURES[:3], FEATURES[:3], "euclidean")
    r2, r5 = math.sqrt(2), math.sqrt(5)
    assert torch.allclose(euclid, torch.tensor([[0.0, 1.0, r2], [1.0, 0.0, r5], [r2, r5, 0.0]]), atol=1e-5)


@pytest.mark.parametrize("chunk", [1, 1024])
def test_feature_distance_is_the_mean_distance_to_the_own_group(chunk):
    cosine = feature_distance(FEATURES, GROUPS, 2, "cosine", chunk=chunk)
    assert torch.allclose(cosine, torch.tensor([0.5, 0.5, 1.0, 0.0]), atol=1e-6)  # (0 + 1) / 2, ..., (1 + 1) / 2; alone
    euclid = feature_distance(FEATURES, GROUPS, 2, "euclidean", chunk=chunk)
    r2, r5 = math.sqrt(2), math.sqrt(5)
    assert torch.allclose(euclid, torch.tensor([(1 + r2) / 2, (1 + r5) / 2, (r2 + r5) / 2, 0.0]), atol=1e-5)


def test_feature_similarity_is_minus_the_distance_on_zero_one():
    distances = torch.tensor([0.5, 0.5, 1.0, 0.0])
    per_class = feature_similarity(distances, GROUPS, 2, "class_minmax")
    assert torch.allclose(per_class, torch.tensor([1.0, 1.0, 0.0, 1.0]))  # a group of one: 1
    overall = feature_similarity(distances, GROUPS, 2, "global_minmax")
    assert torch.allclose(overall, torch.tensor([0.5, 0.5, 0.0, 1.0]))  # -d in [-1, 0] -> [0, 1]


def test_alpha_schedule_of_the_seed():
    assert alpha_schedule(1) == pytest.approx(0.2)  # the paper's epoch 0
    assert alpha_schedule(36) == pytest.approx(0.2 * math.e)
    assert alpha_schedule(51) == pytest.approx(0.2 * math.exp(50 / 35)) == pytest.approx(0.8345, abs=1e-4)
    assert alpha_schedule(100) == 1.0 and alpha_schedule(100, cap=0.9) == 0.9  # capped: a weight, not > 1


def test_robust_similarity_blends_and_the_filter_rules():
    blended = robust_similarity(torch.tensor([0.8, 0.2]), torch.tensor([0.4, 1.0]), alpha=0.25)
    assert torch.allclose(blended, torch.tensor([0.25 * 0.8 + 0.75 * 0.4, 0.25 * 0.2 + 0.75 * 1.0]))
    scores = np.array([0.9, 0.1, 0.5, 0.3, 0.7])
    labels = np.array([0, 0, 0, 1, 1])
    kept, _ = filter_samples(scores, labels, 2, "threshold", threshold=0.5)
    assert kept.tolist() == [True, False, False, False, True]  # strictly above
    kept, score = filter_samples(scores, labels, 2, "keep_ratio", keep_ratio=0.5)
    assert kept.tolist() == [True, False, True, False, True] and np.array_equal(score, scores)  # ceil(1.5), ceil(1)
    kept, _ = filter_samples(np.array([0.6] * 5), labels, 2, "keep_ratio", keep_ratio=0.6)
    assert kept.tolist() == [True, True, False, True, True]  # 0.6·5 is 3 (not 4 from float error); ties: order
    two_groups = np.array([0.90, 0.92, 0.91, 0.89, 0.10, 0.12, 0.11])
    kept, posterior = filter_samples(two_groups, np.zeros(7, int), 1, "gmm", 0.5, settings=GMMSettings(random_state=0))
    assert kept.tolist() == [True] * 4 + [False] * 3 and posterior[:4].min() > 0.99
    with pytest.raises(ValueError, match="rs_filter must be one of"):
        filter_samples(scores, labels, 2, "top")


# ---------------------------------------------------------------- the prompt matrix
def test_prompt_matrix_blocks_are_separate_classifiers(tiny_clip, tiny_tokenizer):
    names = ["cat", "sea lion", "dog"]
    model = RobustSimilarityModel(tiny_clip, names, tiny_tokenizer, blocks=3, n_ctx=4)
    matrix = model.prompt_matrix
    assert matrix.ctx.shape == (3, 1, 4, 32) and matrix().shape[0] == 9  # class-shared contexts, m·C prompts
    assert matrix.eot_positions().tolist() == matrix.token_ids.argmax(dim=-1).tolist() * 3
    text = model.text_features()
    assert text.shape == (3, 3, 32) and torch.allclose(text.norm(dim=-1), torch.ones(3, 3))
    assert not torch.allclose(text[0], text[1])  # each block has its own random contexts
    # block b alone, through the same text tower: its rows of the matrix
    single = PromptMatrix(names, 1, 4, tiny_clip.token_embedding, tiny_tokenizer, torch.float32)
    with torch.no_grad():
        single.ctx.copy_(matrix.ctx[1:2])
    alone = torch.nn.functional.normalize(model.text_encoder(single(), single.eot_positions()), dim=-1)
    assert torch.allclose(alone, text[1], atol=1e-5)
    images = torch.randn(2, 3, 32, 32)
    logits = model(images)
    assert logits.shape == (2, 3, 3)
    logits.sum().backward()
    assert matrix.ctx.grad is not None and all(p.grad is None for p in tiny_clip.parameters())
    per_class = PromptMatrix(names, 2, 4, tiny_clip.token_embedding, tiny_tokenizer, torch.float32, ctx_per_class=True)
    assert per_class.ctx.shape == (2, 3, 4, 32)


# ---------------------------------------------------------------- end to end
NOISE = ["--noise_mode", "sym", "--noise_ratio", "0.4"]
OPTS = {"rs_blocks": 2, "N_CTX": 4, "lr": 0.002, "epochs": 3}


@pytest.fixture(scope="module")
def world(tmp_path_factory):
    return build_smoke_world(tmp_path_factory.mktemp("rs"), per_class_train=10, per_class_test=2)


def _run(world, output, *opts, extra=()):
    values = {**OPTS, **dict(opt.split("=", 1) for opt in opts), "output_dir": output}
    return main_robust_similarity.main(["--cfg", world["peft"], *NOISE, *extra, "--opts",
                                        *(f"{key}={value}" for key, value in values.items())])


def test_script_end_to_end_saves_a_mask_scored_like_every_detector(world, tmp_path):
    summary = _run(world, tmp_path, "rs_filter=threshold", "rs_threshold=0.6")
    run = tmp_path / "robust_similarity_m2" / "cifar10" / "sym0.4_seed0"
    mask, scores = np.load(run / "clean_mask.npy"), np.load(run / "clean_scores.npy")
    truth = np.load(run / "truly_clean.npy")
    meta = json.loads((run / "clean_mask.json").read_text())
    assert np.array_equal(mask, scores > 0.6)  # the saved G, thresholded independently
    hits = int((mask & truth).sum())
    assert summary["mask_precision"] == pytest.approx(hits / mask.sum())
    assert summary["mask_recall"] == pytest.approx(hits / truth.sum())
    assert meta["method"] == "RobustSimilarity" and "G > 0.6" in meta["selection_rule"]
    assert meta["alpha"] == pytest.approx(0.2 * math.exp(3 / 35)) == summary["alpha_final"]  # after epoch 3
    for key in ("script", "method", "mask_precision", "mask_recall", "mask_f1", "mask_auroc", "best_test_acc",
                "last_test_acc", "feature_similarity_auroc", "prompt_similarity_auroc"):
        assert key in summary, key
    assert (summary["script"], summary["method"]) == ("robust_similarity", "RobustSimilarity")
    records = read_metrics(str(run))
    assert [r["alpha"] for r in records] == pytest.approx([0.2, 0.2 * math.exp(1 / 35), 0.2 * math.exp(2 / 35)])
    assert all(r["selected_frac"] == r["num_selected"] / 100 for r in records)
    # the results collector reads this very run: one row per m, P/R from the saved files, the ensemble's accuracy
    (row,) = collect(str(tmp_path))
    assert (row["method"], row["role"], row["noise"], row["dataset"]) == ("RobustSimilarity (m=2)", "both",
                                                                          "sym0.4", "cifar10")
    assert row["precision"] == pytest.approx(100 * hits / mask.sum())
    assert row["recall"] == pytest.approx(100 * hits / truth.sum())
    assert row["best_acc"] == max(r["test_acc"] for r in records) and row["num_selected"] == int(mask.sum())


def test_few_shot_run_with_the_gmm_filter(world, tmp_path):
    summary = _run(world, tmp_path, "few_shot=5", "few_shot_noise=random", "epochs=1")
    assert summary["num_samples"] == 50 and summary["noise"]["few_shot"] == 5
    assert 0 < summary["num_selected"] <= 50 and "GMM" in json.loads(
        (tmp_path / "robust_similarity_m2" / "cifar10" / "sym0.4_seed0" / "clean_mask.json").read_text())["selection_rule"]


def test_resume_gives_the_same_result_as_an_uninterrupted_run(world, tmp_path, monkeypatch):
    _run(world, tmp_path / "straight")
    real = stop_at_call(monkeypatch, main_robust_similarity, 2)
    with pytest.raises(KeyboardInterrupt):
        _run(world, tmp_path / "resumed")
    monkeypatch.setattr(main_robust_similarity, "train_one_epoch", real)
    _run(world, tmp_path / "resumed", extra=["--resume"])
    runs = [tmp_path / kind / "robust_similarity_m2" / "cifar10" / "sym0.4_seed0" for kind in ("straight", "resumed")]
    stable = [[{k: v for k, v in r.items() if k not in ("seconds", "peak_memory_mb")} for r in read_metrics(str(run))]
              for run in runs]
    assert len(stable[0]) == 3 and stable[0] == stable[1]
    assert np.array_equal(np.load(runs[0] / "clean_mask.npy"), np.load(runs[1] / "clean_mask.npy"))


@pytest.mark.parametrize("opts, message", [
    (["rs_ensemble=median"], r"'rs_ensemble' must be one of \['mean_prob', 'vote'\], got 'median'"),
    (["rs_blocks=0"], r"'rs_blocks' must lie in \[1, inf\], got 0"),
    (["rs_filter=top"], r"'rs_filter' must be one of \['gmm', 'threshold', 'keep_ratio'\]"),
    (["CLASS_TOKEN_POSITION=middle"], r"Robust Similarity places the class name after the contexts"),
])
def test_bad_values_are_refused_with_what_is_allowed(world, tmp_path, opts, message):
    with pytest.raises(ConfigError, match=message):
        main_robust_similarity.main(["--cfg", world["peft"], *NOISE, "--opts", *opts, f"output_dir={tmp_path}"])
    assert not any(tmp_path.glob("robust_similarity*"))  # refused before a run directory was made


def test_micro_batches_and_two_processes_give_the_run_of_one(world, tmp_path):
    """The filter decides before the epoch, so the engine's micro-batches and torchrun change nothing."""
    _run(world, tmp_path / "single", "epochs=2")
    _run(world, tmp_path / "micro", "epochs=2", "micro_batch_size=8")
    command = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2",
               "main_robust_similarity.py", "--cfg", world["peft"], *NOISE, "--opts",
               *(f"{k}={v}" for k, v in {**OPTS, "epochs": 2, "output_dir": tmp_path / "ddp"}.items())]
    root = Path(__file__).resolve().parent.parent
    env = dict(os.environ, HF_HUB_OFFLINE="1", OMP_NUM_THREADS="1", PYTHONPATH=str(root))
    result = subprocess.run(command, cwd=root, env=env, capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr[-3000:]
    runs = [tmp_path / kind / "robust_similarity_m2" / "cifar10" / "sym0.4_seed0" for kind in ("single", "micro", "ddp")]
    masks = [np.load(run / "clean_mask.npy") for run in runs]
    assert np.array_equal(masks[0], masks[1]) and np.array_equal(masks[0], masks[2])
    records = [read_metrics(str(run)) for run in runs]
    for other in records[1:]:
        for a, b in zip(records[0], other):
            for key in ("loss", "num_selected", "precision", "recall", "test_acc", "alpha"):
                assert b[key] == pytest.approx(a[key], rel=1e-5), key
