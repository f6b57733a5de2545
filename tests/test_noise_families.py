"""Synthetic noise on every dataset family (CIFAR, Tiny-ImageNet, CUB, Stanford Cars) through the real
readers: rates, semantics, determinism and the cache, and idn on file datasets (64x64 pixels)."""
from __future__ import annotations

import json
import random
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

import datasets.build
from fixtures.data import write_cifar_fixture
from fixtures.layouts import write_cub, write_image, write_stanford_cars, write_tiny_imagenet
from fixtures.layouts import reader_config
from datasets import build_datasets
from datasets.noise import actual_noise_rate, idn_noisy_labels

FAMILIES = ("cifar10", "tiny_imagenet", "cub-200-2011", "stanford_cars")
MODES = ("sym", "asym", "str", "idn")
STR_IS_CYCLIC = {"cifar10": False, "tiny_imagenet": True, "cub-200-2011": True, "stanford_cars": True}


@pytest.fixture(scope="module")
def family_data(tmp_path_factory):
    """One miniature per family, 40-60 training images over 4 (CIFAR: 10) classes."""
    root = tmp_path_factory.mktemp("families")
    cars_names = ["Audi A5 Coupe 2012", "BMW X3 SUV 2012", "Ford GT Coupe 2006", "Volvo 240 Sedan 1993"]
    minis = {
        "cifar10": (root / "cifar10", [f"c{i}" for i in range(10)]),
        "tiny_imagenet": write_tiny_imagenet(root / "tiny", num_classes=4, per_class=10, test_per_class=1),
        "cub-200-2011": write_cub(root / "cub", num_classes=4, per_class=10, test_per_class=1),
        "stanford_cars": write_stanford_cars(root / "cars", names=cars_names, per_class=10, test_per_class=1),
    }
    write_cifar_fixture(root / "cifar10", "cifar10", num_train=60, num_test=10)
    return {name: (m if isinstance(m, tuple) else (m.data_path, m.class_names)) for name, m in minis.items()}


def _build(tmp_path, family_data, dataset, **values):
    data_path, names = family_data[dataset]
    return build_datasets(reader_config(tmp_path, dataset=dataset, data_path=str(data_path), num_class=len(names),
                                        class_names=names, **values))


def _noise_set(num_samples: int, ratio: float, seed: int) -> tuple[np.ndarray, set]:
    """The official noise set and noise classes (HotanLee/DeFT dataloader/dataloader_cifar.py:76-88), with a fresh
    random.Random."""
    rng = random.Random(seed)
    order = list(range(num_samples))
    rng.shuffle(order)
    in_set = np.zeros(num_samples, dtype=bool)
    in_set[order[: int(ratio * num_samples)]] = True
    return in_set, rng


@pytest.mark.parametrize("dataset", FAMILIES)
@pytest.mark.parametrize("mode", MODES)
def test_every_mode_on_every_family(tmp_path, family_data, dataset, mode):
    ratio = 0.5
    data = _build(tmp_path, family_data, dataset, noise_mode=mode, noise_ratio=ratio)
    true, given = data.train.true_labels, data.train.given_labels
    num, classes = len(true), data.num_classes
    assert np.array_equal(data.train.is_noisy, given != true)
    assert data.noise_info["actual_rate"] == pytest.approx(actual_noise_rate(true, given))
    if mode == "idn":
        assert data.noise_info["seed"] == 1 and 0.15 < data.noise_info["actual_rate"] < 0.85  # official seed 1
    else:  # replay the official semantics sample by sample: exact labels, hence exact rates
        in_set, rng = _noise_set(num, ratio, seed=0)
        order = list(range(classes))
        rng.shuffle(order)
        noise_classes = set(order[: classes // 2])
        expected = true.copy()
        for i in np.flatnonzero(in_set):
            y = int(true[i])
            if mode == "sym":
                expected[i] = rng.randint(0, classes - 1)  # may redraw y (official)
            elif mode == "asym" or (mode == "str" and y in noise_classes and STR_IS_CYCLIC[dataset]):
                expected[i] = (y + 1) % classes  # cyclic: official asym, and str on Cars / Tiny (our CUB)
            elif mode == "str" and y in noise_classes:
                expected[i] = rng.randint(0, classes - 1)  # str on CIFAR: a uniform redraw
        assert np.array_equal(given, expected)
        if mode == "asym":
            assert (given != true).sum() == int(ratio * num)
    again = _build(tmp_path, family_data, dataset, noise_mode=mode, noise_ratio=ratio)
    assert again.noise_info["reused"] is True and np.array_equal(again.train.given_labels, given)
    fresh = _build(tmp_path, family_data, dataset, noise_mode=mode, noise_ratio=ratio,
                   noise_cache_dir=str(tmp_path / "other_cache"))  # generated again: deterministic
    assert fresh.noise_info["reused"] is False and np.array_equal(fresh.train.given_labels, given)
    assert Path(data.noise_info["cache_file"]).name == f"{dataset}_{mode}_0.5_seed{1 if mode == 'idn' else 0}.json"


@pytest.mark.parametrize("dataset", ["tiny_imagenet", "stanford_cars"])
def test_str_flip_key_switches_to_the_cifar_behaviour_in_its_own_cache_entry(tmp_path, family_data, dataset):
    cyclic = _build(tmp_path, family_data, dataset, noise_mode="str", noise_ratio=1.0)
    redrawn = _build(tmp_path, family_data, dataset, noise_mode="str", noise_ratio=1.0, str_flip="random")
    assert redrawn.noise_info["reused"] is False  # str_flip is part of the cache identity
    assert cyclic.noise_info["options"]["str_flip"] == "cyclic" and "str_flip" not in redrawn.noise_info["options"]
    touched = cyclic.train.given_labels != cyclic.train.true_labels
    assert np.array_equal(cyclic.train.given_labels[touched], (cyclic.train.true_labels[touched] + 1) % 4)
    # random redraws may keep the class: same noise classes, fewer changes than the cyclic flip
    assert (redrawn.train.given_labels != redrawn.train.true_labels).sum() <= touched.sum()
    changed = redrawn.train.given_labels != redrawn.train.true_labels
    assert set(np.flatnonzero(changed)) <= set(np.flatnonzero(touched))


def _pil_pixels(paths, size: int) -> np.ndarray:
    """Independent route to the idn input: PIL bilinear resize, RGB, HWC rows."""
    return np.stack([np.asarray(Image.open(p).convert("RGB").resize((size, size), Image.BILINEAR)).reshape(-1)
                     for p in paths])


@pytest.mark.parametrize("dataset", ["tiny_imagenet", "cub-200-2011", "stanford_cars"])
def test_idn_on_file_datasets_reads_64x64_hwc_pixels(tmp_path, family_data, dataset):
    data = _build(tmp_path, family_data, dataset, noise_mode="idn", noise_ratio=0.4)
    expected = idn_noisy_labels(data.train.true_labels, 4, 0.4, 1, _pil_pixels(data.train.images, 64))
    assert np.array_equal(data.train.given_labels, expected)


def test_idn_cache_hit_decodes_no_image_and_a_changed_image_is_a_miss(tmp_path, monkeypatch):
    mini = write_tiny_imagenet(tmp_path / "tiny", num_classes=4, per_class=5)
    cfg = dict(dataset="tiny_imagenet", data_path=str(mini.data_path), num_class=4, class_names=mini.class_names,
               noise_mode="idn", noise_ratio=0.4, idn_image_size=16)
    first = build_datasets(reader_config(tmp_path, **cfg))

    def no_decoding(*args, **kwargs):
        raise AssertionError("a cache hit must not decode the training images")

    monkeypatch.setattr(datasets.build, "resized_pixels", no_decoding)
    again = build_datasets(reader_config(tmp_path, **cfg))
    assert again.noise_info["reused"] is True and np.array_equal(again.train.given_labels, first.train.given_labels)
    monkeypatch.undo()
    write_image(mini.train_paths[3], 0, np.random.default_rng(5), size=(20, 20))  # new content, new size
    changed = build_datasets(reader_config(tmp_path, **cfg))
    assert changed.noise_info["reused"] is False
    other_size = build_datasets(reader_config(tmp_path, **{**cfg, "idn_image_size": 8}))
    assert other_size.noise_info["reused"] is False
    saved = json.loads(Path(other_size.noise_info["cache_file"]).read_text())
    assert saved["options"]["images_sha256"] == other_size.noise_info["options"]["images_sha256"]


def test_idn_on_a_200_class_miniature_runs_on_cpu(tmp_path):
    # W has 200 x D x 200 entries, drawn class by class: at 16 px (D = 768) this takes about a second;
    # at the default 64 px (D = 12,288) about 16 times longer, whatever the number of images.
    mini = write_tiny_imagenet(tmp_path / "tiny200", num_classes=200, per_class=2, test_per_class=1)
    data = build_datasets(reader_config(tmp_path, dataset="tiny_imagenet", data_path=str(mini.data_path),
                                        num_class=200, class_names=mini.class_names, noise_mode="idn",
                                        noise_ratio=0.4, idn_image_size=16))
    assert len(data.train) == 400 and data.train.given_labels.max() < 200
    assert 0.25 < data.noise_info["actual_rate"] < 0.55


def test_default_cache_is_next_to_the_data_and_a_read_only_data_folder_falls_back(tmp_path, family_data,
                                                                                    monkeypatch):
    data_path, names = family_data["stanford_cars"]
    values = dict(dataset="stanford_cars", data_path=str(data_path), num_class=4, class_names=names,
                  noise_mode="sym", noise_ratio=0.2, noise_cache_dir=None)
    data = build_datasets(reader_config(tmp_path, **values))
    assert Path(data.noise_info["cache_file"]).parent == Path(data_path) / "noise_file"
    monkeypatch.setattr(datasets.build.os, "access", lambda path, mode: False)
    fallback = build_datasets(reader_config(tmp_path, **values))
    assert Path(fallback.noise_info["cache_file"]).parent == tmp_path / "output" / "noise_file" / "stanford_cars"
    assert np.array_equal(fallback.train.given_labels, data.train.given_labels)
