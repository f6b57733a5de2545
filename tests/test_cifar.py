"""CIFAR pickle reader and writer, on tiny files in the real format."""
from __future__ import annotations

import pickle
import sys
import types

import numpy as np
import pytest

from fixtures.data import write_cifar_fixture
from datasets import DatasetNotFoundError, read_cifar, read_cifar100_coarse_labels
from datasets.cifar import write_cifar_pickles


@pytest.mark.parametrize("name", ["cifar10", "cifar100"])
@pytest.mark.parametrize("layout", ["torchvision", "flat"])
def test_round_trip_both_layouts(tmp_path, name, layout):
    fx = write_cifar_fixture(tmp_path, name, num_train=23, num_test=7, layout=layout, seed=1)
    images, labels = read_cifar(name, str(tmp_path), "train")
    assert images.dtype == np.uint8 and images.shape == (23, 32, 32, 3)
    assert labels.dtype == np.int64
    np.testing.assert_array_equal(images, fx.train_images)
    np.testing.assert_array_equal(labels, fx.train_labels)
    test_images, test_labels = read_cifar(name, str(tmp_path), "test")
    np.testing.assert_array_equal(test_images, fx.test_images)
    np.testing.assert_array_equal(test_labels, fx.test_labels)


def _hand_made_cifar100(folder, rows: np.ndarray, fine: list[int], coarse: list[int]) -> None:
    """Write CIFAR-100 pickles by hand (not with our writer), keys as a Python 3 dict."""
    for split in ("train", "test"):
        with open(folder / split, "wb") as f:
            pickle.dump({"data": rows, "fine_labels": fine, "coarse_labels": coarse}, f)


def test_reader_turns_chw_rows_into_hwc(tmp_path):
    rows = np.zeros((2, 3072), dtype=np.uint8)
    rows[0, 0 * 1024 + 1 * 32 + 2] = 200  # red plane, y=1, x=2
    rows[0, 1 * 1024 + 5 * 32 + 6] = 100  # green plane, y=5, x=6
    rows[1, 2 * 1024 + 31 * 32 + 0] = 7  # blue plane, y=31, x=0
    _hand_made_cifar100(tmp_path, rows, fine=[42, 99], coarse=[3, 19])
    images, labels = read_cifar("cifar100", str(tmp_path), "train")
    assert images[0, 1, 2, 0] == 200 and images[0, 5, 6, 1] == 100 and images[1, 31, 0, 2] == 7
    assert images.sum() == 307  # nothing else was set
    assert labels.tolist() == [42, 99]
    assert read_cifar100_coarse_labels(str(tmp_path)).tolist() == [3, 19]


def test_written_files_read_like_the_originals_with_latin1(tmp_path):
    # The official loader unpickles with encoding="latin1" and indexes with str keys.
    fx = write_cifar_fixture(tmp_path, "cifar10", num_train=10, num_test=4, layout="flat")
    with open(tmp_path / "data_batch_1", "rb") as f:
        batch = pickle.load(f, encoding="latin1")
    with open(tmp_path / "data_batch_1", "rb") as f:
        raw = pickle.load(f, encoding="bytes")
    assert b"data" in raw and "data" in batch
    assert batch["labels"] == fx.train_labels[:2].tolist()  # 10 samples over 5 batches
    np.testing.assert_array_equal(batch["data"][0].reshape(3, 32, 32).transpose(1, 2, 0),
                                  fx.train_images[0])
    with open(tmp_path / "batches.meta", "rb") as f:
        assert pickle.load(f, encoding="latin1")["label_names"] == fx.class_names


def test_cifar100_coarse_labels_round_trip(tmp_path):
    fx = write_cifar_fixture(tmp_path, "cifar100", num_train=120, num_test=10)
    np.testing.assert_array_equal(read_cifar100_coarse_labels(str(tmp_path)),
                                  fx.train_labels % 20)


def test_missing_files_name_paths_files_and_fix(tmp_path):
    with pytest.raises(DatasetNotFoundError) as err:
        read_cifar("cifar100", str(tmp_path), "train")
    message = str(err.value)
    assert isinstance(err.value, FileNotFoundError)
    assert "CIFAR-100" in message and str(tmp_path) in message
    assert str(tmp_path / "cifar-100-python") in message and "train" in message
    assert "data_path" in message and "download: true" in message


def test_partial_cifar10_names_the_missing_batch(tmp_path):
    write_cifar_fixture(tmp_path, "cifar10", num_train=10, num_test=4, layout="flat")
    (tmp_path / "data_batch_3").unlink()
    with pytest.raises(DatasetNotFoundError, match="missing: data_batch_3"):
        read_cifar("cifar10", str(tmp_path), "train")
    assert read_cifar("cifar10", str(tmp_path), "test")[0].shape == (4, 32, 32, 3)


def _fake_torchvision(monkeypatch, cifar10_cls) -> None:
    fake = types.ModuleType("torchvision.datasets")
    fake.CIFAR10 = cifar10_cls
    monkeypatch.setitem(sys.modules, "torchvision.datasets", fake)
    monkeypatch.setattr(sys.modules["torchvision"], "datasets", fake, raising=False)


def test_download_failure_is_reported(tmp_path, monkeypatch):
    def offline(root, train, download):
        raise OSError("no route to host")

    _fake_torchvision(monkeypatch, offline)
    with pytest.raises(DatasetNotFoundError, match="download failed: OSError: no route to host"):
        read_cifar("cifar10", str(tmp_path), "train", download=True)


def test_download_false_never_calls_torchvision(tmp_path, monkeypatch):
    def must_not_run(**kwargs):
        raise AssertionError("download attempted with download=False")

    _fake_torchvision(monkeypatch, must_not_run)
    with pytest.raises(DatasetNotFoundError) as err:
        read_cifar("cifar10", str(tmp_path), "train", download=False)
    assert "download failed" not in str(err.value)


def test_successful_download_is_read(tmp_path, monkeypatch):
    written = {}

    def fake_download(root, train, download):  # what torchvision leaves on disk
        written["fx"] = write_cifar_fixture(root, "cifar10", num_train=10, num_test=5)

    _fake_torchvision(monkeypatch, fake_download)
    images, labels = read_cifar("cifar10", str(tmp_path), "train", download=True)
    np.testing.assert_array_equal(labels, written["fx"].train_labels)


def test_truncated_pickle_is_a_clear_error(tmp_path):
    write_cifar_fixture(tmp_path, "cifar100", num_train=30, num_test=5, layout="flat")
    data = (tmp_path / "train").read_bytes()
    (tmp_path / "train").write_bytes(data[: len(data) // 2])
    with pytest.raises(ValueError, match=f"{tmp_path / 'train'} is not a readable CIFAR"):
        read_cifar("cifar100", str(tmp_path), "train")


def test_wrong_image_size_is_a_clear_error(tmp_path):
    with open(tmp_path / "train", "wb") as f:
        pickle.dump({b"data": np.zeros((4, 3000), np.uint8), b"fine_labels": [0, 1, 2, 3]}, f)
    (tmp_path / "test").write_bytes((tmp_path / "train").read_bytes())
    with pytest.raises(ValueError, match=r"uint8 \(N, 3072\), found uint8 \(4, 3000\)"):
        read_cifar("cifar100", str(tmp_path), "train")


def test_label_count_and_range_are_checked(tmp_path):
    rows = np.zeros((2, 3072), np.uint8)
    _hand_made_cifar100(tmp_path, rows, fine=[1], coarse=[0, 0])
    with pytest.raises(ValueError, match="expected 2 labels"):
        read_cifar("cifar100", str(tmp_path), "train")
    _hand_made_cifar100(tmp_path, rows, fine=[1, 100], coarse=[0, 0])
    with pytest.raises(ValueError, match=r"labels in \[0, 100\)"):
        read_cifar("cifar100", str(tmp_path), "train")


def test_bad_name_split_and_writer_input(tmp_path):
    with pytest.raises(ValueError, match="cifar10"):
        read_cifar("svhn", str(tmp_path), "train")
    with pytest.raises(ValueError, match="'train' or 'test'"):
        read_cifar("cifar10", str(tmp_path), "val")
    bad = np.zeros((2, 3, 32, 32), np.uint8)  # CHW instead of HWC
    with pytest.raises(ValueError, match=r"\(N, 32, 32, 3\)"):
        write_cifar_pickles(tmp_path, "cifar10", bad, [0, 1], bad, [0, 1])
