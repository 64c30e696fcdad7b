"""Per-request decision settings end to end, over HTTP and gRPC: ``threshold`` and ``quality_filter`` change the
verdict and the refusals, are stored with the scan and come back everywhere; unknown form fields are refused."""

from __future__ import annotations

import contextlib
import dataclasses
import io
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
from harness import COMPARE, SCANS, Harness, assert_grpc, assert_problem, grpc_error, trailers
from PIL import Image

from server.api.grpc.gen.facerec.v1 import face_recognition_pb2 as pb

pytestmark = [pytest.mark.asyncio(loop_scope="module"), pytest.mark.served()]

OBAMA1, OBAMA2, BIDEN = "obama_01_portrait_2012.jpg", "obama_02_congress_2009.jpg", "biden_02_vp_portrait_2013.jpg"
ImageBytes = Callable[[str], bytes]


@pytest.fixture(scope="module")
def tiny_card(faces_dir: Path) -> bytes:
    """obama_01's head shrunk 8x onto a grey 640x400 card: eyes 12 px apart, under LOW's 16 px (an ID-card
    thumbnail that SFace still matches, but that LOW refuses: README "Quality filter")."""
    with Image.open(faces_dir / OBAMA1) as img:
        head = img.convert("RGB").crop((250, 20, 640, 460)).resize((49, 55), Image.Resampling.LANCZOS)
    card = Image.new("RGB", (640, 400), (205, 205, 205))
    card.paste(head, (60, 170))
    out = io.BytesIO()
    card.save(out, "PNG")
    return out.getvalue()


async def post(env: Harness, file1: bytes, file2: bytes, **fields: str) -> httpx.Response:
    data = {"channel": "WEB", "reference": "decision", **fields}
    return await env.http.post(COMPARE, headers=env.headers(), data=data,
                               files={"file1": ("a.jpg", file1), "file2": ("b.jpg", file2)})


def grpc_request(file1: bytes, file2: bytes, **fields: Any) -> pb.CompareFacesRequest:
    return pb.CompareFacesRequest(channel="WEB", reference="decision", file1=file1, file2=file2, **fields)


# --------------------------------------------------------------------------- threshold


async def test_threshold_decides_the_verdict_and_is_stored(env: Harness, image_bytes: ImageBytes) -> None:
    a, b = image_bytes(OBAMA1), image_bytes(OBAMA2)
    default = await post(env, a, b)
    assert default.status_code == 200, default.text
    body = default.json()
    similarity = body["compare_similarity"]
    assert body["compare_result"] == "Same person" and 0.5 < similarity < 0.99
    assert (body["threshold"], body["quality_filter"]) == (0.5, "LOW")  # the server's defaults
    # Just above this pair's similarity the same photos are "Different person"; just below, "Same person".
    strict = await post(env, a, b, threshold=f"{similarity + 0.005:.4f}")
    lenient = await post(env, a, b, threshold=f" {similarity - 0.005:.4f} ")
    assert strict.json()["compare_result"] == "Different person", strict.text
    assert lenient.json()["compare_result"] == "Same person", lenient.text
    assert strict.json()["compare_similarity"] == similarity  # the score does not move, only the decision
    assert strict.json()["threshold"] == pytest.approx(similarity + 0.005, abs=1e-4)
    # Stored: the entity and the list carry the threshold the verdict was made with.
    scan_id = strict.json()["id"]
    entity = (await env.http.get(f"{SCANS}/{scan_id}", headers=env.headers())).json()
    assert entity["threshold"] == strict.json()["threshold"] and entity["qualityFilter"] == "LOW"
    assert entity["compareResult"] == "Different person"
    page = (await env.http.get(SCANS, headers=env.headers(), params={"size": 200})).json()
    assert {s["id"]: s["threshold"] for s in page["content"]}[scan_id] == entity["threshold"]


@pytest.mark.parametrize("value", ["1.5", "-0.1", "abc", "", "nan", "0,5"])
async def test_bad_threshold_is_400_naming_it(env: Harness, image_bytes: ImageBytes, value: str) -> None:
    before = await env.count()
    resp = await post(env, image_bytes(OBAMA1), image_bytes(OBAMA2), threshold=value)
    body = assert_problem(resp, 400, "invalid_field", "threshold")
    assert "0..1" in body["detail"]
    assert await env.count() == before


async def test_threshold_over_grpc(env: Harness, image_bytes: ImageBytes) -> None:
    a, b = image_bytes(OBAMA1), image_bytes(BIDEN)
    md = env.metadata()
    default = await env.stub.CompareFaces(grpc_request(a, b), metadata=md)
    assert default.compare_result == "Different person"
    assert (default.threshold, default.quality_filter) == (0.5, "LOW")
    # Threshold 0: every pair is "Same person" (the decision point is the caller's to choose).
    anything = await env.stub.CompareFaces(grpc_request(a, b, threshold=0.0), metadata=md)
    assert anything.compare_result == "Same person" and anything.threshold == 0.0
    scan = await env.stub.GetScan(pb.GetScanRequest(id=anything.id), metadata=md)
    assert scan.HasField("threshold") and scan.threshold == 0.0 and scan.quality_filter == "LOW"
    err = await grpc_error(env.stub.CompareFaces(grpc_request(a, b, threshold=1.01), metadata=md))
    assert_grpc(err, 400, "invalid_field", "threshold")
    err = await grpc_error(env.stub.CompareFaces(grpc_request(a, b, threshold=float("nan")), metadata=md))
    assert_grpc(err, 400, "invalid_field", "threshold")


# --------------------------------------------------------------------------- quality filter


async def test_tiny_face_is_refused_by_default_naming_file_and_component(env: Harness, image_bytes: ImageBytes,
                                                                        tiny_card: bytes) -> None:
    before = await env.count()
    resp = await post(env, tiny_card, image_bytes(OBAMA2))
    body = assert_problem(resp, 422, "low_quality", "file1")
    assert body["quality_filter"] == "LOW"
    assert body["failing_components"] == {"file1": ["size"]}
    assert "file1" in body["detail"] and "face too small" in body["detail"]
    # The same photo as file2 names file2.
    resp = await post(env, image_bytes(OBAMA2), tiny_card, quality_filter="auto")
    assert assert_problem(resp, 422, "low_quality", "file2")["failing_components"] == {"file2": ["size"]}
    assert await env.count() == before  # a refused compare stores nothing
    # NONE compares it anyway (and the 12 px face still matches: SFace copes, LOW refuses by policy).
    resp = await post(env, tiny_card, image_bytes(OBAMA2), quality_filter="none")
    assert resp.status_code == 200, resp.text
    body = resp.json()
    assert body["quality_filter"] == "NONE" and body["compare_result"] == "Same person"
    assert body["face1"]["quality_components"]["size"] < 0.02 <= body["face2"]["quality_components"]["size"]
    assert body["face1"]["eye_dist"] < 16


async def test_levels_refuse_progressively(env: Harness, image_bytes: ImageBytes) -> None:
    # obama_04 looks down (pose component ~0.19): accepted at LOW, refused for its pose at MEDIUM and HIGH.
    a, b = image_bytes("obama_04_oval_office_2016.jpg"), image_bytes(OBAMA1)
    for level in ("LOW", "NONE"):
        resp = await post(env, a, b, quality_filter=level)
        assert resp.status_code == 200, resp.text
        assert resp.json()["quality_filter"] == level
    for level in ("MEDIUM", "high"):
        body = assert_problem(await post(env, a, b, quality_filter=level), 422, "low_quality", "file1")
        assert body["failing_components"] == {"file1": ["pose"]} and body["quality_filter"] == level.upper()


async def test_quality_filter_over_grpc(env: Harness, image_bytes: ImageBytes, tiny_card: bytes) -> None:
    md = env.metadata()
    err = await grpc_error(env.stub.CompareFaces(grpc_request(tiny_card, image_bytes(OBAMA2)), metadata=md))
    assert_grpc(err, 422, "low_quality", "file1")
    assert trailers(err)["facerec-failing-components"] == "file1=size"
    assert "face too small" in (err.details() or "")
    ok = await env.stub.CompareFaces(grpc_request(tiny_card, image_bytes(OBAMA2), quality_filter="NONE"),
                                     metadata=md)
    assert ok.quality_filter == "NONE" and ok.face1.HasField("quality_components")
    assert ok.face1.quality_components.size < 0.02
    err = await grpc_error(env.stub.CompareFaces(
        grpc_request(image_bytes(OBAMA1), image_bytes(OBAMA2), quality_filter="SUPER"), metadata=md))
    assert_grpc(err, 400, "invalid_field", "quality_filter")


@contextlib.contextmanager
def strict_yaw(env: Harness, max_abs_yaw_deg: float) -> Iterator[None]:
    """Narrow the supported yaw for a while so obama_04's turned head (yaw about 36 degrees) is not comparable; the
    pipeline's config is plain data read per request, and the module's app gets its own config back after."""
    pipeline = env.runtime.pipeline
    before = pipeline.config
    pipeline.config = dataclasses.replace(before, max_abs_yaw_deg=max_abs_yaw_deg)
    try:
        yield
    finally:
        pipeline.config = before


async def test_not_comparable_is_reported_before_low_quality(env: Harness, image_bytes: ImageBytes,
                                                             tiny_card: bytes) -> None:
    """A face that cannot be compared at all (face_not_comparable) is reported before any quality filter
    refusal: no quality_filter value could let that request through, so low_quality would send the caller
    after the wrong fix."""
    turned, other = image_bytes("obama_04_oval_office_2016.jpg"), image_bytes(OBAMA1)
    before = await env.count()
    with strict_yaw(env, 25.0):
        # One face that is both: past the (narrowed) yaw limit and under MEDIUM's pose minimum.
        body = assert_problem(await post(env, turned, other, quality_filter="MEDIUM"), 422, "face_not_comparable",
                              "file1")
        assert "yaw" in body["detail"] and "failing_components" not in body
        # file1 below LOW (too small), file2 not comparable: the refusal names file2, whatever the filter.
        for level in ("LOW", "NONE"):
            assert_problem(await post(env, tiny_card, turned, quality_filter=level), 422, "face_not_comparable",
                           "file2")
        err = await grpc_error(env.stub.CompareFaces(grpc_request(tiny_card, turned, quality_filter="HIGH"),
                                                     metadata=env.metadata()))
        assert_grpc(err, 422, "face_not_comparable", "file2")
        assert "facerec-failing-components" not in trailers(err)
    assert await env.count() == before
    # With the shipped limit the same face is compared again, and the quality filter decides.
    assert_problem(await post(env, turned, other, quality_filter="MEDIUM"), 422, "low_quality", "file1")


@pytest.mark.parametrize("value", ["", "EXTREME", "L0W"])
async def test_bad_quality_filter_is_400_naming_it(env: Harness, image_bytes: ImageBytes, value: str) -> None:
    resp = await post(env, image_bytes(OBAMA1), image_bytes(OBAMA2), quality_filter=value)
    assert "NONE, LOW, MEDIUM, HIGH, AUTO" in assert_problem(resp, 400, "invalid_field", "quality_filter")["detail"]


async def test_auto_is_the_servers_setting(serve_target: Any, image_bytes: ImageBytes) -> None:
    async with serve_target(quality_filter="MEDIUM") as h:
        a, b = image_bytes("obama_04_oval_office_2016.jpg"), image_bytes(OBAMA1)
        for fields in ({}, {"quality_filter": "AUTO"}):
            body = assert_problem(await post(h, a, b, **fields), 422, "low_quality", "file1")
            assert body["quality_filter"] == "MEDIUM"
        ok = await post(h, a, b, quality_filter="LOW")
        assert ok.status_code == 200 and ok.json()["quality_filter"] == "LOW"


# --------------------------------------------------------------------------- the form's fields


@pytest.mark.parametrize(("name", "hint"), [("treshold", "threshold"), ("qualityFilter", "quality_filter"),
                                            ("Channel", "channel"), ("extra", None)])
async def test_unknown_form_field_is_400_naming_it(env: Harness, image_bytes: ImageBytes, name: str,
                                                   hint: str | None) -> None:
    before = await env.count()
    resp = await post(env, image_bytes(OBAMA1), image_bytes(OBAMA2), **{name: "0.9"})
    body = assert_problem(resp, 400, "invalid_field", name)
    assert f"unknown form field '{name}'" in body["detail"]
    if hint:
        assert f"did you mean '{hint}'" in body["detail"]
    else:
        assert "threshold" in body["detail"] and "quality_filter" in body["detail"]  # the fields it does know
    assert await env.count() == before
