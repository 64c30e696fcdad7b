"""The /demo routes over HTTP: when they exist (FACEREC_DEMO x issuer), what the page is served with, and how the
demo token button is fenced (local issuer only, loopback only under ``auto``, a header, the fixed demo company)."""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

import httpx
import jwt
import pytest
from harness import COMPARE, SCANS, Harness, assert_problem

from server.api.http.demo import DEMO_COMPANY, DEMO_TOKEN_TTL_S
from server.app import create_app
from server.auth import ALL_ROLES
from server.settings import Settings

pytestmark = [pytest.mark.asyncio(loop_scope="module"), pytest.mark.served()]

DEMO_HEADERS = {"X-Facerec-Demo": "1"}
ISSUER = "https://login.example.com/realms/acme"


async def routes(settings: Settings) -> dict[str, Any]:
    """The status of each demo page route on an app built from ``settings`` (no runtime needed for these), and
    whether the token route is registered at all."""
    app = create_app(settings)
    async with httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url="http://facerec.test") as client:
        return {"page": (await client.get("/demo")).status_code,
                "config": (await client.get("/demo/config")).status_code,
                "js": (await client.get("/demo/assets/demo.js")).status_code,
                "token": any(r.path == "/demo/token" for r in app.routes)}


@pytest.mark.parametrize(("demo", "issuer", "page", "token"), [
    ("auto", None, 200, True),     # development: the local issuer, page and button
    ("auto", ISSUER, 404, False),  # production with an OIDC issuer: no page unless asked for
    ("on", ISSUER, 200, False),    # asked for: the page (paste a token), never a button without the local issuer
    ("on", None, 200, True),
    ("off", None, 404, False),
])
async def test_which_routes_exist(tmp_path: Path, demo: str, issuer: str | None, page: int, token: bool) -> None:
    got = await routes(Settings(data_dir=tmp_path, demo=demo, auth_issuer=issuer))  # type: ignore[arg-type]
    assert (got["page"], got["config"], got["js"], got["token"]) == (page, page, page, token)


async def test_page_and_assets_are_served_with_their_policy(env: Harness) -> None:
    page = await env.http.get("/demo")
    assert page.status_code == 200 and page.headers["content-type"].startswith("text/html")
    csp = page.headers["content-security-policy"]
    assert "default-src 'none'" in csp and "script-src 'self';" in csp and "unsafe" not in csp
    assert page.headers["x-frame-options"] == "DENY" and page.headers["x-content-type-options"] == "nosniff"
    assert b'src="/demo/assets/demo.js"' in page.content and b"<script>" not in page.content  # no inline code
    assert b"http://" not in page.content.replace(b"http://www.w3.org", b"")  # no other origin referenced
    js = await env.http.get("/demo/assets/demo.js")
    assert js.status_code == 200 and js.headers["content-type"].startswith("text/javascript")
    assert b"https://" not in js.content and b"http://" not in js.content
    for bad in ("index.html", "nope.js", "..%2F..%2Fsettings.py", "%2e%2e%2fdemo.py"):
        assert (await env.http.get(f"/demo/assets/{bad}")).status_code == 404, bad
    config = (await env.http.get("/demo/config")).json()
    assert config == {"token_button": True, "demo_company": DEMO_COMPANY, "threshold": 0.5, "quality_filter": "LOW",
                      "roles_claim": "roles", "max_file_bytes": env.runtime.settings.max_file_bytes}
    # The demo is no API: it is not in the OpenAPI document (and so not fuzzed as one).
    doc = (await env.http.get("/schema/openapi.json")).json()
    assert not any(p.startswith("/demo") for p in doc["paths"])


async def test_demo_token_is_short_lived_for_the_demo_company_only(env: Harness, image_bytes: Any) -> None:
    resp = await env.http.post("/demo/token", headers=DEMO_HEADERS)
    assert resp.status_code == 200, resp.text
    body = resp.json()
    assert (body["company"], body["expires_in"], body["token_type"]) == (DEMO_COMPANY, DEMO_TOKEN_TTL_S, "Bearer")
    claims = jwt.decode(body["access_token"], options={"verify_signature": False})
    assert claims["company_id"] == DEMO_COMPANY and claims["exp"] - claims["iat"] == DEMO_TOKEN_TTL_S
    assert abs(claims["iat"] - time.time()) < 600 and sorted(claims["roles"]) == sorted(ALL_ROLES)
    demo = {"Authorization": f"Bearer {body['access_token']}"}
    # It works against the API, for the demo company...
    made = await env.http.post(COMPARE, headers=demo, data={"channel": "WEB", "reference": "demo-token"},
                               files={"file1": ("a.jpg", image_bytes("obama_01_portrait_2012.jpg")),
                                      "file2": ("b.jpg", image_bytes("obama_02_congress_2009.jpg"))})
    assert made.status_code == 200, made.text
    scan = (await env.http.get(f"{SCANS}/{made.json()['id']}", headers=demo)).json()
    assert scan["companyId"] == DEMO_COMPANY and scan["createdById"] == "demo-visitor"
    # ...and never reaches another company's scans (tenancy as for any token).
    other = await env.http.post(COMPARE, headers=env.headers("acme-real"),
                                data={"channel": "WEB", "reference": "not-for-demo"},
                                files={"file1": ("a.jpg", image_bytes("obama_01_portrait_2012.jpg")),
                                       "file2": ("b.jpg", image_bytes("obama_02_congress_2009.jpg"))})
    assert other.status_code == 200
    assert (await env.http.get(f"{SCANS}/{other.json()['id']}", headers=demo)).status_code == 404
    listed = (await env.http.get(SCANS, headers=demo, params={"size": 200})).json()
    assert all(s["companyId"] == DEMO_COMPANY for s in listed["content"])
    assert "not-for-demo" not in {s["reference"] for s in listed["content"]}


async def test_demo_token_needs_the_page_header(env: Harness) -> None:
    # A form post from another site cannot set the header (it would need a CORS preflight this server refuses).
    assert_problem(await env.http.post("/demo/token"), 403, "forbidden")
    assert_problem(await env.http.post("/demo/token", headers={"X-Facerec-Demo": "yes"}), 403, "forbidden")
    assert (await env.http.get("/demo/token")).status_code in (404, 405)


def client_at(h: Harness, host: str) -> httpx.AsyncClient:
    app = create_app(h.runtime.settings, h.runtime)
    return httpx.AsyncClient(transport=httpx.ASGITransport(app=app, client=(host, 40000)),
                             base_url="http://facerec.test")


@pytest.mark.parametrize("proxy_header", ["X-Forwarded-For", "Forwarded", "X-Real-IP"])
async def test_auto_mints_only_for_loopback_callers_without_a_proxy(env: Harness, proxy_header: str,
                                                                     caplog: pytest.LogCaptureFixture) -> None:
    async with client_at(env, "203.0.113.7") as remote:
        body = assert_problem(await remote.post("/demo/token", headers=DEMO_HEADERS), 403, "forbidden")
        assert "FACEREC_DEMO=on" in body["detail"]
        assert (await remote.get("/demo")).status_code == 200  # the page itself is harmless: paste a token
    async with client_at(env, "::1") as local:
        assert (await local.post("/demo/token", headers=DEMO_HEADERS)).status_code == 200
        # Through a proxy on this machine every caller looks local: a forwarding header marks it.
        proxied = await local.post("/demo/token", headers={**DEMO_HEADERS, proxy_header: "203.0.113.7"})
        assert_problem(proxied, 403, "forbidden")
    with caplog.at_level("INFO", logger="server.api.http.demo"):
        assert (await env.http.post("/demo/token", headers=DEMO_HEADERS)).status_code == 200
    assert any("demo token minted" in r.getMessage() and "127.0.0.1" in r.getMessage() for r in caplog.records)


async def test_on_mints_for_any_caller(serve_target: Any) -> None:
    async with serve_target(demo="on") as h, client_at(h, "203.0.113.7") as remote:
        resp = await remote.post("/demo/token", headers={**DEMO_HEADERS, "X-Forwarded-For": "198.51.100.1"})
        assert resp.status_code == 200, resp.text
        page = await remote.get(SCANS, headers={"Authorization": f"Bearer {resp.json()['access_token']}"})
        assert page.status_code == 200
