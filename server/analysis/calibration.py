"""Maps the embedders' cosine similarity to the API's calibrated 0..1 ``compare_similarity``."""

from __future__ import annotations

import math
from dataclasses import dataclass

# Fitted by `python -m bench.accuracy --calibrate` on the LFW dev images (see README "Score and threshold"):
# COSINE_AT_HALF is the cosine chosen as the decision point, SLOPE the logistic slope of a Platt fit.
COSINE_AT_HALF = 0.40
SLOPE = 18.0


@dataclass(frozen=True, slots=True)
class ScoreCalibration:
    """``similarity = 1 / (1 + exp(-slope * (cosine - cosine_at_half)))``.

    Monotonic in the cosine, so the verdict depends only on where the threshold sits; 0.5 corresponds to
    ``cosine_at_half``. The slope makes the score read as the probability of "same person" on LFW-like pairs at
    equal priors (Platt scaling).
    """

    cosine_at_half: float = COSINE_AT_HALF
    slope: float = SLOPE

    def similarity(self, cosine: float) -> float:
        """Calibrated similarity in [0, 1]."""
        z = self.slope * (cosine - self.cosine_at_half)
        # Written to avoid overflow for very negative z.
        if z >= 0:
            return 1.0 / (1.0 + math.exp(-z))
        e = math.exp(z)
        return e / (1.0 + e)

    def cosine(self, similarity: float) -> float:
        """Inverse mapping: the cosine at which ``similarity`` is reached."""
        p = min(max(similarity, 1e-12), 1 - 1e-12)
        return self.cosine_at_half + math.log(p / (1 - p)) / self.slope
