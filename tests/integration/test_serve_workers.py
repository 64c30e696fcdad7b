"""``facerec serve --workers 2``: two real worker processes on one HTTP and one gRPC port behind a supervisor.

Which worker accepts a connection is the kernel's choice, so the tests that need a request on a given worker
make it the only one able to accept: the other is paused (SIGSTOP) while the connection is made, and a probe sent
on a second connection right after proves where the first one went (the listen queue is first-in first-out, and
a paused process accepts nothing). No test depends on timing.
"""

from __future__ import annotations

import asyncio
import contextlib
import http.client
import json
import os
import re
import signal
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import grpc
import httpx
import pytest
from grpc_health.v1 import health_pb2, health_pb2_grpc
from harness import COMPARE, LOCAL_CPU, PAIR, WAIT_S

from server.api.grpc.gen.facerec.v1 import face_recognition_pb2 as pb
from server.api.grpc.gen.facerec.v1 import face_recognition_pb2_grpc as pb_grpc
from server.group import STALE_S, WORKER_HEADER
from server.settings import PROJECT_ROOT
from tooling.serve import ServeProcess
from tooling.triton_local import Batching, LocalTriton, TritonUnavailableError
from tooling.wait import wait_for, wait_until

Reply = tuple[int, dict[str, str], bytes]
# Starting two workers on a loaded 2-core machine (imports, models, store) takes ~10 s; 10x that still fits.
START_S = 240.0
# A paused worker is reported after STALE_S of silence; gRPC health refreshes every 5 s on top of that.
STALE_WAIT_S = STALE_S + WAIT_S


# --------------------------------------------------------------------------- plain HTTP, one connection each


def request(server: ServeProcess, method: str, path: str, *, body: bytes | None = None,
            headers: dict[str, str] | None = None) -> Reply:
    """One request on a fresh connection (closed after it), so every call is a new accept."""
    return Pending(server, method, path, body=body, headers=headers).result()


class Pending:
    """A request whose connection is established (in the listen queue or accepted) and whose bytes are sent."""

    def __init__(self, server: ServeProcess, method: str, path: str, *, body: bytes | None = None,
                 headers: dict[str, str] | None = None) -> None:
        self.conn = http.client.HTTPConnection("127.0.0.1", server.port, timeout=3 * WAIT_S)
        self.conn.connect()  # returns once the kernel completed the handshake: the connection is queued
        self.conn.request(method, path, body=body, headers={"Connection": "close", **(headers or {})})

    def result(self) -> Reply:
        try:
            r = self.conn.getresponse()
            return r.status, {k.lower(): v for k, v in r.getheaders()}, r.read()
        finally:
            self.conn.close()


def compare_request(token: str, a: bytes, b: bytes, reference: str) -> tuple[bytes, dict[str, str]]:
    """The multipart body and headers of one compare."""
    req = httpx.Request("POST", f"http://127.0.0.1{COMPARE}", headers={"Authorization": f"Bearer {token}"},
                        data={"channel": "WEB", "reference": reference},
                        files={"file1": ("a.jpg", a), "file2": ("b.jpg", b)})
    return req.read(), {k: v for k, v in req.headers.items() if k.lower() != "host"}


def worker_of(reply: Reply) -> int:
    return int(reply[1][WORKER_HEADER])


def readiness(server: ServeProcess) -> tuple[int, dict[str, Any]]:
    status, _, body = request(server, "GET", "/health/ready")
    return status, json.loads(body)


def worker_pids(server: ServeProcess) -> dict[int, int]:
    status, body = readiness(server)
    assert status == 200, body
    return {w["worker"]: w["pid"] for w in body["workers"]}


# --------------------------------------------------------------------------- pausing workers


def _state(pid: int) -> str:
    with open(f"/proc/{pid}/stat") as f:
        return f.read().rsplit(")", 1)[1].split()[0]


def stop(pid: int) -> None:
    """SIGSTOP ``pid`` and wait until the kernel reports it stopped (it runs no more code, accepts nothing)."""
    os.kill(pid, signal.SIGSTOP)
    wait_for(lambda: _state(pid) == "T", within_s=WAIT_S, what=f"pid {pid} stopped")


def resume(pid: int) -> None:
    with contextlib.suppress(ProcessLookupError):
        os.kill(pid, signal.SIGCONT)


@contextlib.contextmanager
def paused(*pids: int) -> Iterator[None]:
    """``pids`` stopped inside the block, resumed on the way out."""
    try:
        for pid in pids:
            stop(pid)
        yield
    finally:
        for pid in pids:
            resume(pid)


@contextlib.contextmanager
def only(server: ServeProcess, index: int) -> Iterator[int]:
    """Every other worker paused: ``index`` alone accepts connections. Yields its pid."""
    pids = worker_pids(server)
    with paused(*(pid for i, pid in pids.items() if i != index)):
        yield pids[index]


def queue_on(server: ServeProcess, index: int, method: str, path: str, *, body: bytes | None = None,
             headers: dict[str, str] | None = None) -> Pending:
    """A request accepted by worker ``index`` (and still in progress there, its reply not read yet)."""
    with only(server, index):
        pending = Pending(server, method, path, body=body, headers=headers)
        # Accepted in queue order by the one worker accepting: when it answers this probe, it holds ``pending``.
        assert worker_of(request(server, "GET", "/health/live")) == index
    return pending


# --------------------------------------------------------------------------- gRPC


def grpc_channel(target: str) -> grpc.Channel:
    """A channel with a TCP connection of its own (gRPC would otherwise share one subchannel per target)."""
    return grpc.insecure_channel(target, options=[("grpc.use_local_subchannel_pool", 1)])


def channels_per_worker(server: ServeProcess, attempts: int = 64) -> dict[int, grpc.Channel]:
    """One open channel connected to each worker, found by opening fresh connections.

    Each worker binds the gRPC port with SO_REUSEPORT and the kernel picks a listener by a keyed hash of the
    connection's addresses and ports, so every fresh connection lands on either worker with probability 1/2,
    independent of timing and load: 64 connections all missing one worker has probability 2**-63.
    """
    found: dict[int, grpc.Channel] = {}
    for _ in range(attempts):
        channel = grpc_channel(server.grpc_target)
        _, call = health_pb2_grpc.HealthStub(channel).Check.with_call(health_pb2.HealthCheckRequest(), timeout=WAIT_S)
        index = int(dict(call.initial_metadata())[WORKER_HEADER])
        if index in found:
            channel.close()
        else:
            found[index] = channel
        if len(found) == 2:
            break
    return found


def grpc_health(channel: grpc.Channel) -> int:
    return int(health_pb2_grpc.HealthStub(channel).Check(health_pb2.HealthCheckRequest(), timeout=WAIT_S).status)


# --------------------------------------------------------------------------- fixtures


@pytest.fixture(scope="module")
def group(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ServeProcess]:
    """Two workers, one HTTP and one gRPC port; the tests share it and leave both workers running."""
    server = ServeProcess(tmp_path_factory.mktemp("workers") / "data", workers=2, ready_path="/health/ready",
                          env={**LOCAL_CPU, "FACEREC_ORT_INTRA_THREADS": "1"})
    server.start(timeout_s=START_S)
    yield server
    server.stop()


@pytest.fixture(scope="module")
def token(group: ServeProcess) -> str:
    return group.token()


@pytest.fixture(scope="module")
def pair(image_bytes: Callable[[str], bytes]) -> tuple[bytes, bytes]:
    return image_bytes(PAIR[0]), image_bytes(PAIR[1])


def compare_on(server: ServeProcess, index: int, token: str, pair: tuple[bytes, bytes], reference: str) -> Reply:
    body, headers = compare_request(token, *pair, reference)
    return queue_on(server, index, "POST", COMPARE, body=body, headers=headers).result()


def metric(text: str, name: str, **labels: str) -> float:
    """One sample of an exposition text (0 when absent)."""
    wanted = ",".join(f'{k}="{v}"' for k, v in sorted(labels.items()))
    for line in text.splitlines():
        sample, _, value = line.rpartition(" ")
        if sample == (f"{name}{{{wanted}}}" if labels else name):
            return float(value)
    return 0.0


# --------------------------------------------------------------------------- tests


def test_both_workers_serve_http_and_grpc_on_one_port(group: ServeProcess, token: str,
                                                      pair: tuple[bytes, bytes]) -> None:
    for index in (0, 1):
        status, headers, body = compare_on(group, index, token, pair, f"w{index}")
        assert status == 200, body
        assert headers[WORKER_HEADER] == str(index)
        assert json.loads(body)["compare_result"] == "Same person"

    channels = channels_per_worker(group)
    assert set(channels) == {0, 1}, "every fresh gRPC connection went to one worker"
    try:
        for index, channel in channels.items():
            reply, call = pb_grpc.FaceRecognitionStub(channel).CompareFaces.with_call(
                pb.CompareFacesRequest(channel="WEB", reference=f"g{index}", file1=pair[0], file2=pair[1]),
                metadata=(("authorization", f"Bearer {token}"),), timeout=WAIT_S)
            assert reply.compare_result == "Same person"
            assert dict(call.initial_metadata())[WORKER_HEADER] == str(index)
    finally:
        for channel in channels.values():
            channel.close()


def test_a_running_serve_process_is_not_started_twice(group: ServeProcess) -> None:
    # A second start would launch another server on the same ports (SO_REUSEPORT lets it bind) that stop() never
    # stops: bench.throughput once measured two servers per checkout that way and left them running.
    pid = group.proc.pid if group.proc else None
    with pytest.raises(RuntimeError, match="already running"):
        group.start(timeout_s=1)
    assert group.proc is not None and group.proc.pid == pid and group.proc.poll() is None


def test_metrics_add_up_every_workers_counts(group: ServeProcess, token: str, pair: tuple[bytes, bytes]) -> None:
    route = {"method": "POST", "route": COMPARE, "status": "200"}

    def counts(index: int) -> tuple[float, float, str]:
        with only(group, index):
            status, headers, body = request(group, "GET", "/metrics")
        assert status == 200 and headers[WORKER_HEADER] == str(index)
        text = body.decode()
        return (metric(text, "facerec_scans_total", result="Same person"),
                metric(text, "facerec_http_request_duration_seconds_count", **route), text)

    # A request's duration is observed once its last byte is sent, so the client can hold its answer a moment
    # before the metric counts it: wait (bounded) for the totals to settle rather than read them once.
    wait_for(lambda: counts(0)[:2] == counts(1)[:2], within_s=WAIT_S, what="both workers export the same totals")
    before = counts(0)[:2]
    for index, n in ((0, 2), (1, 1)):
        for k in range(n):
            assert compare_on(group, index, token, pair, f"m{index}-{k}")[0] == 200
    # Two compares went through worker 0 and one through worker 1: whichever worker answers, it counts all three.
    for index in (0, 1):
        wait_for(lambda i=index: counts(i)[1] - before[1] >= 3, within_s=WAIT_S,
                 what=f"worker {index} counts the three compares")
        scans, compares, text = counts(index)
        assert (scans - before[0], compares - before[1]) == (3, 3)
        assert metric(text, "facerec_requests_in_flight") == 0
        # process_* per worker, each with its own label, rather than the answering worker's alone.
        rss = {w: metric(text, "process_resident_memory_bytes", worker=str(w)) for w in (0, 1)}
        assert all(v > 0 for v in rss.values()), rss


async def test_ready_only_while_every_worker_reports_ready(group: ServeProcess) -> None:
    pids = worker_pids(group)
    channels = channels_per_worker(group)
    try:
        # gRPC health follows the group's readiness on a 5 s refresh, so right after the group starts (this test
        # may run first: the order is shuffled) it can still say NOT_SERVING: wait for SERVING, don't assume it.
        await wait_until(lambda: grpc_health(channels[0]) == health_pb2.HealthCheckResponse.SERVING,
                         within_s=STALE_WAIT_S, what="gRPC health SERVING with both workers running")
        with paused(pids[1]):
            # Worker 0 alone answers now; it must see worker 1 go silent.
            async def not_ready() -> bool:
                return readiness(group)[0] == 503

            await wait_until(not_ready, within_s=STALE_WAIT_S, what="/health/ready 503 with worker 1 paused")
            status, body = readiness(group)
            assert status == 503
            assert body["components"]["workers"] is False and "worker 1" in body["reasons"]["workers"], body
            assert body["components"]["models"] is True  # worker 0 itself is fine
            await wait_until(lambda: grpc_health(channels[0]) == health_pb2.HealthCheckResponse.NOT_SERVING,
                             within_s=STALE_WAIT_S, what="gRPC health NOT_SERVING with worker 1 paused")

        async def ready() -> bool:
            return readiness(group)[0] == 200

        await wait_until(ready, within_s=WAIT_S, what="/health/ready 200 once worker 1 runs again")
        await wait_until(lambda: grpc_health(channels[0]) == health_pb2.HealthCheckResponse.SERVING,
                         within_s=WAIT_S, what="gRPC health SERVING again")
    finally:
        for channel in channels.values():
            channel.close()


async def test_a_worker_that_dies_is_restarted(group: ServeProcess, token: str, pair: tuple[bytes, bytes]) -> None:
    old = worker_pids(group)
    os.kill(old[1], signal.SIGKILL)

    async def replaced() -> bool:
        status, body = readiness(group)
        return status == 200 and {w["worker"]: w["pid"] for w in body["workers"]}[1] != old[1]

    await wait_until(replaced, within_s=START_S, what="worker 1 restarted and ready")
    new = worker_pids(group)
    assert new[0] == old[0], "the healthy worker was restarted too"
    assert re.search(rf"worker 1 \(pid {old[1]}\) exited with -9; restarting it", group.log()), group.log_tail()
    status, headers, _ = compare_on(group, 1, token, pair, "after-restart")
    assert (status, headers[WORKER_HEADER]) == (200, "1")


# Drain: each batching stage waits this long for company, so a compare stays in its worker for several seconds
# (4+ windows after the detector) whatever the load, long enough to send SIGTERM while both are in flight.
WINDOW_MS = 1000
GRACE_S = 60


async def test_sigterm_drains_both_workers_then_exits_0(tmp_path: Path, pair: tuple[bytes, bytes]) -> None:
    server = ServeProcess(tmp_path / "data", workers=2, ready_path="/health/ready",
                          env={**LOCAL_CPU, "FACEREC_ORT_INTRA_THREADS": "1", "FACEREC_MAX_BATCH_SIZE": "16",
                               "FACEREC_MAX_WAIT_MS": str(WINDOW_MS), "FACEREC_SHUTDOWN_GRACE_S": str(GRACE_S)})
    server.start(timeout_s=START_S)
    try:
        token = server.token()
        pending = {}
        for index in (0, 1):
            body, headers = compare_request(token, *pair, f"drain-{index}")
            pending[index] = queue_on(server, index, "POST", COMPARE, body=body, headers=headers)

        async def both_in_flight() -> bool:
            _, _, text = request(server, "GET", "/metrics")
            return metric(text.decode(), "facerec_requests_in_flight") == 2

        # Both compares admitted (the gauge sums the live workers) and unfinished: each has 5+ one-second batching
        # windows ahead of it (detector passes, landmarks, embedder), so SIGTERM lands while both are in flight.
        await wait_until(both_in_flight, within_s=WAIT_S, what="both compares in flight")
        assert server.proc is not None
        server.proc.send_signal(signal.SIGTERM)

        def refused() -> bool:
            try:
                request(server, "GET", "/health/live")
            except OSError:
                return True
            return False

        await wait_until(refused, within_s=GRACE_S / 2, what="new connections refused after SIGTERM")
        replies = {i: await asyncio.to_thread(p.result) for i, p in pending.items()}
        for index, (status, headers, body) in replies.items():
            assert status == 200, body
            assert headers[WORKER_HEADER] == str(index)
            assert json.loads(body)["compare_result"] == "Same person"
        code = await asyncio.to_thread(server.proc.wait, GRACE_S + 30)
        assert code == 0, server.log_tail(60)
        assert "Traceback" not in server.log(), server.log_tail(60)
    finally:
        server.stop()


def test_a_start_up_failure_stops_the_supervisor(tmp_path: Path) -> None:
    not_a_dir = tmp_path / "data"
    not_a_dir.write_text("a file where the data directory should be")
    server = ServeProcess(not_a_dir, workers=2, env=LOCAL_CPU)
    with pytest.raises(RuntimeError, match="exited with 3"):
        server.start(timeout_s=START_S)
    assert "cannot start" in server.log()


# --------------------------------------------------------------------------- N API workers -> one Triton

# Triton runs an embedder batch once it holds 4 rows; a compare sends one embedder request of 2 rows (its two
# faces), so only the rows of both workers together make a batch. Fewer wait this long (far past the test).
EMBEDDER_ROWS_PER_COMPARE = 2
HOLD_US = 120_000_000


async def test_two_workers_meet_in_one_triton_batch(tmp_path: Path, pair: tuple[bytes, bytes]) -> None:
    try:
        triton = LocalTriton(PROJECT_ROOT / "model_repository",
                             batching={"embedder": Batching(HOLD_US, (2 * EMBEDDER_ROWS_PER_COMPARE,))}).start()
    except TritonUnavailableError as exc:
        pytest.skip(f"local tritonserver unavailable: {exc}")
    server = ServeProcess(tmp_path / "data", workers=2, ready_path="/health/ready",
                          env={"FACEREC_BACKEND": "triton", "FACEREC_TRITON_URL": triton.grpc_url,
                               "FACEREC_MAX_WAIT_MS": "0", "FACEREC_REQUEST_TIMEOUT_S": "300"})
    try:
        server.start(timeout_s=START_S)
        token = server.token()
        pids = worker_pids(server)
        # Triton counts its load-time warm-up (one zeros request) in the model's statistics: count from here.
        before = triton.model_stats("embedder")
        bodies = {i: compare_request(token, *pair, f"triton-{i}") for i in (0, 1)}
        try:
            # Compare 0 goes to worker 0 (worker 1 stopped), which is then stopped right after accepting it;
            # compare 1 goes to worker 1; then both run from about the same point. The one held embedder request
            # must see the other arrive within the Triton client's 30 s call timeout: the gap is the difference
            # between two compares run side by side (a fraction of a second here), far inside it even 10x slower.
            stop(pids[1])
            first = Pending(server, "POST", COMPARE, body=bodies[0][0], headers=bodies[0][1])
            assert worker_of(request(server, "GET", "/health/live")) == 0
            stop(pids[0])
            resume(pids[1])
            second = Pending(server, "POST", COMPARE, body=bodies[1][0], headers=bodies[1][1])
            assert worker_of(request(server, "GET", "/health/live")) == 1
        finally:
            resume(pids[0])
            resume(pids[1])
        replies = [await asyncio.to_thread(p.result) for p in (first, second)]
        assert [(r[0], worker_of(r)) for r in replies] == [(200, 0), (200, 1)], [r[2][:300] for r in replies]
        # Triton's own counters: two requests (one per worker) ran as one batch of both workers' rows.
        # Triton counts a request after sending its response: wait for both to be counted, then check exactly.
        wait_for(lambda: triton.model_stats("embedder")["requests"] - before["requests"] >= 2, within_s=WAIT_S,
                 what="Triton's statistics count both workers' embedder requests")
        after = triton.model_stats("embedder")
        assert {k: after[k] - before[k] for k in after} == {"requests": 2, "inferences": 2 * EMBEDDER_ROWS_PER_COMPARE,
                                                            "executions": 1}
    finally:
        server.stop()
        triton.stop()
