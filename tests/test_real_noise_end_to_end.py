"""main_real_phase1.py -> main_real_phase2.py end to end on CPU, on Clothing1M-, CIFAR-100N- and
WebVision-layout miniatures, with a tiny CLIP checkpoint and the shipped YAMLs pointed at them."""
from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch
import yaml

import main_real_phase1
import main_real_phase2
from fixtures.layouts import write_cifar_n, write_clothing1m, write_webvision
from datasets import build_datasets
from utils.config import Config, apply_overrides, load_yaml
from utils.run_dir import read_metrics

ROOT = Path(__file__).resolve().parent.parent
TINY = "deft-tiny-vit"


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory):
    from models.clip_loader import load_clip

    torch.manual_seed(0)
    path = tmp_path_factory.mktemp("clip") / "tiny_clip.pt"
    torch.save(load_clip(TINY, "none").state_dict(), path)
    return path


def write_yaml(source: str, target: Path, **overrides) -> str:
    """The shipped YAML with the miniature's paths and a tiny model."""
    with open(ROOT / source, encoding="utf-8") as handle:
        cfg = yaml.safe_load(handle)
    cfg.update(overrides)
    target.write_text(yaml.safe_dump(cfg, sort_keys=False))
    return str(target)


def tiny_overrides(root: Path, data_path: Path, checkpoint: Path, **extra) -> dict:
    return {"data_path": str(data_path), "backbone": TINY, "pretrained": str(checkpoint), "resolution": 32,
            "num_workers": 0, "progress": False, "output_dir": str(root / "output"), "download": False,
            "noise_cache_dir": str(root / "noise"), **extra}


def keep_every_second_sample(run: Path) -> np.ndarray:
    """Replace phase 1's mask by a hand-made one (same metadata): with random weights and the argmax
    condition, the tiny CLIP selects nothing, and phase 2 rightly refuses an empty mask."""
    mask = np.arange(len(np.load(run / "clean_mask.npy"))) % 2 == 0
    np.save(run / "clean_mask.npy", mask)
    meta = json.loads((run / "clean_mask.json").read_text())
    (run / "clean_mask.json").write_text(json.dumps({**meta, "num_selected": int(mask.sum())}))
    return mask


def test_clothing1m_phase1_then_phase2_on_the_saved_subsample(tmp_path, checkpoint):
    mini = write_clothing1m(tmp_path / "clothing1M", per_class=3)
    common = tiny_overrides(tmp_path, mini.data_path, checkpoint)
    peft = write_yaml("config/PEFT/clothing1m.yaml", tmp_path / "peft.yaml", **common, vpt_len=2, epochs=2,
                      warmup=1, batch_size=8, clothing1m_num_samples=28)
    # Phase 2 asks for another batch size, subsample size and seed: it must still train on phase 1's keys.
    fft = write_yaml("config/FFT/clothing1m.yaml", tmp_path / "fft.yaml", **common, batch_size=16,
                     clothing1m_num_samples=42, subsample_seed=5)

    summary1 = main_real_phase1.main(["--cfg", peft])
    run1 = tmp_path / "output" / "real_phase1" / "clothing1m" / "seed0"  # real noise: no noise part
    saved = load_yaml(str(run1 / "config.yaml"))
    assert (saved["select_requires_argmax"], saved["warmup_loss"], saved["noisy_prompt_labels_until"],
            saved["lr_schedule"]) == (True, "sce", 1, "constant")
    records = read_metrics(str(run1))
    assert [r["lr"] for r in records] == [pytest.approx(0.03)] * 2  # constant LR
    assert all(r["detection"] == "unavailable: no true labels" and "precision" not in r for r in records)
    assert summary1["detection_metrics"] == "unavailable: no true labels" and "mask_precision" not in summary1
    meta = json.loads((run1 / "clean_mask.json").read_text())
    assert meta["num_samples"] == 28 and len(meta["sample_ids"]) == 28 and len(set(meta["sample_ids"])) == 28
    assert set(meta["sample_ids"]) <= set(mini.extra["train_keys"])

    keep_every_second_sample(run1)
    summary2 = main_real_phase2.main(["--cfg", fft])
    run2 = tmp_path / "output" / "real_phase2" / "clothing1m" / "seed0"
    cfg2 = apply_overrides(Config(), load_yaml(str(run2 / "config.yaml")), "phase-2 config")
    assert cfg2.subsample_file == str(run1 / "clean_mask.json")
    assert build_datasets(cfg2).sample_ids == meta["sample_ids"]  # the very keys, in the same order
    redrawn = build_datasets(apply_overrides(cfg2, {"subsample_file": None}, "t"))
    assert redrawn.sample_ids != meta["sample_ids"]  # so the test above is not vacuous
    mask = np.load(run1 / "clean_mask.npy")
    assert summary2["num_train_samples"] == int(mask.sum())
    records2 = read_metrics(str(run2))
    assert len(records2) == 5 and cfg2.epochs == 5  # the real phase-2 default (official: forced to 5)
    assert [r["lr"] for r in records2] == [pytest.approx(5e-4)] * 5


def test_cifar100n_reports_detection_scores_against_the_true_labels(tmp_path, checkpoint):
    mini = write_cifar_n(tmp_path / "cifar-100", num_train=100, num_test=50)
    common = tiny_overrides(tmp_path, mini.data_path, checkpoint)
    peft = write_yaml("config/PEFT/cifar100N.yaml", tmp_path / "peft.yaml", **common, vpt_len=2, epochs=2,
                      warmup=1, batch_size=50, class_names=mini.class_names)
    fft = write_yaml("config/FFT/cifar100N.yaml", tmp_path / "fft.yaml", **common, batch_size=50,
                     class_names=mini.class_names)
    summary1 = main_real_phase1.main(["--cfg", peft])
    run1 = tmp_path / "output" / "real_phase1" / "cifar100" / "seed0"
    mask = np.load(run1 / "clean_mask.npy")
    human = mini.extra["human"]
    clean = human["noisy_label"] == human["clean_label"]  # independent route: straight from the label file
    hits = int((mask & clean).sum())
    assert summary1["mask_precision"] == pytest.approx(hits / max(int(mask.sum()), 1))
    assert summary1["mask_recall"] == pytest.approx(hits / int(clean.sum()))
    assert summary1["noise"]["actual_rate"] == pytest.approx(1 - clean.mean())
    assert summary1["detection_metrics"] == "computed"
    assert {"precision", "recall", "f1"} <= set(read_metrics(str(run1))[-1])

    mask = keep_every_second_sample(run1)
    summary2 = main_real_phase2.main(["--cfg", fft])
    assert summary2["num_train_samples"] == int(mask.sum())
    assert len(read_metrics(str(tmp_path / "output" / "real_phase2" / "cifar100" / "seed0"))) == 5


def test_webvision_phase1_also_tests_imagenet_val(tmp_path, checkpoint):
    mini = write_webvision(tmp_path / "webvision", num_classes=4, kept_classes=3, per_class=4)
    peft = write_yaml("config/PEFT/webvision.yaml", tmp_path / "peft.yaml",
                      **tiny_overrides(tmp_path, mini.data_path, checkpoint), vpt_len=2, epochs=1, warmup=1,
                      batch_size=8, num_class=3, class_names=mini.class_names)
    summary = main_real_phase1.main(["--cfg", peft])
    record = read_metrics(str(tmp_path / "output" / "real_phase1" / "webvision" / "seed0"))[0]
    assert 0 <= record["test_acc_imagenet"] <= 100 and summary["last_test_acc_imagenet"] == record["test_acc_imagenet"]
    assert summary["noise"]["true_labels_known"] is False
