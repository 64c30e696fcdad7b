"""The ``/demo`` page: try a compare in the browser (plain HTML/CSS/JS from the package, no external request).

    GET  /demo                the page (its own strict Content-Security-Policy: this server only, no inline code)
    GET  /demo/assets/<file>  demo.js, demo.css, the icon
    GET  /demo/config         what the page needs to know: token button?, default threshold and filter, roles claim
    POST /demo/token          a short-lived token for the demo company (local issuer only, see below)

Served when ``FACEREC_DEMO`` is ``on``, or ``auto`` (the default) with the local issuer; never registered otherwise
(404). The page calls the real API with the bearer token the visitor pastes.

The token button is the one place where the server hands out a token to someone who did not prove anything, so it is
fenced in (README "Demo page"):

- it exists only with the **local issuer** (a development set-up: with an OIDC issuer there is nothing to mint with,
  and the route is not registered);
- every token is for the fixed company :data:`DEMO_COMPANY` (tenancy keeps it away from every other company's
  scans), user :data:`DEMO_USER`, and lives :data:`DEMO_TOKEN_TTL_S` seconds;
- with ``FACEREC_DEMO=auto`` it answers only callers on loopback that came through no proxy (no ``Forwarded`` /
  ``X-Forwarded-For`` / ``X-Real-IP`` header): the developer who ran ``make run``. ``FACEREC_DEMO=on`` is the explicit
  opt-in that lets any client that reaches the port mint demo tokens (e.g. ``docker run -p`` on a laptop);
- it is a ``POST`` that needs the ``X-Facerec-Demo`` header, so a page of another origin cannot make a browser
  mint one (a custom header forces a CORS preflight this server does not grant);
- every mint is logged with the client address.
"""

from __future__ import annotations

import ipaddress
import logging
from pathlib import Path
from typing import Any, Final

from litestar import Request, Response, Router, get, post
from litestar.params import FromPath

from server.auth import ALL_ROLES, LOCAL_ISSUER
from server.errors import Forbidden, NotFound
from server.runtime import Runtime
from server.settings import Settings

log = logging.getLogger(__name__)

DEMO_PATH: Final = "/demo"
PAGE_DIR: Final = Path(__file__).resolve().parent / "demo_page"
# Exactly the files the page loads, with their media types (nothing else under the folder is served).
ASSETS: Final[dict[str, str]] = {
    "demo.js": "text/javascript; charset=utf-8",
    "demo.css": "text/css; charset=utf-8",
    "icon.svg": "image/svg+xml",
}
DEMO_COMPANY: Final = "demo"
DEMO_USER: Final = "demo-visitor"
DEMO_TOKEN_TTL_S: Final = 600
DEMO_HEADER: Final = "x-facerec-demo"
_PROXY_HEADERS: Final = ("forwarded", "x-forwarded-for", "x-real-ip")
# The page may load from this server only and run no inline code. Photos are shown from blob: URLs of the files
# the visitor picked; the camera preview is a MediaStream (srcObject), which needs no source at all.
DEMO_CSP: Final = ("default-src 'none'; script-src 'self'; style-src 'self'; img-src 'self' blob:; "
                   "media-src 'self' blob: mediastream:; connect-src 'self'; form-action 'none'; "
                   "frame-ancestors 'none'; base-uri 'none'")
PAGE_HEADERS: Final = {"Content-Security-Policy": DEMO_CSP,
                       # The selfie button needs the camera of this page only; nothing else may ask for devices.
                       "Permissions-Policy": "camera=(self), microphone=(), geolocation=(), payment=(), usb=()"}


def _runtime(request: Request[Any, Any, Any]) -> Runtime:
    runtime: Runtime = request.app.state.runtime
    return runtime


@get("/", include_in_schema=False, name="demo-page")
async def page() -> Response[bytes]:
    return Response((PAGE_DIR / "index.html").read_bytes(), media_type="text/html; charset=utf-8",
                    headers=PAGE_HEADERS)


@get("/assets/{name:str}", include_in_schema=False, name="demo-assets")
async def asset(name: FromPath[str]) -> Response[bytes]:
    media_type = ASSETS.get(name)
    if media_type is None:
        raise NotFound("no such demo asset")
    return Response((PAGE_DIR / name).read_bytes(), media_type=media_type)


@get("/config", include_in_schema=False, name="demo-config")
async def config(request: Request[Any, Any, Any]) -> dict[str, Any]:
    s: Settings = request.app.state.settings
    return {"token_button": s.demo_tokens, "demo_company": DEMO_COMPANY if s.demo_tokens else None,
            "threshold": s.threshold, "quality_filter": s.quality_filter, "roles_claim": s.auth_roles_claim,
            "max_file_bytes": s.max_file_bytes}


def client_may_mint(request: Request[Any, Any, Any], mode: str) -> bool:
    """``on``: anyone who reaches the port; ``auto``: only a loopback caller that came through no proxy."""
    if mode == "on":
        return True
    if any(h in request.headers for h in _PROXY_HEADERS):
        return False
    host = request.client.host if request.client else ""
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


@post("/token", include_in_schema=False, name="demo-token", status_code=200)
async def token(request: Request[Any, Any, Any]) -> dict[str, Any]:
    s: Settings = request.app.state.settings
    if request.headers.get(DEMO_HEADER) != "1":
        raise Forbidden(f"demo tokens are only minted for the demo page (header {DEMO_HEADER}: 1)")
    if not client_may_mint(request, s.demo):
        raise Forbidden("demo tokens are only minted for callers on this machine (FACEREC_DEMO=auto); set "
                        "FACEREC_DEMO=on to allow others, or paste a token")
    issuer = _runtime(request).local_issuer
    if issuer is None:  # the route exists only with the local issuer; this guards a runtime built otherwise
        raise Forbidden("no local issuer: paste a token from your identity provider")
    jwt = issuer.mint(DEMO_COMPANY, DEMO_USER, ALL_ROLES, DEMO_TOKEN_TTL_S, s.auth_audience, LOCAL_ISSUER,
                      company_claim=s.auth_company_claim, roles_claim=s.auth_roles_claim)
    client = request.client.host if request.client else "?"
    log.info("demo token minted for company %r (client %s, valid %d s)", DEMO_COMPANY, client, DEMO_TOKEN_TTL_S)
    return {"access_token": jwt, "token_type": "Bearer", "expires_in": DEMO_TOKEN_TTL_S, "company": DEMO_COMPANY,
            "roles": sorted(ALL_ROLES)}


def demo_router(settings: Settings) -> Router | None:
    """The demo's routes for these settings, or None when the demo is off."""
    if not settings.demo_enabled:
        return None
    handlers: list[Any] = [page, asset, config]
    if settings.demo_tokens:
        handlers.append(token)
    return Router(path=DEMO_PATH, route_handlers=handlers, include_in_schema=False)
