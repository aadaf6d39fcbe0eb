"""Fitting the temperature a manifest ships (milliseconds)."""

from __future__ import annotations

import numpy as np
from scipy import special

from workers.evaluation.calibration import expected_calibration_error, fit_temperature


def test_fit_temperature_recovers_the_temperature_that_miscalibrated_the_logits() -> None:
    rng = np.random.default_rng(7)
    true_logits = rng.normal(0.0, 2.0, size=(4000, 5))
    labels = np.array([rng.choice(5, p=p) for p in special.softmax(true_logits, axis=1)])
    under_confident = true_logits * 0.6  # what a temperature of 1/0.6 would undo

    temperature = fit_temperature(under_confident, labels)
    confidence = special.softmax(under_confident / temperature, axis=1)

    assert abs(temperature - 0.6) < 0.05
    correct = confidence.argmax(axis=1) == labels
    before = expected_calibration_error(correct, special.softmax(under_confident, axis=1).max(axis=1))
    assert expected_calibration_error(correct, confidence.max(axis=1)) < before / 2
