"""gRPC authenticates a call from its metadata before its message is read, and bounds how many calls may wait for
authentication at once.

A call is opened as a client stream whose single message never comes (the request iterator waits on an event
that is never set): a server that reads the message before checking the token can only wait; one that checks the
metadata first answers UNAUTHENTICATED at once. Waits are bounded by ``PATIENCE_S`` (60 s): the answer takes
milliseconds, so the bound trips only when it never comes, even at a 10x slowdown.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from typing import Any

import grpc
import pytest
from harness import Harness, assert_grpc

from server.api.grpc import start_grpc_server
from server.api.grpc.gen.facerec.v1 import face_recognition_pb2 as pb
from server.auth import KeySet, TokenVerifier
from server.service import ScanService
from tooling.wait import wait_until

pytestmark = [pytest.mark.asyncio(loop_scope="module"), pytest.mark.served()]

PATIENCE_S = 60.0
METHODS = ["CompareFaces", "GetScan", "ListScans", "UpdateScan", "DeleteScan"]


def _channel(env: Harness) -> grpc.aio.Channel:
    assert env.channel is not None
    return env.channel


async def _never_sent() -> AsyncIterator[bytes]:
    await asyncio.Event().wait()
    yield b""  # pragma: no cover - never reached


def _open_call(channel: grpc.aio.Channel, method: str, metadata: tuple[tuple[str, str], ...],
               messages: AsyncIterator[bytes] | None = None) -> Any:
    call = channel.stream_unary(f"/facerec.v1.FaceRecognition/{method}", request_serializer=lambda b: b,
                                response_deserializer=lambda b: b)
    return call(messages if messages is not None else _never_sent(), metadata=metadata, timeout=PATIENCE_S)


@pytest.mark.parametrize("method", METHODS)
@pytest.mark.parametrize("metadata", [(), (("authorization", "Bearer forged.tok.en"),),
                                      (("authorization", "Basic YWxpY2U6c2VjcmV0"),)],
                         ids=["no-token", "bad-token", "not-bearer"])
async def test_unauthenticated_call_is_refused_before_its_message_arrives(
        env: Harness, method: str, metadata: tuple[tuple[str, str], ...]) -> None:
    with pytest.raises(grpc.aio.AioRpcError) as info:
        await _open_call(_channel(env), method, metadata)
    assert info.value.code() != grpc.StatusCode.DEADLINE_EXCEEDED, "the server waited for the message"
    assert_grpc(info.value, 401, "unauthorized")


async def test_authenticated_call_still_reads_its_message(env: Harness) -> None:
    release = asyncio.Event()

    async def one_message() -> AsyncIterator[bytes]:
        await release.wait()
        yield pb.ListScansRequest(size=5).SerializeToString()

    call = _open_call(_channel(env), "ListScans", env.metadata(), one_message())
    release.set()
    raw = await asyncio.wait_for(call, PATIENCE_S)
    assert pb.ListScansResponse.FromString(raw).size == 5


class GatedKeys:
    """The runtime's real keys, handed out only once the gate opens (an IdP that is slow to answer)."""

    def __init__(self, keyset: KeySet) -> None:
        self.keyset = keyset
        self.gate = asyncio.Event()
        self.waiting = 0

    async def keys(self) -> KeySet:
        self.waiting += 1
        try:
            await self.gate.wait()
        finally:
            self.waiting -= 1
        return self.keyset

    async def refresh(self, stale: KeySet) -> KeySet | None:
        return None


async def test_calls_waiting_for_authentication_are_capped(env: Harness) -> None:
    runtime = env.runtime
    real = runtime.verifier
    keys = GatedKeys(await real.source.keys())
    s = runtime.settings
    runtime.verifier = TokenVerifier(keys, issuers=["facerec-local"], audience=s.auth_audience,
                                     algorithms=s.auth_algorithms, company_claim=s.auth_company_claim,
                                     roles_claim=s.auth_roles_claim)
    server = await start_grpc_server(runtime, ScanService(runtime), "127.0.0.1", 0, max_pending_auth=4)
    channel = grpc.aio.insecure_channel(f"127.0.0.1:{server.port}")
    try:
        waiting = [asyncio.ensure_future(_open_call(channel, "ListScans", env.metadata())) for _ in range(4)]
        await wait_until(lambda: keys.waiting == 4, within_s=PATIENCE_S,
                         what="the four calls to reach the (gated) key source")
        with pytest.raises(grpc.aio.AioRpcError) as info:
            await _open_call(channel, "ListScans", env.metadata())
        assert_grpc(info.value, 429, "overloaded")
        assert dict(info.value.trailing_metadata() or ()).get("facerec-retry-after-ms")
        keys.gate.set()
        for call in waiting:
            # Authenticated now; their message never comes, so they end when the test cancels them.
            call.cancel()
        await asyncio.gather(*waiting, return_exceptions=True)
    finally:
        runtime.verifier = real
        await channel.close()
        await server.stop(0)
