"""Tiny-ImageNet reader on miniatures in the official download layout and the reorganised ones."""
from __future__ import annotations

import shutil

import pytest

from fixtures.layouts import write_tiny_imagenet
from fixtures.layouts import normalize_of, reader_config
from datasets import DatasetNotFoundError, build_datasets
from datasets.transforms import NORMALIZATION


def _build(tmp_path, mini, **extra):
    return build_datasets(reader_config(tmp_path, dataset="tiny_imagenet", data_path=str(mini.data_path),
                                        num_class=len(mini.class_names), class_names=mini.class_names, **extra))


@pytest.mark.parametrize("layout", ["val_annotations", "test_folders", "val_folders"])
def test_every_test_layout_reads_the_same_sorted_splits(tmp_path, layout):
    mini = write_tiny_imagenet(tmp_path / "tiny-imagenet-200", num_classes=3, per_class=3, test_per_class=2,
                               test_layout=layout)
    data = _build(tmp_path, mini)
    assert (len(data.train), len(data.test), data.num_classes) == (9, 6, 3)
    assert list(data.train.images) == mini.train_paths  # sorted wnids, sorted files
    assert data.train.true_labels.tolist() == mini.train_labels == [0, 0, 0, 1, 1, 1, 2, 2, 2]
    assert list(data.test.images) == mini.test_paths and data.test.given_labels.tolist() == mini.test_labels
    # Class c is the c-th wnid in sorted order, whatever order the folders were created in.
    assert [p.parent.parent.name for p in data.train.images[::3]] == mini.extra["wnids"]
    image, label = data.test[0]
    assert tuple(image.shape) == (3, 32, 32) and label == mini.test_labels[0]
    assert normalize_of(data.test.transform) == NORMALIZATION["clip"]  # official: CLIP statistics


def test_indices_do_not_depend_on_file_creation_order(tmp_path):
    a = write_tiny_imagenet(tmp_path / "a", seed=0)
    b = write_tiny_imagenet(tmp_path / "b", seed=7)  # same files, written in another order
    rel = [p.relative_to(tmp_path / "a") for p in _build(tmp_path, a).train.images]
    assert rel == [p.relative_to(tmp_path / "b") for p in _build(tmp_path, b).train.images]
    assert rel == [p.relative_to(tmp_path / "a") for p in _build(tmp_path, a).train.images]


def test_archive_folder_inside_data_path_is_found(tmp_path):
    mini = write_tiny_imagenet(tmp_path / "data" / "tiny-imagenet-200")
    mini.data_path = tmp_path / "data"
    assert len(_build(tmp_path, mini).train) == 9


def test_missing_train_folder_names_the_layout_and_path(tmp_path):
    mini = write_tiny_imagenet(tmp_path / "tiny")
    shutil.rmtree(tmp_path / "tiny" / "train")
    with pytest.raises(DatasetNotFoundError, match=r"Tiny-ImageNet not found under .*tiny.*no train/ folder.*"
                                                   r"train/<wnid>/images/\*\.JPEG.*val_annotations\.txt"):
        _build(tmp_path, mini)


def test_only_the_unlabelled_test_set_is_refused(tmp_path):
    mini = write_tiny_imagenet(tmp_path / "tiny", test_layout="val_annotations")
    shutil.rmtree(tmp_path / "tiny" / "val")
    with pytest.raises(DatasetNotFoundError, match="no labelled test split.*test/images/ is the official unlabelled"):
        _build(tmp_path, mini)


def test_malformed_annotations_and_class_lists_are_refused(tmp_path):
    mini = write_tiny_imagenet(tmp_path / "tiny")
    annotations = tmp_path / "tiny" / "val" / "val_annotations.txt"
    annotations.write_text(annotations.read_text() + "val_99.JPEG\tn99999999\t0\t0\t1\t1\n")
    with pytest.raises(DatasetNotFoundError, match="not training classes: .*n99999999"):
        _build(tmp_path, mini)
    annotations.write_text("val_0.JPEG\n")
    with pytest.raises(DatasetNotFoundError, match="line 1 is malformed"):
        _build(tmp_path, mini)
    other = write_tiny_imagenet(tmp_path / "tiny2")
    (tmp_path / "tiny2" / "wnids.txt").write_text("n00000001\n")
    with pytest.raises(DatasetNotFoundError, match="does not hold the classes of .*wnids.txt"):
        _build(tmp_path, other)
    shutil.rmtree(tmp_path / "tiny2" / "train" / other.extra["wnids"][1] / "images")
    (tmp_path / "tiny2" / "wnids.txt").unlink()
    with pytest.raises(DatasetNotFoundError, match="no images in .*images"):
        _build(tmp_path, other)
