"""The synchronous clients against a real server (uvicorn + the gRPC server on loopback, real models, SQLite)."""

from __future__ import annotations

import socket
import threading
import time
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
import uvicorn
from facerec_client import ApiError, Channel, Client, GrpcClient, Verdict

from server.app import create_app
from server.auth import ALL_ROLES, LOCAL_ISSUER, LocalIssuer
from server.settings import PROJECT_ROOT, Settings

SAME = ("obama_01_portrait_2012.jpg", "obama_02_congress_2009.jpg")


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory, backend: Any) -> Iterator[tuple[str, str, Settings]]:
    # `backend` only makes sure the model repository is built; this server loads its own sessions.
    settings = Settings(data_dir=tmp_path_factory.mktemp("sync-client"), device="cpu", ort_intra_threads=1,
                        model_repository=PROJECT_ROOT / "model_repository", host="127.0.0.1",
                        port=_free_port(), grpc_port=_free_port())
    app = create_app(settings, grpc=True)  # the lifespan starts the runtime and the gRPC server
    srv = uvicorn.Server(uvicorn.Config(app, host="127.0.0.1", port=settings.port, log_config=None,
                                        lifespan="on"))
    thread = threading.Thread(target=srv.run, daemon=True)
    thread.start()
    deadline = time.monotonic() + 120  # model load on a loaded 2-core machine
    while not srv.started:
        assert thread.is_alive() and time.monotonic() < deadline, "server did not start"
        time.sleep(0.05)
    try:
        yield f"http://127.0.0.1:{settings.port}", f"127.0.0.1:{settings.grpc_port}", settings
    finally:
        srv.should_exit = True
        thread.join(timeout=60)


def _token(settings: Settings) -> str:
    issuer = LocalIssuer.load_or_create(settings.data_dir)
    return issuer.mint("syncco", "dave", ALL_ROLES, 600, settings.auth_audience, LOCAL_ISSUER,
                       company_claim=settings.auth_company_claim, roles_claim=settings.auth_roles_claim)


@pytest.mark.parametrize("transport", ["http", "grpc"])
def test_sync_client_round_trip(server: tuple[str, str, Settings], image_bytes: Callable[[str], bytes],
                                transport: str) -> None:
    url, target, settings = server
    api: Client | GrpcClient = Client(url, _token(settings)) if transport == "http" else \
        GrpcClient(target, _token(settings))
    ref = f"sync-{transport}-{uuid.uuid4().hex[:8]}"
    with api:
        result = api.compare(image_bytes(SAME[0]), image_bytes(SAME[1]), channel="web", reference=ref)
        assert result.compare_result is Verdict.SAME and result.channel is Channel.WEB
        assert api.get_scan(result.id).reference == ref
        assert api.update_scan(result.id, compare_result=Verdict.DIFFERENT).compare_result is Verdict.DIFFERENT
        page = api.list_scans(reference=ref)
        assert [s.id for s in page.content] == [result.id]
        api.delete_scan(result.id)
        with pytest.raises(ApiError) as err:
            api.get_scan(result.id)
    assert err.value.code == "not_found"


def test_sync_client_reports_auth_failures(server: tuple[str, str, Settings], tmp_path: Path) -> None:
    url, target, _ = server
    for api in (Client(url, "a.b.c"), GrpcClient(target, "a.b.c")):
        with api, pytest.raises(ApiError) as err:
            api.list_scans()
        assert err.value.code == "unauthorized" and not err.value.retryable
