"""The error taxonomy -> gRPC status table, and how the servicer turns raised errors into aborts."""

from __future__ import annotations

import asyncio
import inspect
import logging
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import grpc
import pytest

import server.auth  # noqa: F401 - imported for its FacerecError subclasses (walked below)
from server import errors
from server.api.grpc.gen.facerec.v1 import face_recognition_pb2 as pb
from server.api.grpc.servicer import FaceRecognitionServicer, error_metadata
from server.api.grpc.status import grpc_status
from server.domain import Principal
from server.metrics import Metrics
from server.settings import Settings

S = grpc.StatusCode
EXPECTED: dict[type[errors.FacerecError], grpc.StatusCode] = {
    errors.FacerecError: S.INTERNAL,
    errors.BadRequest: S.INVALID_ARGUMENT,
    errors.InvalidField: S.INVALID_ARGUMENT,
    errors.MissingField: S.INVALID_ARGUMENT,
    errors.InvalidId: S.INVALID_ARGUMENT,
    errors.Unauthorized: S.UNAUTHENTICATED,
    errors.Forbidden: S.PERMISSION_DENIED,
    errors.NotFound: S.NOT_FOUND,
    errors.PayloadTooLarge: S.INVALID_ARGUMENT,
    errors.UnsupportedMediaType: S.INVALID_ARGUMENT,
    errors.UnsupportedImage: S.INVALID_ARGUMENT,
    errors.ImageTooLarge: S.INVALID_ARGUMENT,
    errors.NoFace: S.FAILED_PRECONDITION,
    errors.FaceNotComparable: S.FAILED_PRECONDITION,
    errors.LowQuality: S.FAILED_PRECONDITION,
    errors.Overloaded: S.RESOURCE_EXHAUSTED,
    errors.Unavailable: S.UNAVAILABLE,
    errors.DeadlineExceeded: S.DEADLINE_EXCEEDED,
    errors.InferenceFailed: S.INTERNAL,
    errors.ModelBuildError: S.INTERNAL,
}


def _all_subclasses(cls: type[errors.FacerecError]) -> set[type[errors.FacerecError]]:
    found = set(cls.__subclasses__())
    for sub in list(found):
        found |= _all_subclasses(sub)
    return found


@pytest.mark.parametrize(("cls", "code"), EXPECTED.items(), ids=[c.__name__ for c in EXPECTED])
def test_taxonomy_maps_to_grpc_code(cls: type[errors.FacerecError], code: grpc.StatusCode) -> None:
    assert grpc_status(cls("x")) == code


def test_every_error_of_the_taxonomy_is_in_the_table() -> None:
    defined = {obj for _, obj in inspect.getmembers(errors, inspect.isclass)
               if issubclass(obj, errors.FacerecError) and obj.__module__ == errors.__name__}
    assert defined == set(EXPECTED)


def test_private_subclasses_map_like_their_public_base() -> None:
    for cls in _all_subclasses(errors.FacerecError) - set(EXPECTED):
        base = next(b for b in cls.__mro__ if b in EXPECTED)
        assert grpc_status(cls("x")) == EXPECTED[base], cls


def test_no_error_maps_to_ok_or_unknown() -> None:
    for cls in EXPECTED:
        assert grpc_status(cls("x")) not in (S.OK, S.UNKNOWN)


def test_error_metadata() -> None:
    assert error_metadata(errors.NoFace("no face found in file2", field="file2")) == (
        ("facerec-error-code", "no_face"), ("facerec-error-field", "file2"))
    assert error_metadata(errors.NotFound()) == (("facerec-error-code", "not_found"),)
    assert error_metadata(errors.Overloaded(retry_after_ms=250)) == (
        ("facerec-error-code", "overloaded"), ("facerec-retry-after-ms", "250"))


# --------------------------------------------------------------------------- servicer -> abort


class Aborted(Exception):
    def __init__(self, code: grpc.StatusCode, details: str, trailing: tuple[tuple[str, str], ...]) -> None:
        super().__init__(code, details)
        self.code, self.details, self.trailing = code, details, dict(trailing)


class FakeContext:
    def __init__(self, metadata: tuple[tuple[str, str], ...] = (("authorization", "Bearer a.b.c"),),
                 remaining: float | None = None) -> None:
        self.metadata = metadata
        self.remaining = remaining

    def invocation_metadata(self) -> tuple[tuple[str, str], ...]:
        return self.metadata

    def time_remaining(self) -> float | None:
        return self.remaining

    async def abort(self, code: grpc.StatusCode, details: str = "",
                    trailing_metadata: tuple[tuple[str, str], ...] = ()) -> None:
        raise Aborted(code, details, trailing_metadata)


class FakeVerifier:
    async def verify(self, token: str) -> Principal:
        return Principal("acme", "alice", frozenset({"face:read", "face:compare"}))


class FakeService:
    def __init__(self, exc: BaseException | None = None) -> None:
        self.exc = exc
        self.deadlines: list[float | None] = []

    async def get(self, principal: Principal, scan_id: str) -> Any:
        assert self.exc is not None
        raise self.exc

    async def compare(self, principal: Principal, **kwargs: Any) -> Any:
        self.deadlines.append(kwargs["deadline"])
        assert kwargs["source"] == "grpc"
        raise errors.NotFound("stop here")


def servicer(service: FakeService, tmp_path: Path) -> tuple[FaceRecognitionServicer, Metrics]:
    metrics = Metrics()
    runtime = SimpleNamespace(settings=Settings(data_dir=tmp_path, request_timeout_s=30.0), metrics=metrics,
                              verifier=FakeVerifier())
    return FaceRecognitionServicer(runtime, service), metrics  # type: ignore[arg-type]


@pytest.mark.parametrize("cls", list(EXPECTED), ids=[c.__name__ for c in EXPECTED])
async def test_servicer_aborts_with_the_mapped_code(cls: type[errors.FacerecError], tmp_path: Path) -> None:
    err = cls("safe detail", field="f") if "field" in inspect.signature(cls).parameters else cls("safe detail")
    svc, metrics = servicer(FakeService(err), tmp_path)
    with pytest.raises(Aborted) as info:
        await svc.GetScan(pb.GetScanRequest(id="x"), FakeContext())
    assert info.value.code == EXPECTED[cls]
    assert info.value.details == "safe detail"
    assert info.value.trailing["facerec-error-code"] == cls.code
    assert metrics.histogram_stats("facerec_grpc_request_duration_seconds", method="GetScan",
                                   code=EXPECTED[cls].name)[1] == 1


async def test_unexpected_exception_is_internal_without_internals(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    svc, _ = servicer(FakeService(RuntimeError("password=hunter2 at db.internal:5432")), tmp_path)
    with caplog.at_level(logging.ERROR), pytest.raises(Aborted) as info:
        await svc.GetScan(pb.GetScanRequest(id="x"), FakeContext())
    assert (info.value.code, info.value.details) == (S.INTERNAL, "internal error")
    assert info.value.trailing == {"facerec-error-code": "internal_error"}
    assert "hunter2" in caplog.text  # logged for operators, never sent to the client


async def test_cancellation_propagates_and_is_recorded(tmp_path: Path) -> None:
    svc, metrics = servicer(FakeService(asyncio.CancelledError()), tmp_path)
    with pytest.raises(asyncio.CancelledError):
        await svc.GetScan(pb.GetScanRequest(id="x"), FakeContext())
    assert metrics.histogram_stats("facerec_grpc_request_duration_seconds", method="GetScan",
                                   code="CANCELLED")[1] == 1


@pytest.mark.parametrize(
    "metadata",
    [(), (("authorization", "Bearer a.b.c"), ("authorization", "Bearer d.e.f")), (("authorization", "a.b.c"),)],
    ids=["none", "twice", "no-scheme"],
)
async def test_bad_authorization_metadata_is_unauthenticated(metadata: tuple[tuple[str, str], ...],
                                                             tmp_path: Path) -> None:
    svc, _ = servicer(FakeService(errors.NotFound()), tmp_path)
    with pytest.raises(Aborted) as info:
        await svc.GetScan(pb.GetScanRequest(id="x"), FakeContext(metadata))
    assert info.value.code == S.UNAUTHENTICATED


def _compare_request() -> pb.CompareFacesRequest:
    return pb.CompareFacesRequest(channel="WEB", reference="r", file1=b"1", file2=b"2")


async def test_client_deadline_reaches_the_service_as_a_loop_deadline(tmp_path: Path) -> None:
    service = FakeService()
    svc, _ = servicer(service, tmp_path)
    loop = asyncio.get_running_loop()
    before = loop.time()
    with pytest.raises(Aborted):
        await svc.CompareFaces(_compare_request(), FakeContext(remaining=2.0))
    with pytest.raises(Aborted):
        await svc.CompareFaces(_compare_request(), FakeContext(remaining=None))
    after = loop.time()
    short, unbounded = service.deadlines
    assert short is not None and before + 2.0 <= short <= after + 2.0
    # No client deadline: the server's own request timeout still bounds the work.
    assert unbounded is not None and before + 30.0 <= unbounded <= after + 30.0


async def test_expired_deadline_never_reaches_the_service(tmp_path: Path) -> None:
    service = FakeService()
    svc, _ = servicer(service, tmp_path)
    with pytest.raises(Aborted) as info:
        await svc.CompareFaces(_compare_request(), FakeContext(remaining=-0.001))
    assert info.value.code == S.DEADLINE_EXCEEDED
    assert info.value.trailing["facerec-error-code"] == "deadline_exceeded"
    assert service.deadlines == []
