"""The client's retry policy and error mapping, against scripted HTTP answers (httpx.MockTransport).

End-to-end behaviour against the real app is in tests/integration/test_client*.py; here the cases a real server
does not produce on demand: a bare ``Retry-After`` header, no hint at all, an HTML error page.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest
from facerec_client import NO_RETRY, ApiError, Client, RetryPolicy
from facerec_client.errors import retry_after_from

ROOT = Path(__file__).resolve().parents[3]
# A real compare response (the OpenAPI example): the client must parse exactly what the server sends.
COMPARE_OK = json.loads((ROOT / "server" / "api" / "http" / "examples" / "compare_response.json").read_text())


def scripted(*answers: httpx.Response) -> tuple[httpx.MockTransport, list[httpx.Request]]:
    seen: list[httpx.Request] = []
    it: Iterator[httpx.Response] = iter(answers)

    def handler(request: httpx.Request) -> httpx.Response:
        seen.append(request)
        return next(it)

    return httpx.MockTransport(handler), seen


def problem(status: int, code: str, headers: dict[str, str] | None = None, **extra: object) -> httpx.Response:
    body = {"type": f"https://facerec.dev/problems/{code}", "title": code, "status": status, "code": code,
            "detail": f"{code} detail", "request_id": "rid-1", **extra}
    return httpx.Response(status, json=body, headers={"content-type": "application/problem+json", **(headers or {})})


def test_retry_after_ms_wins_over_the_header() -> None:
    transport, seen = scripted(problem(429, "overloaded", {"Retry-After": "1"}, retry_after_ms=250),
                               httpx.Response(200, json=COMPARE_OK))
    waits: list[float] = []
    with Client("http://x", "tok", transport=transport, retry=RetryPolicy(jitter=0.0), sleep=waits.append) as api:
        result = api.compare(b"a", b"b", reference="r")
    assert waits == [0.25] and len(seen) == 2
    assert result.reference == COMPARE_OK["reference"] and len(result.face1.landmark_68) == 68
    assert all(r.headers["authorization"] == "Bearer tok" for r in seen)


def test_a_bare_retry_after_header_is_honoured() -> None:
    transport, _ = scripted(problem(503, "unavailable", {"Retry-After": "2"}), httpx.Response(200, json=COMPARE_OK))
    waits: list[float] = []
    with Client("http://x", "tok", transport=transport, retry=RetryPolicy(jitter=0.0), sleep=waits.append) as api:
        api.compare(b"a", b"b", reference="r")
    assert waits == [2.0]


def test_no_hint_backs_off_exponentially_up_to_the_cap_then_raises() -> None:
    page = httpx.Response(503, text="<html>bad gateway</html>", headers={"content-type": "text/html"})
    transport, seen = scripted(page, page, page, page)
    waits: list[float] = []
    policy = RetryPolicy(retries=3, backoff_s=0.5, max_delay_s=1.5, jitter=0.0)
    with Client("http://x", "tok", transport=transport, retry=policy, sleep=waits.append) as api, \
            pytest.raises(ApiError) as err:
        api.get_scan("8c5b2a52-4a51-4f7e-9d7c-6d1f3d1f0b3e")
    assert waits == [0.5, 1.0, 1.5] and len(seen) == 4
    assert (err.value.status, err.value.code, err.value.retry_after_s) == (503, "http_503", None)


def test_client_errors_are_not_retried() -> None:
    transport, seen = scripted(problem(422, "no_face", field="file2"))
    with Client("http://x", lambda: "fresh", transport=transport, sleep=lambda s: None) as api, \
            pytest.raises(ApiError) as err:
        api.compare(b"a", b"b", reference="r")
    assert len(seen) == 1 and seen[0].headers["authorization"] == "Bearer fresh"
    assert (err.value.code, err.value.field, err.value.request_id) == ("no_face", "file2", "rid-1")
    assert str(err.value) == "no_face: no_face detail (file2)"


def test_no_retry_policy_raises_the_first_overload() -> None:
    transport, seen = scripted(problem(429, "overloaded", retry_after_ms=50))
    with Client("http://x", "t", transport=transport, retry=NO_RETRY) as api, pytest.raises(ApiError) as err:
        api.list_scans(size=5, sales_channel="WEB")
    assert len(seen) == 1 and err.value.retry_after_s == 0.05
    assert dict(seen[0].url.params) == {"page": "0", "size": "5", "salesChannel": "WEB"}


@pytest.mark.parametrize(("header", "body", "expected"), [
    (None, 1500, 1.5), ("3", None, 3.0), ("3", 10, 0.01), ("Wed, 21 Oct 2015 07:28:00 GMT", None, None),
    (None, None, None), (None, True, None),
])
def test_retry_after_parsing(header: str | None, body: object, expected: float | None) -> None:
    assert retry_after_from(header, body) == expected


def test_jitter_only_lengthens_the_wait() -> None:
    err = ApiError("overloaded", "x", status=429, retry_after_s=1.0)
    policy = RetryPolicy(jitter=0.1)
    assert all(1.0 <= policy.delay(0, err) <= 1.1 for _ in range(50))


def test_decision_settings_and_quality_components_are_parsed() -> None:
    transport, seen = scripted(httpx.Response(200, json=COMPARE_OK))
    with Client("http://x", "tok", transport=transport) as api:
        result = api.compare(b"a", b"b", reference="r", threshold=0.62, quality_filter="high")
    sent = seen[0].content
    assert b'name="threshold"\r\n\r\n0.62\r\n' in sent and b'name="quality_filter"\r\n\r\nhigh\r\n' in sent
    assert (result.threshold, result.quality_filter) == (COMPARE_OK["threshold"], COMPARE_OK["quality_filter"])
    comps = result.face1.quality_components
    assert comps is not None and comps.pose == COMPARE_OK["face1"]["quality_components"]["pose"]
    # Without the optional fields nothing is sent: the server's defaults apply.
    transport, seen = scripted(httpx.Response(200, json=COMPARE_OK))
    with Client("http://x", "tok", transport=transport) as api:
        api.compare(b"a", b"b", reference="r")
    assert b"threshold" not in seen[0].content and b"quality_filter" not in seen[0].content


def test_low_quality_carries_the_failing_components() -> None:
    from facerec_client.errors import failing_from_trailer

    body = problem(422, "low_quality", field="file2", quality_filter="LOW",
                   failing_components={"file2": ["size", "sharpness"]})
    transport, _ = scripted(body)
    with Client("http://x", "tok", transport=transport) as api, pytest.raises(ApiError) as err:
        api.compare(b"a", b"b", reference="r")
    assert (err.value.code, err.value.field) == ("low_quality", "file2")
    assert err.value.failing_components == {"file2": ("size", "sharpness")}
    assert failing_from_trailer("file1=size;file2=pose,eyes") == {"file1": ("size",), "file2": ("pose", "eyes")}
    assert failing_from_trailer(None) == {} and failing_from_trailer("garbage") == {}
