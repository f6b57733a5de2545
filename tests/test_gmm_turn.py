"""GMM selection (the GMM baseline) and TURN's per-class GMM and class-balanced subsampling."""
import numpy as np
import pytest
import torch

from lnl.gmm import (GMMSettings, class_balanced_subsample, clean_probability, gmm_selection, minmax_normalize,
                       per_class_gmm_selection)

SEEDED = GMMSettings(random_state=0)


def _two_clusters(low: float, high: float, n: int = 40, spread: float = 0.05) -> np.ndarray:
    offsets = np.linspace(-spread, spread, n)
    return np.concatenate([low + offsets, high + offsets])


def test_minmax_normalize_is_fp32_and_handles_constant_losses():
    out = minmax_normalize(np.array([2.0, 4.0, 3.0], dtype=np.float64))
    assert out.dtype == np.float32 and out.tolist() == [0.0, 1.0, 0.5]
    assert minmax_normalize(np.full(4, 7.0)).tolist() == [0.0] * 4


@pytest.mark.parametrize("low_first", [True, False])
def test_clean_component_is_the_one_with_the_smaller_mean(low_first):
    losses = _two_clusters(0.1, 2.0)
    if not low_first:  # the noisy cluster first: the component order must not matter
        losses = losses[::-1].copy()
    for seed in range(3):
        selected, prob = gmm_selection(losses, 0.5, GMMSettings(random_state=seed))
        assert np.array_equal(selected, losses < 1.0)
        assert prob[losses < 1.0].min() > 0.99 and prob[losses > 1.0].max() < 0.01


def test_selection_is_probability_strictly_above_the_threshold_and_scale_free():
    rng = np.random.default_rng(0)
    losses = np.concatenate([rng.normal(0.2, 0.1, 60), rng.normal(1.0, 0.2, 40)])  # 60 clean, 40 noisy
    selected, prob = gmm_selection(losses, 0.5, SEEDED)
    assert np.array_equal(selected, prob > 0.5) and selected[:60].all() and not selected[60:].any()
    order = np.argsort(losses)  # the clean posterior falls as the loss grows
    assert np.all(np.diff(prob[order]) <= 1e-9)
    counts = []
    for threshold in (0.5, 0.99, 0.999):
        picked, _ = gmm_selection(losses, threshold, SEEDED)
        assert np.array_equal(picked, prob > threshold)
        counts.append(int(picked.sum()))
    assert counts[0] > counts[2]  # a stricter threshold drops the borderline clean samples
    # min-max normalisation makes the rule invariant to an affine change of the losses
    rescaled, prob_rescaled = gmm_selection(losses * 10 + 3, 0.5, SEEDED)
    assert np.array_equal(rescaled, selected) and np.allclose(prob_rescaled, prob, atol=1e-4)


def test_official_gmm_settings_are_the_defaults():
    assert GMMSettings() == GMMSettings(max_iter=10, tol=1e-2, reg_covar=5e-4, random_state=None)
    prob = clean_probability(np.array([0.0, 0.01, 0.02, 1.0, 0.99, 0.98]), SEEDED)
    assert prob.shape == (6,) and prob[:3].min() > 0.9 and prob[3:].max() < 0.1


def test_per_class_gmm_splits_each_class_at_its_own_scale():
    # class 0: clean losses near 0.1, noisy near 0.6; class 1: clean near 1.4, noisy near 2.0.
    # One global GMM would call all of class 1 noisy; one GMM per class keeps the low half of each.
    class0 = _two_clusters(0.1, 0.6, n=20, spread=0.02)
    class1 = _two_clusters(1.4, 2.0, n=20, spread=0.02)
    losses = np.concatenate([class0, class1, [5.0]])
    labels = np.array([0] * 40 + [1] * 40 + [2])  # class 2 has a single sample: it cannot be split
    clean, prob = per_class_gmm_selection(losses, labels, num_classes=4, tau=0.6, settings=SEEDED)
    expected = np.array([True] * 20 + [False] * 20 + [True] * 20 + [False] * 20 + [True])
    assert np.array_equal(clean, expected) and prob[-1] == 1.0
    global_clean, _ = gmm_selection(losses, 0.5, SEEDED)
    assert not global_clean[40:60].any()  # the global rule would drop class 1's clean samples
    assert np.array_equal(per_class_gmm_selection(losses, labels, 4, tau=0.9999999, settings=SEEDED)[0],
                          prob > 0.9999999)


def test_class_balanced_subsample_draws_the_smallest_clean_count_from_every_class():
    labels = np.array([0] * 6 + [1] * 6 + [2] * 6)
    clean = np.array([1, 1, 1, 1, 1, 0] + [1, 1, 1, 0, 0, 0] + [1, 1, 1, 1, 0, 0], dtype=bool)
    keep = class_balanced_subsample(clean, labels, num_classes=4, rng=np.random.default_rng(0))  # class 3: absent
    assert [int(keep[labels == c].sum()) for c in range(3)] == [3, 3, 3]
    assert not np.any(keep & ~clean)  # only clean samples are drawn
    assert np.array_equal(keep[6:12], clean[6:12])  # the smallest class keeps all of its clean samples
    again = class_balanced_subsample(clean, labels, 4, np.random.default_rng(0))
    assert np.array_equal(keep, again)
    draws = {tuple(class_balanced_subsample(clean, labels, 4, np.random.default_rng(s))) for s in range(10)}
    assert len(draws) > 1  # uniform sampling, not the first N


def test_class_balanced_subsample_is_empty_when_a_class_has_no_clean_sample():
    labels = np.array([0, 0, 1, 1])
    keep = class_balanced_subsample(np.array([True, True, False, False]), labels, 2, np.random.default_rng(0))
    assert not keep.any()


def test_gmm_losses_come_from_the_training_samples_in_dataset_order(tmp_path):
    """The GMM pass reads the training set itself (same samples, labels and order), without augmentation."""
    from datasets import build_datasets
    from fixtures.world import build_smoke_world
    from utils.baseline_run import per_sample_ce
    from utils.config import Config, apply_overrides, load_yaml
    from utils.loader import make_loader

    world = build_smoke_world(tmp_path, per_class_train=3, per_class_test=1)
    cfg = apply_overrides(Config(), {**load_yaml(world["fft"]), "noise_mode": "sym", "noise_ratio": 0.4}, "t")
    data = build_datasets(cfg)
    assert data.eval.images is data.train.images and len(data.eval) == len(data.train)
    assert np.array_equal(data.eval.given_labels, data.train.given_labels)

    weights = torch.linspace(-1, 1, 3 * 32 * 32 * 10).view(10, -1)

    class PixelModel(torch.nn.Module):  # logits depend on the pixels, so each sample has its own loss
        def forward(self, images):
            return images.flatten(1) @ weights.t()

    loader = make_loader(data.eval, batch_size=7, shuffle=False, num_workers=0, device=torch.device("cpu"))
    losses = per_sample_ce(PixelModel(), loader, cfg, torch.device("cpu"))
    by_index = []
    for i in range(len(data.train)):
        image, given, _, index = data.eval[i]
        assert index == i and given == data.train.given_labels[i]
        by_index.append(float(torch.nn.functional.cross_entropy(PixelModel()(image[None]), torch.tensor([given]))))
    assert losses.dtype == np.float32 and np.allclose(losses, by_index, atol=1e-4)
