"""CUB-200-2011 reader on a miniature with the dataset's own key files."""
from __future__ import annotations

import pytest

from fixtures.layouts import write_cub
from fixtures.layouts import normalize_of, reader_config
from datasets import DatasetConfigError, DatasetNotFoundError, build_datasets
from datasets.transforms import NORMALIZATION


def _build(tmp_path, mini, class_names=None, **extra):
    names = class_names or mini.class_names
    return build_datasets(reader_config(tmp_path, dataset="cub-200-2011", data_path=str(mini.data_path),
                                        num_class=len(names), class_names=names, **extra))


def test_splits_follow_images_txt_order_and_the_split_file(tmp_path):
    mini = write_cub(tmp_path / "cub-200-2011", num_classes=3, per_class=3, test_per_class=2)
    data = _build(tmp_path, mini)
    assert (len(data.train), len(data.test), data.num_classes) == (9, 6, 3)
    assert list(data.train.images) == mini.train_paths and data.train.true_labels.tolist() == mini.train_labels
    assert list(data.test.images) == mini.test_paths and data.test.given_labels.tolist() == mini.test_labels
    # Label = class - 1 of image_class_labels.txt, i.e. the "00c." prefix of the folder minus one.
    assert all(int(p.parent.name[:3]) - 1 == y for p, y in zip(data.train.images, data.train.true_labels))
    assert list(_build(tmp_path, mini).train.images) == list(data.train.images)  # stable
    image, label, _, index = data.train[4]
    assert tuple(image.shape) == (3, 32, 32) and index == 4 and label == mini.train_labels[4]
    assert normalize_of(data.test.transform) == NORMALIZATION["imagenet"]  # official: ImageNet statistics


def test_official_archive_folder_is_found(tmp_path):
    mini = write_cub(tmp_path / "data" / "CUB_200_2011")
    mini.data_path = tmp_path / "data"
    assert len(_build(tmp_path, mini).train) == 9


def test_class_names_must_match_classes_txt(tmp_path):
    mini = write_cub(tmp_path / "cub")
    swapped = [mini.class_names[1], mini.class_names[0], mini.class_names[2]]
    with pytest.raises(DatasetConfigError, match="class_names do not match .*classes.txt.*index 0: data "
                                                 "'Black_footed_Albatross', config 'Laysan_Albatross'"):
        _build(tmp_path, mini, class_names=swapped)
    spaced = [n.replace("_", " ") for n in mini.class_names]  # the prompt spelling is accepted
    assert len(_build(tmp_path, mini, class_names=spaced).train) == 9


def test_missing_or_malformed_key_files(tmp_path):
    mini = write_cub(tmp_path / "cub")
    (tmp_path / "cub" / "train_test_split.txt").unlink()
    with pytest.raises(DatasetNotFoundError, match=r"CUB-200-2011 not found under .*cub \(missing "
                                                   r"train_test_split.txt\).*images.txt, image_class_labels.txt"):
        _build(tmp_path, mini)
    (tmp_path / "cub" / "train_test_split.txt").write_text("1 1\n2 0\n")
    with pytest.raises(DatasetNotFoundError, match="does not list the same image ids"):
        _build(tmp_path, mini)
    other = write_cub(tmp_path / "cub2")
    other.train_paths[0].unlink()
    with pytest.raises(DatasetNotFoundError, match="1 of 15 train and test images listed in the key files are missing"):
        _build(tmp_path, other)
