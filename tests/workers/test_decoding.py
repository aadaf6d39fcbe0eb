"""Temperature calibration at decode (milliseconds)."""

from __future__ import annotations

import numpy as np

from app.schemas.manifest import Calibration, Decoding
from workers.decoding import activate, calibrated


def test_calibrated_divides_logits_by_the_temperature_and_keeps_the_ranking() -> None:
    logits = np.array([2.0, 0.5, -1.0])
    sharper = activate(calibrated(logits, Calibration(temperature=0.5, measured_on="val")), Decoding(kind="ordinal-grade"))
    plain = activate(calibrated(logits, None), Decoding(kind="ordinal-grade"))

    assert np.array_equal(calibrated(logits, None), logits)
    assert np.argmax(sharper) == np.argmax(plain)
    assert sharper.max() > plain.max()
    assert np.allclose(sharper, activate(logits * 2, Decoding(kind="ordinal-grade")))
