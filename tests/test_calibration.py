"""Calibration: the temperature fitted on validation makes confidence match accuracy."""

from __future__ import annotations

import numpy as np
import pytest

from mnist_cli.infer.backends import softmax
from mnist_cli.infer.evaluation import calibration_error
from mnist_cli.train.calibration import fit_temperature


@pytest.mark.parametrize("true_temperature", [0.5, 1.0, 2.0])
def test_the_fitted_temperature_undoes_a_known_one(true_temperature):
    # Labels drawn from softmax(z); the same scores shown as z * T are fitted back to T.
    rng = np.random.default_rng(0)
    logits = rng.normal(0, 3, (20_000, 10))
    probabilities = softmax(logits)
    labels = np.array([rng.choice(10, p=row) for row in probabilities])
    fitted = fit_temperature(logits * true_temperature, labels)
    assert fitted == pytest.approx(true_temperature, rel=0.05)
    calibrated = softmax(logits * true_temperature / fitted)
    assert calibration_error(calibrated, labels) < 0.02


def test_training_ends_with_a_calibrated_best_pt(data_dir, tmp_path):
    # One epoch of the fc net leaves dozens of wrong validation answers on any CPU: enough to
    # fit a temperature (the shared cnn makes about 6 in 500, too close to MIN_ERRORS).
    from mnist_cli.train.checkpoints import load_checkpoint
    from mnist_cli.train.recipes import default_config
    from mnist_cli.train.training import train

    config = default_config("fc", "cpu", epochs=1, validation_size=500)
    result = train(config, data_dir=data_dir, out_dir=tmp_path / "run", device="cpu")
    assert 1 - result.best_val_accuracy > 0.03  # the margin this test relies on
    best = load_checkpoint(result.best_path)
    assert best.temperature == result.temperature
    assert best.temperature != 1.0 and 0.05 <= best.temperature <= 20
    assert load_checkpoint(result.last_path).temperature == 1.0  # only best.pt


def test_no_temperature_is_fitted_where_the_images_cannot_pin_one_down():
    rng = np.random.default_rng(1)
    labels = rng.integers(0, 10, 2000)
    logits = rng.normal(0, 1, (2000, 10))
    logits[np.arange(2000), labels] += 8  # all right: the likelihood only rises as T falls
    assert fit_temperature(logits, labels) is None
    few_wrong = logits.copy()
    few_wrong[:3, (labels[:3] + 1) % 10] += 20  # three wrong answers: still too few
    assert fit_temperature(few_wrong, labels) is None
    assert fit_temperature(logits[:0], labels[:0]) is None  # no images
    assert fit_temperature(np.full((2000, 10), np.nan), labels) is None
