"""Phase 1 -> phase 2 end to end on CPU: tiny CLIP checkpoint, CIFAR-10 pickles, real entry points."""
import json
import os
import subprocess
import sys

import numpy as np
import pytest

import main_phase1
import main_phase2
import utils.engine
from datasets.noise import labels_sha256
from utils.clean_mask import CleanMaskError
from fixtures.world import build_smoke_world
from utils.run_dir import RunExistsError, read_metrics

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
PER_CLASS_TRAIN = 12
VOLATILE = ("seconds", "peak_memory_mb")  # differ between runs by nature


@pytest.fixture(scope="module")
def world(tmp_path_factory):
    """A CIFAR-10-format dataset, a tiny CLIP checkpoint file and PEFT/FFT YAMLs pointing at them."""
    return build_smoke_world(tmp_path_factory.mktemp("world"), per_class_train=PER_CLASS_TRAIN)


def _phase1(world, *extra, ratio="0.4"):
    return main_phase1.main(["--cfg", world["peft"], "--noise_mode", "sym", "--noise_ratio", ratio, *extra])


def _phase2(world, *extra, ratio="0.4"):
    return main_phase2.main(["--cfg", world["fft"], "--noise_mode", "sym", "--noise_ratio", ratio, *extra])


def test_phase1_then_phase2_files_are_complete_and_consistent(world):
    summary = _phase1(world)
    run = world["output"] / "phase1" / "cifar10" / "sym0.4_seed0"
    for name in ("config.yaml", "log.txt", "metrics.jsonl", "summary.json", "checkpoint.pt",
                 "clean_mask.npy", "clean_mask.json"):
        assert (run / name).is_file(), name
    mask = np.load(run / "clean_mask.npy")
    meta = json.loads((run / "clean_mask.json").read_text())
    assert mask.dtype == bool and mask.shape == (10 * PER_CLASS_TRAIN,)
    assert meta["num_samples"] == mask.size and meta["num_selected"] == int(mask.sum())
    assert (meta["dataset"], meta["noise_mode"], meta["noise_ratio"]) == ("cifar10", "sym", 0.4)

    # The given labels the mask refers to are the cached noisy labels; recompute P/R by hand.
    from datasets import build_datasets
    from utils.config import Config, apply_overrides, load_yaml

    cfg = apply_overrides(Config(), {**load_yaml(world["peft"]), "noise_mode": "sym", "noise_ratio": 0.4}, "t")
    data = build_datasets(cfg)
    assert meta["given_labels_sha256"] == labels_sha256(data.train.given_labels)
    clean = ~np.asarray(data.train.is_noisy)
    hits = int((mask & clean).sum())
    assert meta["mask_precision"] == pytest.approx(hits / max(mask.sum(), 1))
    assert meta["mask_recall"] == pytest.approx(hits / clean.sum())
    assert 0.2 < 1 - clean.mean() < 0.5  # sym 0.4 over 10 classes: about 36% actually flipped

    # The score behind the mask: p_clean of the last epoch (the mask is p_clean > 0.5), the truth saved
    # beside it, and its AUROC in summary.json = the pairwise (Mann-Whitney) count by hand.
    p_clean, truly_clean = np.load(run / "clean_scores.npy"), np.load(run / "truly_clean.npy")
    assert p_clean.shape == mask.shape and np.array_equal(mask, p_clean > 0.5)
    assert np.array_equal(truly_clean, clean)
    pairs = p_clean[truly_clean][:, None] - p_clean[~truly_clean][None, :]
    hand_auroc = float((pairs > 0).mean() + 0.5 * (pairs == 0).mean())
    assert summary["mask_auroc"] == pytest.approx(hand_auroc, abs=1e-12) == meta["mask_auroc"]
    assert json.loads((run / "summary.json").read_text())["mask_auroc"] == summary["mask_auroc"]

    records = read_metrics(str(run))
    assert [r["epoch"] for r in records] == [1, 2]
    for key in ("loss", "loss_cls", "loss_dp", "test_acc", "precision", "recall", "f1",
                "batch_mean_precision", "num_selected", "lr", "seconds", "peak_memory_mb"):
        assert key in records[0], key
    assert records[0]["lr"] == pytest.approx(0.003) and records[1]["lr"] == pytest.approx(0.0015)  # cosine, T=2
    assert records[-1]["num_selected"] == int(mask.sum())  # the mask is the last epoch's selection
    assert summary["num_selected"] == int(mask.sum())
    # Per class, the share of the samples given that label that the mask keeps (12 per class here, by hand)
    given = np.asarray(data.train.given_labels)
    by_hand = [int((mask & (given == c)).sum()) / int((given == c).sum()) for c in range(10)]
    assert summary["selected_frac_per_class"] == pytest.approx(by_hand, abs=1e-12)
    assert records[-1]["min_class_selected_frac"] == pytest.approx(min(by_hand), abs=1e-12)

    result = _phase2(world)
    run2 = world["output"] / "phase2" / "cifar10" / "sym0.4_seed0"
    saved = json.loads((run2 / "summary.json").read_text())
    accs = [r["test_acc"] for r in read_metrics(str(run2))]
    assert saved["best_test_acc"] == max(accs) and saved["last_test_acc"] == accs[-1]
    assert saved["num_train_samples"] == int(mask.sum()) == result["num_train_samples"]


def test_finished_run_is_not_overwritten(world):
    _phase1(world, ratio="0.2")
    run = world["output"] / "phase1" / "cifar10" / "sym0.2_seed0"
    before = (run / "clean_mask.npy").read_bytes()
    with pytest.raises(RunExistsError, match="finished run already exists.*--overwrite"):
        _phase1(world, ratio="0.2")
    assert (run / "clean_mask.npy").read_bytes() == before
    _phase1(world, "--overwrite", ratio="0.2")  # explicit replacement works


def test_phase2_rejects_a_mask_from_another_noise_setting_or_dataset(world, tmp_path):
    _phase1(world, ratio="0.6")
    mask_06 = str(world["output"] / "phase1" / "cifar10" / "sym0.6_seed0" / "clean_mask.npy")
    with pytest.raises(CleanMaskError, match="noise_ratio: mask has 0.6, this run has 0.4"):
        _phase2(world, "--clean_mask", mask_06, "--opts", f"output_dir={tmp_path}")
    with pytest.raises(CleanMaskError, match="no clean mask at"):
        _phase2(world, "--opts", f"output_dir={tmp_path}", ratio="0.8")
    # Same N, same noise flags, but a different dataset behind them: the label hash differs.
    meta_path = world["output"] / "phase1" / "cifar10" / "sym0.6_seed0" / "clean_mask.json"
    meta = json.loads(meta_path.read_text())
    forged = tmp_path / "forged"
    forged.mkdir()
    np.save(forged / "clean_mask.npy", np.load(mask_06))
    (forged / "clean_mask.json").write_text(json.dumps({**meta, "dataset": "cifar100"}))
    with pytest.raises(CleanMaskError, match="dataset: mask has 'cifar100', this run has 'cifar10'"):
        _phase2(world, "--clean_mask", str(forged / "clean_mask.npy"), "--opts", f"output_dir={tmp_path}",
                ratio="0.6")
    np.save(forged / "clean_mask.npy", np.load(mask_06)[:-1])
    (forged / "clean_mask.json").write_text(json.dumps({**meta, "num_samples": meta["num_samples"] - 1}))
    with pytest.raises(CleanMaskError, match="num_samples: mask has 119, this run has 120"):
        _phase2(world, "--clean_mask", str(forged / "clean_mask.npy"), "--opts", f"output_dir={tmp_path}",
                ratio="0.6")


def test_resume_after_an_interrupted_epoch_gives_the_same_result(world, tmp_path, monkeypatch):
    opts = ["--opts", "epochs=3"]
    _phase1(world, *opts, "output_dir=" + str(tmp_path / "straight"), ratio="0.3")

    real = utils.engine.train_one_epoch
    calls = {"n": 0}

    def interrupted(step, loader, *args, **kwargs):
        calls["n"] += 1
        if calls["n"] == 2:  # die in the middle of epoch 2, after its first batch
            def dying_step(batch, *args, seen=[]):
                seen.append(1)
                if len(seen) == 2:
                    raise KeyboardInterrupt
                return step(batch, *args)
            return real(dying_step, loader, *args, **kwargs)
        return real(step, loader, *args, **kwargs)

    monkeypatch.setattr(main_phase1, "train_one_epoch", interrupted)
    with pytest.raises(KeyboardInterrupt):
        _phase1(world, *opts, "output_dir=" + str(tmp_path / "resumed"), ratio="0.3")
    monkeypatch.setattr(main_phase1, "train_one_epoch", real)
    run = tmp_path / "resumed" / "phase1" / "cifar10" / "sym0.3_seed0"
    assert not (run / "summary.json").exists() and len(read_metrics(str(run))) == 1
    with pytest.raises(RunExistsError, match="interrupted run exists.*--resume"):
        _phase1(world, *opts, "output_dir=" + str(tmp_path / "resumed"), ratio="0.3")
    _phase1(world, "--resume", *opts, "output_dir=" + str(tmp_path / "resumed"), ratio="0.3")

    straight = tmp_path / "straight" / "phase1" / "cifar10" / "sym0.3_seed0"
    assert np.array_equal(np.load(straight / "clean_mask.npy"), np.load(run / "clean_mask.npy"))

    def stable(records):
        return [{k: v for k, v in r.items() if k not in VOLATILE} for r in records]

    assert stable(read_metrics(str(straight))) == stable(read_metrics(str(run)))
    assert len(read_metrics(str(run))) == 3


def _run_cli(script, args, cwd):
    env = dict(os.environ, HF_HUB_OFFLINE="1", PYTHONPATH=ROOT)
    return subprocess.run([sys.executable, os.path.join(ROOT, script), *args], cwd=cwd, env=env,
                          capture_output=True, text=True, timeout=300)


def test_paper_command_without_cifar_data_stops_with_a_clear_message(tmp_path):
    result = _run_cli("main_phase1.py", ["--cfg", os.path.join(ROOT, "config/PEFT/cifar100.yaml"),
                                         "--noise_mode", "sym", "--noise_ratio", "0.2",
                                         "--opts", "download=false"], cwd=tmp_path)
    assert result.returncode == 2, result.stderr
    assert "CIFAR-100" in result.stderr or "cifar100" in result.stderr
    assert "data/cifar-100" in result.stderr and "Traceback" not in result.stderr


def test_missing_weights_offline_stop_with_instructions(world, tmp_path):
    result = _run_cli("main_phase1.py", ["--cfg", world["peft"], "--noise_mode", "sym", "--noise_ratio", "0.2",
                                         "--opts", "backbone=ViT-B/16", "pretrained=null", "resolution=224",
                                         f"output_dir={tmp_path}"], cwd=tmp_path)
    assert result.returncode == 2
    assert "pretrained: /path/to/file" in result.stderr and "Traceback" not in result.stderr
