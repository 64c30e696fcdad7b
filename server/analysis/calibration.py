"""Maps the embedder's cosine similarity to the API's calibrated 0..1 ``compare_similarity``."""

from __future__ import annotations

from dataclasses import dataclass

# The decision cosine, chosen with `python -m bench.accuracy --labels ../shared/lfw-dev/LABELS.csv` (README "Score
# and threshold"): at 0.40 the false-accept rate over all 98,375 LFW-dev impostor pairs is 0.037 % and pairs.csv
# accuracy 99.5 %.
COSINE_AT_HALF = 0.40


@dataclass(frozen=True, slots=True)
class ScoreCalibration:
    """Piecewise-linear, monotonic map anchored at the decision cosine.

    cosine <= 0 -> 0; cosine = ``cosine_at_half`` -> 0.5; cosine = 1 -> 1; linear in between. So the default
    threshold 0.5 means "the cosine reached the calibrated decision point", scores above it spread evenly over
    0.5..1 (a logistic fit would squash every genuine pair to 0.9999 and hide useful differences), and a
    threshold of e.g. 0.6 is a stricter operating point on the same scale.
    """

    cosine_at_half: float = COSINE_AT_HALF

    def similarity(self, cosine: float) -> float:
        """Calibrated similarity in [0, 1]."""
        c, t = min(max(cosine, 0.0), 1.0), self.cosine_at_half
        if c < t:
            return 0.5 * c / t
        return 0.5 + 0.5 * (c - t) / (1.0 - t)

    def cosine(self, similarity: float) -> float:
        """Inverse mapping: the cosine at which ``similarity`` is reached."""
        s, t = min(max(similarity, 0.0), 1.0), self.cosine_at_half
        if s < 0.5:
            return 2.0 * s * t
        return t + (s - 0.5) * 2.0 * (1.0 - t)
