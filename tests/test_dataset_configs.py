"""The shipped PEFT/FFT YAMLs of the seven paper datasets: official values, class lists, and the
paper's commands stopping with a clear message when the data is not there."""
from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from datasets import DatasetNotFoundError, build_datasets
from utils.config import Config, apply_overrides, load_yaml

ROOT = Path(__file__).resolve().parent.parent
# name: (dataset, data_path, classes, first name, last name, PEFT (warmup, batch), FFT (warmup, batch))
OFFICIAL = {
    "cifar100N": ("cifar100", "./data/cifar-100", 100, "apple", "worm", (5, 64), (5, 64)),
    "tiny_imagenet": ("tiny_imagenet", "./data/tiny-imagenet-200", 200, "goldfish", "acorn", (1, 64), (5, 64)),
    "stanford_cars": ("stanford_cars", "./data/stanford_cars", 196, "AM General Hummer SUV 2000",
                      "smart fortwo Convertible 2012", (1, 64), (1, 64)),
    "cub200": ("cub-200-2011", "./data/cub-200-2011", 200, "Black_footed_Albatross", "Common_Yellowthroat",
               (1, 64), (1, 64)),
    "clothing1m": ("clothing1m", "./data/clothing1M", 14, "T-Shirt", "Underwear", (5, 32), (1, 32)),
    "webvision": ("webvision", "./data/webvision/", 50, "tench", "Nile crocodile", (5, 64), (5, 64)),
}
REAL = ("cifar100N", "clothing1m", "webvision")


def _load(kind: str, name: str) -> Config:
    path = ROOT / "config" / kind / f"{name}.yaml"
    return apply_overrides(Config(), load_yaml(str(path)), str(path))


@pytest.mark.parametrize("name", sorted(OFFICIAL))
def test_official_values(name):
    dataset, data_path, classes, first, last, peft_values, fft_values = OFFICIAL[name]
    peft, fft = _load("PEFT", name), _load("FFT", name)
    for cfg, (warmup, batch), lr in ((peft, peft_values, 0.03), (fft, fft_values, 5e-4)):
        assert (cfg.dataset, cfg.data_path, cfg.num_class, cfg.warmup, cfg.batch_size, cfg.lr) == (
            dataset, data_path, classes, warmup, batch, lr)
        assert len(cfg.class_names) == classes and (cfg.class_names[0], cfg.class_names[-1]) == (first, last)
        assert (cfg.seed, cfg.momentum, cfg.weight_decay, cfg.N_CTX) == (0, 0.9, 5e-4, 16)
    assert peft.class_names == fft.class_names
    assert (peft.vpt_deep, peft.vpt_len, fft.finetune) == (True, 20, True)
    assert peft.epochs == 10
    # main_real_phase2.py's 5 epochs must not be overridden by the FFT YAML; the baselines get 10.
    assert fft.epochs == 10 and ("epochs" not in load_yaml(str(ROOT / "config/FFT" / f"{name}.yaml"))) == (name in REAL)
    if name == "stanford_cars":
        assert peft.class_names == sorted(peft.class_names)  # class index = sorted folder order
    if name == "clothing1m":
        assert peft.clothing1m_num_samples == fft.clothing1m_num_samples == 32000  # official 1000 x 32


@pytest.mark.parametrize("name", sorted(OFFICIAL))
def test_the_paper_command_without_data_names_the_expected_files_and_path(tmp_path, monkeypatch, name):
    monkeypatch.chdir(tmp_path)  # the YAML's relative ./data/... path does not exist here
    cfg = apply_overrides(_load("PEFT", name), {"download": False}, "test")
    with pytest.raises(DatasetNotFoundError) as info:
        build_datasets(cfg)
    message = str(info.value)
    assert OFFICIAL[name][1].rstrip("/").lstrip("./") in message
    assert "Traceback" not in message and not (tmp_path / "data").exists()  # nothing written into the data root


def test_real_script_cli_stops_with_a_message(tmp_path):
    env = dict(os.environ, HF_HUB_OFFLINE="1", PYTHONPATH=str(ROOT))
    result = subprocess.run([sys.executable, str(ROOT / "main_real_phase1.py"), "--cfg",
                             str(ROOT / "config/PEFT/clothing1m.yaml")], cwd=tmp_path, env=env,
                            capture_output=True, text=True, timeout=300)
    assert result.returncode == 2, result.stderr
    assert "Clothing1M not found under ./data/clothing1M" in result.stderr and "noisy_label_kv.txt" in result.stderr
    assert "Traceback" not in result.stderr
