"""tools/linear_probe.py: a logistic-regression probe whose strength is chosen without the test set."""
import numpy as np

from tools.linear_probe import C_GRID, linear_probe


def _clusters(rng: np.random.Generator, per_class: int, spread: float) -> tuple[np.ndarray, np.ndarray]:
    """Three classes around the corners of a triangle in 2-d, `spread` the noise around each corner."""
    centres = np.array([[1.0, 0.0], [-0.5, 0.87], [-0.5, -0.87]])
    labels = np.repeat(np.arange(3), per_class)
    return centres[labels] + rng.normal(0, spread, size=(len(labels), 2)), labels


def test_separable_features_are_probed_perfectly_and_the_test_set_does_not_choose_c():
    rng = np.random.default_rng(0)
    train, train_labels = _clusters(rng, 40, 0.05)
    test, test_labels = _clusters(rng, 20, 0.05)
    result = linear_probe(train, train_labels, test, test_labels, seed=0)
    assert result.test_acc == 100.0 and result.held_out_acc == 100.0 and result.C in C_GRID
    # Wrong test labels change the test accuracy but not the choice of C, which sees training features only.
    shuffled = linear_probe(train, train_labels, test, (test_labels + 1) % 3, seed=0)
    assert shuffled.C == result.C and shuffled.test_acc == 0.0


def test_features_without_signal_stay_near_chance():
    rng = np.random.default_rng(1)
    train, test = rng.normal(size=(300, 8)), rng.normal(size=(300, 8))
    result = linear_probe(train, rng.integers(0, 3, 300), test, rng.integers(0, 3, 300), seed=0)
    assert 20.0 < result.test_acc < 47.0  # chance is 33.3 %
