"""Helpers of the bad-input, auth-attack, privacy and header tests: one runtime served over HTTP and gRPC at once.

Nothing here is mocked: the Litestar app (in-process ASGI) and the grpc.aio server (a loopback port) are the real
ones, on the real runtime of the module's store and inference backend.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
from collections.abc import AsyncIterator, Iterable
from typing import Any

import grpc
import httpx
import pytest

from server.api.grpc import start_grpc_server
from server.api.grpc.gen.facerec.v1 import face_recognition_pb2 as pb
from server.api.grpc.gen.facerec.v1 import face_recognition_pb2_grpc as pb_grpc
from server.app import create_app
from server.auth import ALL_ROLES, LOCAL_ISSUER
from server.errors import GRPC_CODES
from server.runtime import Runtime
from server.service import ScanService

COMPARE = "/v1/compare_face"
SCANS = "/v1/face-recognition"
Metadata = tuple[tuple[str, str], ...]


@dataclasses.dataclass
class Edge:
    """A runtime with its HTTP client (ASGI, in-process) and gRPC stub (loopback socket)."""

    runtime: Runtime
    http: httpx.AsyncClient
    stub: pb_grpc.FaceRecognitionStub
    channel: grpc.aio.Channel

    def token(self, company: str = "acme", user: str = "alice", roles: Iterable[str] = ALL_ROLES) -> str:
        issuer = self.runtime.local_issuer
        assert issuer is not None
        s = self.runtime.settings
        return issuer.mint(company, user, roles, 600, s.auth_audience, LOCAL_ISSUER,
                           company_claim=s.auth_company_claim, roles_claim=s.auth_roles_claim)

    def headers(self, company: str = "acme", user: str = "alice",
                roles: Iterable[str] = ALL_ROLES) -> dict[str, str]:
        return {"Authorization": f"Bearer {self.token(company, user, roles)}"}

    def metadata(self, company: str = "acme", user: str = "alice", roles: Iterable[str] = ALL_ROLES) -> Metadata:
        return (("authorization", f"Bearer {self.token(company, user, roles)}"),)

    async def http_compare(self, file1: bytes, file2: bytes, *, headers: dict[str, str] | None = None,
                           channel: str = "WEB", reference: str = "ref", name1: str = "a.jpg") -> httpx.Response:
        return await self.http.post(
            COMPARE, headers=self.headers() if headers is None else headers,
            data={"channel": channel, "reference": reference},
            files={"file1": (name1, file1, "image/jpeg"), "file2": ("b.jpg", file2, "image/jpeg")})

    async def grpc_compare(self, file1: bytes, file2: bytes, *, metadata: Metadata | None = None,
                           channel: str = "WEB", reference: str = "ref") -> pb.CompareFacesResponse:
        req = pb.CompareFacesRequest(channel=channel, reference=reference, file1=file1, file2=file2)
        response: pb.CompareFacesResponse = await self.stub.CompareFaces(
            req, metadata=self.metadata() if metadata is None else metadata, timeout=60)
        return response


@contextlib.asynccontextmanager
async def serve_both(runtime: Runtime) -> AsyncIterator[Edge]:
    """Serve ``runtime`` over HTTP (ASGI) and gRPC (127.0.0.1, a free port) until the block ends."""
    server = await start_grpc_server(runtime, ScanService(runtime), "127.0.0.1", 0)
    channel = grpc.aio.insecure_channel(f"127.0.0.1:{server.port}")
    transport = httpx.ASGITransport(app=create_app(runtime.settings, runtime))
    try:
        async with httpx.AsyncClient(transport=transport, base_url="http://facerec.test", timeout=60) as http:
            yield Edge(runtime, http, pb_grpc.FaceRecognitionStub(channel), channel)
    finally:
        await channel.close()
        await server.stop(0)


def assert_problem(resp: httpx.Response, status: int, code: str, field: str | None = None) -> dict[str, Any]:
    """``resp`` is the problem+json of ``status`` / ``code`` (and ``field``), with the request id."""
    assert resp.status_code == status, resp.text
    assert resp.headers["content-type"].startswith("application/problem+json"), resp.headers
    body: dict[str, Any] = resp.json()
    assert body["status"] == status and body["code"] == code, body
    assert body["request_id"] == resp.headers["x-request-id"]
    if field is not None:
        assert body.get("field") == field, body
    return body


async def grpc_error(call: Any) -> grpc.aio.AioRpcError:
    """The error a gRPC call ends with (it must end with one, within a minute)."""
    with pytest.raises(grpc.aio.AioRpcError) as info:
        await asyncio.wait_for(call, 60)
    return info.value


def assert_grpc(err: grpc.aio.AioRpcError, status: int, code: str, field: str | None = None) -> None:
    """``err`` carries the status code mapped from HTTP ``status`` and the ``facerec-error-*`` trailers."""
    assert err.code() == GRPC_CODES[status], (err.code(), err.details())
    meta = dict(err.trailing_metadata() or ())
    assert meta.get("facerec-error-code") == code, meta
    if field is not None:
        assert meta.get("facerec-error-field") == field, meta
