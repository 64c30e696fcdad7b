"""gRPC API end to end: a real grpc.aio server and channel, real models, SQLite and PostgreSQL stores."""

from __future__ import annotations

import dataclasses
import re
import uuid
from datetime import UTC, datetime, timedelta
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import grpc
import msgspec
import pytest
import pytest_asyncio
from google.protobuf import json_format
from grpc_health.v1 import health_pb2, health_pb2_grpc
from grpc_reflection.v1alpha import reflection_pb2, reflection_pb2_grpc
from harness import WAIT_S, Harness, grpc_error, trailers

from server.api.grpc import SERVICE_NAME, start_grpc_server
from server.api.grpc.gen.facerec.v1 import face_recognition_pb2 as pb
from server.api.grpc.server import refresh_health
from server.api.schemas import CompareResponse, ScanEntity
from server.auth import ALL_ROLES, LOCAL_ISSUER, ROLE_COMPARE, ROLE_READ
from server.domain import Channel, CompareResult, Scan
from server.service import ScanService
from tooling.wait import wait_until

FACES = Path(__file__).parents[2].parent / "shared" / "faces"
# Small limits so the size checks are cheap to exercise; the shared photos are all under 200 kB.
MAX_FILE = 1_000_000
MAX_REQUEST = 2_000_000
WIRE_TIME = re.compile(r"^\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{6}$")

pytestmark = [pytest.mark.asyncio(loop_scope="module"),
              pytest.mark.served(max_file_bytes=MAX_FILE, max_request_bytes=MAX_REQUEST)]

Metadata = tuple[tuple[str, str], ...]


# --------------------------------------------------------------------------- fixtures


def read_photo(name: str) -> bytes:
    path = FACES / name
    if not path.is_file():
        pytest.skip(f"shared photo {path} absent")
    return path.read_bytes()


def compare_request(file1: str | bytes, file2: str | bytes, *, channel: str = "WEB",
                    reference: str = "0002") -> pb.CompareFacesRequest:
    return pb.CompareFacesRequest(
        channel=channel, reference=reference,
        file1=file1 if isinstance(file1, bytes) else read_photo(file1),
        file2=file2 if isinstance(file2, bytes) else read_photo(file2),
    )


@pytest_asyncio.fixture(scope="module", loop_scope="module")
async def same(env: Harness) -> pb.CompareFacesResponse:
    """One same-person compare, shared by the tests that read, list or inspect it."""
    req = compare_request("obama_01_portrait_2012.jpg", "obama_02_congress_2009.jpg", reference="0002")
    response: pb.CompareFacesResponse = await env.stub.CompareFaces(req, metadata=env.metadata(), timeout=60)
    return response


async def add_scan(env: Harness, base: Scan, **changes: Any) -> Scan:
    """A stored copy of ``base`` (cheaper than another compare when a test only needs rows)."""
    scan = dataclasses.replace(base, id=uuid.uuid4(), updated_date=None, updated_by_id=None, **changes)
    await env.runtime.store.add(scan)
    return scan


async def stored(env: Harness, scan_id: str, company: str = "acme") -> Scan:
    return await env.runtime.store.get(company, uuid.UUID(scan_id))


# --------------------------------------------------------------------------- compare


async def test_compare_same_person(env: Harness, same: pb.CompareFacesResponse) -> None:
    assert same.compare_result == "Same person"
    assert env.runtime.settings.threshold <= same.compare_similarity <= 1.0
    assert same.channel == "WEB" and same.reference == "0002"
    uuid.UUID(same.id)
    assert WIRE_TIME.match(same.created)
    for face in (same.face1, same.face2):
        assert 0 <= face.x1 < face.x2 and 0 <= face.y1 < face.y2
        assert len(face.landmark_68) == 68
        xs = [p.x for p in face.landmark_68]
        assert face.x1 - 20 < min(xs) and max(xs) < face.x2 + 20  # landmarks lie on the face, in image pixels
        assert face.eye_dist > 10 and 0 <= face.face_luminance <= 255
        for value in (face.face_occlusion, face.face_quality, face.left_eye_closed, face.right_eye_closed,
                      face.mouth_opened):
            assert 0.0 <= value <= 1.0
        assert all(abs(a) <= 180 for a in (face.pitch, face.yaw, face.roll))
        assert face.faces_found == 1 and 0 < face.detection_score <= 1


async def test_compare_response_equals_the_http_body(env: Harness, same: pb.CompareFacesResponse) -> None:
    # json_name keeps the HTTP keys, so the proto's JSON form is the HTTP response body, value for value.
    as_json = json_format.MessageToDict(same, always_print_fields_with_no_presence=True)
    http = msgspec.to_builtins(CompareResponse.of(await stored(env, same.id)))
    assert as_json == http


async def test_compare_different_person(env: Harness) -> None:
    req = compare_request("obama_01_portrait_2012.jpg", "biden_02_vp_portrait_2013.jpg", channel="mobile",
                          reference="diff-1")
    response = await env.stub.CompareFaces(req, metadata=env.metadata(), timeout=60)
    assert response.compare_result == "Different person"
    assert response.compare_similarity < env.runtime.settings.threshold
    assert response.channel == "MOBILE"  # case-insensitive like HTTP, stored canonical


async def test_compare_runs_through_the_shared_batchers_as_grpc(env: Harness, same: pb.CompareFacesResponse) -> None:
    metrics = env.runtime.metrics
    assert metrics.value("facerec_batch_items_total", model="detector", source="grpc") >= 2
    assert metrics.histogram_stats("facerec_grpc_request_duration_seconds", method="CompareFaces", code="OK")[1] >= 1


async def test_no_face_is_failed_precondition_naming_the_file(env: Harness) -> None:
    req = compare_request("obama_01_portrait_2012.jpg", "no_face_rocket.jpg")
    err = await grpc_error(env.stub.CompareFaces(req, metadata=env.metadata(), timeout=60))
    assert err.code() == grpc.StatusCode.FAILED_PRECONDITION
    assert "file2" in (err.details() or "")
    assert trailers(err) == {"facerec-error-code": "no_face", "facerec-error-field": "file2"}


@pytest.mark.parametrize(
    ("change", "code", "field"),
    [
        ({"file1": b"this is not an image"}, "unsupported_image", "file1"),
        ({"file2": b""}, "missing_field", "file2"),
        ({"file1": b"\xff" * (MAX_FILE + 1)}, "payload_too_large", "file1"),
        ({"channel": "FAX"}, "invalid_field", "channel"),
        ({"reference": ""}, "invalid_field", "reference"),
        ({"reference": "r" * 256}, "invalid_field", "reference"),
    ],
    ids=["not-an-image", "empty-file", "file-too-large", "unknown-channel", "empty-reference", "long-reference"],
)
async def test_compare_invalid_argument(env: Harness, change: dict[str, Any], code: str, field: str) -> None:
    req = compare_request("obama_01_portrait_2012.jpg", "obama_02_congress_2009.jpg")
    for key, value in change.items():
        setattr(req, key, value)
    err = await grpc_error(env.stub.CompareFaces(req, metadata=env.metadata(), timeout=60))
    assert err.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert trailers(err)["facerec-error-code"] == code
    assert trailers(err)["facerec-error-field"] == field


async def test_message_over_the_request_limit_is_refused_by_grpc(env: Harness) -> None:
    req = pb.CompareFacesRequest(channel="WEB", reference="big", file1=b"\0" * (MAX_REQUEST + 100_000),
                                 file2=b"\0")
    err = await grpc_error(env.stub.CompareFaces(req, metadata=env.metadata(), timeout=60))
    assert err.code() == grpc.StatusCode.RESOURCE_EXHAUSTED


# --------------------------------------------------------------------------- get / update / delete


async def test_get_scan(env: Harness, same: pb.CompareFacesResponse) -> None:
    scan = await env.stub.GetScan(pb.GetScanRequest(id=same.id), metadata=env.metadata(roles=[ROLE_READ]))
    assert scan.id == same.id and scan.company_id == "acme" and scan.created_by_id == "alice"
    assert scan.created_date == same.created and scan.elapsed_time > 0
    assert scan.compare_result == same.compare_result and scan.compare_similarity == same.compare_similarity
    assert scan.sales_channel == "WEB" and scan.reference == "0002"
    assert scan.face1 == same.face1 and scan.face2 == same.face2
    assert not scan.HasField("updated_date") and not scan.HasField("updated_by_id")
    # Same camelCase keys and values as the HTTP entity (which writes the unset optionals as null).
    http = {k: v for k, v in msgspec.to_builtins(ScanEntity.of(await stored(env, same.id))).items() if v is not None}
    assert json_format.MessageToDict(scan, always_print_fields_with_no_presence=True) == http


async def test_update_scan(env: Harness, same: pb.CompareFacesResponse) -> None:
    base = await add_scan(env, await stored(env, same.id))
    req = pb.UpdateScanRequest(id=str(base.id), compare_result="Different person", compare_similarity=0.125,
                               sales_channel="MOBILE", reference="contract-9")
    updated = await env.stub.UpdateScan(req, metadata=env.metadata(user="bob"))
    assert (updated.compare_result, updated.compare_similarity) == ("Different person", 0.125)
    assert (updated.sales_channel, updated.reference) == ("MOBILE", "contract-9")
    assert updated.updated_by_id == "bob" and updated.created_by_id == base.created_by_id
    assert WIRE_TIME.match(updated.updated_date)
    assert updated.created_date == same.created and updated.face1 == same.face1

    # Absent optional fields stay as they are.
    partial = await env.stub.UpdateScan(pb.UpdateScanRequest(id=str(base.id), reference="contract-10"),
                                        metadata=env.metadata(user="carol"))
    assert (partial.reference, partial.updated_by_id) == ("contract-10", "carol")
    assert (partial.compare_result, partial.sales_channel) == ("Different person", "MOBILE")
    assert (await stored(env, str(base.id))).reference == "contract-10"
    # Case and surrounding spaces are ignored, as over HTTP; stored canonical.
    relaxed = await env.stub.UpdateScan(pb.UpdateScanRequest(id=str(base.id), sales_channel="other ",
                                                             compare_result="same person"), metadata=env.metadata())
    assert (relaxed.sales_channel, relaxed.compare_result) == ("OTHER", "Same person")


@pytest.mark.parametrize(
    ("request_fields", "field"),
    [
        ({"compare_similarity": 1.5}, "compareSimilarity"),
        ({"compare_result": "Maybe"}, "compareResult"),
        ({"sales_channel": "FAX"}, "salesChannel"),
        ({"reference": ""}, "reference"),
    ],
)
async def test_update_invalid_values(env: Harness, same: pb.CompareFacesResponse, request_fields: dict[str, Any],
                                     field: str) -> None:
    err = await grpc_error(env.stub.UpdateScan(pb.UpdateScanRequest(id=same.id, **request_fields),
                                              metadata=env.metadata()))
    assert err.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert trailers(err) == {"facerec-error-code": "invalid_field", "facerec-error-field": field}
    assert (await stored(env, same.id)).updated_by_id is None


async def test_bad_uuid_is_invalid_argument(env: Harness) -> None:
    for call in (env.stub.GetScan(pb.GetScanRequest(id="not-a-uuid"), metadata=env.metadata()),
                 env.stub.UpdateScan(pb.UpdateScanRequest(id="42", reference="x"), metadata=env.metadata()),
                 env.stub.DeleteScan(pb.DeleteScanRequest(id=""), metadata=env.metadata())):
        err = await grpc_error(call)
        assert err.code() == grpc.StatusCode.INVALID_ARGUMENT
        assert trailers(err)["facerec-error-code"] == "invalid_id"


async def test_other_company_gets_not_found(env: Harness, same: pb.CompareFacesResponse) -> None:
    intruder = env.metadata(company="globex", user="mallory")
    unknown = str(uuid.uuid4())
    details = set()
    for scan_id in (same.id, unknown):
        for call in (env.stub.GetScan(pb.GetScanRequest(id=scan_id), metadata=intruder),
                     env.stub.UpdateScan(pb.UpdateScanRequest(id=scan_id, reference="mine"), metadata=intruder),
                     env.stub.DeleteScan(pb.DeleteScanRequest(id=scan_id), metadata=intruder)):
            err = await grpc_error(call)
            assert err.code() == grpc.StatusCode.NOT_FOUND
            assert trailers(err) == {"facerec-error-code": "not_found"}
            details.add(err.details())
    assert len(details) == 1  # another company's scan is indistinguishable from no scan
    scan = await stored(env, same.id)
    assert scan.reference == "0002" and scan.updated_by_id is None


async def test_delete_scan(env: Harness, same: pb.CompareFacesResponse) -> None:
    victim = await add_scan(env, await stored(env, same.id), reference="to-delete")
    await env.stub.DeleteScan(pb.DeleteScanRequest(id=str(victim.id)), metadata=env.metadata())
    err = await grpc_error(env.stub.GetScan(pb.GetScanRequest(id=str(victim.id)), metadata=env.metadata()))
    assert err.code() == grpc.StatusCode.NOT_FOUND


# --------------------------------------------------------------------------- list


@pytest_asyncio.fixture(scope="module", loop_scope="module")
async def listed(env: Harness, same: pb.CompareFacesResponse) -> list[Scan]:
    """Five scans of company "listco" one minute apart, plus one of "otherco" that must never show."""
    base = await stored(env, same.id)
    t0 = datetime(2024, 5, 1, 12, 0, tzinfo=UTC)
    specs = [("L1", Channel.WEB, CompareResult.SAME), ("L2", Channel.MOBILE, CompareResult.DIFFERENT),
             ("L1", Channel.OTHER, CompareResult.SAME), ("L3", Channel.WEB, CompareResult.DIFFERENT),
             ("L4", Channel.MOBILE, CompareResult.SAME)]
    scans = [await add_scan(env, base, company_id="listco", reference=ref, sales_channel=ch, compare_result=res,
                            created_date=t0 + timedelta(minutes=i))
             for i, (ref, ch, res) in enumerate(specs)]
    await add_scan(env, base, company_id="otherco", reference="L1")
    return scans


async def list_ids(env: Harness, **fields: Any) -> list[str]:
    page = await env.stub.ListScans(pb.ListScansRequest(size=100, **fields), metadata=env.metadata("listco"))
    assert page.total_elements == len(page.content)
    return [s.id for s in page.content]


async def test_list_paginates(env: Harness, listed: list[Scan]) -> None:
    newest_first = [str(s.id) for s in reversed(listed)]
    seen: list[str] = []
    for number, expected in enumerate([2, 2, 1]):
        page = await env.stub.ListScans(pb.ListScansRequest(page=number, size=2), metadata=env.metadata("listco"))
        assert (page.total_elements, page.total_pages, page.number, page.size) == (5, 3, number, 2)
        assert page.number_of_elements == expected == len(page.content)
        assert (page.first, page.last, page.empty) == (number == 0, number == 2, False)
        assert all(s.company_id == "listco" for s in page.content)
        seen += [s.id for s in page.content]
    assert seen == newest_first  # default sort: createdDate,desc
    beyond = await env.stub.ListScans(pb.ListScansRequest(page=5, size=2), metadata=env.metadata("listco"))
    assert beyond.empty and not beyond.content and beyond.total_elements == 5 and beyond.last
    default = await env.stub.ListScans(pb.ListScansRequest(), metadata=env.metadata("listco"))
    assert default.size == 20 and default.number_of_elements == 5


async def test_list_sorts(env: Harness, listed: list[Scan]) -> None:
    assert await list_ids(env, sort=["createdDate,asc"]) == [str(s.id) for s in listed]
    assert await list_ids(env, sort=["createdDate"]) == [str(s.id) for s in listed]  # asc by default
    by_ref = sorted(listed, key=lambda s: (s.reference, -s.created_date.timestamp()))
    assert await list_ids(env, sort=["reference,asc", "createdDate,desc"]) == [str(s.id) for s in by_ref]


async def test_list_filters(env: Harness, listed: list[Scan]) -> None:
    def ids(*indexes: int) -> set[str]:
        return {str(listed[i].id) for i in indexes}

    assert set(await list_ids(env, reference="L1")) == ids(0, 2)
    assert set(await list_ids(env, sales_channel="WEB")) == ids(0, 3)
    assert set(await list_ids(env, compare_result="Different person")) == ids(1, 3)
    # created_from inclusive, created_to exclusive; a timestamp without offset is UTC.
    assert set(await list_ids(env, created_from="2024-05-01T12:01:00", created_to="2024-05-01T12:03:00")) == ids(1, 2)
    assert set(await list_ids(env, created_from="2024-05-01T14:03:00+02:00")) == ids(3, 4)
    assert set(await list_ids(env, reference="L1", sales_channel="OTHER")) == ids(2)
    assert await list_ids(env, reference="nope") == []


@pytest.mark.parametrize(
    ("request_fields", "field"),
    [
        ({"sort": ["createdDate,sideways"]}, "sort"),
        ({"sort": ["companyId,asc"]}, "sort"),
        ({"size": 0}, None),
        ({"page": -1}, None),
        ({"created_from": "yesterday"}, "createdFrom"),
        ({"sales_channel": "FAX"}, "salesChannel"),
        ({"compare_result": "same"}, "compareResult"),
    ],
)
async def test_list_invalid_arguments(env: Harness, request_fields: dict[str, Any], field: str | None) -> None:
    err = await grpc_error(env.stub.ListScans(pb.ListScansRequest(**request_fields), metadata=env.metadata()))
    assert err.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert trailers(err)["facerec-error-code"] == "invalid_field"
    if field is not None:
        assert trailers(err)["facerec-error-field"] == field


# --------------------------------------------------------------------------- auth


@pytest.mark.parametrize(
    "metadata",
    [(), (("authorization", "Bearer abc.def.ghi"),), (("authorization", "Basic dXNlcjpwYXNz"),),
     (("authorization", "Bearer"),)],
    ids=["no-token", "garbage-token", "basic-scheme", "empty-bearer"],
)
async def test_unauthenticated(env: Harness, same: pb.CompareFacesResponse, metadata: Metadata) -> None:
    calls = [env.stub.GetScan(pb.GetScanRequest(id=same.id), metadata=metadata),
             env.stub.ListScans(pb.ListScansRequest(), metadata=metadata),
             env.stub.CompareFaces(compare_request(b"x", b"y"), metadata=metadata)]
    for call in calls:
        err = await grpc_error(call)
        assert err.code() == grpc.StatusCode.UNAUTHENTICATED
        assert trailers(err)["facerec-error-code"] == "unauthorized"


async def test_token_of_another_audience_is_unauthenticated(env: Harness) -> None:
    issuer = env.runtime.local_issuer
    assert issuer is not None
    token = issuer.mint("acme", "alice", ALL_ROLES, 600, audience="someone-else", issuer=LOCAL_ISSUER)
    err = await grpc_error(env.stub.ListScans(pb.ListScansRequest(), metadata=(("authorization", f"Bearer {token}"),)))
    assert err.code() == grpc.StatusCode.UNAUTHENTICATED


async def test_permission_denied_without_the_role(env: Harness, same: pb.CompareFacesResponse) -> None:
    reader = env.metadata(roles=[ROLE_READ])
    comparer = env.metadata(roles=[ROLE_COMPARE])
    calls = [env.stub.CompareFaces(compare_request(b"x", b"y"), metadata=reader),
             env.stub.UpdateScan(pb.UpdateScanRequest(id=same.id, reference="x"), metadata=reader),
             env.stub.DeleteScan(pb.DeleteScanRequest(id=same.id), metadata=reader),
             env.stub.GetScan(pb.GetScanRequest(id=same.id), metadata=comparer),
             env.stub.ListScans(pb.ListScansRequest(), metadata=env.metadata(roles=[]))]
    for call in calls:
        err = await grpc_error(call)
        assert err.code() == grpc.StatusCode.PERMISSION_DENIED
        assert trailers(err)["facerec-error-code"] == "forbidden"
    assert (await stored(env, same.id)).reference == "0002"


# --------------------------------------------------------------------------- deadlines


async def test_deadlines_drop_expired_work_and_the_server_keeps_serving(env: Harness) -> None:
    auth = env.metadata()
    tiny = await grpc_error(env.stub.CompareFaces(compare_request("obama_01_portrait_2012.jpg",
                                                                  "obama_02_congress_2009.jpg"),
                                                  metadata=auth, timeout=0.001))
    assert tiny.code() == grpc.StatusCode.DEADLINE_EXCEEDED

    # A deadline the request reaches the server within but cannot finish by: its work is held at the backend's gate
    # (event-driven, no race) until the deadline has passed. 5 s lets the request reach the detector even on a
    # 10x slower machine (~0.3 s unloaded).
    gate = env.gate
    assert gate is not None
    reference = f"deadline-{uuid.uuid4().hex[:8]}"
    seen = gate.rows["detector"]

    def ended_unfinished() -> float:
        return sum(env.runtime.metrics.histogram_stats("facerec_grpc_request_duration_seconds",
                                                       method="CompareFaces", code=code)[1]
                   for code in ("DEADLINE_EXCEEDED", "CANCELLED"))

    before = ended_unfinished()
    gate.hold()
    try:
        call = env.stub.CompareFaces(compare_request("obama_01_portrait_2012.jpg", "obama_02_congress_2009.jpg",
                                                     reference=reference), metadata=auth, timeout=5.0)
        await gate.wait_rows("detector", seen + 2)
        short = await grpc_error(call)
        assert short.code() == grpc.StatusCode.DEADLINE_EXCEEDED
        # The server's handler has ended too (it records its status last): nothing of the request runs on.
        await wait_until(lambda: ended_unfinished() > before, within_s=WAIT_S,
                         what="the server to end the expired call")
    finally:
        gate.release()
    page = await env.stub.ListScans(pb.ListScansRequest(reference=reference), metadata=auth)
    assert page.total_elements == 0

    again = await env.stub.CompareFaces(compare_request("obama_01_portrait_2012.jpg", "biden_01_blueroom_2010.jpg"),
                                        metadata=auth, timeout=WAIT_S)
    assert again.compare_result == "Different person"


# --------------------------------------------------------------------------- health and reflection


async def test_health_serving(env: Harness) -> None:
    health = health_pb2_grpc.HealthStub(env.channel)
    for service in ("", SERVICE_NAME):
        response = await health.Check(health_pb2.HealthCheckRequest(service=service), timeout=10)
        assert response.status == health_pb2.HealthCheckResponse.SERVING
    err = await grpc_error(health.Check(health_pb2.HealthCheckRequest(service="no.such.Service"), timeout=10))
    assert err.code() == grpc.StatusCode.NOT_FOUND


async def test_health_follows_readiness(env: Harness) -> None:
    health = health_pb2_grpc.HealthStub(env.channel)

    async def not_ready() -> dict[str, bool]:
        return {"models": True, "store": False, "batchers": True}

    down = SimpleNamespace(readiness=not_ready)
    try:
        await refresh_health(down, env.grpc_server.health)  # type: ignore[arg-type]
        for service in ("", SERVICE_NAME):
            response = await health.Check(health_pb2.HealthCheckRequest(service=service), timeout=10)
            assert response.status == health_pb2.HealthCheckResponse.NOT_SERVING
    finally:
        await refresh_health(env.runtime, env.grpc_server.health)
    response = await health.Check(health_pb2.HealthCheckRequest(service=SERVICE_NAME), timeout=10)
    assert response.status == health_pb2.HealthCheckResponse.SERVING


async def test_reflection_lists_the_services(env: Harness) -> None:
    stub = reflection_pb2_grpc.ServerReflectionStub(env.channel)
    requests = [reflection_pb2.ServerReflectionRequest(list_services=""),
                reflection_pb2.ServerReflectionRequest(file_containing_symbol=SERVICE_NAME)]
    responses = [r async for r in stub.ServerReflectionInfo(iter(requests), timeout=10)]
    names = {s.name for s in responses[0].list_services_response.service}
    assert {SERVICE_NAME, "grpc.health.v1.Health", "grpc.reflection.v1alpha.ServerReflection"} <= names
    files = responses[1].file_descriptor_response.file_descriptor_proto
    assert files and pb.DESCRIPTOR.serialized_pb in files


async def test_busy_port_is_an_error_not_a_shared_socket(env: Harness) -> None:
    with pytest.raises(OSError, match="cannot bind gRPC"):
        await start_grpc_server(env.runtime, ScanService(env.runtime), "127.0.0.1", env.grpc_server.port)


async def test_missing_role_is_reported_before_payload_problems(env: Harness) -> None:
    err = await grpc_error(env.stub.CompareFaces(compare_request(b"", b""), metadata=env.metadata(roles=[ROLE_READ])))
    assert err.code() == grpc.StatusCode.PERMISSION_DENIED
