"""The quality gate: level minimums, AUTO resolution, and the refusal naming files and components."""

from __future__ import annotations

import dataclasses

import pytest

from server.analysis.quality import ADVICE, GATED, LEVEL_MINIMUMS, check_faces, passes, resolve, shortfalls
from server.domain import FaceAnalysis, Point, QualityComponents, QualityFilter
from server.errors import LowQuality

L = QualityFilter
IDEAL = QualityComponents(size=1.0, sharpness=1.0, pose=1.0, illumination=1.0, occlusion=1.0, eyes=1.0,
                          presence=1.0)


def face(**components: float) -> FaceAnalysis:
    return FaceAnalysis(x1=0, y1=0, x2=10, y2=10, landmark_68=tuple(Point(0, 0) for _ in range(68)), eye_dist=40.0,
                        face_luminance=120.0, face_occlusion=0.0, face_quality=0.9, left_eye_closed=0.0,
                        right_eye_closed=0.0, mouth_opened=0.0, pitch=0.0, yaw=0.0, roll=0.0,
                        quality_components=dataclasses.replace(IDEAL, **components))


def test_levels_are_nested_from_none_to_high() -> None:
    # Each level checks the same components as the one below it, each at least as strictly, so a face a level
    # accepts is accepted by every lower level.
    assert LEVEL_MINIMUMS[L.NONE] == {}
    for lower, higher in ((L.LOW, L.MEDIUM), (L.MEDIUM, L.HIGH)):
        assert set(LEVEL_MINIMUMS[lower]) == set(LEVEL_MINIMUMS[higher]) == set(GATED)
        assert all(LEVEL_MINIMUMS[lower][c] <= LEVEL_MINIMUMS[higher][c] for c in GATED), (lower, higher)
    assert set(ADVICE) == set(GATED)


@pytest.mark.parametrize("component", GATED)
def test_each_component_alone_refuses_below_its_minimum(component: str) -> None:
    for level in (L.LOW, L.MEDIUM, L.HIGH):
        minimum = LEVEL_MINIMUMS[level][component]
        assert passes(face(**{component: minimum}).quality_components, level)
        below = shortfalls(face(**{component: minimum - 0.01}).quality_components, level)
        assert [s.component for s in below] == [component]
        assert below[0].minimum == minimum
    assert passes(face(**{component: 0.0}).quality_components, L.NONE)


def test_presence_is_shown_but_never_gated() -> None:
    assert all(passes(face(presence=0.0).quality_components, level) for level in L)


def test_auto_resolves_to_the_server_default() -> None:
    assert resolve(L.AUTO, L.MEDIUM) is L.MEDIUM
    assert resolve(L.HIGH, L.LOW) is L.HIGH
    assert resolve(L.NONE, L.HIGH) is L.NONE
    assert resolve(L.AUTO, L.AUTO) is L.NONE


def test_refusal_names_the_first_failing_file_and_every_failing_component() -> None:
    good, small_blurred, dark = face(), face(size=0.0, sharpness=0.1), face(illumination=0.05)
    check_faces([("file1", good), ("file2", good)], L.HIGH)  # passes: no error
    with pytest.raises(LowQuality) as info:
        check_faces([("file1", good), ("file2", small_blurred)], L.LOW)
    err = info.value
    assert (err.status, err.code, err.field, err.quality_filter) == (422, "low_quality", "file2", "LOW")
    assert err.failing == {"file2": ["size", "sharpness"]}
    assert "file2" in err.detail and "face too small" in err.detail and "blurred" in err.detail
    with pytest.raises(LowQuality) as info:
        check_faces([("file1", dark), ("file2", small_blurred)], L.MEDIUM)
    assert info.value.field == "file1"
    assert info.value.failing == {"file1": ["illumination"], "file2": ["size", "sharpness"]}


def test_faces_without_components_pass() -> None:
    # Only scans stored before the components were kept lack them; the gate never sees such a face, but must not
    # invent a refusal if it did.
    old = dataclasses.replace(face(), quality_components=None)
    check_faces([("file1", old)], L.HIGH)


def test_reported_components_are_the_ones_face_quality_is_made_of(photo_results: dict[str, object]) -> None:
    from server.analysis.attributes import face_quality
    from server.inference.pipeline import FaceResult

    results = [r for r in photo_results.values() if isinstance(r, FaceResult)]
    assert len(results) >= 10
    for r in results:
        comps = r.analysis.quality_components
        assert comps is not None
        assert all(0.0 <= v <= 1.0 for v in comps.as_dict().values())
        # Components are rounded to 4 digits, like face_quality itself.
        assert face_quality(comps.as_dict()) == pytest.approx(r.analysis.face_quality, abs=2e-3)
