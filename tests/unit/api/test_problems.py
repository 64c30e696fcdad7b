"""The error -> HTTP status table and the problem+json shape, on a tiny app with the real handlers."""

from __future__ import annotations

import inspect
from collections.abc import Iterator

import pytest
from litestar import Litestar, get
from litestar.params import FromPath
from litestar.testing import TestClient

from server import errors
from server.api.http.middleware import RequestContextMiddleware
from server.api.http.problems import EXCEPTION_HANDLERS, PROBLEM_MEDIA_TYPE, retry_after_seconds

# The contract: every error class of the taxonomy and the status a client sees. A new class must be added here.
STATUS_TABLE: dict[type[errors.FacerecError], int] = {
    errors.FacerecError: 500,
    errors.BadRequest: 400,
    errors.InvalidField: 400,
    errors.MissingField: 400,
    errors.InvalidId: 400,
    errors.Unauthorized: 401,
    errors.Forbidden: 403,
    errors.NotFound: 404,
    errors.PayloadTooLarge: 413,
    errors.ImageTooLarge: 413,
    errors.UnsupportedMediaType: 415,
    errors.UnsupportedImage: 415,
    errors.NoFace: 422,
    errors.FaceNotComparable: 422,
    errors.LowQuality: 422,
    errors.Overloaded: 429,
    errors.Unavailable: 503,
    errors.DeadlineExceeded: 503,
    errors.InferenceFailed: 500,
    errors.ModelBuildError: 500,
}


def _taxonomy() -> Iterator[type[errors.FacerecError]]:
    for _, cls in inspect.getmembers(errors, inspect.isclass):
        if issubclass(cls, errors.FacerecError) and cls.__module__ == errors.__name__:
            yield cls


def test_table_covers_every_error_class() -> None:
    assert set(_taxonomy()) == set(STATUS_TABLE)


ERROR_NAMES = {cls.__name__: cls for cls in STATUS_TABLE}


@get("/raise/{name:str}")
async def raise_error(name: FromPath[str]) -> None:
    cls = ERROR_NAMES[name]
    if issubclass(cls, errors.Overloaded | errors.Unavailable):
        raise cls("try later", retry_after_ms=1500)
    raise cls(f"detail of {name}", field="file1")


@get("/boom")
async def boom() -> None:
    raise RuntimeError("secret database password in traceback")


@pytest.fixture(scope="module")
def client() -> Iterator[TestClient[Litestar]]:
    app = Litestar([raise_error, boom], exception_handlers=EXCEPTION_HANDLERS,
                   middleware=[RequestContextMiddleware()], logging_config=None)
    with TestClient(app) as c:
        yield c


@pytest.mark.parametrize("cls", list(STATUS_TABLE), ids=lambda c: c.__name__)
def test_error_maps_to_status_and_problem(client: TestClient[Litestar], cls: type[errors.FacerecError]) -> None:
    resp = client.get(f"/raise/{cls.__name__}", headers={"X-Request-ID": "req-1"})
    assert resp.status_code == STATUS_TABLE[cls] == cls.status
    assert resp.headers["content-type"].startswith(PROBLEM_MEDIA_TYPE)
    body = resp.json()
    assert body["status"] == resp.status_code and body["code"] == cls.code and body["title"] == cls.title
    assert body["type"] == f"https://facerec.dev/problems/{cls.code}"
    assert body["instance"] == f"/raise/{cls.__name__}"
    assert body["request_id"] == resp.headers["x-request-id"] == "req-1"
    if resp.status_code in (429, 503):
        assert resp.headers["retry-after"] == "2"  # 1500 ms rounds up to whole seconds
        assert body["retry_after_ms"] == 1500
    else:
        assert "retry-after" not in resp.headers
        assert body["field"] == "file1" and body["detail"] == f"detail of {cls.__name__}"
    if resp.status_code == 401:
        assert resp.headers["www-authenticate"].startswith("Bearer")


def test_unhandled_exception_never_leaks(client: TestClient[Litestar], caplog: pytest.LogCaptureFixture) -> None:
    resp = client.get("/boom")
    assert resp.status_code == 500
    assert resp.headers["content-type"].startswith(PROBLEM_MEDIA_TYPE)
    assert "secret" not in resp.text and "RuntimeError" not in resp.text and "Traceback" not in resp.text
    assert resp.json()["code"] == "internal_error"
    assert any("secret" in (r.exc_text or "") or r.exc_info for r in caplog.records)  # logged for operators


def test_framework_errors_use_the_same_shape(client: TestClient[Litestar]) -> None:
    resp = client.get("/nowhere")
    assert resp.status_code == 404 and resp.json()["code"] == "not_found"
    assert resp.headers["content-type"].startswith(PROBLEM_MEDIA_TYPE)
    resp = client.post("/boom")
    assert resp.status_code == 405 and resp.json()["code"] == "method_not_allowed"


@pytest.mark.parametrize(("ms", "seconds"), [(1, 1), (999, 1), (1000, 1), (1001, 2), (0, 1), (30_000, 30)])
def test_retry_after_rounds_up(ms: int, seconds: int) -> None:
    assert retry_after_seconds(ms) == seconds
