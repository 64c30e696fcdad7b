"""The API docs page renders in a real headless Chromium with every non-loopback request blocked.

Before, the page loaded Swagger UI from public CDNs and was blank offline ("SwaggerUIBundle is not defined").
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from server.app import create_app
from server.settings import Settings

OPERATIONS = {  # path -> methods the page must list
    "/v1/compare_face": {"POST"},
    "/face-recognition-sdk/v1/compare_face": {"POST"},
    "/v1/face-recognition": {"GET"},
    "/v1/face-recognition/{scan_id}": {"GET", "PUT", "DELETE"},
}


@pytest.fixture
def docs_url(serve_app: Callable[..., str], tmp_path: Path) -> str:
    # The docs need no models or store: the app is served without its lifespan (no runtime is started).
    app = create_app(Settings(data_dir=tmp_path / "data"))
    return serve_app(app, lifespan="off")


@pytest.mark.parametrize("path", ["/schema", "/schema/swagger"])
def test_docs_page_renders_offline_with_authorize(page: Any, docs_url: str, path: str) -> None:
    errors: list[str] = []
    page.on("console", lambda msg: errors.append(msg.text) if msg.type == "error" else None)
    page.on("pageerror", lambda exc: errors.append(str(exc)))
    response = page.goto(docs_url + path, wait_until="load")
    assert response is not None and response.status == 200
    page.wait_for_selector(".opblock", timeout=30_000)
    shown: dict[str, set[str]] = {}
    for block in page.query_selector_all(".opblock"):
        method = block.query_selector(".opblock-summary-method").inner_text().strip()
        route = block.query_selector(".opblock-summary-path").get_attribute("data-path")
        shown.setdefault(route, set()).add(method)
    for route, methods in OPERATIONS.items():
        assert methods <= shown.get(route, set()), (route, shown)
    authorize = page.get_by_role("button", name="Authorize")
    assert authorize.count() >= 1
    authorize.first.click()
    dialog = page.wait_for_selector(".modal-ux", timeout=10_000)
    assert "bearerAuth" in dialog.inner_text()
    assert page.blocked == [], f"the page tried to reach other hosts: {page.blocked}"
    assert not errors, errors


def test_every_asset_of_the_page_is_served_by_the_app(page: Any, docs_url: str) -> None:
    requested: list[str] = []
    page.on("request", lambda req: requested.append(req.url))
    page.goto(docs_url + "/schema", wait_until="networkidle")
    assert any(u.endswith("/schema/assets/swagger-ui-bundle.js") for u in requested)
    assert any(u.endswith("/schema/assets/swagger-ui.css") for u in requested)
    assert all(u.startswith(docs_url) or u.startswith("data:") for u in requested), requested
