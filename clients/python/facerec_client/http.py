"""HTTP clients (httpx): :class:`Client` (sync) and :class:`AsyncClient`, with the same methods and results."""

from __future__ import annotations

import asyncio
import time
import uuid
from collections.abc import Awaitable, Callable
from types import TracebackType
from typing import Any, Self, TypeVar

import httpx

from facerec_client.errors import ApiError, RetryPolicy, failing_from_body, retry_after_from
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

T = TypeVar("T")
COMPARE_PATH = "/v1/compare_face"
SCANS_PATH = "/v1/face-recognition"
Token = str | Callable[[], str]


def _error(r: httpx.Response) -> ApiError:
    """An error response as :class:`ApiError` (problem+json when the server sent one)."""
    body: dict[str, Any] = {}
    if "json" in r.headers.get("content-type", ""):
        try:
            parsed = r.json()
        except ValueError:
            parsed = None
        if isinstance(parsed, dict):
            body = parsed
    return ApiError(str(body.get("code") or f"http_{r.status_code}"), str(body.get("detail") or r.reason_phrase),
                    status=r.status_code, field=body.get("field"),
                    request_id=body.get("request_id") or r.headers.get("x-request-id"),
                    retry_after_s=retry_after_from(r.headers.get("retry-after"), body.get("retry_after_ms")),
                    failing_components=failing_from_body(body.get("failing_components")))


def _compare_form(channel: Channel | str, reference: str, threshold: float | None,
                  quality_filter: QualityFilter | str | None) -> dict[str, str]:
    form = {"channel": text_of(channel), "reference": reference}
    if threshold is not None:
        form["threshold"] = repr(float(threshold))
    if quality_filter is not None:
        form["quality_filter"] = text_of(quality_filter)
    return form


def _compare_files(file1: bytes, file2: bytes) -> dict[str, tuple[str, bytes, str]]:
    # The server decides what an image is by decoding it: names and content types are not trusted.
    return {"file1": ("file1", file1, "application/octet-stream"),
            "file2": ("file2", file2, "application/octet-stream")}


def _update_body(compare_result: Verdict | str | None, compare_similarity: float | None,
                 sales_channel: Channel | str | None, reference: str | None) -> dict[str, Any]:
    body: dict[str, Any] = {}
    if compare_result is not None:
        body["compareResult"] = text_of(compare_result)
    if compare_similarity is not None:
        body["compareSimilarity"] = compare_similarity
    if sales_channel is not None:
        body["salesChannel"] = text_of(sales_channel)
    if reference is not None:
        body["reference"] = reference
    return body


class _Base:
    def __init__(self, token: Token, retry: RetryPolicy | None) -> None:
        self._token = token
        self.retry = retry or RetryPolicy()

    def _headers(self) -> dict[str, str]:
        token = self._token() if callable(self._token) else self._token
        return {"Authorization": f"Bearer {token}"}


class Client(_Base):
    """Synchronous HTTP client. ``token`` is a bearer token or a callable returning a fresh one per request."""

    def __init__(self, base_url: str, token: Token, *, timeout: float = 60.0, retry: RetryPolicy | None = None,
                 transport: httpx.BaseTransport | None = None, limits: httpx.Limits | None = None,
                 sleep: Callable[[float], None] = time.sleep) -> None:
        super().__init__(token, retry)
        self._http = httpx.Client(base_url=base_url, timeout=timeout, transport=transport,
                                  limits=limits or httpx.Limits())
        self._sleep = sleep

    def __enter__(self) -> Self:
        return self

    def __exit__(self, exc_type: type[BaseException] | None, exc: BaseException | None,
                 tb: TracebackType | None) -> None:
        self.close()

    def close(self) -> None:
        self._http.close()

    def _send(self, method: str, url: str, **kwargs: Any) -> httpx.Response:
        attempt = 0
        while True:
            r = self._http.request(method, url, headers=self._headers(), **kwargs)
            if r.is_success:
                return r
            err = _error(r)
            if not self.retry.should_retry(attempt, err):
                raise err
            self._sleep(self.retry.delay(attempt, err))
            attempt += 1

    def compare(self, file1: bytes, file2: bytes, *, channel: Channel | str = Channel.OTHER, reference: str,
                threshold: float | None = None, quality_filter: QualityFilter | str | None = None) -> Comparison:
        """Compare the most prominent faces of two images; the scan is stored under ``reference``.

        ``threshold`` (0..1 on the ``compare_similarity`` scale) and ``quality_filter`` (NONE, LOW, MEDIUM, HIGH,
        AUTO) override the server's defaults for this request; a face below the filter raises ``ApiError`` with
        code ``low_quality`` and ``failing_components``.
        """
        r = self._send("POST", COMPARE_PATH, data=_compare_form(channel, reference, threshold, quality_filter),
                       files=_compare_files(file1, file2))
        return Comparison.from_json(r.json())

    def get_scan(self, scan_id: uuid.UUID | str) -> Scan:
        return Scan.from_json(self._send("GET", f"{SCANS_PATH}/{scan_id}").json())

    def update_scan(self, scan_id: uuid.UUID | str, *, compare_result: Verdict | str | None = None,
                    compare_similarity: float | None = None, sales_channel: Channel | str | None = None,
                    reference: str | None = None) -> Scan:
        body = _update_body(compare_result, compare_similarity, sales_channel, reference)
        return Scan.from_json(self._send("PUT", f"{SCANS_PATH}/{scan_id}", json=body).json())

    def list_scans(self, query: ScanFilter | None = None, **filters: Any) -> ScanPage:
        """A page of scans: pass a :class:`ScanFilter` or its fields (``page=``, ``size=``, ``sales_channel=``)."""
        q = query or ScanFilter(**filters)
        return ScanPage.from_json(self._send("GET", SCANS_PATH, params=q.query()).json())

    def delete_scan(self, scan_id: uuid.UUID | str) -> None:
        self._send("DELETE", f"{SCANS_PATH}/{scan_id}")


class AsyncClient(_Base):
    """Asynchronous HTTP client (one pooled httpx.AsyncClient); same methods as :class:`Client`."""

    def __init__(self, base_url: str, token: Token, *, timeout: float = 60.0, retry: RetryPolicy | None = None,
                 transport: httpx.AsyncBaseTransport | None = None, limits: httpx.Limits | None = None,
                 sleep: Callable[[float], Awaitable[None]] = asyncio.sleep) -> None:
        super().__init__(token, retry)
        self._http = httpx.AsyncClient(base_url=base_url, timeout=timeout, transport=transport,
                                       limits=limits or httpx.Limits())
        self._sleep = sleep

    async def __aenter__(self) -> Self:
        return self

    async def __aexit__(self, exc_type: type[BaseException] | None, exc: BaseException | None,
                        tb: TracebackType | None) -> None:
        await self.aclose()

    async def aclose(self) -> None:
        await self._http.aclose()

    async def _send(self, method: str, url: str, **kwargs: Any) -> httpx.Response:
        attempt = 0
        while True:
            r = await self._http.request(method, url, headers=self._headers(), **kwargs)
            if r.is_success:
                return r
            err = _error(r)
            if not self.retry.should_retry(attempt, err):
                raise err
            await self._sleep(self.retry.delay(attempt, err))
            attempt += 1

    async def compare(self, file1: bytes, file2: bytes, *, channel: Channel | str = Channel.OTHER, reference: str,
                      threshold: float | None = None,
                      quality_filter: QualityFilter | str | None = None) -> Comparison:
        r = await self._send("POST", COMPARE_PATH, data=_compare_form(channel, reference, threshold, quality_filter),
                             files=_compare_files(file1, file2))
        return Comparison.from_json(r.json())

    async def get_scan(self, scan_id: uuid.UUID | str) -> Scan:
        return Scan.from_json((await self._send("GET", f"{SCANS_PATH}/{scan_id}")).json())

    async def update_scan(self, scan_id: uuid.UUID | str, *, compare_result: Verdict | str | None = None,
                          compare_similarity: float | None = None, sales_channel: Channel | str | None = None,
                          reference: str | None = None) -> Scan:
        body = _update_body(compare_result, compare_similarity, sales_channel, reference)
        return Scan.from_json((await self._send("PUT", f"{SCANS_PATH}/{scan_id}", json=body)).json())

    async def list_scans(self, query: ScanFilter | None = None, **filters: Any) -> ScanPage:
        q = query or ScanFilter(**filters)
        return ScanPage.from_json((await self._send("GET", SCANS_PATH, params=q.query())).json())

    async def delete_scan(self, scan_id: uuid.UUID | str) -> None:
        await self._send("DELETE", f"{SCANS_PATH}/{scan_id}")
