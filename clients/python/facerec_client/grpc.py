"""gRPC clients (grpcio): :class:`GrpcClient` (sync) and :class:`AsyncGrpcClient` (grpc.aio), same methods and
results as the HTTP clients. The bearer token travels in the ``authorization`` metadata."""

from __future__ import annotations

import asyncio
import time
import uuid
from collections.abc import Awaitable, Callable, Sequence
from types import TracebackType
from typing import Any, Self

import grpc

from facerec_client._gen.facerec.v1 import face_recognition_pb2 as pb
from facerec_client._gen.facerec.v1 import face_recognition_pb2_grpc as pb_grpc
from facerec_client.errors import ApiError, RetryPolicy, failing_from_trailer
from facerec_client.models import (
    Channel,
    Comparison,
    QualityFilter,
    Scan,
    ScanFilter,
    ScanPage,
    Verdict,
    text_of,
)

ERROR_CODE_KEY = "facerec-error-code"
ERROR_FIELD_KEY = "facerec-error-field"
RETRY_AFTER_KEY = "facerec-retry-after-ms"
FAILING_COMPONENTS_KEY = "facerec-failing-components"
# Two images up to the server's default 10 MiB file limit each fit; responses are far smaller.
MAX_MESSAGE_BYTES = 64 * 1024 * 1024
CHANNEL_OPTIONS: tuple[tuple[str, int], ...] = (("grpc.max_send_message_length", MAX_MESSAGE_BYTES),
                                                ("grpc.max_receive_message_length", MAX_MESSAGE_BYTES))
Token = str | Callable[[], str]
_STUB: Any = pb_grpc.FaceRecognitionStub  # generated code is untyped


def _error(exc: grpc.RpcError) -> ApiError:
    """A failed call as :class:`ApiError`, with the server's code, field and retry hint from the trailers."""
    call: Any = exc
    trailers = {k: v for k, v in (call.trailing_metadata() or ()) if isinstance(v, str)}
    code = call.code()
    retry_ms = trailers.get(RETRY_AFTER_KEY)
    retry_after_s = int(retry_ms) / 1000.0 if retry_ms and retry_ms.isdigit() else None
    return ApiError(trailers.get(ERROR_CODE_KEY) or code.name.lower(), call.details() or code.name,
                    grpc_code=code.name, field=trailers.get(ERROR_FIELD_KEY), retry_after_s=retry_after_s,
                    failing_components=failing_from_trailer(trailers.get(FAILING_COMPONENTS_KEY)))


def _compare_request(file1: bytes, file2: bytes, channel: Channel | str, reference: str, *, threshold: float | None,
                     quality_filter: QualityFilter | str | None) -> pb.CompareFacesRequest:
    req = pb.CompareFacesRequest(channel=text_of(channel), reference=reference, file1=file1, file2=file2)
    if threshold is not None:
        req.threshold = float(threshold)
    if quality_filter is not None:
        req.quality_filter = text_of(quality_filter)
    return req


def _update_request(scan_id: uuid.UUID | str, compare_result: Verdict | str | None, compare_similarity: float | None,
                    sales_channel: Channel | str | None, reference: str | None) -> pb.UpdateScanRequest:
    req = pb.UpdateScanRequest(id=str(scan_id))
    if compare_result is not None:
        req.compare_result = text_of(compare_result)
    if compare_similarity is not None:
        req.compare_similarity = compare_similarity
    if sales_channel is not None:
        req.sales_channel = text_of(sales_channel)
    if reference is not None:
        req.reference = reference
    return req


def _list_request(q: ScanFilter) -> pb.ListScansRequest:
    req = pb.ListScansRequest(page=q.page, size=q.size, sort=list(q.sort))
    for name in ("reference", "sales_channel", "compare_result", "created_from", "created_to"):
        value = getattr(q, name)
        if value is not None:
            setattr(req, name, text_of(value))
    return req


class _Base:
    def __init__(self, token: Token, retry: RetryPolicy | None, timeout: float) -> None:
        self._token = token
        self.retry = retry or RetryPolicy()
        self.timeout = timeout

    def _metadata(self) -> tuple[tuple[str, str], ...]:
        token = self._token() if callable(self._token) else self._token
        return (("authorization", f"Bearer {token}"),)


class GrpcClient(_Base):
    """Synchronous gRPC client on one channel to ``target`` (``host:port``)."""

    def __init__(self, target: str, token: Token, *, timeout: float = 60.0, retry: RetryPolicy | None = None,
                 options: Sequence[tuple[str, Any]] = CHANNEL_OPTIONS,
                 sleep: Callable[[float], None] = time.sleep) -> None:
        super().__init__(token, retry, timeout)
        self._channel = grpc.insecure_channel(target, options=list(options))
        self._stub: Any = _STUB(self._channel)
        self._sleep = sleep

    def __enter__(self) -> Self:
        return self

    def __exit__(self, exc_type: type[BaseException] | None, exc: BaseException | None,
                 tb: TracebackType | None) -> None:
        self.close()

    def close(self) -> None:
        self._channel.close()

    def _call(self, method: Callable[..., Any], request: Any) -> Any:
        attempt = 0
        while True:
            try:
                return method(request, metadata=self._metadata(), timeout=self.timeout)
            except grpc.RpcError as exc:
                err = _error(exc)
                if not self.retry.should_retry(attempt, err):
                    raise err from None
                self._sleep(self.retry.delay(attempt, err))
                attempt += 1

    def compare(self, file1: bytes, file2: bytes, *, channel: Channel | str = Channel.OTHER, reference: str,
                threshold: float | None = None, quality_filter: QualityFilter | str | None = None) -> Comparison:
        req = _compare_request(file1, file2, channel, reference, threshold=threshold,
                               quality_filter=quality_filter)
        return Comparison.from_proto(self._call(self._stub.CompareFaces, req))

    def get_scan(self, scan_id: uuid.UUID | str) -> Scan:
        return Scan.from_proto(self._call(self._stub.GetScan, pb.GetScanRequest(id=str(scan_id))))

    def update_scan(self, scan_id: uuid.UUID | str, *, compare_result: Verdict | str | None = None,
                    compare_similarity: float | None = None, sales_channel: Channel | str | None = None,
                    reference: str | None = None) -> Scan:
        req = _update_request(scan_id, compare_result, compare_similarity, sales_channel, reference)
        return Scan.from_proto(self._call(self._stub.UpdateScan, req))

    def list_scans(self, query: ScanFilter | None = None, **filters: Any) -> ScanPage:
        req = _list_request(query or ScanFilter(**filters))
        return ScanPage.from_proto(self._call(self._stub.ListScans, req))

    def delete_scan(self, scan_id: uuid.UUID | str) -> None:
        self._call(self._stub.DeleteScan, pb.DeleteScanRequest(id=str(scan_id)))


class AsyncGrpcClient(_Base):
    """Asynchronous gRPC client (grpc.aio); same methods as :class:`GrpcClient`. Create it inside a running loop."""

    def __init__(self, target: str, token: Token, *, timeout: float = 60.0, retry: RetryPolicy | None = None,
                 options: Sequence[tuple[str, Any]] = CHANNEL_OPTIONS,
                 sleep: Callable[[float], Awaitable[None]] = asyncio.sleep) -> None:
        super().__init__(token, retry, timeout)
        self._channel = grpc.aio.insecure_channel(target, options=list(options))
        self._stub: Any = _STUB(self._channel)
        self._sleep = sleep

    async def __aenter__(self) -> Self:
        return self

    async def __aexit__(self, exc_type: type[BaseException] | None, exc: BaseException | None,
                        tb: TracebackType | None) -> None:
        await self.aclose()

    async def aclose(self) -> None:
        await self._channel.close()

    async def _call(self, method: Callable[..., Any], request: Any) -> Any:
        attempt = 0
        while True:
            try:
                return await method(request, metadata=self._metadata(), timeout=self.timeout)
            except grpc.aio.AioRpcError as exc:
                err = _error(exc)
                if not self.retry.should_retry(attempt, err):
                    raise err from None
                await self._sleep(self.retry.delay(attempt, err))
                attempt += 1

    async def compare(self, file1: bytes, file2: bytes, *, channel: Channel | str = Channel.OTHER, reference: str,
                      threshold: float | None = None,
                      quality_filter: QualityFilter | str | None = None) -> Comparison:
        req = _compare_request(file1, file2, channel, reference, threshold=threshold,
                               quality_filter=quality_filter)
        return Comparison.from_proto(await self._call(self._stub.CompareFaces, req))

    async def get_scan(self, scan_id: uuid.UUID | str) -> Scan:
        return Scan.from_proto(await self._call(self._stub.GetScan, pb.GetScanRequest(id=str(scan_id))))

    async def update_scan(self, scan_id: uuid.UUID | str, *, compare_result: Verdict | str | None = None,
                          compare_similarity: float | None = None, sales_channel: Channel | str | None = None,
                          reference: str | None = None) -> Scan:
        req = _update_request(scan_id, compare_result, compare_similarity, sales_channel, reference)
        return Scan.from_proto(await self._call(self._stub.UpdateScan, req))

    async def list_scans(self, query: ScanFilter | None = None, **filters: Any) -> ScanPage:
        req = _list_request(query or ScanFilter(**filters))
        return ScanPage.from_proto(await self._call(self._stub.ListScans, req))

    async def delete_scan(self, scan_id: uuid.UUID | str) -> None:
        await self._call(self._stub.DeleteScan, pb.DeleteScanRequest(id=str(scan_id)))
