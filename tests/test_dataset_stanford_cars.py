"""Stanford Cars reader on a miniature in the class-folder layout."""
from __future__ import annotations

import shutil

import numpy as np
import pytest

from fixtures.layouts import CARS_NAMES, write_image, write_stanford_cars
from fixtures.layouts import normalize_of, reader_config
from datasets import DatasetConfigError, DatasetNotFoundError, build_datasets
from datasets.transforms import NORMALIZATION


def _build(tmp_path, mini, class_names=None):
    names = class_names or mini.class_names
    return build_datasets(reader_config(tmp_path, dataset="stanford_cars", data_path=str(mini.data_path),
                                        num_class=len(names), class_names=names))


def test_sorted_class_folders_and_files(tmp_path):
    mini = write_stanford_cars(tmp_path / "stanford_cars", per_class=3, test_per_class=2)
    data = _build(tmp_path, mini)
    assert (len(data.train), len(data.test), data.num_classes) == (12, 8, 4)
    # Python string order: capitals first, so 'smart fortwo' is the last class (as in the official YAML).
    assert mini.class_names == ["AM General Hummer SUV 2000", "Acura Integra Type R 2001", "BMW M3 Coupe 2012",
                                "smart fortwo Convertible 2012"]
    assert list(data.train.images) == mini.train_paths and data.train.true_labels.tolist() == mini.train_labels
    assert list(data.test.images) == mini.test_paths and data.test.given_labels.tolist() == mini.test_labels
    assert [p.parent.name for p in data.train.images[::3]] == mini.class_names
    assert normalize_of(data.train.transform) == NORMALIZATION["clip"]  # official: CLIP statistics
    assert tuple(data.train[0][0].shape) == (3, 32, 32)


def test_a_missing_test_class_does_not_shift_labels(tmp_path):
    mini = write_stanford_cars(tmp_path / "cars")
    shutil.rmtree(tmp_path / "cars" / "test" / CARS_NAMES[1])  # the official loader would relabel later classes
    data = _build(tmp_path, mini)
    assert sorted(set(data.test.given_labels.tolist())) == [0, 2, 3]


def test_kaggle_archive_folders_are_found(tmp_path):
    mini = write_stanford_cars(tmp_path / "data" / "car_data" / "car_data")
    mini.data_path = tmp_path / "data"
    assert len(_build(tmp_path, mini).train) == 12


def test_folder_names_must_match_the_yaml_class_names_in_order(tmp_path):
    mini = write_stanford_cars(tmp_path / "cars")
    with pytest.raises(DatasetConfigError, match="class_names do not match the class folders of .*train at 2 "
                                                 "indices.*index 0: data 'AM General Hummer SUV 2000', config "
                                                 "'Acura Integra Type R 2001'"):
        _build(tmp_path, mini, class_names=[mini.class_names[i] for i in (1, 0, 2, 3)])
    with pytest.raises(DatasetConfigError, match="has 4 classes but class_names lists 3"):
        build_datasets(reader_config(tmp_path, dataset="stanford_cars", data_path=str(mini.data_path), num_class=3,
                                     class_names=mini.class_names[:3]))


def test_missing_or_malformed_layout(tmp_path):
    with pytest.raises(DatasetNotFoundError, match=r"Stanford Cars not found under .*nowhere \(no train/ and test/ "
                                                   r"folders\).*train/<class name>/\*\.jpg.*Looked in: .*nowhere, "
                                                   r".*nowhere/car_data"):
        build_datasets(reader_config(tmp_path, dataset="stanford_cars", data_path=str(tmp_path / "nowhere"),
                                     num_class=4, class_names=CARS_NAMES))
    mini = write_stanford_cars(tmp_path / "cars")
    write_image(tmp_path / "cars" / "test" / "Unknown Car 1999" / "00001.jpg", 0, np.random.default_rng())
    with pytest.raises(DatasetNotFoundError, match="test has class folders that train/ lacks: \\['Unknown Car 1999'\\]"):
        _build(tmp_path, mini)
