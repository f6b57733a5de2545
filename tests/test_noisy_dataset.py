"""NoisyLabelDataset, complementary labels, transforms and build_datasets on fixtures."""
from __future__ import annotations

from types import SimpleNamespace

import numpy as np
import pytest
import torch
import torchvision.transforms as T
from PIL import Image
from torch.utils.data import DataLoader

from fixtures.data import write_cifar_fixture
from datasets import (NORMALIZATION, DatasetNotFoundError, NoisyLabelDataset, build_datasets,
                      cifar_transforms, complementary_labels, labels_sha256)


def _dataset(mode="train", n=40, c=5, seed=0, transform=None):
    rng = np.random.default_rng(0)
    images = rng.integers(0, 256, size=(n, 8, 8, 3), dtype=np.uint8)
    true = np.arange(n) % c
    given = true.copy()
    given[:5] = (given[:5] + 1) % c
    return NoisyLabelDataset(images, given, true, num_classes=c, transform=transform,
                             mode=mode, seed=seed), images


def test_tuples_per_mode():
    train, images = _dataset("train")
    img, given, comp, index = train[3]
    assert isinstance(img, Image.Image) and np.array_equal(np.asarray(img), images[3])
    assert (given, index) == (4, 3) and type(given) is int and type(comp) is int
    assert comp != given and 0 <= comp < 5
    assert _dataset("eval")[0][7][1:] == (2, 2, 7)  # a clean sample: 7 % 5
    test_item = _dataset("test")[0][9]
    assert len(test_item) == 2 and test_item[1] == 4
    assert train.is_noisy.tolist() == [True] * 5 + [False] * 35
    assert train.num_classes == 5


def test_complementary_never_given_and_uniform():
    given = np.random.default_rng(1).integers(0, 7, 70000)
    comp = complementary_labels(given, 7, seed=3, epoch=0, indices=np.arange(70000))
    assert comp.shape == (70000,) and not np.any(comp == given)
    # Offset from the given label is uniform on 1..C-1.
    offsets = np.bincount((comp - given) % 7, minlength=7)
    assert offsets[0] == 0 and np.allclose(offsets[1:] / 70000, 1 / 6, atol=0.006)


def test_complementary_is_deterministic_per_seed_epoch_index():
    idx = np.arange(5000)
    given = idx % 10
    a = complementary_labels(given, 10, seed=1, epoch=2, indices=idx)
    assert np.array_equal(a, complementary_labels(given, 10, seed=1, epoch=2, indices=idx))
    # One sample alone gives the same draw as inside a batch: no dependence on batching.
    assert int(complementary_labels(int(given[17]), 10, 1, 2, 17)) == a[17]
    other_epoch = complementary_labels(given, 10, seed=1, epoch=3, indices=idx)
    other_seed = complementary_labels(given, 10, seed=2, epoch=2, indices=idx)
    # Independent draws agree with probability 1/(C-1).
    assert abs((a == other_epoch).mean() - 1 / 9) < 0.02
    assert abs((a == other_seed).mean() - 1 / 9) < 0.02


def test_complementary_needs_two_classes():
    with pytest.raises(ValueError, match="at least 2 classes"):
        complementary_labels(0, 1, 0, 0, 0)


def _collect(dataset, workers):
    loader = DataLoader(dataset, batch_size=8, shuffle=False, num_workers=workers)
    return torch.cat([batch[2] for batch in loader]).tolist()


def test_dataloader_workers_do_not_change_draws():
    train, _ = _dataset("train", n=64, transform=T.ToTensor(), seed=5)
    single = _collect(train, 0)
    assert single == _collect(train, 2)
    train.set_epoch(1)
    next_epoch = _collect(train, 2)
    assert next_epoch == _collect(train, 0) and next_epoch != single
    expected = complementary_labels(train.given_labels, 5, 5, 1, np.arange(64)).tolist()
    assert next_epoch == expected


def test_paths_with_custom_loader(tmp_path):
    paths = []
    for i, colour in enumerate([(255, 0, 0), (0, 0, 255)]):
        paths.append(tmp_path / f"{i}.png")
        Image.new("RGB", (4, 4), colour).save(paths[-1])
    ds = NoisyLabelDataset(paths, [0, 1], num_classes=2, mode="test",
                           load_image=lambda p: Image.open(p).convert("RGB"))
    img, label = ds[1]
    assert np.asarray(img)[0, 0].tolist() == [0, 0, 255] and label == 1
    assert ds.true_labels is None and ds.is_noisy is None


def test_dataset_validation():
    images = np.zeros((3, 4, 4, 3), np.uint8)
    with pytest.raises(ValueError, match="expected 3 given labels"):
        NoisyLabelDataset(images, [0, 1], num_classes=2)
    with pytest.raises(ValueError, match=r"given labels in \[0, 2\)"):
        NoisyLabelDataset(images, [0, 1, 2], num_classes=2)
    with pytest.raises(ValueError, match="mode"):
        NoisyLabelDataset(images, [0, 1, 1], num_classes=2, mode="val")


# ---------------------------------------------------------------------------------------------
# transforms

def test_normalization_constants():
    assert NORMALIZATION["cifar10"] == ((0.4914, 0.4822, 0.4465), (0.2023, 0.1994, 0.2010))
    assert NORMALIZATION["cifar100"] == ((0.507, 0.487, 0.441), (0.267, 0.256, 0.276))
    assert NORMALIZATION["clip"][0] == (0.48145466, 0.4578275, 0.40821073)
    assert NORMALIZATION["imagenet"][1] == (0.229, 0.224, 0.225)
    assert NORMALIZATION["clothing1m"][0] == (0.6959, 0.6537, 0.6371)


def test_cifar_transforms_values_and_shapes():
    mean, std = (0.5, 0.25, 0.0), (0.5, 0.25, 1.0)
    train_tf, test_tf = cifar_transforms(64, mean, std)
    image = Image.new("RGB", (32, 32), (255, 51, 0))  # constant colour survives resizing
    out = test_tf(image)
    assert out.shape == (3, 64, 64)
    expected = torch.tensor([(1.0 - 0.5) / 0.5, (0.2 - 0.25) / 0.25, 0.0])
    assert torch.allclose(out.mean(dim=(1, 2)), expected, atol=1e-5)
    assert train_tf(image).shape == (3, 64, 64)
    kinds = [type(t).__name__ for t in train_tf.transforms]
    assert kinds == ["RandomCrop", "Resize", "RandomHorizontalFlip", "ToTensor", "Normalize"]
    assert "Resize" not in [type(t).__name__ for t in cifar_transforms(32, mean, std)[1].transforms]


# ---------------------------------------------------------------------------------------------
# build_datasets

def _cfg(data_path, **kw):
    base = dict(dataset="cifar10", data_path=str(data_path), num_class=10,
                class_names=[f"c{i}" for i in range(10)], resolution=32, download=False,
                normalize="dataset", noise_mode="sym", noise_ratio=0.5, noise_seed=None,
                noise_cache_dir=None, sym_exclude_true=False, seed=3)
    return SimpleNamespace(**(base | kw))


def test_build_cifar10(tmp_path):
    fx = write_cifar_fixture(tmp_path, "cifar10", num_train=60, num_test=20)
    bundle = build_datasets(_cfg(tmp_path))
    assert (len(bundle.train), len(bundle.eval), len(bundle.test)) == (60, 60, 20)
    assert bundle.num_classes == 10 and bundle.class_names == [f"c{i}" for i in range(10)]
    info = bundle.noise_info
    given = bundle.train.given_labels
    assert (info["mode"], info["ratio"], info["seed"]) == ("sym", 0.5, 3)
    assert info["actual_rate"] == float(np.mean(given != fx.train_labels))
    assert info["cache_file"] == str(tmp_path / "noise_file" / "cifar10_sym_0.5_seed3.json")
    assert info["reused"] is False and build_datasets(_cfg(tmp_path)).noise_info["reused"]
    assert bundle.given_labels_sha256 == labels_sha256(given)
    assert np.array_equal(bundle.train.true_labels, fx.train_labels)
    assert np.array_equal(bundle.eval.given_labels, given)
    assert bundle.train.mode == "train" and bundle.eval.mode == "eval"
    # eval uses the test transform: deterministic, and normalised with CIFAR-10 statistics.
    img, label = bundle.test[4]
    assert torch.allclose(img, _normalised(fx.test_images[4], "cifar10"), atol=1e-5)
    assert label == fx.test_labels[4]
    img, eval_given, _, index = bundle.eval[2]
    assert torch.allclose(img, _normalised(fx.train_images[2], "cifar10"), atol=1e-5)
    assert (eval_given, index) == (given[2], 2)


def _normalised(image: np.ndarray, stats: str) -> torch.Tensor:
    """ToTensor + Normalize by hand, for a 32 px image."""
    mean, std = (torch.tensor(v)[:, None, None] for v in NORMALIZATION[stats])
    return (torch.from_numpy(image).permute(2, 0, 1) / 255.0 - mean) / std


def test_build_noise_seed_defaults_and_cache_dir(tmp_path):
    write_cifar_fixture(tmp_path, "cifar10", num_train=40, num_test=10)
    cache = tmp_path / "elsewhere"
    idn = build_datasets(_cfg(tmp_path, noise_mode="idn", noise_ratio=0.2,
                              noise_cache_dir=str(cache)))
    assert idn.noise_info["seed"] == 1  # the official hard-coded idn seed
    assert idn.noise_info["cache_file"] == str(cache / "cifar10_idn_0.2_seed1.json")
    explicit = build_datasets(_cfg(tmp_path, noise_seed=9, noise_cache_dir=str(cache)))
    assert explicit.noise_info["seed"] == 9


def test_build_cifar100_superclass_noise_and_clip_stats(tmp_path):
    fx = write_cifar_fixture(tmp_path, "cifar100", num_train=200, num_test=10, layout="flat")
    cfg = _cfg(tmp_path, dataset="cifar100", num_class=100, noise_mode="asym_cifar100",
               class_names=fx.class_names, normalize="clip", noise_ratio=1.0)
    bundle = build_datasets(cfg)
    given = bundle.train.given_labels
    assert np.all(given != fx.train_labels) and np.array_equal(given % 20, fx.train_labels % 20)
    normalize = bundle.test.transform.transforms[-1]
    assert tuple(normalize.mean) == NORMALIZATION["clip"][0]


def test_build_errors(tmp_path):
    write_cifar_fixture(tmp_path, "cifar10", num_train=20, num_test=10)
    with pytest.raises(ValueError, match="class_names lists 9 names"):
        build_datasets(_cfg(tmp_path, class_names=["x"] * 9))
    with pytest.raises(ValueError, match="10 classes, but num_class is 100"):
        build_datasets(_cfg(tmp_path, num_class=100))
    with pytest.raises(ValueError, match="supported: cifar10, cifar100"):
        build_datasets(_cfg(tmp_path, dataset="mnist"))
    with pytest.raises(DatasetNotFoundError, match="CIFAR-10_human.pt"):  # real noise = CIFAR-10N labels
        build_datasets(_cfg(tmp_path, noise_mode="real"))
    with pytest.raises(ValueError, match="cifar100 only"):
        build_datasets(_cfg(tmp_path, noise_mode="asym_cifar100"))


def test_missing_data_fails_before_noise_work(tmp_path):
    with pytest.raises(DatasetNotFoundError, match="cifar-10-batches-py"):
        build_datasets(_cfg(tmp_path / "nowhere"))
    write_cifar_fixture(tmp_path, "cifar10", num_train=20, num_test=10, layout="flat")
    (tmp_path / "test_batch").unlink()
    with pytest.raises(DatasetNotFoundError, match="test_batch"):
        build_datasets(_cfg(tmp_path))
    assert not (tmp_path / "noise_file").exists()


def test_training_augmentation_reseeds_only_a_forked_cpu_generator(monkeypatch):
    """torch.manual_seed would also reseed the CUDA generators of the main process (num_workers: 0)."""
    def forbidden(seed):
        raise AssertionError("torch.manual_seed called while loading a sample")

    monkeypatch.setattr(torch, "manual_seed", forbidden)
    ds, _ = _dataset(transform=T.Compose([T.RandomCrop(4, padding=2), T.ToTensor()]))
    state = torch.random.get_rng_state()
    first = ds[3][0]
    assert torch.equal(torch.random.get_rng_state(), state)  # the caller's generator is untouched
    assert torch.equal(ds[3][0], first)  # and the sample's augmentation is its own, repeatable


def test_under_torchrun_only_rank_0_may_download(monkeypatch):
    """Rank 0 reads first (downloading if it must); the others wait for it and never download."""
    import datasets.build as build

    calls = []

    def reader(cfg):
        calls.append(cfg.download)
        raise StopIteration  # the reading itself is not under test

    cfg = SimpleNamespace(download=True)
    monkeypatch.setattr(build.distributed, "world_size", lambda: 2)
    monkeypatch.setattr(build.distributed, "on_main", lambda fn: None)  # rank 1: rank 0 ran fn
    monkeypatch.setattr(build.dataclasses, "replace", lambda c, **kw: SimpleNamespace(**{**vars(c), **kw}))
    with pytest.raises(StopIteration):
        build._read_once_downloaded(reader, cfg)
    assert calls == [False]
    monkeypatch.setattr(build.distributed, "on_main", lambda fn: fn())  # rank 0
    calls.clear()
    with pytest.raises(StopIteration):
        build._read_once_downloaded(reader, cfg)
    assert calls == [True]
