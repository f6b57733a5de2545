"""Mini-WebVision reader: Google subset lists, WebVision val, ImageNet val in both folder layouts."""
from __future__ import annotations

import shutil

import pytest
import torchvision.transforms as T

from fixtures.layouts import write_webvision
from fixtures.layouts import normalize_of, reader_config
from datasets import DatasetConfigError, DatasetNotFoundError, build_datasets
from datasets.transforms import NORMALIZATION


def _cfg(tmp_path, mini, **extra):
    return reader_config(tmp_path, dataset="webvision", data_path=str(mini.data_path),
                         num_class=len(mini.class_names), class_names=mini.class_names, **extra)


@pytest.mark.parametrize("layout", ["index", "wnid"])
def test_first_classes_of_google_val_and_imagenet(tmp_path, layout):
    mini = write_webvision(tmp_path / "webvision", num_classes=4, kept_classes=3, per_class=3, val_per_class=2,
                           imagenet_layout=layout, imagenet_per_class=2)
    data = build_datasets(_cfg(tmp_path, mini))
    assert (len(data.train), len(data.test), len(data.extra_tests["imagenet"])) == (9, 6, 6)
    assert list(data.train.images) == mini.train_paths  # file-list order, labels < num_class only
    assert data.train.given_labels.tolist() == mini.train_labels and data.train.true_labels is None
    assert list(data.test.images) == mini.test_paths and data.test.given_labels.tolist() == mini.test_labels
    imagenet = data.extra_tests["imagenet"]
    assert list(imagenet.images) == mini.extra["imagenet_paths"]
    assert imagenet.given_labels.tolist() == mini.extra["imagenet_labels"]
    for dataset in (data.test, imagenet):
        assert normalize_of(dataset.transform) == NORMALIZATION["imagenet"]
        assert any(isinstance(t, T.CenterCrop) for t in dataset.transform.transforms)
    image, label = imagenet[0]
    assert tuple(image.shape) == (3, 32, 32) and label == 0
    assert data.noise_info["mode"] == "real" and data.noise_info["true_labels_known"] is False


def test_wnid_folders_follow_synsets_txt_not_the_sort(tmp_path):
    mini = write_webvision(tmp_path / "webvision", num_classes=3, kept_classes=3, imagenet_layout="wnid")
    synsets = mini.data_path / "info" / "synsets.txt"
    wnids = mini.extra["wnids"]
    synsets.write_text("\n".join([wnids[1], wnids[0], wnids[2]]) + "\n")  # class 0 is now the second wnid
    labels = build_datasets(_cfg(tmp_path, mini)).extra_tests["imagenet"]
    assert [(p.parent.name, y) for p, y in zip(labels.images, labels.given_labels.tolist())] == [
        (wnids[1], 0), (wnids[0], 1), (wnids[2], 2)]


def test_imagenet_val_path_can_move_or_switch_off(tmp_path):
    mini = write_webvision(tmp_path / "webvision", num_classes=3, kept_classes=3)
    shutil.move(str(mini.data_path / "imagenet" / "val"), str(tmp_path / "ilsvrc_val"))
    with pytest.raises(DatasetNotFoundError, match=r"ImageNet val for WebVision not found at .*webvision/imagenet/val;"
                                                   r" expected class folders 0/ \.\.\. 2/ .*n01440764.*imagenet_val_path="
                                                   r"/path/to/imagenet/val, or imagenet_val_path='' to skip"):
        build_datasets(_cfg(tmp_path, mini))
    moved = build_datasets(_cfg(tmp_path, mini, imagenet_val_path=str(tmp_path / "ilsvrc_val")))
    assert len(moved.extra_tests["imagenet"]) == 3
    assert build_datasets(_cfg(tmp_path, mini, imagenet_val_path="")).extra_tests == {}


def test_missing_or_malformed_lists_and_folders(tmp_path):
    mini = write_webvision(tmp_path / "webvision", num_classes=3, kept_classes=3)
    (mini.data_path / "info" / "val_filelist.txt").unlink()
    with pytest.raises(DatasetNotFoundError, match=r"WebVision not found under .*webvision \(missing "
                                                   r"info/val_filelist.txt\).*info/train_filelist_google.txt"):
        build_datasets(_cfg(tmp_path, mini))
    other = write_webvision(tmp_path / "other", num_classes=3, kept_classes=3)
    shutil.rmtree(other.data_path / "google" / "q0002")
    with pytest.raises(DatasetNotFoundError, match="3 of 9 training images listed in the key files are missing"):
        build_datasets(_cfg(tmp_path, other))
    third = write_webvision(tmp_path / "third", num_classes=3, kept_classes=3)
    shutil.rmtree(third.data_path / "imagenet" / "val" / "1")
    with pytest.raises(DatasetNotFoundError, match=r"lacks the folders of classes \[1\]"):
        build_datasets(_cfg(tmp_path, third))
    (third.data_path / "info" / "train_filelist_google.txt").write_text("google/q0001/00000000.jpg one\n")
    with pytest.raises(DatasetNotFoundError, match="non-integer label 'one'"):
        build_datasets(_cfg(tmp_path, third))


def test_webvision_has_real_noise_only(tmp_path):
    mini = write_webvision(tmp_path / "webvision", num_classes=3, kept_classes=3)
    with pytest.raises(DatasetConfigError, match="real label noise only; found noise_mode 'idn'"):
        build_datasets(_cfg(tmp_path, mini, noise_mode="idn", noise_ratio=0.2))
