"""CIFAR-100N / CIFAR-10N: the human label files (torch-saved dicts of NumPy arrays) over the CIFAR pickles."""
from __future__ import annotations

import numpy as np
import pytest
import torch

from fixtures.layouts import write_cifar_n
from fixtures.layouts import normalize_of, reader_config
from datasets import DatasetConfigError, DatasetNotFoundError, build_datasets
from datasets.transforms import NORMALIZATION
from utils.run_dir import run_path


def _cfg(tmp_path, mini, name="cifar100", **extra):
    return reader_config(tmp_path, dataset=name, data_path=str(mini.data_path), num_class=len(mini.class_names),
                         class_names=mini.class_names, noise_mode="real", **extra)


def test_cifar100n_given_labels_are_noisy_label_and_true_labels_the_pickles(tmp_path):
    mini = write_cifar_n(tmp_path / "cifar-100", "cifar100", num_train=200, num_test=100)
    data = build_datasets(_cfg(tmp_path, mini))
    human = mini.extra["human"]
    assert data.train.given_labels.tolist() == human["noisy_label"].tolist()
    assert data.train.true_labels.tolist() == mini.train_labels == human["clean_label"].tolist()
    assert np.array_equal(data.train.is_noisy, human["noisy_label"] != human["clean_label"])
    assert data.noise_info["mode"] == "real" and data.noise_info["true_labels_known"] is True
    assert data.noise_info["actual_rate"] == pytest.approx(np.mean(human["noisy_label"] != human["clean_label"]))
    assert data.noise_info["label_source"].endswith("CIFAR-100_human.pt:noisy_label")
    assert data.test.given_labels.tolist() == mini.test_labels and len(data.test) == 100
    assert normalize_of(data.test.transform) == NORMALIZATION["cifar100"]
    assert not (tmp_path / "noise_cache").exists()  # real labels: nothing generated, nothing cached


@pytest.mark.parametrize("key", [None, "aggre_label", "random_label3"])
def test_cifar10n_label_sets(tmp_path, key):
    mini = write_cifar_n(tmp_path / "cifar-10", "cifar10", num_train=60, num_test=20)
    data = build_datasets(_cfg(tmp_path, mini, "cifar10", cifar_n_label_key=key))
    assert data.train.given_labels.tolist() == mini.extra["human"][key or "worse_label"].tolist()  # official: worse


def test_label_file_path_is_a_config_key_and_names_the_run(tmp_path):
    elsewhere = tmp_path / "labels" / "my_human_labels.pt"
    elsewhere.parent.mkdir()
    mini = write_cifar_n(tmp_path / "cifar-100", num_train=100, num_test=100, label_file=elsewhere)
    cfg = _cfg(tmp_path, mini, cifar_n_label_file=str(elsewhere))
    assert build_datasets(cfg).train.given_labels.tolist() == mini.extra["human"]["noisy_label"].tolist()
    assert run_path(cfg, "real_phase1").endswith("real_phase1/cifar100/seed0")
    assert run_path(_cfg(tmp_path, mini, cifar_n_label_key="noisy_label"), "x").endswith("cifar100/noisy_label_seed0")


def test_missing_file_and_key_errors(tmp_path):
    mini = write_cifar_n(tmp_path / "cifar-100", num_train=100, num_test=100)
    (tmp_path / "cifar-100" / "CIFAR-100_human.pt").unlink()
    with pytest.raises(DatasetNotFoundError, match=r"CIFAR100N label file not found: expected CIFAR-100_human.pt at "
                                                   r".*cifar-100/CIFAR-100_human.pt or .*cifar_n_label_file"):
        build_datasets(_cfg(tmp_path, mini))
    torch.save(mini.extra["human"], tmp_path / "cifar-100" / "CIFAR-100_human.pt")
    with pytest.raises(DatasetConfigError, match=r"has no key 'worse_label'; its keys are \['clean_label', "
                                                 r"'noisy_coarse_label', 'noisy_label'\]"):
        build_datasets(_cfg(tmp_path, mini, cifar_n_label_key="worse_label"))
    torch.save({"noisy_label": mini.extra["human"]["noisy_label"] + 100}, tmp_path / "cifar-100" / "CIFAR-100_human.pt")
    with pytest.raises(DatasetConfigError, match=r"holds labels in \[100, 199\], expected \[0, 100\)"):
        build_datasets(_cfg(tmp_path, mini))


def test_label_file_of_another_sample_order_is_refused(tmp_path):
    mini = write_cifar_n(tmp_path / "cifar-100", num_train=100, num_test=100)
    human = dict(mini.extra["human"])
    human["clean_label"] = np.roll(human["clean_label"], 1)
    torch.save(human, tmp_path / "cifar-100" / "CIFAR-100_human.pt")
    with pytest.raises(DatasetNotFoundError, match="clean_label'\\] does not match the labels of the CIFAR training"):
        build_datasets(_cfg(tmp_path, mini))
    torch.save({"noisy_label": human["noisy_label"][:50]}, tmp_path / "cifar-100" / "CIFAR-100_human.pt")
    with pytest.raises(DatasetNotFoundError, match="holds 50 labels but the CIFAR training set has 100 images"):
        build_datasets(_cfg(tmp_path, mini))


def test_a_label_file_holding_other_objects_is_not_unpickled(tmp_path):
    mini = write_cifar_n(tmp_path / "cifar-100", num_train=100, num_test=100)
    torch.save({"noisy_label": mini.extra["human"]["noisy_label"], "x": _Payload()},
               tmp_path / "cifar-100" / "CIFAR-100_human.pt")
    with pytest.raises(DatasetNotFoundError, match="holds objects other than arrays"):
        build_datasets(_cfg(tmp_path, mini))


def test_real_mode_needs_a_dataset_with_real_labels(tmp_path):
    with pytest.raises(DatasetConfigError, match="noise_mode 'real' needs human or web labels"):
        build_datasets(reader_config(tmp_path, dataset="stanford_cars", data_path=str(tmp_path), num_class=2,
                                     class_names=["a", "b"], noise_mode="real"))


class _Payload:
    """Any class other than a NumPy array: must not be unpickled from a label file."""
