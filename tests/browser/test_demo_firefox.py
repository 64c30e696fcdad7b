"""The /demo page in a real headless Firefox (Debian's firefox-esr over WebDriver BiDi, see bidi.py) against the
real app, every non-loopback request failed: compare with the drawn points and the history, and the camera path
with Firefox's fake camera (a test pattern, not a face: the captured frame reaches the form, the no-face message
appears)."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
from bidi import Firefox, firefox
from demo_helpers import OBAMA1, OBAMA2, Demo, demo_app

from tooling.serve import free_port

COMPARE_TIMEOUT_S = 90.0


@pytest.fixture(scope="module")
def demo(serve_app_module: Callable[..., str], tmp_path_factory: pytest.TempPathFactory,
         faces_dir: Path) -> Iterator[Demo]:
    app = demo_app(tmp_path_factory.mktemp("firefox-demo") / "data")
    yield Demo(serve_app_module(app), app)


@pytest.fixture(scope="module")
def firefox_browser(firefox_path: str) -> Iterator[Firefox]:
    with firefox(firefox_path, free_port()) as browser:
        yield browser


@pytest.fixture
def ff(firefox_browser: Firefox) -> Firefox:
    """The module's Firefox with this test's own record of blocked requests and console messages."""
    firefox_browser.blocked.clear()
    firefox_browser.log.clear()
    return firefox_browser


def open_demo(ff: Firefox, demo: Demo) -> None:
    ff.navigate(demo.url + "/demo")
    ff.wait("return document.body.dataset.ready === 'true';", what="the page script")
    ff.js("document.getElementById('get-token').click();")
    ff.wait("return document.getElementById('token-status').textContent.startsWith('Demo token');",
            what="a demo token")


def press_compare(ff: Firefox) -> str:
    ff.js("document.getElementById('result').dataset.state = ''; document.getElementById('compare').click();")
    return str(ff.wait("const s = document.getElementById('result').dataset.state; "
                       "return s === 'done' || s === 'error' ? s : null;", timeout_s=COMPARE_TIMEOUT_S,
                       what="the compare answer"))


def test_compare_in_firefox(ff: Firefox, demo: Demo) -> None:
    open_demo(ff, demo)
    ff.set_files("#file1", OBAMA1)
    ff.set_files("#file2", OBAMA2)
    ff.wait("return document.getElementById('canvas2').dataset.scale;", what="the photo previews")
    ff.js("document.getElementById('reference').value = 'firefox-compare';")
    assert press_compare(ff) == "done"
    assert ff.js("return document.getElementById('verdict').textContent;").startswith("Same person")
    scan_id = ff.js("return document.getElementById('result').dataset.scanId;")
    token = ff.js("return document.getElementById('token').value;")
    stored = httpx.get(f"{demo.url}/v1/face-recognition/{scan_id}", headers={"Authorization": f"Bearer {token}"},
                       timeout=30).json()
    assert stored["reference"] == "firefox-compare" and stored["compareResult"] == "Same person"
    for canvas, face in (("canvas1", stored["face1"]), ("canvas2", stored["face2"])):
        d: dict[str, Any] = ff.js("const c = document.getElementById(a[0]); "
                                  "return {scale: +c.dataset.scale, points: JSON.parse(c.dataset.points)};", canvas)
        expected = [(p["x"] * d["scale"], p["y"] * d["scale"]) for p in face["landmark_68"]]
        assert len(d["points"]) == 68
        assert all(abs(x - ex) < 0.01 and abs(y - ey) < 0.01
                   for (x, y), (ex, ey) in zip(d["points"], expected, strict=True))
        # Painted in the point colour (Firefox's canvas, read back in the page).
        painted = ff.js("const c = document.getElementById(a[0]).getContext('2d'); return a[1].filter(([x, y]) => {"
                        " const [r, g, b] = c.getImageData(Math.round(x), Math.round(y), 1, 1).data;"
                        " return r < 40 && g > 189 && b > 215; }).length;", canvas, expected)
        assert painted >= 60
    ff.wait("return !!document.querySelector(`#history-list button[data-id='${a[0]}']`);", scan_id,
            what="the scan in the history")
    assert ff.blocked == []
    assert ff.errors() == []


def test_camera_test_pattern_in_firefox(ff: Firefox, demo: Demo) -> None:
    open_demo(ff, demo)
    ff.set_files("#file1", OBAMA1)
    ff.js("document.getElementById('camera-start').click();")
    ff.wait("return document.getElementById('camera-video').dataset.playing === 'true';", what="the camera")
    ff.wait("return document.getElementById('camera-video').videoWidth > 0;", what="a camera frame")
    ff.js("document.getElementById('camera-capture').click();")
    info = ff.wait("const i = document.getElementById('file2-info').textContent; "
                   "return i.startsWith('Selfie from the camera') && i.includes(' px') ? i : null;",
                   what="the captured frame in the form")
    assert ff.js("return document.getElementById('canvas2').dataset.source;") == "camera"
    assert ff.js("return document.getElementById('file2').files[0].name;") == "selfie.jpg", info
    assert press_compare(ff) == "error"
    alert = ff.js("const e = document.getElementById('error'); return [e.hidden, e.dataset.code, e.textContent];")
    assert alert[0] is False and alert[1] == "no_face"
    assert alert[2].startswith("No face found in photo 2.")
    assert ff.blocked == []


def test_requests_to_other_hosts_are_failed(ff: Firefox) -> None:
    """The guard itself: a page that asks another host for something gets nothing, and the URL is recorded."""
    ff.navigate("data:text/html,<img id=i src='http://203.0.113.9/pixel.png'>")
    ff.wait("const i = document.getElementById('i'); return i.complete;", what="the image to fail")
    assert ff.js("return document.getElementById('i').naturalWidth;") == 0
    assert ff.blocked == ["http://203.0.113.9/pixel.png"]
