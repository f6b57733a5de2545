"""Every baseline end to end on CPU (tiny CLIP, generated CIFAR-10 pickles), and phase 2 on their masks."""
import json
import re

import numpy as np
import pytest
import torch

import main_baseline
import main_phase2
import main_real_baseline
import main_real_turn
import main_small_loss
import main_turn
from fixtures.runs import stop_at_call
from datasets import build_datasets
from models.clip_loader import load_clip, tokenizer_for
from fixtures.world import build_smoke_world
from utils.config import Config, ConfigError, apply_overrides, load_yaml
from utils.run_dir import read_metrics
from lnl.selection import forget_rate_schedule

PER_CLASS = 10  # 100 training samples: batches of 32, 32, 32 and 4
NOISE = ["--noise_mode", "sym", "--noise_ratio", "0.4"]


@pytest.fixture(scope="module")
def world(tmp_path_factory):
    return build_smoke_world(tmp_path_factory.mktemp("baselines"), per_class_train=PER_CLASS, per_class_test=2)


@pytest.fixture(scope="module")
def data(world):
    cfg = apply_overrides(Config(), {**load_yaml(world["fft"]), "noise_mode": "sym", "noise_ratio": 0.4}, "t")
    return build_datasets(cfg)


def _run_dir(world, name):
    return world["output"] / name / "cifar10" / "sym0.4_seed0"


def _baseline(world, method, *opts, cfg="fft"):
    return main_baseline.main(["--cfg", world[cfg], *NOISE, "--lnl_methods", method, "--overwrite",
                               "--opts", *opts])


def _check_mask_and_phase2(world, data, run, method):
    """The saved mask has phase 1's format and P/R, and main_phase2.py trains on exactly it."""
    mask = np.load(run / "clean_mask.npy")
    meta = json.loads((run / "clean_mask.json").read_text())
    clean = ~np.asarray(data.train.is_noisy)
    hits = int((mask & clean).sum())
    assert mask.dtype == bool and mask.shape == (len(data.train),) and meta["method"] == method
    assert meta["given_labels_sha256"] == data.given_labels_sha256 and meta["num_selected"] == int(mask.sum())
    assert meta["mask_precision"] == pytest.approx(hits / max(int(mask.sum()), 1))
    assert meta["mask_recall"] == pytest.approx(hits / clean.sum())
    result = main_phase2.main(["--cfg", world["fft"], *NOISE, "--clean_mask", str(run / "clean_mask.npy"),
                               "--overwrite", "--opts", "epochs=1"])
    assert result["num_train_samples"] == int(mask.sum()) and result["mask_method"] == method
    assert (world["output"] / f"phase2_from_{method.lower()}" / "cifar10" / "sym0.4_seed0" / "summary.json").is_file()
    return mask, meta


def test_small_loss_selects_per_batch_with_the_oracle_schedule_and_saves_a_mask(world, data):
    summary = main_small_loss.main(["--cfg", world["peft"], *NOISE, "--overwrite"])
    run = _run_dir(world, "small_loss")
    records = read_metrics(str(run))
    schedule = forget_rate_schedule(0.4, 2, 1)  # PEFT YAML: 2 epochs, warm-up 1, oracle rate = 0.4
    assert [r["forget_rate"] for r in records] == schedule.tolist() and summary["oracle_forget_rate"]
    batches = [32, 32, 32, 4]
    expected = [sum(int((1 - tau) * b) for b in batches) for tau in schedule]  # per batch: 100, 3 * 19 + 2
    assert [r["num_selected"] for r in records] == expected
    for key in ("precision", "recall", "f1", "batch_mean_precision", "loss_clean", "loss_noisy", "test_acc"):
        assert key in records[-1], key
    mask, _ = _check_mask_and_phase2(world, data, run, "SmallLoss")
    assert int(mask.sum()) == expected[-1] == summary["num_selected"]


def test_small_loss_with_a_given_forget_rate(world, tmp_path):
    summary = main_small_loss.main(["--cfg", world["peft"], *NOISE, "--opts", f"output_dir={tmp_path}",
                                    "forget_rate=0.25", "epochs=1", "warmup=0"])
    assert summary["forget_rate"] == 0.25 and not summary["oracle_forget_rate"]
    assert summary["num_selected"] == 3 * int(0.75 * 32) + int(0.75 * 4)


@pytest.mark.parametrize("method", ["CE", "SCE", "GCE", "ELR"])
def test_loss_baselines_train_and_report_best_and_last_accuracy(world, method):
    summary = _baseline(world, method)
    run = _run_dir(world, f"baseline_{method.lower()}")
    records = read_metrics(str(run))
    assert [r["epoch"] for r in records] == [1, 2] and summary["method"] == method
    accs = [r["test_acc"] for r in records]
    assert summary["best_test_acc"] == max(accs) and summary["last_test_acc"] == accs[-1]
    assert not (run / "clean_mask.npy").exists()
    if method == "ELR":  # the memory is checkpointed; after k visits each row sums to 1 - beta^k
        targets = torch.load(run / "checkpoint.pt", weights_only=True)["extra"]["elr_targets"]
        assert targets.shape == (10 * PER_CLASS, 10)
        assert torch.allclose(targets.sum(dim=1), torch.full((10 * PER_CLASS,), 1 - 0.3 ** 2), atol=1e-5)


def test_gmm_baseline_selects_after_warmup_and_its_mask_trains_phase2(world, data):
    summary = _baseline(world, "GMM")
    run = _run_dir(world, "baseline_gmm")
    records = read_metrics(str(run))
    assert "precision" not in records[0]  # epoch 1 is the warm-up: CE on every sample
    assert {"precision", "recall", "f1", "num_selected"} <= set(records[1])
    mask, meta = _check_mask_and_phase2(world, data, run, "GMM")
    assert records[1]["num_selected"] == int(mask.sum()) == summary["num_selected"]
    assert records[1]["precision"] == pytest.approx(meta["mask_precision"])


def test_turn_extracts_features_once_probes_then_cleanses_per_class(world, data, monkeypatch):
    feature_passes, loss_passes = [], []
    real_predict, real_ce = main_turn.predict, main_turn.per_sample_ce

    def counting_predict(fn, loader, *args, **kwargs):
        if getattr(fn, "__name__", "") == "features":
            feature_passes.append(len(loader.dataset))
        return real_predict(fn, loader, *args, **kwargs)

    def counting_ce(*args, **kwargs):
        loss_passes.append(1)
        return real_ce(*args, **kwargs)

    monkeypatch.setattr(main_turn, "predict", counting_predict)
    monkeypatch.setattr(main_turn, "per_sample_ce", counting_ce)
    # τ = 0.3: with ten images per class the default 0.6 can leave a class without a clean sample
    summary = main_turn.main(["--cfg", world["fft"], *NOISE, "--overwrite", "--opts", "turn_lp_epochs=3",
                              "turn_fft_epochs=3", "turn_tau=0.3"])
    run = _run_dir(world, "turn")
    assert feature_passes == [len(data.train), len(data.test)]  # once, not per epoch
    assert len(loss_passes) == 2  # epoch 1 reuses the features (frozen backbone + probed head)
    records = read_metrics(str(run))
    assert [r["epoch"] for r in records] == [1, 2, 3] and summary["lp_test_acc"] is not None
    assert (summary["script"], summary["method"]) == ("turn", "TURN")
    for r in records:
        assert r["num_selected"] <= r["gmm_num_selected"]
    mask, meta = _check_mask_and_phase2(world, data, run, "TURN")
    per_class = np.bincount(data.train.given_labels[mask], minlength=10)
    assert mask.any() and len(set(per_class.tolist())) == 1  # class-balanced: the same count per class
    assert "class-balanced" in meta["selection_rule"]


def test_label_match_is_zero_shot_prediction_equal_to_the_given_label(world, data):
    summary = _baseline(world, "LabelMatch", "label_match_templates=simple", cfg="peft")
    run = _run_dir(world, "baseline_labelmatch")
    mask = np.load(run / "clean_mask.npy")
    # Independent route: the tiny CLIP, "a photo of a {}." per class, cosine similarity, argmax.
    cfg = load_yaml(world["peft"])
    clip_model = load_clip(cfg["backbone"], cfg["pretrained"])
    with torch.no_grad():
        tokens = tokenizer_for(cfg["backbone"])([f"a photo of a {n}." for n in data.class_names])
        text = torch.nn.functional.normalize(clip_model.encode_text(tokens), dim=-1)
        images = torch.stack([data.eval[i][0] for i in range(len(data.eval))])
        image = torch.nn.functional.normalize(clip_model.encode_image(images), dim=-1)
    predicted = (image @ text.t()).argmax(dim=1).numpy()
    assert np.array_equal(mask, predicted == data.train.given_labels)
    assert summary["templates"] == ["a photo of a {}."] and "zero_shot_test_acc" in summary
    _check_mask_and_phase2(world, data, run, "LabelMatch")


def test_real_noise_baseline_runs_with_a_constant_learning_rate(world):
    summary = main_real_baseline.main(["--cfg", world["fft"], *NOISE, "--lnl_methods", "GMM", "--overwrite"])
    records = read_metrics(str(_run_dir(world, "real_baseline_gmm")))
    assert records[0]["lr"] == records[1]["lr"] and summary["method"] == "GMM"


def test_real_noise_turn_runs_with_a_constant_learning_rate(world):
    summary = main_real_turn.main(["--cfg", world["fft"], *NOISE, "--overwrite", "--opts", "turn_lp_epochs=1",
                                   "turn_fft_epochs=2", "turn_tau=0.3"])
    records = read_metrics(str(_run_dir(world, "real_turn")))
    assert records[0]["lr"] == records[1]["lr"] and (summary["script"], summary["method"]) == ("real_turn", "TURN")


def test_unknown_method_is_rejected_with_the_choices(world):
    with pytest.raises(ConfigError, match=r"'lnl_methods' must be one of \['CE', 'GMM', 'ELR', 'SCE', 'GCE', "
                                          r"'LabelMatch'\]"):
        main_baseline.main(["--cfg", world["fft"], *NOISE, "--lnl_methods", "DivideMix"])


@pytest.mark.parametrize("entry, turn_script", [(main_baseline, "main_turn.py"),
                                                (main_real_baseline, "main_real_turn.py")])
def test_turn_through_lnl_methods_names_its_own_script(world, tmp_path, entry, turn_script):
    command = f"python {turn_script} --cfg {world['fft']} --noise_mode sym --noise_ratio 0.4 --backbone resnet"
    with pytest.raises(ConfigError, match="TURN has its own script: " + re.escape(command)):
        entry.main(["--cfg", world["fft"], *NOISE, "--lnl_methods", "TURN", "--backbone", "resnet", "--opts",
                    f"output_dir={tmp_path}"])
    assert not any(tmp_path.iterdir())  # refused before a run folder exists


@pytest.mark.parametrize("method, interrupt_at", [("TURN", 4), ("ELR", 2)])
def test_resume_gives_the_same_result_as_an_uninterrupted_run(world, tmp_path, monkeypatch, method, interrupt_at):
    """TURN skips step 1 when resuming (the probed head is in the checkpoint); ELR restores its memory."""
    opts = ["--opts", "epochs=3", "turn_lp_epochs=2", "turn_fft_epochs=3", "turn_tau=0.3"]
    script, name = (main_turn, "turn") if method == "TURN" else (main_baseline, f"baseline_{method.lower()}")
    args = ["--cfg", world["fft"], *NOISE] + ([] if method == "TURN" else ["--lnl_methods", method])
    script.main(args + opts + [f"output_dir={tmp_path / 'straight'}"])
    # TURN: two linear-probing epochs, then dies in step-2 epoch 2
    real = stop_at_call(monkeypatch, script, interrupt_at)
    with pytest.raises(KeyboardInterrupt):
        script.main(args + opts + [f"output_dir={tmp_path / 'resumed'}"])
    monkeypatch.setattr(script, "train_one_epoch", real)
    script.main(args + ["--resume"] + opts + [f"output_dir={tmp_path / 'resumed'}"])
    runs = [tmp_path / kind / name / "cifar10" / "sym0.4_seed0" for kind in ("straight", "resumed")]
    stable = [[{k: v for k, v in r.items() if k not in ("seconds", "peak_memory_mb")} for r in read_metrics(str(run))]
              for run in runs]
    assert len(stable[0]) == 3 and stable[0] == stable[1]
    summaries = [json.loads((run / "summary.json").read_text()) for run in runs]
    assert summaries[0]["best_test_acc"] == summaries[1]["best_test_acc"]
    if method == "TURN":
        assert summaries[0]["lp_test_acc"] == summaries[1]["lp_test_acc"]
        assert np.array_equal(np.load(runs[0] / "clean_mask.npy"), np.load(runs[1] / "clean_mask.npy"))
