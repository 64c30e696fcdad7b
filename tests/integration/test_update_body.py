"""``PUT /v1/face-recognition/{id}``: the caller is authenticated and authorised before a byte of the body is read,
and the body is a small, shallow JSON object of known camelCase keys with exactly typed values.

The pre-auth checks drive the real app as an ASGI callable whose ``receive`` never delivers the body: an app that
reads before it authenticates waits forever (bounded here by ``PATIENCE_S``, 60 s, far beyond the milliseconds the
401 takes even on a machine 10x slower); one that authenticates first answers without calling ``receive``.
"""

from __future__ import annotations

import asyncio
import json
import uuid
from pathlib import Path
from typing import Any

import pytest
import pytest_asyncio
from harness import SCANS, Harness, assert_problem

from server.app import create_app
from server.auth import ROLE_READ, ROLE_UPDATE

pytestmark = [pytest.mark.asyncio(loop_scope="module"), pytest.mark.served()]

PATIENCE_S = 60.0
OBAMA1, OBAMA2 = "obama_01_portrait_2012.jpg", "obama_02_congress_2009.jpg"


@pytest_asyncio.fixture(scope="module", loop_scope="module")
async def scan(env: Harness, faces_dir: Path) -> dict[str, Any]:
    return await env.stored_scan((faces_dir / OBAMA1).read_bytes(), (faces_dir / OBAMA2).read_bytes(),
                                 reference="put-target")


async def _put(env: Harness, scan_id: str, body: bytes, content_type: str | None = "application/json",
               **headers: str) -> Any:
    h = {**env.headers(), **headers}
    if content_type is not None:
        h["content-type"] = content_type
    return await env.http.put(f"{SCANS}/{scan_id}", headers=h, content=body)


# --------------------------------------------------------------------------- no body read before auth


async def _call_without_body(env: Harness, method: str, path: str, headers: list[tuple[bytes, bytes]]) -> tuple[
        int, bool]:
    """Run the real app on a request whose body never arrives; (status sent, whether the app asked for the body)."""
    app = create_app(env.runtime.settings, env.runtime)
    asked = asyncio.Event()
    never = asyncio.Event()
    sent: list[dict[str, Any]] = []

    async def receive() -> dict[str, Any]:
        asked.set()
        await never.wait()  # the body never comes
        return {"type": "http.disconnect"}

    async def send(message: dict[str, Any]) -> None:
        sent.append(message)

    scope = {"type": "http", "asgi": {"version": "3.0"}, "http_version": "1.1", "method": method,
             "scheme": "http", "path": path, "raw_path": path.encode(), "query_string": b"", "root_path": "",
             "headers": [(b"host", b"facerec.test"), (b"content-type", b"application/json"),
                         (b"content-length", b"11000000"), *headers],
             "client": ("127.0.0.1", 5000), "server": ("127.0.0.1", 80), "state": {}}
    task = asyncio.ensure_future(app(scope, receive, send))  # type: ignore[arg-type]
    try:
        await asyncio.wait_for(asyncio.shield(task), PATIENCE_S)
    except TimeoutError:
        task.cancel()
        raise AssertionError(f"{method} {path} waited for a body that never came") from None
    starts = [m for m in sent if m["type"] == "http.response.start"]
    return starts[0]["status"], asked.is_set()


async def test_put_is_refused_unauthenticated_before_its_body_is_read(env: Harness, scan: dict[str, Any]) -> None:
    path = f"{SCANS}/{scan['id']}"
    status, asked = await _call_without_body(env, "PUT", path, [])
    assert (status, asked) == (401, False)
    status, asked = await _call_without_body(env, "PUT", path, [(b"authorization", b"Bearer not.a.token")])
    assert (status, asked) == (401, False)


async def test_put_is_refused_without_the_role_before_its_body_is_read(env: Harness, scan: dict[str, Any]) -> None:
    token = env.token(roles=[ROLE_READ]).encode()
    status, asked = await _call_without_body(env, "PUT", f"{SCANS}/{scan['id']}",
                                             [(b"authorization", b"Bearer " + token)])
    assert (status, asked) == (403, False)


async def test_an_authorised_put_does_read_its_body(env: Harness, scan: dict[str, Any]) -> None:
    """The other side of the two tests above: with the role, the app asks for the body (and then waits for it)."""
    app = create_app(env.runtime.settings, env.runtime)
    asked = asyncio.Event()

    async def receive() -> dict[str, Any]:
        asked.set()
        await asyncio.Event().wait()
        return {"type": "http.disconnect"}

    async def send(message: dict[str, Any]) -> None:
        return None

    token = env.token(roles=[ROLE_UPDATE]).encode()
    path = f"{SCANS}/{scan['id']}"
    scope = {"type": "http", "asgi": {"version": "3.0"}, "http_version": "1.1", "method": "PUT", "scheme": "http",
             "path": path, "raw_path": path.encode(), "query_string": b"", "root_path": "",
             "headers": [(b"host", b"x"), (b"content-type", b"application/json"), (b"content-length", b"10"),
                         (b"authorization", b"Bearer " + token)], "state": {}}
    task = asyncio.ensure_future(app(scope, receive, send))  # type: ignore[arg-type]
    try:
        await asyncio.wait_for(asked.wait(), PATIENCE_S)
    finally:
        task.cancel()
        await asyncio.gather(task, return_exceptions=True)


async def test_a_million_keys_unauthenticated_is_401(env: Harness, scan: dict[str, Any]) -> None:
    body = b"{" + b",".join(b'"k%d":1' % i for i in range(1_000_000)) + b"}"
    resp = await env.http.put(f"{SCANS}/{scan['id']}", headers={"content-type": "application/json"}, content=body)
    assert_problem(resp, 401, "unauthorized")


# --------------------------------------------------------------------------- size, depth, media type


@pytest.mark.parametrize("depth", [20, 1000, 100_000])
async def test_deep_nesting_is_400(env: Harness, scan: dict[str, Any], depth: int) -> None:
    body = b'{"reference": ' + b"[" * depth + b"]" * depth + b"}"
    if len(body) > 16 * 1024:
        assert_problem(await _put(env, scan["id"], body), 413, "payload_too_large")
        body = b'{"reference":' + b"[" * 5000 + b"]" * 5000 + b"}"
    assert_problem(await _put(env, scan["id"], body), 400, "bad_request")
    inside_string = json.dumps({"reference": "[" * 200}).encode()  # brackets inside a string are text
    assert (await _put(env, scan["id"], inside_string)).status_code == 200


async def test_oversized_body_is_413(env: Harness, scan: dict[str, Any]) -> None:
    body = json.dumps({"reference": "r", "face1": {"pad": "x" * 20_000}}).encode()
    assert_problem(await _put(env, scan["id"], body), 413, "payload_too_large")
    million = b"{" + b",".join(b'"k%d":1' % i for i in range(1_000_000)) + b"}"
    assert_problem(await _put(env, scan["id"], million), 413, "payload_too_large")


@pytest.mark.parametrize("content_type", [None, "text/plain", "application/x-www-form-urlencoded",
                                          "multipart/form-data; boundary=x", "application/jsonx",
                                          "application/merge-patch+json"])
async def test_only_json_is_accepted(env: Harness, scan: dict[str, Any], content_type: str | None) -> None:
    resp = await _put(env, scan["id"], b'{"reference": "ct"}', content_type=content_type)
    assert_problem(resp, 415, "unsupported_media_type")


async def test_json_with_a_charset_is_json(env: Harness, scan: dict[str, Any]) -> None:
    resp = await _put(env, scan["id"], b'{"reference": "charset"}', content_type="application/json; charset=utf-8")
    assert resp.status_code == 200, resp.text


# --------------------------------------------------------------------------- keys and types


@pytest.mark.parametrize(("body", "named"), [
    ({"compare_result": "Different person"}, ["compare_result"]),
    ({"CompareResult": "Different person", "reference": "x"}, ["CompareResult"]),
    ({"salesChannel": "WEB", "sales_channel": "WEB", "compare_similarity": 0.1}, ["compare_similarity",
                                                                                 "sales_channel"]),
    ({"REFERENCE": "x"}, ["REFERENCE"]),
    ({"bogus": 1}, ["bogus"]),
])
async def test_unknown_or_wrongly_cased_keys_are_400_naming_them(env: Harness, scan: dict[str, Any],
                                                                 body: dict[str, Any], named: list[str]) -> None:
    before = (await env.http.get(f"{SCANS}/{scan['id']}", headers=env.headers())).json()
    problem = assert_problem(await _put(env, scan["id"], json.dumps(body).encode()), 400, "invalid_field",
                             field=named[0])
    for key in named:
        assert key in problem["detail"], problem
    after = (await env.http.get(f"{SCANS}/{scan['id']}", headers=env.headers())).json()
    assert after == before  # nothing changed


@pytest.mark.parametrize(("body", "field"), [
    ({"compareSimilarity": "0.5"}, "compareSimilarity"),
    ({"compareSimilarity": True}, "compareSimilarity"),
    ({"compareSimilarity": [0.5]}, "compareSimilarity"),
    ({"reference": 42}, "reference"),
    ({"compareResult": 1}, "compareResult"),
    # A string in another case is no coercion: channel and verdict ignore case on every transport (the domain's
    # Channel.parse; test_http_api checks " mobile" is stored as MOBILE). Other types are refused.
    ({"salesChannel": 1}, "salesChannel"),
    ({"salesChannel": ["WEB"]}, "salesChannel"),
    ({"salesChannel": "FAX"}, "salesChannel"),
])
async def test_values_are_not_coerced(env: Harness, scan: dict[str, Any], body: dict[str, Any], field: str) -> None:
    assert_problem(await _put(env, scan["id"], json.dumps(body).encode()), 400, "invalid_field", field=field)


@pytest.mark.parametrize("body", [b"[]", b'"x"', b"1", b"null", b"", b"{", b'{"reference": "a"} trailing',
                                  b'\xff{"reference": "a"}'])
async def test_not_a_json_object_is_400(env: Harness, scan: dict[str, Any], body: bytes) -> None:
    assert_problem(await _put(env, scan["id"], body), 400, "bad_request")


async def test_the_entity_read_back_can_be_put_back(env: Harness, scan: dict[str, Any]) -> None:
    """GET -> change -> PUT: the entity's server-owned fields are accepted (and ignored), as before."""
    url = f"{SCANS}/{scan['id']}"
    entity = (await env.http.get(url, headers=env.headers())).json()
    entity.update(reference="round-trip", companyId="globex", id=str(uuid.uuid4()))
    resp = await _put(env, scan["id"], json.dumps(entity).encode())
    assert resp.status_code == 200, resp.text
    got = resp.json()
    assert got["reference"] == "round-trip" and got["companyId"] == "acme" and got["id"] == scan["id"]
    nulls = await _put(env, scan["id"], b'{"reference": null, "compareSimilarity": 0.25}')
    assert nulls.status_code == 200 and nulls.json()["reference"] == "round-trip", nulls.text
    assert nulls.json()["compareSimilarity"] == 0.25
