"""The cosine -> compare_similarity map: monotonic, anchored at the decision cosine, invertible."""

from __future__ import annotations

import numpy as np
import pytest

from server.analysis.calibration import COSINE_AT_HALF, ScoreCalibration


@pytest.mark.parametrize("at_half", [COSINE_AT_HALF, 0.3, 0.6])
def test_monotonic_and_bounded(at_half: float) -> None:
    cal = ScoreCalibration(at_half)
    cosines = np.linspace(-1.0, 1.0, 2001)
    sims = np.array([cal.similarity(float(c)) for c in cosines])
    assert (np.diff(sims) >= 0).all()
    inside = (cosines > 0) & (cosines < 1)
    assert (np.diff(sims[inside]) > 0).all()  # strictly increasing where it is not clamped
    assert sims.min() == 0.0 and sims.max() == 1.0
    assert cal.similarity(-0.7) == 0.0 and cal.similarity(0.0) == 0.0 and cal.similarity(1.0) == 1.0
    assert cal.similarity(1.5) == 1.0


def test_half_at_the_decision_cosine() -> None:
    cal = ScoreCalibration()
    assert cal.cosine_at_half == COSINE_AT_HALF
    assert cal.similarity(COSINE_AT_HALF) == pytest.approx(0.5, abs=1e-12)
    assert cal.similarity(COSINE_AT_HALF - 1e-6) < 0.5 <= cal.similarity(COSINE_AT_HALF)
    # OpenCV documents cosine >= 0.363 as "same" for SFace; the calibrated point is in that neighbourhood.
    assert 0.3 <= COSINE_AT_HALF <= 0.5


@pytest.mark.parametrize("at_half", [COSINE_AT_HALF, 0.25, 0.7])
def test_inverse_round_trips(at_half: float) -> None:
    cal = ScoreCalibration(at_half)
    for s in np.linspace(0.0, 1.0, 101):
        assert cal.similarity(cal.cosine(float(s))) == pytest.approx(s, abs=1e-9)
    for c in np.linspace(0.0, 1.0, 101):
        assert cal.cosine(cal.similarity(float(c))) == pytest.approx(c, abs=1e-9)
    assert cal.cosine(0.5) == pytest.approx(at_half)
    assert cal.cosine(-1.0) == 0.0 and cal.cosine(2.0) == 1.0
