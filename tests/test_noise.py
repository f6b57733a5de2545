"""Synthetic noise generators (checked against hand re-implementations) and the noise cache."""
from __future__ import annotations

import hashlib
import json
import logging
import os
import random

import numpy as np
import pytest
import torch
from scipy import stats

from datasets import noise
from datasets.noise import (actual_noise_rate, labels_sha256, load_or_make_noisy_labels,
                            make_noisy_labels)


def _labels(n: int, c: int, seed: int = 0) -> np.ndarray:
    return np.random.default_rng(seed).integers(0, c, n)


def official_style_noise(train_label: list[int], num_class: int, r: float, seed: int,
                         mode: str) -> list[int]:
    """The official call order (HotanLee/DeFT dataloader/dataloader_cifar.py:74-105): global `random`, list membership."""
    saved = random.getstate()
    random.seed(seed)
    try:
        n = len(train_label)
        idx = list(range(n))
        random.shuffle(idx)
        noise_idx = idx[: int(r * n)]
        noise_class = list(range(num_class))
        random.shuffle(noise_class)
        noise_class = noise_class[: int(num_class / 2)]
        out = []
        for i in range(n):
            y = train_label[i]
            if i not in noise_idx:
                out.append(y)
            elif mode == "sym":
                out.append(random.randint(0, num_class - 1))
            elif mode == "asym":
                out.append((y + 1) % num_class)
            elif mode == "str":
                out.append(random.randint(0, num_class - 1) if y in noise_class else y)
        return out
    finally:
        random.setstate(saved)


@pytest.mark.parametrize("mode", ["sym", "asym", "str"])
@pytest.mark.parametrize("n,c,r", [(20, 4, 0.5), (20, 4, 1.0), (300, 10, 0.2), (301, 7, 0.8)])
def test_matches_official_call_order(mode, n, c, r):
    true = _labels(n, c, seed=n)
    for seed in (0, 1, 123):
        expected = official_style_noise(true.tolist(), c, r, seed, mode)
        assert make_noisy_labels(true, c, mode, r, seed).tolist() == expected


def test_sym_noise_set_size_and_effective_rate():
    true = _labels(20000, 10)
    excluded = make_noisy_labels(true, 10, "sym", 0.4, seed=5, sym_exclude_true=True)
    assert (excluded != true).sum() == int(0.4 * 20000)  # every noise-set label changes
    official = make_noisy_labels(true, 10, "sym", 0.4, seed=5)
    changed = official != true
    assert changed.sum() <= int(0.4 * 20000)
    assert abs(changed.mean() - 0.4 * 9 / 10) < 0.01  # r (C-1)/C: the true class can be redrawn
    # Same noise set (same shuffle) in both variants.
    assert np.all(excluded[changed] != true[changed])


def test_sym_exclude_true_is_uniform_over_other_classes():
    true = np.zeros(40000, dtype=np.int64)
    noisy = make_noisy_labels(true, 5, "sym", 1.0, seed=2, sym_exclude_true=True)
    counts = np.bincount(noisy, minlength=5)
    assert counts[0] == 0
    assert np.allclose(counts[1:] / 40000, 0.25, atol=0.01)


def test_seed_determinism():
    true = _labels(1000, 10)
    a = make_noisy_labels(true, 10, "sym", 0.5, seed=1)
    assert np.array_equal(a, make_noisy_labels(true, 10, "sym", 0.5, seed=1))
    assert not np.array_equal(a, make_noisy_labels(true, 10, "sym", 0.5, seed=2))


def test_asym_is_cyclic_on_exactly_the_noise_set():
    true = _labels(1000, 10)
    noisy = make_noisy_labels(true, 10, "asym", 0.3, seed=0)
    flipped = noisy != true
    assert flipped.sum() == 300
    assert np.all(noisy[flipped] == (true[flipped] + 1) % 10)


def test_str_only_touches_half_the_classes():
    true = _labels(5000, 10)
    noisy = make_noisy_labels(true, 10, "str", 1.0, seed=4)
    # The noise classes are the first C//2 of the second shuffle of the same RNG.
    rng = random.Random(4)
    rng.shuffle(list(range(5000)))
    classes = list(range(10))
    rng.shuffle(classes)
    noise_class = classes[:5]
    touched = np.isin(true, noise_class)
    assert np.array_equal(noisy[~touched], true[~touched])
    assert abs((noisy[touched] != true[touched]).mean() - 0.9) < 0.03


def test_asym_cifar10_classic_pairs():
    true = np.repeat(np.arange(10), 10)
    noisy = make_noisy_labels(true, 10, "asym_cifar10", 1.0, seed=0)
    expected = {0: 0, 1: 1, 2: 0, 3: 5, 4: 7, 5: 3, 6: 6, 7: 7, 8: 8, 9: 1}
    assert all(noisy[true == k].tolist() == [v] * 10 for k, v in expected.items())


def test_asym_cifar100_moves_to_next_class_of_the_superclass():
    true = np.repeat(np.arange(100), 3)
    coarse = true % 20  # superclass k holds k, k+20, k+40, k+60, k+80
    noisy = make_noisy_labels(true, 100, "asym_cifar100", 1.0, seed=0, coarse_labels=coarse)
    assert np.array_equal(noisy % 20, coarse)
    assert noisy[true == 5].tolist() == [25] * 3 and noisy[true == 85].tolist() == [5] * 3
    partial = make_noisy_labels(true, 100, "asym_cifar100", 0.4, seed=0, coarse_labels=coarse)
    assert (partial != true).sum() == 120
    inconsistent = coarse.copy()
    inconsistent[0] = (inconsistent[0] + 1) % 20  # fine class 0 now in two superclasses
    with pytest.raises(ValueError, match="exactly one superclass"):
        make_noisy_labels(true, 100, "asym_cifar100", 0.4, seed=0, coarse_labels=inconsistent)


def test_none_mode_and_ratio_zero():
    true = _labels(50, 5)
    for mode in ("none", ""):
        out = make_noisy_labels(true, 5, mode, 0.0, seed=0)
        assert np.array_equal(out, true) and out is not true
    assert np.array_equal(make_noisy_labels(true, 5, "sym", 0.0, seed=0), true)


def test_invalid_mode_and_ratio_messages():
    true = _labels(10, 3)
    with pytest.raises(ValueError, match="valid modes: none, sym, asym, str, idn"):
        make_noisy_labels(true, 3, "pairflip", 0.2, seed=0)
    with pytest.raises(ValueError, match=r"noise ratio in \[0, 1\], found 1.5"):
        make_noisy_labels(true, 3, "sym", 1.5, seed=0)
    with pytest.raises(ValueError, match="expects noise_ratio 0"):
        make_noisy_labels(true, 3, "none", 0.2, seed=0)
    with pytest.raises(ValueError, match=r"true_labels in \[0, 3\)"):
        make_noisy_labels(np.array([0, 3]), 3, "sym", 0.2, seed=0)
    with pytest.raises(ValueError, match="coarse_labels"):
        make_noisy_labels(true, 3, "asym_cifar100", 0.2, seed=0)
    with pytest.raises(ValueError, match="images"):
        make_noisy_labels(true, 3, "idn", 0.2, seed=0)


# ---------------------------------------------------------------------------------------------
# idn

def official_style_idn(images_chw_flat: np.ndarray, labels: np.ndarray, c: int, r: float,
                       seed: int) -> list[int]:
    """Xia et al. as the official code (HotanLee/DeFT dataloader/dataloader_cifar.py:155-211): global RNG,
    per-sample torch loop."""
    saved = np.random.get_state()
    np.random.seed(seed)
    try:
        q = stats.truncnorm((0 - r) / 0.1, (1 - r) / 0.1, loc=r, scale=0.1).rvs(len(labels))
        w = torch.FloatTensor(np.random.randn(c, images_chw_flat.shape[1], c))
        rows = []
        for i, (x, y) in enumerate(zip(torch.from_numpy(images_chw_flat).float(), labels)):
            a = x.view(1, -1).mm(w[y]).squeeze(0)
            a[y] = -float("inf")
            a = q[i] * torch.softmax(a, dim=0)
            a[y] += 1 - q[i]
            rows.append(a)
        p = torch.stack(rows).numpy()
        return [int(np.random.choice(list(range(c)), p=p[i])) for i in range(len(labels))]
    finally:
        np.random.set_state(saved)


def test_idn_matches_official_style_generator():
    rng = np.random.default_rng(3)
    images = rng.integers(0, 2, size=(80, 2, 2, 3), dtype=np.uint8)  # small pixels: soft flips
    labels = rng.integers(0, 4, 80)
    flat_chw = images.transpose(0, 3, 1, 2).reshape(80, -1)
    expected = official_style_idn(flat_chw, labels, 4, 0.4, seed=1)
    assert make_noisy_labels(labels, 4, "idn", 0.4, seed=1, images=images).tolist() == expected


def test_idn_rate_determinism_and_untouched_global_rngs():
    rng = np.random.default_rng(0)
    images = rng.integers(0, 256, size=(2000, 32, 32, 3), dtype=np.uint8)
    labels = np.arange(2000) % 10
    np_state = np.random.get_state()
    py_state, torch_state = random.getstate(), torch.get_rng_state()
    a = make_noisy_labels(labels, 10, "idn", 0.4, seed=1, images=images)
    assert random.getstate() == py_state and torch.equal(torch.get_rng_state(), torch_state)
    after = np.random.get_state()
    assert np.array_equal(after[1], np_state[1]) and after[2:] == np_state[2:]
    assert abs(actual_noise_rate(labels, a) - 0.4) < 0.04
    assert np.array_equal(a, make_noisy_labels(labels, 10, "idn", 0.4, seed=1, images=images))
    assert not np.array_equal(a, make_noisy_labels(labels, 10, "idn", 0.4, seed=2, images=images))


def test_idn_on_200_classes():
    # Tiny-ImageNet-sized W (200 x 3072 x 200) is drawn class by class, never held whole.
    rng = np.random.default_rng(1)
    images = rng.integers(0, 256, size=(2000, 32, 32, 3), dtype=np.uint8)
    labels = np.arange(2000) % 200
    noisy = make_noisy_labels(labels, 200, "idn", 0.2, seed=1, images=images)
    assert noisy.min() >= 0 and noisy.max() < 200
    assert abs(actual_noise_rate(labels, noisy) - 0.2) < 0.04


# ---------------------------------------------------------------------------------------------
# helpers and cache

def test_actual_rate_and_sha256():
    assert actual_noise_rate(np.array([0, 1, 2, 3]), np.array([0, 2, 2, 0])) == 0.5
    assert labels_sha256([1, 2]) == labels_sha256(np.array([1, 2], dtype=np.int32))
    # Independent route: the bytes of two little-endian int64 values.
    raw = (1).to_bytes(8, "little") + (2).to_bytes(8, "little")
    assert labels_sha256([1, 2]) == hashlib.sha256(raw).hexdigest()


def _cache(tmp_path, true, **kw):
    args = {"mode": "sym", "ratio": 0.4, "seed": 7} | kw
    return load_or_make_noisy_labels(str(tmp_path / "cache"), "cifar10", true, 10, **args)


def test_cache_is_written_then_reused_untouched(tmp_path):
    true = _labels(500, 10)
    labels, info = _cache(tmp_path, true)
    path = tmp_path / "cache" / "cifar10_sym_0.4_seed7.json"
    assert info["cache_file"] == str(path) and info["reused"] is False
    assert info["actual_rate"] == actual_noise_rate(true, labels)
    saved = json.loads(path.read_text())
    assert saved["noisy_labels"] == labels.tolist() and saved["seed"] == 7
    assert saved["true_labels_sha256"] == labels_sha256(true)
    stat = os.stat(path)
    again, info2 = _cache(tmp_path, true)
    assert info2["reused"] is True and np.array_equal(again, labels)
    assert os.stat(path).st_mtime_ns == stat.st_mtime_ns and os.stat(path).st_ino == stat.st_ino
    assert sorted(p.name for p in path.parent.iterdir()) == [path.name]  # no temp files left


def test_settings_in_the_name_give_separate_files(tmp_path):
    true = _labels(500, 10)
    _cache(tmp_path, true)
    for change in ({"seed": 8}, {"ratio": 0.2}, {"mode": "asym"}):
        settings = {"mode": "sym", "ratio": 0.4, "seed": 7} | change
        labels, info = _cache(tmp_path, true, **change)
        assert info["reused"] is False
        assert np.array_equal(labels, make_noisy_labels(true, 10, **settings))
    names = sorted(p.name for p in (tmp_path / "cache").iterdir())
    assert names == ["cifar10_asym_0.4_seed7.json", "cifar10_sym_0.2_seed7.json",
                     "cifar10_sym_0.4_seed7.json", "cifar10_sym_0.4_seed8.json"]


@pytest.mark.parametrize("edit", [
    {"generator_version": 0}, {"seed": 8}, {"num_samples": 499}, {"noisy_labels": [1, 2]},
    {"options": {"sym_exclude_true": True, "coarse_labels_sha256": None}},
])
def test_mismatching_metadata_is_regenerated(tmp_path, caplog, edit):
    true = _labels(500, 10)
    labels, info = _cache(tmp_path, true)
    path = tmp_path / "cache" / "cifar10_sym_0.4_seed7.json"
    path.write_text(json.dumps(json.loads(path.read_text()) | edit))
    with caplog.at_level(logging.WARNING, logger="datasets.noise"):
        again, info2 = _cache(tmp_path, true)
    assert info2["reused"] is False and np.array_equal(again, labels)
    assert "regenerating noisy labels" in caplog.text
    assert json.loads(path.read_text())["generator_version"] == noise.GENERATOR_VERSION


def test_other_true_labels_or_options_are_a_miss(tmp_path):
    true = _labels(500, 10)
    _cache(tmp_path, true)
    other = true.copy()
    other[0] = (other[0] + 1) % 10
    assert _cache(tmp_path, other)[1]["reused"] is False
    excluded, info = _cache(tmp_path, other, sym_exclude_true=True)
    assert info["reused"] is False and (excluded != other).sum() == 200


@pytest.mark.parametrize("content", ["{not json", "[1, 2, 3]", ""])
def test_corrupt_or_old_format_cache_is_regenerated(tmp_path, content):
    true = _labels(100, 10)
    path = tmp_path / "cache" / "cifar10_sym_0.4_seed7.json"
    path.parent.mkdir()
    path.write_text(content)
    labels, info = _cache(tmp_path, true)
    assert info["reused"] is False
    assert json.loads(path.read_text())["noisy_labels"] == labels.tolist()


def test_failed_write_leaves_no_files(tmp_path, monkeypatch):
    import utils.io

    def broken_fsync(fd):
        raise OSError("disk full")  # after the partial file is written, before the rename

    monkeypatch.setattr(utils.io.os, "fsync", broken_fsync)
    with pytest.raises(OSError, match="disk full"):
        _cache(tmp_path, _labels(100, 10))
    assert list((tmp_path / "cache").iterdir()) == []


def test_idn_cache_tracks_the_images(tmp_path):
    rng = np.random.default_rng(0)
    images = rng.integers(0, 256, size=(50, 4, 4, 3), dtype=np.uint8)
    true = _labels(50, 10)
    _, info = _cache(tmp_path, true, mode="idn", images=images)
    assert _cache(tmp_path, true, mode="idn", images=images)[1]["reused"] is True
    assert _cache(tmp_path, true, mode="idn", images=images[::-1].copy())[1]["reused"] is False


def test_none_mode_writes_no_cache(tmp_path):
    true = _labels(20, 10)
    labels, info = _cache(tmp_path, true, mode="none", ratio=0.0)
    assert np.array_equal(labels, true) and info["cache_file"] is None
    assert info["actual_rate"] == 0.0
