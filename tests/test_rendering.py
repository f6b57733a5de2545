"""The shifted miniature's rendering (datasets/rendering.py), its config keys and the Fashion-MNIST reader that
applies it, checked against pixel values computed by hand."""
import numpy as np
import pytest

from datasets import build_datasets
from datasets.fashion_mnist import pretrain_downstream_split, read_fashion_mnist
from datasets.rendering import Rendering, lift_background, render
from fixtures.runs import require_fashion_mnist
from utils.config import Config, ConfigError, apply_overrides, load_yaml

DATA = "./data/fashion-mnist"


def test_the_default_rendering_returns_the_images_themselves():
    images = np.arange(2 * 28 * 28 * 3, dtype=np.int64).reshape(2, 28, 28, 3).astype(np.uint8)
    assert Rendering().is_native and render(images, Rendering()) is images
    assert Rendering().describe() == "native"


def test_a_lifted_background_maps_0_255_onto_floor_255():
    pixels = np.array([[[0, 1, 128, 254, 255]]], dtype=np.uint8)
    # 50 + x·205/255: 50, 50.80, 152.90, 254.20, 255 -> rounded
    assert render(pixels, Rendering(floor=50)).tolist() == [[[50, 51, 153, 254, 255]]]
    # 128 + x·127/255: 0 -> 128, 100 -> 177.80 -> 178, 255 -> 255
    assert lift_background(np.array([0, 100, 255], dtype=np.uint8), 128).tolist() == [128, 178, 255]


def test_a_thumbnail_averages_blocks_then_upsamples_bilinearly():
    # Left half 0, right half 200: at 14 px columns 0-6 are 0 and 7-13 are 200; up-sampling by 2 samples
    # source column j/2 - 0.25, so output columns 13 and 14 fall at 6.25 and 6.75: 0.25·200 and 0.75·200.
    step = np.zeros((1, 28, 28), dtype=np.uint8)
    step[:, :, 14:] = 200
    row = render(step, Rendering(size=14))[0, 3].tolist()
    assert row == [0] * 13 + [50, 150] + [200] * 13
    # A 2x2 pattern (0, 100 / 200, 40) averages to (0 + 100 + 200 + 40) / 4 = 85 in every 14 px pixel.
    checker = np.tile(np.array([[0, 100], [200, 40]], dtype=np.uint8), (14, 14))[None, :, :, None].repeat(3, axis=3)
    assert np.unique(render(checker, Rendering(size=14))).tolist() == [85]


def test_the_shifted_rendering_keeps_shape_and_dtype_and_lifts_after_the_thumbnail():
    images = np.zeros((3, 28, 28, 3), dtype=np.uint8)
    images[1] = 255
    out = render(images, Rendering(size=10, floor=50))
    assert out.shape == images.shape and out.dtype == np.uint8
    assert np.unique(out[0]).tolist() == [50] and np.unique(out[1]).tolist() == [255]
    assert Rendering(size=10, floor=50).describe() == "10 px up-sampled, background 50"


@pytest.mark.parametrize("bad", [np.zeros((2, 28, 28, 3), dtype=np.float32), np.zeros((28, 28), dtype=np.uint8)])
def test_rendering_refuses_what_is_not_a_batch_of_uint8_images(bad):
    with pytest.raises(ValueError, match="expected uint8 images"):
        render(bad, Rendering(floor=10))


def test_the_render_keys_default_to_the_native_images_and_belong_to_fashion_mnist():
    assert (Config().render_size, Config().render_floor) == (None, 0)
    cfg = apply_overrides(Config(), {"dataset": "fashion_mnist", "render_size": 10, "render_floor": 50}, "test")
    assert (cfg.render_size, cfg.render_floor) == (10, 50)
    with pytest.raises(ConfigError, match="render_floor"):
        apply_overrides(Config(), {"render_floor": 256}, "test")
    with pytest.raises(ConfigError, match="fashion_mnist"):
        apply_overrides(Config(), {"dataset": "cifar10", "render_size": 10}, "test")


def test_the_reader_renders_the_downstream_training_and_test_images(tmp_path):
    require_fashion_mnist(DATA)
    cfg = apply_overrides(Config(), {**load_yaml("config/demo/shifted/PEFT/fashion_mnist.yaml"),
                                     "noise_mode": "none", "noise_ratio": 0.0, "max_train_samples": 40,
                                     "max_test_samples": 30, "output_dir": str(tmp_path)}, "test")
    data = build_datasets(cfg)
    train_images, _ = read_fashion_mnist(DATA, "train")
    test_images, _ = read_fashion_mnist(DATA, "test")
    _, downstream = pretrain_downstream_split(len(train_images), cfg.pretrain_split)
    assert set(data.sample_ids) <= set(downstream.tolist())
    expected = render(train_images[data.sample_ids], Rendering(size=10, floor=50))
    assert np.array_equal(np.stack(data.train.images), expected)
    assert np.asarray(data.test.images).min() >= 50  # every test pixel on the grey background or brighter
    native = build_datasets(apply_overrides(cfg, {"render_size": None, "render_floor": 0}, "test"))
    assert np.array_equal(np.stack(native.train.images), train_images[native.sample_ids])
    assert native.sample_ids == data.sample_ids and native.given_labels_sha256 == data.given_labels_sha256
    kept = np.sort(np.random.default_rng(0).permutation(len(test_images))[:30])  # the reader's fixed test draw
    assert np.array_equal(np.asarray(data.test.images), render(test_images[kept], Rendering(size=10, floor=50)))


def test_each_rendering_keeps_its_own_idn_noise_cache(tmp_path):
    """idn reads the pixels, so the shifted and the in-distribution miniature draw different noisy labels from the
    same images: each gets its own cache file, and the in-distribution name is the one it always had."""
    require_fashion_mnist(DATA)
    cache = tmp_path / "noise"
    cfg = apply_overrides(Config(), {**load_yaml("config/demo/shifted/PEFT/fashion_mnist.yaml"),
                                     "noise_mode": "idn", "noise_ratio": 0.4, "max_train_samples": 60,
                                     "max_test_samples": 10, "output_dir": str(tmp_path),
                                     "noise_cache_dir": str(cache)}, "test")
    native_cfg = apply_overrides(cfg, {"render_size": None, "render_floor": 0}, "test")
    assert Rendering(size=10, floor=50).cache_key() == "render10px-bg50" and Rendering().cache_key() == ""
    shifted = build_datasets(cfg).noise_info
    native = build_datasets(native_cfg).noise_info
    # idn's default noise seed is 1 (the official code's); the file names written out by hand
    assert sorted(p.name for p in cache.iterdir()) == ["fashion_mnist-n60-draw0-render10px-bg50_idn_0.4_seed1.json",
                                                        "fashion_mnist-n60-draw0_idn_0.4_seed1.json"]
    assert shifted["options"]["images_sha256"] != native["options"]["images_sha256"]  # other pixels, other flips
    again = build_datasets(cfg).noise_info  # neither build overwrote the other's cache
    assert again["reused"] is True and again["cache_file"] == shifted["cache_file"]
    assert build_datasets(native_cfg).noise_info["reused"] is True


def test_each_seeds_subsample_keeps_its_own_idn_noise_cache(tmp_path, caplog):
    """idn's noise seed is 1 for every seed, but each seed draws other training images: two seeds (run side by
    side in a grid) keep two cache files, and neither regenerates the other's labels."""
    require_fashion_mnist(DATA)
    cache = tmp_path / "noise"
    cfgs = [apply_overrides(Config(), {**load_yaml("config/demo/shifted/PEFT/fashion_mnist.yaml"),
                                       "noise_mode": "idn", "noise_ratio": 0.4, "max_train_samples": 60,
                                       "max_test_samples": 10, "seed": seed, "output_dir": str(tmp_path),
                                       "noise_cache_dir": str(cache)}, "test") for seed in (0, 1)]
    first = [build_datasets(cfg) for cfg in cfgs]
    assert sorted(p.name for p in cache.iterdir()) == [f"fashion_mnist-n60-draw{seed}-render10px-bg50_idn_0.4_seed1.json"
                                                        for seed in (0, 1)]
    assert first[0].noise_info["options"]["images_sha256"] != first[1].noise_info["options"]["images_sha256"]
    with caplog.at_level("WARNING"):
        again = [build_datasets(cfg) for cfg in cfgs]
    assert [data.noise_info["reused"] for data in again] == [True, True] and "regenerating" not in caplog.text
    for before, after in zip(first, again):
        assert np.array_equal(before.train.given_labels, after.train.given_labels)
