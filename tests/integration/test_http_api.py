"""The HTTP API end to end: real app, real models, real SQLite and PostgreSQL."""

from __future__ import annotations

import asyncio
import dataclasses
import re
import uuid
from datetime import UTC, datetime, timedelta
from typing import Any

import httpx
import pytest
from harness import WAIT_S, assert_problem, socket_server

from server.app import create_app
from server.auth import LOCAL_ISSUER, ROLE_COMPARE, ROLE_READ
from server.domain import Channel, CompareResult, Scan
from server.errors import Unavailable
from server.settings import PROJECT_ROOT, Settings

OBAMA1, OBAMA2 = "obama_01_portrait_2012.jpg", "obama_02_congress_2009.jpg"
BIDEN = "biden_02_vp_portrait_2013.jpg"
ROCKET = "no_face_rocket.jpg"
COMPARE = "/face-recognition-sdk/v1/compare_face"
SCANS = "/v1/face-recognition"
SEED_KEYS = {"id", "reference", "channel", "compare_result", "compare_similarity", "created", "face1", "face2"}
FACE_KEYS = {"x1", "y1", "x2", "y2", "landmark_68", "eye_dist", "face_luminance", "face_occlusion", "face_quality",
             "left_eye_closed", "right_eye_closed", "mouth_opened", "pitch", "yaw", "roll"}
CREATED_RE = re.compile(r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{6}")


def form(file1: bytes, file2: bytes, channel: str = "WEB", reference: str = "0002") -> dict[str, Any]:
    return {"data": {"channel": channel, "reference": reference},
            "files": {"file1": ("a.jpg", file1, "image/jpeg"), "file2": ("b.jpg", file2, "image/jpeg")}}


async def compare(api: Any, image_bytes: Any, a: str, b: str, *, path: str = COMPARE, **kw: Any) -> httpx.Response:
    return await api.http.post(path, headers=api.headers(), **form(image_bytes(a), image_bytes(b), **kw))


BOUNDARY = "facerec-test-boundary"


async def chunked(files: list[bytes]) -> Any:
    """A multipart body sent in pieces, one file part per item (file1, file2, ...), with no Content-Length."""
    yield f"--{BOUNDARY}\r\nContent-Disposition: form-data; name=\"channel\"\r\n\r\nWEB\r\n".encode()
    for i, data in enumerate(files, 1):
        yield (f"--{BOUNDARY}\r\nContent-Disposition: form-data; name=\"file{i}\"; filename=\"f{i}.jpg\"\r\n"
               "Content-Type: image/jpeg\r\n\r\n").encode()
        for k in range(0, len(data), 16_384):
            yield data[k:k + 16_384]
        yield b"\r\n"
    yield f"--{BOUNDARY}--\r\n".encode()


# --------------------------------------------------------------------------- compare


@pytest.mark.parametrize("path", [COMPARE, "/v1/compare_face"])
async def test_compare_same_person_has_every_seed_key(api: Any, image_bytes: Any, path: str) -> None:
    resp = await compare(api, image_bytes, OBAMA1, OBAMA2, path=path)
    assert resp.status_code == 200, resp.text
    assert resp.headers["content-type"].startswith("application/json")
    body = resp.json()
    assert body.keys() >= SEED_KEYS
    uuid.UUID(body["id"])
    assert body["reference"] == "0002" and body["channel"] == "WEB"
    assert body["compare_result"] == "Same person"
    assert 0.0 <= body["compare_similarity"] <= 1.0
    assert CREATED_RE.fullmatch(body["created"])
    for face in (body["face1"], body["face2"]):
        assert face.keys() >= FACE_KEYS
        assert len(face["landmark_68"]) == 68
        assert all(set(p) == {"x", "y"} for p in face["landmark_68"])
        assert face["x1"] < face["x2"] and face["y1"] < face["y2"]
    assert "server" not in resp.headers


async def test_compare_different_people(api: Any, image_bytes: Any) -> None:
    resp = await compare(api, image_bytes, OBAMA1, BIDEN, channel="mobile")
    assert resp.status_code == 200, resp.text
    assert resp.json()["compare_result"] == "Different person"
    assert resp.json()["channel"] == "MOBILE"


async def test_no_face_names_the_file(api: Any, image_bytes: Any) -> None:
    body = assert_problem(await compare(api, image_bytes, OBAMA1, ROCKET), 422, "no_face", "file2")
    assert body["instance"] == COMPARE


async def test_text_file_is_unsupported(api: Any, image_bytes: Any) -> None:
    resp = await api.http.post(COMPARE, headers=api.headers(),
                                 data={"channel": "WEB", "reference": "x"},
                                 files={"file1": ("a.jpg", b"hello, I am text", "image/jpeg"),
                                        "file2": ("b.jpg", image_bytes(OBAMA2), "text/plain")})
    assert_problem(resp, 415, "unsupported_image", "file1")


@pytest.mark.parametrize("missing", ["channel", "file1", "file2", "reference"])
async def test_missing_field(api: Any, image_bytes: Any, missing: str) -> None:
    f = form(image_bytes(OBAMA1), image_bytes(OBAMA2))
    f["data"].pop(missing, None)
    f["files"].pop(missing, None)
    assert_problem(await api.http.post(COMPARE, headers=api.headers(), **f), 400, "missing_field", missing)


async def test_unknown_channel_duplicate_field_and_not_multipart(api: Any, image_bytes: Any) -> None:
    assert_problem(await compare(api, image_bytes, OBAMA1, OBAMA2, channel="FAX"), 400, "invalid_field", "channel")
    dup = await api.http.post(COMPARE, headers=api.headers(),
                                data={"channel": ["WEB", "WEB"], "reference": "r"},
                                files={"file1": ("a", image_bytes(OBAMA1)), "file2": ("b", image_bytes(OBAMA2))})
    assert_problem(dup, 400, "bad_request", "channel")
    assert_problem(await api.http.post(COMPARE, headers=api.headers(), json={"channel": "WEB"}), 400, "bad_request")


async def test_size_limits(serve_target: Any, image_bytes: Any) -> None:
    async with serve_target(max_file_bytes=100_000, max_request_bytes=300_000) as api:
        # obama_01 is ~150 kB: over the per-file limit, while the request as a whole is not.
        assert_problem(await compare(api, image_bytes, OBAMA2, OBAMA1), 413, "payload_too_large", "file2")
        big = await api.http.post(COMPARE, headers=api.headers(), **form(b"x" * 400_000, b"y"))
        assert_problem(big, 413, "payload_too_large")
        # Without a Content-Length (chunked upload) the per-file limit still holds while the body streams in.
        resp = await api.http.post(COMPARE, headers={**api.headers(), "content-type": f"multipart/form-data; "
                                                       f"boundary={BOUNDARY}"}, content=chunked([b"x" * 120_000]))
        assert "content-length" not in resp.request.headers
        assert_problem(resp, 413, "payload_too_large", "file1")
    # And the whole-body limit: two files each under the file limit, together over the request limit (the form
    # has only two file fields, so the request limit is set below twice the file limit here).
    async with serve_target(max_file_bytes=100_000, max_request_bytes=150_000) as api:
        resp = await api.http.post(COMPARE, headers={**api.headers(), "content-type": f"multipart/form-data; "
                                                       f"boundary={BOUNDARY}"}, content=chunked([b"x" * 90_000] * 2))
        assert "content-length" not in resp.request.headers
        assert_problem(resp, 413, "payload_too_large")


# --------------------------------------------------------------------------- read, update, list, delete


async def test_get_returns_what_post_stored(api: Any, image_bytes: Any) -> None:
    created = (await compare(api, image_bytes, OBAMA1, OBAMA2, reference="contract-7")).json()
    resp = await api.http.get(f"{SCANS}/{created['id']}", headers=api.headers())
    assert resp.status_code == 200, resp.text
    got = resp.json()
    assert got["id"] == created["id"] and got["companyId"] == api.company and got["createdById"] == "alice"
    assert got["reference"] == "contract-7" and got["salesChannel"] == "WEB"
    assert got["compareResult"] == created["compare_result"]
    assert got["compareSimilarity"] == pytest.approx(created["compare_similarity"])
    assert got["createdDate"] == created["created"]
    assert got["updatedDate"] is None and got["updatedById"] is None and got["elapsedTime"] > 0
    for key in ("face1", "face2"):
        assert got[key] == created[key]  # every attribute and all 68 points round-trip the store exactly


async def test_put_changes_only_mutable_fields(api: Any, image_bytes: Any) -> None:
    created = (await compare(api, image_bytes, OBAMA1, OBAMA2)).json()
    url = f"{SCANS}/{created['id']}"
    body = {"compareResult": "Different person", "compareSimilarity": 0.12, "salesChannel": "OTHER",
            "reference": "ref-2", "id": str(uuid.uuid4()), "companyId": "evil", "createdDate": "2000-01-01T00:00:00",
            "createdById": "mallory"}
    resp = await api.http.put(url, headers=api.headers(user="bob"), json=body)
    assert resp.status_code == 200, resp.text
    got = resp.json()
    assert (got["compareResult"], got["compareSimilarity"], got["salesChannel"], got["reference"]) == (
        "Different person", 0.12, "OTHER", "ref-2")
    assert got["id"] == created["id"] and got["companyId"] == api.company
    assert got["createdDate"] == created["created"] and got["createdById"] == "alice"
    assert got["updatedById"] == "bob" and CREATED_RE.fullmatch(got["updatedDate"])
    assert (await api.http.get(url, headers=api.headers())).json() == got
    # A partial body leaves the other fields alone.
    again = (await api.http.put(url, headers=api.headers(), json={"reference": "ref-3"})).json()
    assert again["reference"] == "ref-3" and again["compareResult"] == "Different person"
    malformed = await api.http.put(url, headers={**api.headers(), "content-type": "application/json"},
                                     content=b"{not json")
    assert_problem(malformed, 400, "bad_request")
    assert_problem(await api.http.put(url, headers=api.headers(), json={"compareSimilarity": 3}), 400,
                   "invalid_field")
    assert_problem(await api.http.put(url, headers=api.headers(), json={"salesChannel": "FAX"}), 400,
                   "invalid_field")
    # Case and surrounding spaces are ignored, as in the compare form, the list filters and gRPC; stored canonical.
    relaxed = await api.http.put(url, headers=api.headers(), json={"salesChannel": " mobile",
                                                                   "compareResult": "same PERSON"})
    assert relaxed.status_code == 200, relaxed.text
    assert (relaxed.json()["salesChannel"], relaxed.json()["compareResult"]) == ("MOBILE", "Same person")


async def test_delete(api: Any, image_bytes: Any) -> None:
    created = (await compare(api, image_bytes, OBAMA1, OBAMA2)).json()
    url = f"{SCANS}/{created['id']}"
    assert_problem(await api.http.delete(url, headers=api.headers(roles=[ROLE_READ])), 403, "forbidden")
    resp = await api.http.delete(url, headers=api.headers())
    assert resp.status_code == 204
    assert_problem(await api.http.get(url, headers=api.headers()), 404, "not_found")


async def _seed_scans(api: Any, image_bytes: Any) -> list[Scan]:
    """Five scans written straight to the store (faces copied from one real compare) at known times."""
    first = (await compare(api, image_bytes, OBAMA1, OBAMA2, reference="seed")).json()
    template = await api.runtime.store.get(api.company, uuid.UUID(first["id"]))
    await api.runtime.store.delete(api.company, template.id)
    base = datetime(2024, 5, 1, 12, 0, tzinfo=UTC)
    rows = [("r0", Channel.WEB, CompareResult.SAME, 0.9), ("r1", Channel.MOBILE, CompareResult.DIFFERENT, 0.1),
            ("r2", Channel.WEB, CompareResult.DIFFERENT, 0.3), ("r3", Channel.OTHER, CompareResult.SAME, 0.7),
            ("r4", Channel.WEB, CompareResult.SAME, 0.8)]
    scans = [dataclasses.replace(template, id=uuid.uuid4(), reference=ref, sales_channel=ch, compare_result=res,
                                 compare_similarity=sim, created_date=base + timedelta(days=i))
             for i, (ref, ch, res, sim) in enumerate(rows)]
    for s in scans:
        await api.runtime.store.add(s)
    return scans


async def test_list_paginates_filters_and_sorts(api: Any, image_bytes: Any) -> None:
    await _seed_scans(api, image_bytes)

    async def page(**params: Any) -> dict[str, Any]:
        resp = await api.http.get(SCANS, headers=api.headers(), params=params)
        assert resp.status_code == 200, resp.text
        return resp.json()  # type: ignore[no-any-return]

    p0 = await page(page=0, size=2, sort="createdDate,asc")
    assert [e["reference"] for e in p0["content"]] == ["r0", "r1"]
    assert (p0["totalElements"], p0["totalPages"], p0["number"], p0["size"], p0["numberOfElements"]) == (5, 3, 0, 2, 2)
    assert p0["first"] and not p0["last"] and not p0["empty"]
    p2 = await page(page=2, size=2, sort="createdDate,asc")
    assert [e["reference"] for e in p2["content"]] == ["r4"] and p2["last"]
    assert (await page(page=3, size=2))["empty"]
    assert [e["reference"] for e in (await page(sort="createdDate,desc"))["content"]] == ["r4", "r3", "r2", "r1", "r0"]
    assert (await page())["content"][0]["reference"] == "r4"  # default: newest first
    by_sim = await page(sort=["compareResult,asc", "compareSimilarity,desc"])
    assert [e["reference"] for e in by_sim["content"]] == ["r2", "r1", "r0", "r4", "r3"]
    assert [e["reference"] for e in (await page(reference="r3"))["content"]] == ["r3"]
    web = await page(salesChannel="WEB", sort="reference")
    assert [e["reference"] for e in web["content"]] == ["r0", "r2", "r4"]
    same = await page(compareResult="Same person", sort="reference,asc")
    assert [e["reference"] for e in same["content"]] == ["r0", "r3", "r4"]
    ranged = await page(createdFrom="2024-05-02", createdTo="2024-05-04T00:00:00Z", sort="createdDate")
    assert [e["reference"] for e in ranged["content"]] == ["r1", "r2"]
    assert (await page(reference=""))["totalElements"] == 5  # an empty filter is no filter
    # Another company sees none of them.
    other = await api.http.get(SCANS, headers=api.headers(company="someone-else"))
    assert other.json()["totalElements"] == 0 and other.json()["content"] == []


@pytest.mark.parametrize(("params", "field"), [
    ({"page": -1}, "page"), ({"size": 0}, "size"), ({"size": 201}, "size"), ({"page": "abc"}, "page"),
    ({"sort": "password,asc"}, "sort"), ({"sort": "createdDate,sideways"}, "sort"),
    ({"createdFrom": "yesterday"}, "createdFrom"), ({"salesChannel": "FAX"}, "salesChannel"),
    ({"compareResult": "maybe"}, "compareResult"),
])
async def test_list_rejects_bad_parameters(api: Any, params: dict[str, Any], field: str) -> None:
    assert_problem(await api.http.get(SCANS, headers=api.headers(), params=params), 400, "invalid_field", field)


# --------------------------------------------------------------------------- auth and tenancy


async def test_unauthenticated_requests_get_401_with_challenge(api: Any, image_bytes: Any) -> None:
    for headers in ({}, {"Authorization": "Bearer not-a-jwt"}, {"Authorization": "Basic dXNlcjpwdw=="}):
        resp = await api.http.post(COMPARE, headers=headers, **form(image_bytes(OBAMA1), image_bytes(OBAMA2)))
        assert_problem(resp, 401, "unauthorized")
        assert resp.headers["www-authenticate"].startswith("Bearer")
    # A well-formed token for another audience is refused too.
    assert api.runtime.local_issuer is not None
    foreign = api.runtime.local_issuer.mint(api.company, "eve", [ROLE_READ], 600, "someone-else", LOCAL_ISSUER)
    resp = await api.http.get(SCANS, headers={"Authorization": f"Bearer {foreign}"})
    assert_problem(resp, 401, "unauthorized")
    assert 'error="invalid_token"' in resp.headers["www-authenticate"]


async def test_missing_role_is_403(api: Any, image_bytes: Any) -> None:
    both = form(image_bytes(OBAMA1), image_bytes(OBAMA2))
    resp = await api.http.post(COMPARE, headers=api.headers(roles=[ROLE_READ]), **both)
    assert_problem(resp, 403, "forbidden")
    assert_problem(await api.http.get(SCANS, headers=api.headers(roles=[ROLE_COMPARE])), 403, "forbidden")


async def test_other_company_cannot_reach_a_scan(api: Any, image_bytes: Any) -> None:
    created = (await compare(api, image_bytes, OBAMA1, OBAMA2)).json()
    url = f"{SCANS}/{created['id']}"
    intruder = api.headers(company="intruder-co")
    assert_problem(await api.http.get(url, headers=intruder), 404, "not_found")
    assert_problem(await api.http.put(url, headers=intruder, json={"reference": "x"}), 404, "not_found")
    assert_problem(await api.http.get(f"{SCANS}/{uuid.uuid4()}", headers=api.headers()), 404, "not_found")
    assert (await api.http.get(url, headers=api.headers())).json()["reference"] == "0002"  # untouched


async def test_non_uuid_id_is_400(api: Any) -> None:
    assert_problem(await api.http.get(f"{SCANS}/not-a-uuid", headers=api.headers()), 400, "invalid_id")
    assert_problem(await api.http.put(f"{SCANS}/123", headers=api.headers(), json={}), 400, "invalid_id")


# --------------------------------------------------------------------------- plumbing


async def test_unknown_route_and_method_are_problems(api: Any) -> None:
    assert_problem(await api.http.get("/nope"), 404, "not_found")
    assert_problem(await api.http.get(COMPARE, headers=api.headers()), 405, "method_not_allowed")


async def test_request_id_is_echoed_or_generated(api: Any) -> None:
    resp = await api.http.get("/health/live", headers={"X-Request-ID": "abc-123.X_y"})
    assert resp.headers["x-request-id"] == "abc-123.X_y"
    resp = await api.http.get("/health/live", headers={"X-Request-ID": "bad id\twith<stuff>"})
    assert re.fullmatch(r"[0-9a-f]{32}", resp.headers["x-request-id"])
    resp = await api.http.get(f"{SCANS}/x", headers={"X-Request-ID": "r" * 129})
    assert resp.headers["x-request-id"] != "r" * 129 and resp.json()["request_id"] == resp.headers["x-request-id"]


async def test_health_metrics_and_openapi(api: Any, image_bytes: Any) -> None:
    live = await api.http.get("/health/live")
    assert live.status_code == 200 and live.json() == {"status": "ok"}
    ready = await api.http.get("/health/ready")
    assert ready.status_code == 200, ready.text
    assert ready.json()["components"] == {"models": True, "store": True, "batchers": True}
    await compare(api, image_bytes, OBAMA1, OBAMA2)
    metrics = await api.http.get("/metrics")
    assert metrics.status_code == 200 and metrics.headers["content-type"].startswith("text/plain")
    assert "facerec_batch_size" in metrics.text
    assert 'facerec_http_request_duration_seconds_count{method="POST",route="/face-recognition-sdk/v1/compare_face"' \
        in metrics.text
    schema = (await api.http.get("/schema/openapi.json")).json()
    assert {COMPARE, "/v1/compare_face", SCANS, SCANS + "/{scan_id}", "/health/ready"} <= schema["paths"].keys()
    post = schema["paths"][COMPARE]["post"]
    assert "multipart/form-data" in post["requestBody"]["content"]
    assert post["responses"]["200"]["content"]["application/json"]["examples"]
    assert schema["paths"][SCANS + "/{scan_id}"]["get"]["responses"]["200"]["content"]["application/json"]["examples"]


async def test_readiness_fails_when_the_store_does_not_answer(api: Any, monkeypatch: pytest.MonkeyPatch) -> None:
    async def no_answer() -> bool:
        raise Unavailable("database unreachable")

    monkeypatch.setattr(api.runtime.store, "ping", no_answer)
    resp = await api.http.get("/health/ready")
    assert resp.status_code == 503
    assert resp.json()["components"] == {"models": True, "store": False, "batchers": True}
    assert (await api.http.get("/health/live")).status_code == 200


async def test_concurrent_compares_are_batched(api: Any, image_bytes: Any) -> None:
    pairs = [(OBAMA1, OBAMA2, "Same person") if i % 2 == 0 else (OBAMA1, BIDEN, "Different person")
             for i in range(32)]
    resps = await asyncio.gather(*(compare(api, image_bytes, a, b, reference=f"c{i}")
                                   for i, (a, b, _) in enumerate(pairs)))
    for i, (resp, (_, _, expected)) in enumerate(zip(resps, pairs, strict=True)):
        assert resp.status_code == 200, resp.text
        assert resp.json()["compare_result"] == expected and resp.json()["reference"] == f"c{i}"
    total, count = api.runtime.metrics.histogram_stats("facerec_batch_size", model="embedder")
    assert count > 0 and total / count > 1, (total, count)


# --------------------------------------------------------------------------- a real socket


async def test_real_socket_with_lifespan_owned_runtime(tmp_path: Any, image_bytes: Any) -> None:
    """uvicorn on a TCP port, the app starting and closing its own runtime (models loaded by the lifespan)."""
    settings = Settings(data_dir=tmp_path, model_repository=PROJECT_ROOT / "model_repository", device="cpu",
                        ort_intra_threads=2, grpc_port=0)
    app = create_app(settings)
    async with socket_server(app, lifespan="on") as port:
        runtime = app.state.runtime
        assert runtime.local_issuer is not None
        token = runtime.local_issuer.mint("co-socket", "alice", [ROLE_COMPARE], 600, settings.auth_audience)
        async with httpx.AsyncClient(base_url=f"http://127.0.0.1:{port}", timeout=WAIT_S) as client:
            resp = await client.post("/v1/compare_face", headers={"Authorization": f"Bearer {token}"},
                                     **form(image_bytes(OBAMA1), image_bytes(OBAMA2)))
            assert resp.status_code == 200, resp.text
            assert resp.json()["compare_result"] == "Same person"
            assert "server" not in resp.headers and "date" in resp.headers
    assert runtime._closed  # the lifespan closed what it started
