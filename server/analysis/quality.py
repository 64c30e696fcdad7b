"""The quality gate of ``quality_filter``: which faces a level refuses, and which components fail.

Every level is a set of minimums on the components of ``face_quality`` (each 0..1, 1 = ideal; see
:class:`server.domain.QualityComponents`). A face is refused when any gated component is below its level's
minimum, and the refusal names every component that fell short, so a caller can tell a person what to fix
("move closer", "hold still", "face the camera", ...). The minimums were chosen from measurements, not guessed:
``python -m bench.quality`` reports what share of the LFW dev images, the shared photos and degraded variants of
them (small, blurred, dark, half covered) each level refuses and what that does to FAR/FRR (README "Quality
filter").
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass

from server.domain import FaceAnalysis, QualityComponents, QualityFilter
from server.errors import LowQuality

# The components a level can refuse on, in the order they are reported. ``presence`` (the landmarker's own
# confidence) is shown but not gated: a face the detector found and the landmarker doubts is caught by the others.
GATED: tuple[str, ...] = ("size", "sharpness", "pose", "illumination", "occlusion", "eyes")

# Minimum of each component per level (absent = not checked), from `python -m bench.quality` (README "Quality
# filter" has the tables). In raw terms (the component formulas are in server/analysis/attributes.py):
#                LOW               MEDIUM            HIGH
#   size         eyes >= 16 px     >= 24 px          >= 35 px       (0.02 / 0.2 / 0.45)
#   sharpness    Laplacian >= 100  >= 150            >= 260         (0.25 / 0.4 / 0.6), on the aligned 112 px face
#   pose         yaw <= ~60 deg    <= ~50 deg        <= ~36 deg     (0.1 / 0.2 / 0.45), pitch counts 40/35 as much
#   illumination luma 16..240      26..230           41..215        (0.1 / 0.25 / 0.45), mean over the face
#   occlusion    <= 50 % covered   <= 35 %           <= 20 %        (0.5 / 0.65 / 0.8)
#   eyes         closed < 0.875    < 0.625           < 0.5          (0.3 / 0.5 / 0.6)
# LOW refuses what measurably breaks recognition (on LFW: faces under 16 px between the eyes, Gaussian blur of
# sigma >= 3 px, half-covered faces, near-black or blown-out exposure) and none of the LFW or shared photos;
# MEDIUM and HIGH ask for document-grade photos (HIGH refuses 4 % of LFW) at little further accuracy gain.
LEVEL_MINIMUMS: dict[QualityFilter, dict[str, float]] = {
    QualityFilter.NONE: {},
    QualityFilter.LOW: {"size": 0.02, "sharpness": 0.25, "pose": 0.1, "illumination": 0.1, "occlusion": 0.5,
                        "eyes": 0.3},
    QualityFilter.MEDIUM: {"size": 0.2, "sharpness": 0.4, "pose": 0.2, "illumination": 0.25, "occlusion": 0.65,
                           "eyes": 0.5},
    QualityFilter.HIGH: {"size": 0.45, "sharpness": 0.6, "pose": 0.45, "illumination": 0.45, "occlusion": 0.8,
                         "eyes": 0.6},
}

# What a refused component means to the person taking the photo (safe to show; carries no values).
ADVICE: dict[str, str] = {
    "size": "face too small (move closer or use a larger image)",
    "sharpness": "face blurred, out of focus or too low in contrast",
    "pose": "head turned too far from the camera",
    "illumination": "face too dark or too bright",
    "occlusion": "face partly covered or cut off",
    "eyes": "eyes closed",
}


@dataclass(frozen=True, slots=True)
class Shortfall:
    """One component below its level's minimum."""

    component: str
    value: float
    minimum: float

    def describe(self) -> str:
        return f"{self.component} {self.value:.2f} < {self.minimum:.2f}: {ADVICE[self.component]}"


def resolve(level: QualityFilter, default: QualityFilter) -> QualityFilter:
    """The level a request gets: its own, or the server's default for AUTO (a default of AUTO means NONE)."""
    if level is QualityFilter.AUTO:
        return QualityFilter.NONE if default is QualityFilter.AUTO else default
    return level


def shortfalls(components: QualityComponents | None, level: QualityFilter) -> list[Shortfall]:
    """Every gated component of a face below ``level``'s minimum (empty when it passes or has no components)."""
    minimums = LEVEL_MINIMUMS.get(level, {})
    if components is None or not minimums:
        return []
    values = components.as_dict()
    return [Shortfall(name, values[name], minimums[name]) for name in GATED
            if name in minimums and values[name] < minimums[name]]


def passes(components: QualityComponents | None, level: QualityFilter) -> bool:
    return not shortfalls(components, level)


def check_faces(faces: Iterable[tuple[str, FaceAnalysis]], level: QualityFilter) -> None:
    """Raise :class:`LowQuality` naming the first failing file (and every failing file's components)."""
    failing = {name: found for name, face in faces if (found := shortfalls(face.quality_components, level))}
    if not failing:
        return
    first = next(iter(failing))
    parts = [f"{name} ({'; '.join(s.describe() for s in found)})" for name, found in failing.items()]
    raise LowQuality(f"face quality below the {level.value} filter in " + " and ".join(parts), field=first,
                     quality_filter=level.value,
                     failing={name: [s.component for s in found] for name, found in failing.items()})
