"""Clothing1M reader: the four key files, both image layouts, the balanced subsample and its reuse."""
from __future__ import annotations

import json
import random
import shutil

import numpy as np
import pytest
import torchvision.transforms as T

from fixtures.layouts import write_clothing1m
from fixtures.layouts import normalize_of, reader_config
from datasets import DatasetConfigError, DatasetNotFoundError, build_datasets
from datasets.transforms import NORMALIZATION


def _cfg(tmp_path, mini, **extra):
    return reader_config(tmp_path, dataset="clothing1m", data_path=str(mini.data_path), num_class=14,
                         class_names=mini.class_names, **extra)


def official_style_subsample(keys: list[str], labels: dict, num_samples: int, seed: int) -> list[str]:
    """The official draw, as HotanLee/DeFT dataloader/dataloader_clothing1M.py:46-54: global `random`, shuffle the key list itself."""
    saved = random.getstate()
    random.seed(seed)
    try:
        pool = list(keys)
        random.shuffle(pool)
        counts, accepted = [0] * 14, []
        for key in pool:
            if counts[labels[key]] < num_samples / 14 and len(accepted) < num_samples:
                accepted.append(key)
                counts[labels[key]] += 1
        random.shuffle(accepted)
        return accepted
    finally:
        random.setstate(saved)


@pytest.mark.parametrize("num_samples", [28, 20])
def test_subsample_replays_the_official_balanced_draw(tmp_path, num_samples):
    mini = write_clothing1m(tmp_path / "clothing1M", per_class=4)  # classes hold 4 to 6 images
    data = build_datasets(_cfg(tmp_path, mini, clothing1m_num_samples=num_samples))
    expected = official_style_subsample(mini.extra["train_keys"], mini.extra["labels"], num_samples, seed=0)
    assert data.sample_ids == expected and len(data.train) == num_samples
    counts = np.bincount(data.train.given_labels, minlength=14)
    assert counts.max() <= int(np.ceil(num_samples / 14)) and counts.sum() == num_samples
    assert data.train.given_labels.tolist() == [mini.extra["labels"][k] for k in expected]
    assert [p.name for p in data.train.images] == [k.rsplit("/", 1)[1] for k in expected]
    assert data.train.true_labels is None and data.train.is_noisy is None  # no clean labels for training images
    assert data.noise_info["true_labels_known"] is False and data.noise_info["actual_rate"] is None


def test_default_size_is_1000_times_the_batch_and_the_seed_is_its_own(tmp_path):
    mini = write_clothing1m(tmp_path / "clothing1M", per_class=4)
    everything = build_datasets(_cfg(tmp_path, mini, batch_size=2))  # 2000 > 70 images: all are taken
    assert sorted(everything.sample_ids) == sorted(mini.extra["train_keys"])
    a = build_datasets(_cfg(tmp_path, mini, clothing1m_num_samples=28, batch_size=2)).sample_ids
    assert build_datasets(_cfg(tmp_path, mini, clothing1m_num_samples=28, batch_size=64)).sample_ids == a
    assert build_datasets(_cfg(tmp_path, mini, clothing1m_num_samples=28, seed=3, subsample_seed=0)).sample_ids == a
    assert build_datasets(_cfg(tmp_path, mini, clothing1m_num_samples=28, subsample_seed=1)).sample_ids != a


def test_subsample_file_fixes_the_training_keys(tmp_path):
    mini = write_clothing1m(tmp_path / "clothing1M", per_class=4)
    chosen = mini.extra["train_keys"][5:12][::-1]
    (tmp_path / "ids.json").write_text(json.dumps(chosen))
    (tmp_path / "clean_mask.json").write_text(json.dumps({"dataset": "clothing1m", "sample_ids": chosen}))
    for source in ("ids.json", "clean_mask.json"):
        data = build_datasets(_cfg(tmp_path, mini, clothing1m_num_samples=28, subsample_file=str(tmp_path / source)))
        assert data.sample_ids == chosen and len(data.train) == 7
    (tmp_path / "bad.json").write_text(json.dumps(chosen + ["images/9/9/unknown.jpg"]))
    with pytest.raises(DatasetConfigError, match="does not list Clothing1M training keys .*unknown.jpg"):
        build_datasets(_cfg(tmp_path, mini, subsample_file=str(tmp_path / "bad.json")))
    with pytest.raises(DatasetNotFoundError, match="subsample_file .*absent.json not found"):
        build_datasets(_cfg(tmp_path, mini, subsample_file=str(tmp_path / "absent.json")))


@pytest.mark.parametrize("layout", ["official", "images"])
def test_both_image_layouts_and_the_clean_test_set(tmp_path, layout):
    mini = write_clothing1m(tmp_path / "clothing1M", per_class=4, test_per_class=2, image_layout=layout)
    data = build_datasets(_cfg(tmp_path, mini, clothing1m_num_samples=28))
    assert list(data.test.images) == mini.test_paths and data.test.given_labels.tolist() == mini.test_labels
    assert all(p.is_file() and p.is_relative_to(mini.extra["image_root"]) for p in data.train.images)
    assert normalize_of(data.test.transform) == NORMALIZATION["clothing1m"]
    assert any(isinstance(t, T.CenterCrop) for t in data.test.transform.transforms)
    assert tuple(data.test[0][0].shape) == (3, 32, 32)


def test_missing_or_malformed_key_files_and_images(tmp_path):
    mini = write_clothing1m(tmp_path / "clothing1M")
    (tmp_path / "clothing1M" / "clean_label_kv.txt").unlink()
    with pytest.raises(DatasetNotFoundError, match=r"Clothing1M not found under .*clothing1M \(missing "
                                                   r"clean_label_kv.txt\).*noisy_label_kv.txt, clean_label_kv.txt.*"
                                                   r"Looked in: .*clothing1M, .*clothing1M/annotations"):
        build_datasets(_cfg(tmp_path, mini))
    other = write_clothing1m(tmp_path / "other")
    key_list = tmp_path / "other" / "noisy_train_key_list.txt"
    key_list.write_text(key_list.read_text() + "images/0/0/never_labelled.jpg\n")
    with pytest.raises(DatasetNotFoundError, match="1 keys of .*noisy_train_key_list.txt have no label in "
                                                   "noisy_label_kv.txt, e.g. images/0/0/never_labelled.jpg"):
        build_datasets(_cfg(tmp_path, other))
    third = write_clothing1m(tmp_path / "third")
    for folder in (tmp_path / "third").iterdir():
        if folder.is_dir():
            shutil.rmtree(folder)
    with pytest.raises(DatasetNotFoundError, match="the first training image images/.* is not at .*third/images/.* "
                                                   "or .*third/"):
        build_datasets(_cfg(tmp_path, third))
    fourth = write_clothing1m(tmp_path / "fourth")
    fourth.test_paths[0].unlink()
    with pytest.raises(DatasetNotFoundError, match="1 of 14 test images listed in the key files are missing"):
        build_datasets(_cfg(tmp_path, fourth))


def test_clothing1m_has_real_noise_only(tmp_path):
    mini = write_clothing1m(tmp_path / "clothing1M")
    with pytest.raises(DatasetConfigError, match="real label noise only; found noise_mode 'sym'"):
        build_datasets(_cfg(tmp_path, mini, noise_mode="sym", noise_ratio=0.2))
