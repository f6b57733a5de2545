"""DTD reader on a miniature with the official split files, and the few-shot (PTNL) training sets."""
from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from fixtures.layouts import write_image
from fixtures.layouts import normalize_of, reader_config
from datasets import DatasetConfigError, DatasetNotFoundError, build_datasets
from datasets.few_shot import few_shot_indices, noisy_shots_per_class
from datasets.transforms import NORMALIZATION
from utils.config import Config, ConfigError, apply_overrides, load_yaml

ROOT = Path(__file__).resolve().parent.parent
CLASSES = ["banded", "polka-dotted", "zigzagged"]  # sorted, as the class folders


def write_dtd(root: Path, per_split: int = 2, splits: int = 2) -> dict:
    """dtd/images/<class>/<class>_NNNN.jpg and labels/{train,val,test}<k>.txt; returns the lines per file."""
    rng = np.random.default_rng(0)
    lines: dict[str, list[str]] = {}
    for k in range(1, splits + 1):
        for offset, split in enumerate(("train", "val", "test")):
            # each split file lists its images class by class in reverse class order, to catch a reader that sorts
            entries = [f"{name}/{name}_{(k * 10 + offset) * 10 + i:04d}.jpg"
                       for name in reversed(CLASSES) for i in range(per_split)]
            lines[f"{split}{k}.txt"] = entries
    for entries in lines.values():
        for entry in entries:
            path = root / "images" / entry
            if not path.exists():
                write_image(path, CLASSES.index(entry.split("/")[0]), rng)
    (root / "labels").mkdir(parents=True, exist_ok=True)
    for name, entries in lines.items():
        (root / "labels" / name).write_text("\n".join(entries) + "\n")
    return lines


def _build(tmp_path, data_path, **extra):
    return build_datasets(reader_config(tmp_path, dataset="dtd", data_path=str(data_path), num_class=3,
                                        class_names=CLASSES, **extra))


def test_train_val_and_test_follow_the_split_files(tmp_path):
    lines = write_dtd(tmp_path / "dtd")
    data = _build(tmp_path, tmp_path / "dtd")
    expected_train = lines["train1.txt"] + lines["val1.txt"]  # file order, train then val
    assert [f"{p.parent.name}/{p.name}" for p in data.train.images] == expected_train
    assert [f"{p.parent.name}/{p.name}" for p in data.test.images] == lines["test1.txt"]
    assert data.train.true_labels.tolist() == [CLASSES.index(e.split("/")[0]) for e in expected_train]
    assert (len(data.train), len(data.test), data.num_classes) == (12, 6, 3)
    assert normalize_of(data.test.transform) == NORMALIZATION["clip"]
    image, label, _, index = data.train[3]
    assert tuple(image.shape) == (3, 32, 32) and index == 3 and label == data.train.given_labels[3]


def test_split_choice_train_only_and_the_archive_folder(tmp_path):
    lines = write_dtd(tmp_path / "data" / "dtd")
    data = _build(tmp_path, tmp_path / "data", dtd_split=2, dtd_trainval=False)  # finds data/dtd
    assert [f"{p.parent.name}/{p.name}" for p in data.train.images] == lines["train2.txt"]
    assert [f"{p.parent.name}/{p.name}" for p in data.test.images] == lines["test2.txt"]


def test_missing_split_file_names_it_and_the_fix(tmp_path):
    write_dtd(tmp_path / "dtd", splits=1)
    with pytest.raises(DatasetNotFoundError, match=r"DTD not found under .*missing labels/train2.txt, labels/val2.txt, "
                                                   r"labels/test2.txt .*choose dtd_split 1..10"):
        _build(tmp_path, tmp_path / "dtd", dtd_split=2)
    with pytest.raises(DatasetNotFoundError, match=r"no images/ and labels/ folders.*Pass --opts data_path"):
        _build(tmp_path, tmp_path / "elsewhere")


def test_damaged_files_and_wrong_class_names(tmp_path):
    write_dtd(tmp_path / "dtd")
    (tmp_path / "dtd" / "labels" / "test1.txt").write_text("banded_0001.jpg\n")
    with pytest.raises(DatasetNotFoundError, match=r"holds the line 'banded_0001.jpg'; expected <class>/<image>.jpg"):
        _build(tmp_path, tmp_path / "dtd")
    write_dtd(tmp_path / "dtd2")
    (tmp_path / "dtd2" / "images" / "banded" / "banded_0100.jpg").unlink()
    with pytest.raises(DatasetNotFoundError, match="DTD: 1 of 18 train and test images listed in the key files are missing"):
        _build(tmp_path, tmp_path / "dtd2")
    with pytest.raises(DatasetConfigError, match="index 0: data 'banded', config 'zigzagged'"):
        build_datasets(reader_config(tmp_path, dataset="dtd", data_path=str(tmp_path / "dtd2"), num_class=3,
                                     class_names=list(reversed(CLASSES))))


def test_dtd_split_key_is_checked():
    with pytest.raises(ConfigError, match=r"'dtd_split' must lie in \[1, 10\], got 11"):
        apply_overrides(Config(), {"dtd_split": 11}, "test")


def test_shipped_dtd_yamls_list_the_47_classes_in_folder_order():
    for path in ("config/robust_similarity/dtd.yaml", "config/PEFT/dtd.yaml"):
        cfg = apply_overrides(Config(), load_yaml(str(ROOT / path)), path)
        assert cfg.num_class == 47 and cfg.class_names == sorted(cfg.class_names) and cfg.dataset == "dtd"
        assert (cfg.class_names[0], cfg.class_names[30], cfg.class_names[-1]) == ("banded", "polka-dotted", "zigzagged")
    rs = apply_overrides(Config(), load_yaml(str(ROOT / "config/robust_similarity/dtd.yaml")), "rs")
    assert (rs.few_shot, rs.few_shot_noise, rs.rs_blocks, rs.epochs, rs.batch_size, rs.lr, rs.gce_q) == (
        16, "exact", 6, 50, 32, 0.002, 0.7)


# ---------------------------------------------------------------- few-shot sets
def test_noisy_shots_per_class_are_the_seed_rates():
    assert [noisy_shots_per_class(16, r) for r in (0.0, 0.125, 0.25, 0.5)] == [0, 2, 4, 8]
    assert noisy_shots_per_class(4, 0.125) == 1  # 0.5 rounds up


def test_exact_few_shot_draw_by_hand():
    given = np.array([0, 0, 0, 1, 1, 1, 0, 1])
    true = np.array([0, 1, 0, 1, 0, 1, 0, 1])  # wrong labels: sample 1 (given 0) and 4 (given 1)
    keep = few_shot_indices(given, true, 2, shots=2, noise_ratio=0.5, mode="exact", seed=0)
    assert len(keep) == 4 and 1 in keep and 4 in keep  # the only wrong label of each class is taken
    for c in (0, 1):
        members = keep[given[keep] == c]
        assert len(members) == 2 and int((given[members] != true[members]).sum()) == 1
    assert np.array_equal(keep, few_shot_indices(given, true, 2, 2, 0.5, "exact", seed=0))  # seeded
    with pytest.raises(DatasetConfigError, match="need 2 wrongly labelled samples of given class 0 but the noisy "
                                                 "training set has 1"):
        few_shot_indices(given, true, 2, shots=2, noise_ratio=1.0, mode="exact", seed=0)
    with pytest.raises(DatasetConfigError, match="few_shot_noise: exact needs the true training labels"):
        few_shot_indices(given, None, 2, 2, 0.5, "exact", 0)
    random_keep = few_shot_indices(given, None, 2, shots=3, noise_ratio=0.5, mode="random", seed=1)
    assert sorted(np.bincount(given[random_keep]).tolist()) == [3, 3]


def test_few_shot_dataset_keeps_k_per_class_with_the_exact_noise(tmp_path):
    write_dtd(tmp_path / "dtd", per_split=6)  # 12 training images per class
    data = _build(tmp_path, tmp_path / "dtd", few_shot=4, noise_mode="sym", noise_ratio=0.5)
    given, true = data.train.given_labels, data.train.true_labels
    assert np.bincount(given).tolist() == [4, 4, 4]
    for c in range(3):
        assert int((true[given == c] != c).sum()) == 2  # round(4 * 0.5) wrong labels per class
    assert data.noise_info["actual_rate"] == 0.5 and data.noise_info["num_samples_before_few_shot"] == 36
    full = _build(tmp_path, tmp_path / "dtd", noise_mode="sym", noise_ratio=0.5)
    ids = data.sample_ids  # positions in the full (noisy) training set
    assert [full.train.images[i] for i in ids] == list(data.train.images)
    assert full.train.given_labels[ids].tolist() == given.tolist()
