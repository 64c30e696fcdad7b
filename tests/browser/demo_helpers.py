"""What the demo page tests share: the served app (real runtime, real models, SQLite), driving the page, images."""

from __future__ import annotations

import io
import json
import os
import shutil
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from PIL import Image

from server.app import create_app
from server.settings import PROJECT_ROOT, Settings

FACES = PROJECT_ROOT.parent / "shared" / "faces"
OBAMA1, OBAMA2 = FACES / "obama_01_portrait_2012.jpg", FACES / "obama_02_congress_2009.jpg"
NO_FACE = FACES / "no_face_coffee.jpg"
# Generous bounds for a loaded 2-core machine: a compare takes about 1 s here, the first one longer (warm-up).
COMPARE_TIMEOUT_MS = 90_000
UI_TIMEOUT_MS = 20_000
POINT_RGB = (0, 229, 255)  # demo.js POINT_COLOUR


@dataclass
class Demo:
    url: str
    app: Any

    @property
    def runtime(self) -> Any:
        return self.app.state.runtime


def demo_app(data_dir: Path, **changes: Any) -> Any:
    """The real app (its lifespan starts the runtime: models, SQLite, local issuer), gRPC off."""
    settings = Settings(data_dir=data_dir, model_repository=PROJECT_ROOT / "model_repository", device="cpu",
                        grpc_port=0, ort_intra_threads=1).replace(**changes)
    return create_app(settings)


def open_demo(page: Any, demo: Demo, *, token: bool = True) -> list[str]:
    """Load /demo (waiting for its script to be ready), optionally press "Get a demo token"; returns the list that
    collects the page's console errors and uncaught exceptions."""
    errors: list[str] = []
    page.on("console", lambda m: errors.append(m.text) if m.type == "error" else None)
    page.on("pageerror", lambda e: errors.append(str(e)))
    page.set_default_timeout(UI_TIMEOUT_MS)
    response = page.goto(demo.url + "/demo", wait_until="load")
    assert response is not None and response.status == 200
    page.wait_for_selector("body[data-ready=true]", state="attached")
    if token:
        page.get_by_role("button", name="Get a demo token").click()
        wait_for_demo_token(page)
    return errors


def wait_for_demo_token(page: Any) -> None:
    """Until the page holds a freshly minted demo token. The success line is matched exactly: ``has-text`` is a
    case-insensitive substring match, so "Asking the server for a demo token..." (shown while the request is in
    flight) passed it, and a test could press Compare with the previous token (a 401 seen once under load)."""
    page.wait_for_selector("#token-status:text-matches('^Demo token for the company')")
    assert page.input_value("#token").count(".") == 2, page.inner_text("#token-status")


def choose(page: Any, field: str, path: Path) -> None:
    page.set_input_files(f"#{field}", str(path))
    canvas = "#canvas1" if field == "file1" else "#canvas2"
    page.wait_for_selector(f"{canvas}[data-scale]", state="attached")


def compare(page: Any, *, reference: str | None = None, threshold: str | None = None,
            quality_filter: str | None = None) -> Any:
    """Fill the options, press Compare; returns the compare response (Playwright Response)."""
    if reference is not None:
        page.fill("#reference", reference)
    if threshold is not None:
        page.fill("#threshold", threshold)
    if quality_filter is not None:
        page.select_option("#quality_filter", quality_filter)
    with page.expect_response(lambda r: r.url.endswith("/v1/compare_face") and r.request.method == "POST",
                              timeout=COMPARE_TIMEOUT_MS) as info:
        page.get_by_role("button", name="Compare", exact=True).click()
    page.wait_for_selector("#result[data-state=done], #result[data-state=error]", state="attached",
                           timeout=COMPARE_TIMEOUT_MS)
    return info.value


def drawn(page: Any, canvas: str) -> dict[str, Any]:
    """What the page's drawing code recorded on a canvas: scale, box and points (canvas pixels)."""
    data = page.eval_on_selector(canvas, "c => ({...c.dataset, width: c.width, height: c.height})")
    return {"scale": float(data["scale"]), "box": json.loads(data["box"]), "points": json.loads(data["points"]),
            "width": data["width"], "height": data["height"]}


def pixels(page: Any, canvas: str, points: list[tuple[float, float]]) -> list[tuple[int, int, int]]:
    """RGB of the canvas at each (x, y) (canvas pixels)."""
    rgba = page.eval_on_selector(
        canvas, "(c, pts) => pts.map(([x, y]) => Array.from(c.getContext('2d').getImageData(Math.round(x), "
                "Math.round(y), 1, 1).data))", [list(p) for p in points])
    return [tuple(v[:3]) for v in rgba]


def tiny_card(out: Path) -> Path:
    """obama_01's head shrunk 8x onto a 640x400 card: eyes 12 px apart, under the LOW quality filter's 16 px."""
    with Image.open(OBAMA1) as img:
        head = img.convert("RGB").crop((250, 20, 640, 460)).resize((49, 55), Image.Resampling.LANCZOS)
    card = Image.new("RGB", (640, 400), (205, 205, 205))
    card.paste(head, (60, 170))
    card.save(out)
    return out


def noise_png(out: Path, side: int) -> Path:
    """A PNG of random pixels (incompressible: about 3 bytes per pixel)."""
    data = os.urandom(side * side * 3)
    Image.frombytes("RGB", (side, side), data).save(out, "PNG", compress_level=0)
    return out


def keep_screenshot(page: Any, tmp_path: Path, name: str) -> Path:
    """A full-page screenshot under the test's tmp dir; also copied into FACEREC_TEST_SCREENSHOT_DIR when set
    (how docs/demo.png is made: README "Demo page")."""
    shot = tmp_path / name
    page.screenshot(path=str(shot), full_page=True)
    target = os.environ.get("FACEREC_TEST_SCREENSHOT_DIR")
    if target:
        Path(target).mkdir(parents=True, exist_ok=True)
        shutil.copyfile(shot, Path(target) / name)
    return shot


def jpeg_bytes(path: Path, size: tuple[int, int]) -> bytes:
    with Image.open(path) as img:
        out = io.BytesIO()
        img.convert("RGB").resize(size).save(out, "JPEG")
        return out.getvalue()
