"""The FaceRecognition gRPC servicer: metadata token -> Principal -> ScanService; errors -> status codes."""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Awaitable, Callable, Sequence
from typing import Any, TypeVar

import grpc
from google.protobuf.message import DecodeError, Message

from server.api.grpc.gen.facerec.v1 import face_recognition_pb2 as pb
from server.api.grpc.gen.facerec.v1 import face_recognition_pb2_grpc as pb_grpc
from server.api.grpc.status import grpc_status
from server.api.query import build_query
from server.api.schemas import wire_time
from server.auth import ROLE_COMPARE, parse_authorization_header, require_role
from server.domain import FaceAnalysis, Page, Principal, Scan, ScanQuery, ScanUpdate
from server.errors import (
    BadRequest,
    DeadlineExceeded,
    FacerecError,
    LowQuality,
    MissingField,
    PayloadTooLarge,
    Unauthorized,
)
from server.runtime import Runtime
from server.service import ScanService

log = logging.getLogger(__name__)

T = TypeVar("T")

SERVICE_NAME = "facerec.v1.FaceRecognition"
ERROR_CODE_KEY = "facerec-error-code"
ERROR_FIELD_KEY = "facerec-error-field"
RETRY_AFTER_KEY = "facerec-retry-after-ms"
# low_quality: "file1=size,sharpness;file2=pose" (the files that fail and their failing components).
FAILING_COMPONENTS_KEY = "facerec-failing-components"
SOURCE = "grpc"  # the transport label the batcher's mixed-batch metrics count
DEFAULT_PAGE_SIZE = 20


# --------------------------------------------------------------------------- domain -> wire


def face_message(f: FaceAnalysis) -> pb.Face:
    """``<Face>`` as a message (same fields as the HTTP ``FaceOut``)."""
    return pb.Face(
        x1=f.x1, y1=f.y1, x2=f.x2, y2=f.y2, landmark_68=[pb.Point(x=p.x, y=p.y) for p in f.landmark_68],
        eye_dist=f.eye_dist, face_luminance=f.face_luminance, face_occlusion=f.face_occlusion,
        face_quality=f.face_quality, left_eye_closed=f.left_eye_closed, right_eye_closed=f.right_eye_closed,
        mouth_opened=f.mouth_opened, pitch=f.pitch, yaw=f.yaw, roll=f.roll, faces_found=f.faces_found,
        detection_score=f.detection_score, orientation_correction=f.orientation_correction,
        quality_components=None if f.quality_components is None
        else pb.QualityComponents(**f.quality_components.as_dict()),
    )


def compare_message(s: Scan) -> pb.CompareFacesResponse:
    """The compare response (same fields as the HTTP ``CompareResponse``)."""
    return pb.CompareFacesResponse(
        id=str(s.id), reference=s.reference, channel=s.sales_channel.value,
        compare_result=s.compare_result.value, compare_similarity=s.compare_similarity,
        created=wire_time(s.created_date) or "",
        face1=face_message(s.face1), face2=face_message(s.face2), threshold=s.threshold or 0.0,
        quality_filter=s.quality_filter.value if s.quality_filter is not None else "",
    )


def scan_message(s: Scan) -> pb.Scan:
    """The scan entity (same fields as the HTTP ``ScanEntity``); unset optionals stay absent."""
    return pb.Scan(
        id=str(s.id), company_id=s.company_id, created_date=wire_time(s.created_date) or "",
        updated_date=wire_time(s.updated_date), created_by_id=s.created_by_id, updated_by_id=s.updated_by_id,
        elapsed_time=s.elapsed_time, compare_result=s.compare_result.value,
        compare_similarity=s.compare_similarity, sales_channel=s.sales_channel.value, reference=s.reference,
        face1=face_message(s.face1), face2=face_message(s.face2), threshold=s.threshold,
        quality_filter=None if s.quality_filter is None else s.quality_filter.value,
    )


def page_message(p: Page) -> pb.ListScansResponse:
    """A Spring Data page (the domain's page arithmetic, as the HTTP ``ScanPage``)."""
    return pb.ListScansResponse(
        content=[scan_message(s) for s in p.content], total_elements=p.total, total_pages=p.total_pages,
        number=p.page, size=p.size, number_of_elements=len(p.content), first=p.first, last=p.last,
        empty=p.empty,
        sort=pb.PageSort(sorted=True, unsorted=False, empty=False),
    )


# --------------------------------------------------------------------------- wire -> domain


def scan_query(req: pb.ListScansRequest) -> ScanQuery:
    """The list request as a domain query, validated by the same rules as the HTTP query string."""

    def opt(name: str) -> str | None:
        return str(getattr(req, name)) if req.HasField(name) else None

    return build_query(
        page=req.page, size=req.size if req.HasField("size") else DEFAULT_PAGE_SIZE, sort=list(req.sort),
        reference=opt("reference"), sales_channel=opt("sales_channel"), compare_result=opt("compare_result"),
        created_from=opt("created_from"), created_to=opt("created_to"),
    )


def scan_update(req: pb.UpdateScanRequest) -> ScanUpdate:
    """Present optional fields become changes, validated by the domain's rules (the same as HTTP's)."""

    def opt(name: str) -> str | None:
        return str(getattr(req, name)) if req.HasField(name) else None

    return ScanUpdate.parse(
        compare_result=opt("compare_result"),
        compare_similarity=req.compare_similarity if req.HasField("compare_similarity") else None,
        sales_channel=opt("sales_channel"), reference=opt("reference"),
    )


def error_metadata(err: FacerecError) -> tuple[tuple[str, str], ...]:
    """Trailing metadata carrying the stable error code (and the offending field) next to the status."""
    items = [(ERROR_CODE_KEY, err.code)]
    if err.field:
        items.append((ERROR_FIELD_KEY, err.field))
    retry_after_ms = getattr(err, "retry_after_ms", None)
    if retry_after_ms is not None:
        # The gRPC counterpart of Retry-After for RESOURCE_EXHAUSTED / UNAVAILABLE.
        items.append((RETRY_AFTER_KEY, str(retry_after_ms)))
    if isinstance(err, LowQuality):
        items.append((FAILING_COMPONENTS_KEY,
                      ";".join(f"{name}={','.join(found)}" for name, found in err.failing.items())))
    return tuple(items)


def bearer_of(metadata: Sequence[tuple[str, str | bytes]] | None) -> str:
    """The bearer token of a call's metadata; none, several or a malformed one is ``Unauthorized``."""
    values = [v for k, v in (metadata or ()) if k == "authorization"]
    if len(values) > 1:
        raise Unauthorized("more than one authorization entry")
    value = values[0] if values else None
    # Binary (-bin) metadata would arrive as bytes; a bearer token is always text.
    return parse_authorization_header(value if isinstance(value, str) else None)


def _bearer(context: grpc.aio.ServicerContext[Any, Any]) -> str:
    return bearer_of(context.invocation_metadata())


# --------------------------------------------------------------------------- registration


class Undecodable:
    """Stands for a request message that did not parse; the servicer answers it with INVALID_ARGUMENT.

    grpc's own answer to a deserializer that raises is UNKNOWN with the parser's error text in the details.
    """


UNDECODABLE = Undecodable()


def _lenient(message: type[Message]) -> Callable[[bytes], object]:
    def deserialize(raw: bytes) -> object:
        try:
            return message.FromString(raw)
        except DecodeError:  # malformed wire data, or a string field holding invalid UTF-8
            return UNDECODABLE

    return deserialize


def add_servicer(servicer: FaceRecognitionServicer, server: grpc.aio.Server) -> None:
    """Register ``servicer`` like the generated helper does, but with deserializers that never raise."""
    methods: dict[str, tuple[type[Message], type[Message]]] = {
        "CompareFaces": (pb.CompareFacesRequest, pb.CompareFacesResponse),
        "GetScan": (pb.GetScanRequest, pb.Scan),
        "ListScans": (pb.ListScansRequest, pb.ListScansResponse),
        "UpdateScan": (pb.UpdateScanRequest, pb.Scan),
        "DeleteScan": (pb.DeleteScanRequest, pb.DeleteScanResponse),
    }
    handlers = {
        name: grpc.unary_unary_rpc_method_handler(
            getattr(servicer, name), request_deserializer=_lenient(req), response_serializer=resp.SerializeToString
        )
        for name, (req, resp) in methods.items()
    }
    server.add_generic_rpc_handlers((grpc.method_handlers_generic_handler(SERVICE_NAME, handlers),))
    server.add_registered_method_handlers(SERVICE_NAME, handlers)


# --------------------------------------------------------------------------- servicer


class FaceRecognitionServicer(pb_grpc.FaceRecognitionServicer):
    """Translates messages to ScanService calls and back; validation and tenancy live in the service."""

    def __init__(self, runtime: Runtime, service: ScanService) -> None:
        self._runtime = runtime
        self._service = service

    async def CompareFaces(
        self, request: pb.CompareFacesRequest, context: grpc.aio.ServicerContext[Any, Any]
    ) -> pb.CompareFacesResponse:
        async def call(principal: Principal) -> pb.CompareFacesResponse:
            # The service checks the role first too; repeating it here keeps a caller without the role from
            # learning about payload rules before being told it lacks the role.
            require_role(principal, ROLE_COMPARE)
            self._check_files(request)
            scan = await self._service.compare(
                principal, channel=request.channel, reference=request.reference, file1=request.file1,
                file2=request.file2, source=SOURCE, deadline=self._deadline(context),
                threshold=request.threshold if request.HasField("threshold") else None,
                quality_filter=request.quality_filter if request.HasField("quality_filter") else None,
            )
            return compare_message(scan)

        return await self._run("CompareFaces", request, context, call)

    async def GetScan(
        self, request: pb.GetScanRequest, context: grpc.aio.ServicerContext[Any, Any]
    ) -> pb.Scan:
        async def call(principal: Principal) -> pb.Scan:
            return scan_message(await self._service.get(principal, request.id))

        return await self._run("GetScan", request, context, call)

    async def ListScans(
        self, request: pb.ListScansRequest, context: grpc.aio.ServicerContext[Any, Any]
    ) -> pb.ListScansResponse:
        async def call(principal: Principal) -> pb.ListScansResponse:
            return page_message(await self._service.list(principal, scan_query(request)))

        return await self._run("ListScans", request, context, call)

    async def UpdateScan(
        self, request: pb.UpdateScanRequest, context: grpc.aio.ServicerContext[Any, Any]
    ) -> pb.Scan:
        async def call(principal: Principal) -> pb.Scan:
            return scan_message(await self._service.update(principal, request.id, scan_update(request)))

        return await self._run("UpdateScan", request, context, call)

    async def DeleteScan(
        self, request: pb.DeleteScanRequest, context: grpc.aio.ServicerContext[Any, Any]
    ) -> pb.DeleteScanResponse:
        async def call(principal: Principal) -> pb.DeleteScanResponse:
            await self._service.delete(principal, request.id)
            return pb.DeleteScanResponse()

        return await self._run("DeleteScan", request, context, call)

    # ----------------------------------------------------------------------- plumbing

    def _check_files(self, request: pb.CompareFacesRequest) -> None:
        # proto3 cannot tell an absent bytes field from an empty one: both are the HTTP "missing file" case.
        limit = self._runtime.settings.max_file_bytes
        for name, data in (("file1", request.file1), ("file2", request.file2)):
            if not data:
                raise MissingField(f"{name} is required", field=name)
            if len(data) > limit:
                raise PayloadTooLarge(f"{name} is larger than {limit} bytes", field=name)

    def _deadline(self, context: grpc.aio.ServicerContext[Any, Any]) -> float:
        """The client's deadline as an absolute ``loop.time()``, capped by the server's request timeout."""
        budget = self._runtime.settings.request_timeout_s
        remaining = context.time_remaining()
        if remaining is not None:
            if remaining <= 0:
                raise DeadlineExceeded("the request deadline expired before work started")
            budget = min(budget, remaining)
        return asyncio.get_running_loop().time() + budget

    async def _run(
        self,
        method: str,
        request: object,
        context: grpc.aio.ServicerContext[Any, Any],
        call: Callable[[Principal], Awaitable[T]],
    ) -> T:
        started = time.perf_counter()
        status = grpc.StatusCode.OK
        try:
            try:
                principal = await self._runtime.verifier.verify(_bearer(context))
                if isinstance(request, Undecodable):
                    raise BadRequest("the request message could not be parsed (invalid protobuf or UTF-8)")
                return await call(principal)
            except FacerecError as err:
                failure = err
            except asyncio.CancelledError:
                # The client left (or its deadline passed): grpc cancels this task; nothing to answer.
                status = grpc.StatusCode.CANCELLED
                raise
            except Exception:
                # grpc's default answer to an unhandled exception puts its type and message in the status
                # details; the transport boundary must answer like HTTP's 500 instead: no internals.
                log.exception("gRPC %s failed", method)
                failure = FacerecError("internal error")
            status = grpc_status(failure)
            # abort() raises, so it sits outside the handlers above (which would otherwise catch it).
            await context.abort(status, failure.detail, trailing_metadata=error_metadata(failure))
            raise AssertionError("context.abort returned")  # pragma: no cover - abort always raises
        finally:
            self._runtime.metrics.grpc_request_duration.labels(method=method, code=status.name).observe(
                time.perf_counter() - started
            )
