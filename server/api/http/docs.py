"""The API docs page: Swagger UI served with its own JS/CSS from the pinned ``swagger-ui-bundle-v2`` wheel.

Litestar's render plugins load their assets from public CDNs by default; on an air-gapped network that page is
blank. Here the one UI we offer (Swagger UI, which has the "Authorize" button for bearer tokens) takes every asset
from ``/schema/assets/``, served by the app itself, and the page's Content-Security-Policy forbids any other origin.

    /schema               Swagger UI (also /schema/swagger)
    /schema/openapi.json  the OpenAPI document
    /schema/assets/...    swagger-ui-bundle.js, swagger-ui-standalone-preset.js, swagger-ui.css, favicon
"""

from __future__ import annotations

from pathlib import Path
from typing import Final

from litestar import Router
from litestar.openapi.plugins import SwaggerRenderPlugin
from litestar.static_files import create_static_files_router
from swagger_ui_bundle import swagger_ui_path

SCHEMA_PATH: Final = "/schema"
ASSETS_PATH: Final = f"{SCHEMA_PATH}/assets"
DOCS_PATHS: Final = (SCHEMA_PATH, f"{SCHEMA_PATH}/swagger")
# Only what the page loads; the bundle's source maps, index.html and the ES builds are not served.
ASSET_FILES: Final = ("swagger-ui-bundle.js", "swagger-ui-standalone-preset.js", "swagger-ui.css",
                      "favicon-32x32.png")
# The docs page may load from this server only. Swagger UI starts from an inline <script> and sets inline styles.
DOCS_CSP: Final = ("default-src 'self'; script-src 'self' 'unsafe-inline'; style-src 'self' 'unsafe-inline'; "
                   "img-src 'self' data:; connect-src 'self'; frame-ancestors 'none'; base-uri 'none'; "
                   "form-action 'self'")


def assets_dir() -> Path:
    """The folder of the pinned Swagger UI distribution inside the installed wheel."""
    return Path(str(swagger_ui_path))


class OfflineSwaggerPlugin(SwaggerRenderPlugin):
    """Swagger UI whose JS, CSS and favicon come from this app (``/schema/assets``), never from a CDN."""

    def __init__(self) -> None:
        super().__init__(
            path="/swagger",
            js_url=f"{ASSETS_PATH}/swagger-ui-bundle.js",
            css_url=f"{ASSETS_PATH}/swagger-ui.css",
            standalone_preset_js_url=f"{ASSETS_PATH}/swagger-ui-standalone-preset.js",
            favicon=f"<link rel='icon' type='image/png' href='{ASSETS_PATH}/favicon-32x32.png'>",
        )

    def receive_router(self, router: Router) -> None:
        """Also serve the assets, below the OpenAPI router (``/schema/assets/<file>``)."""
        super().receive_router(router)
        missing = [name for name in ASSET_FILES if not (assets_dir() / name).is_file()]
        if missing:  # a broken install must fail at start-up, not as a blank page
            raise RuntimeError(f"swagger-ui-bundle-v2 lacks {', '.join(missing)} in {assets_dir()}")
        router.register(create_static_files_router(
            path=ASSETS_PATH.removeprefix(SCHEMA_PATH), directories=[assets_dir()], name="docs-assets",
            include_in_schema=False, before_request=None,
        ))
