"""Precision paths that only a GPU run used to reach, exercised on the CPU: pure fp16 CLIP towers,
TURN's probe head in fp16, a resume that switches the loss scaler on or off, and the record of what
actually trains in which dtype."""
from __future__ import annotations

import dataclasses
import logging
from types import SimpleNamespace

import numpy as np
import pytest
import torch
import yaml

import main_coreg
import main_phase1
import main_robust_similarity
import main_turn
import utils.experiment
from models.clip_loader import image_dtype, load_clip
from models.prompt_matrix import RobustSimilarityModel
from fixtures.runs import stop_at_call
from fixtures.world import build_smoke_world
from utils.config import Config
from utils.engine import trained_precision

TINY = "deft-tiny-vit"
NOISE = ["--noise_mode", "sym", "--noise_ratio", "0.4"]


@pytest.fixture(scope="module")
def world(tmp_path_factory):
    return build_smoke_world(tmp_path_factory.mktemp("precision"), per_class_train=6, per_class_test=2, epochs=1)


@pytest.fixture
def fp16_on_cpu(monkeypatch):
    """Let `precision: fp16` run on the CPU (refused there in normal use: CPU fp16 training is slow and
    incomplete), to exercise the dtype handling of the fp16 models."""
    monkeypatch.setattr(utils.experiment, "check_precision", lambda precision, device: None)


def test_an_fp16_image_tower_computes_in_the_dtype_of_its_stem(tiny_tokenizer):
    clip = load_clip(TINY, "none", precision="fp16")
    # the trap: open_clip's fp16 conversion leaves class_embedding (the first parameter) in fp32
    assert next(clip.visual.parameters()).dtype == torch.float32
    assert image_dtype(clip.visual) == torch.float16
    model = RobustSimilarityModel(clip, ["a", "b", "c"], tiny_tokenizer, blocks=2, n_ctx=4)
    assert model.prompt_matrix.ctx.dtype == torch.float16  # the contexts join fp16 token embeddings
    features = model.image_features(torch.rand(2, 3, 32, 32))  # fp32 images, as the loader gives them
    assert features.dtype == torch.float32 and features.shape == (2, clip.visual.output_dim)
    assert torch.allclose(features.norm(dim=-1), torch.ones(2), atol=1e-3)
    logits = model(torch.rand(2, 3, 32, 32))
    assert logits.shape == (2, 2, 3) and torch.isfinite(logits).all()


def test_robust_similarity_and_coreg_run_with_a_pure_fp16_clip(world, tmp_path, fp16_on_cpu):
    summary = main_robust_similarity.main(["--cfg", world["peft"], *NOISE, "--opts", "rs_blocks=2", "N_CTX=4",
                                           "precision=fp16", f"output_dir={tmp_path}"])
    assert 0 <= summary["mask_f1"] <= 1 and "float16" in summary["trained_precision"]
    summary = main_coreg.main(["--cfg", world["fft"], "--opts", "noise_mode=none", "noise_ratio=0", "warmup=1",
                               "epochs=1", "coreg_width=4", "coreg_proj_dim=8", "coreg_queue_size=64",
                               "coreg_templates=miniature", "resolution=16", "coreg_annotation_resolution=32",
                               "precision=fp16", f"output_dir={tmp_path}"])
    assert np.isfinite(summary["last_test_acc"])
    # Co-Reg's student networks are not CLIP models: fp16 leaves them in fp32, and the record says so
    assert "float32" in summary["trained_precision"] and "float16" not in summary["trained_precision"]


def test_turn_probes_an_fp16_head_in_fp32_and_writes_it_back():
    torch.manual_seed(0)
    head = torch.nn.Linear(4, 3).half()
    features = torch.randn(24, 4)
    features[:, 0] = 0  # a weight column whose gradient is exactly 0: AdamW's fp16 update would be 0/0
    labels = np.arange(24) % 3
    cfg = dataclasses.replace(Config(), precision="fp16", batch_size=8, turn_lp_epochs=3, seed=0)
    exp = SimpleNamespace(device=torch.device("cpu"), log=logging.getLogger("test"))
    before = head.weight.detach().clone()
    result = main_turn.linear_probe(head, features.half(), labels, features.half(), torch.as_tensor(labels), cfg, exp)
    assert result["optimizer"]["name"] == "adamw"  # TURN's CLIP linear-probe optimiser
    assert head.weight.dtype == torch.float16 and torch.isfinite(head.weight).all()
    assert not torch.equal(head.weight, before) and all(np.isfinite(result["losses"]))


@pytest.mark.parametrize("first, then", [(False, True), (True, False)])
def test_a_run_resumes_with_the_loss_scaler_switched_on_or_off(world, tmp_path, monkeypatch, first, then):
    """`device` may change on resume, and with it the scaler (CPU -> GPU with amp, and back)."""
    def scaler(enabled):
        return lambda precision, device: torch.amp.GradScaler("cpu", enabled=enabled)

    opts = ["--opts", "epochs=2", f"output_dir={tmp_path}"]
    monkeypatch.setattr(main_phase1, "make_grad_scaler", scaler(first))
    real = stop_at_call(monkeypatch, main_phase1, 2)
    with pytest.raises(KeyboardInterrupt):
        main_phase1.main(["--cfg", world["peft"], *NOISE, *opts])
    monkeypatch.setattr(main_phase1, "train_one_epoch", real)
    monkeypatch.setattr(main_phase1, "make_grad_scaler", scaler(then))
    summary = main_phase1.main(["--cfg", world["peft"], *NOISE, "--resume", *opts])
    run = tmp_path / "phase1" / "cifar10" / "sym0.4_seed0"
    assert summary["num_samples"] == 60 and (run / "summary.json").is_file()
    expected = "starts afresh: the run was saved without one" if then else "its saved state is dropped"
    assert expected in (run / "log.txt").read_text()


def test_the_precision_each_part_trains_in_is_recorded(world, tmp_path):
    model = torch.nn.Sequential(torch.nn.Linear(2, 2).half(), torch.nn.Linear(2, 2))
    model[1].bias.requires_grad_(False)
    assert trained_precision(model, "fp16", torch.device("cpu")) == \
        "precision fp16 on cpu: trainable parameters float16 (2 tensors), float32 (1 tensors); no autocast"
    assert trained_precision(model, "amp", torch.device("cuda")).endswith("; fp16 autocast")

    summary = main_phase1.main(["--cfg", world["peft"], *NOISE, "--opts", f"output_dir={tmp_path}"])
    run = tmp_path / "phase1" / "cifar10" / "sym0.4_seed0"
    note = summary["trained_precision"]
    # amp on a CPU: no autocast, fp32 throughout (the tuner's and the prompts' 5 tensors)
    assert note == "precision amp on cpu: trainable parameters float32 (5 tensors); no autocast"
    assert f"# {note}\n" in (run / "config.yaml").read_text() and note in (run / "log.txt").read_text()
    assert yaml.safe_load((run / "config.yaml").read_text())["precision"] == "amp"  # still a plain config
