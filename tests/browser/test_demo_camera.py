"""The demo page's selfie path in a real headless Chromium whose camera is Chromium's fake capture device playing a
video made here from a shared photo (``--use-file-for-fake-video-capture``): open the camera, capture a frame,
compare it with another photo of the same person."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from demo_helpers import OBAMA1, OBAMA2, Demo, choose, compare, demo_app, drawn, keep_screenshot, open_demo
from PIL import Image

FRAME_W, FRAME_H = 640, 480


def write_y4m(photo: Path, out: Path, crop: tuple[int, int, int, int], frames: int = 2) -> Path:
    """A YUV4MPEG2 video (4:2:0, full-range BT.601 as JPEG uses) of ``photo`` cropped to ``crop`` and scaled to
    640x480: what Chromium's fake camera plays in a loop."""
    with Image.open(photo) as img:
        rgb = np.asarray(img.convert("RGB").crop(crop).resize((FRAME_W, FRAME_H), Image.Resampling.LANCZOS),
                         dtype=np.float32)
    r, g, b = rgb[..., 0], rgb[..., 1], rgb[..., 2]
    y = 0.299 * r + 0.587 * g + 0.114 * b
    cb = 128 - 0.168736 * r - 0.331264 * g + 0.5 * b
    cr = 128 + 0.5 * r - 0.418688 * g - 0.081312 * b

    def plane(a: np.ndarray, sub: bool) -> bytes:
        if sub:  # 2x2 average for the chroma planes
            a = a.reshape(FRAME_H // 2, 2, FRAME_W // 2, 2).mean(axis=(1, 3))
        return np.clip(np.round(a), 0, 255).astype(np.uint8).tobytes()

    frame = b"FRAME\n" + plane(y, False) + plane(cb, True) + plane(cr, True)
    out.write_bytes(f"YUV4MPEG2 W{FRAME_W} H{FRAME_H} F10:1 Ip A1:1 C420jpeg\n".encode() + frame * frames)
    return out


@pytest.fixture(scope="module")
def chromium_extra_args(tmp_path_factory: pytest.TempPathFactory, faces_dir: Path) -> list[str]:
    # obama_02's head and shoulders (its face box is about x 172-409, y 195-541 of 478x1024) as a 4:3 frame.
    video = write_y4m(OBAMA2, tmp_path_factory.mktemp("camera") / "selfie.y4m", crop=(0, 120, 478, 478))
    return ["--use-fake-device-for-media-stream", "--use-fake-ui-for-media-stream",
            f"--use-file-for-fake-video-capture={video}"]


@pytest.fixture(scope="module")
def demo(serve_app_module: Callable[..., str], tmp_path_factory: pytest.TempPathFactory) -> Iterator[Demo]:
    app = demo_app(tmp_path_factory.mktemp("camera-demo") / "data")
    yield Demo(serve_app_module(app), app)


def test_selfie_from_the_camera_is_compared(page: Any, demo: Demo, tmp_path: Path) -> None:
    page.context.grant_permissions(["camera"])
    errors = open_demo(page, demo)
    choose(page, "file1", OBAMA1)
    page.get_by_role("button", name="Take a selfie with the camera").click()
    page.wait_for_selector("#camera-video[data-playing=true]")
    page.get_by_role("button", name="Capture").click()
    # The captured frame reached the form: photo 2 is now the camera's picture, at the camera's size.
    page.wait_for_selector("#canvas2[data-source=camera][data-scale]", state="attached")
    assert page.inner_text("#file2-info").startswith(f"Selfie from the camera ({FRAME_W} \u00d7 {FRAME_H})")
    assert page.eval_on_selector("#file2", "i => i.files.length && i.files[0].name") == "selfie.jpg"
    assert page.is_hidden("#camera-video")  # the camera is closed after the capture
    resp = compare(page, reference="browser-selfie")
    assert resp.status == 200, resp.text()
    body = resp.json()
    # The server saw the camera frame: a 640x480 picture, the face where the video put it, same person.
    assert body["compare_result"] == "Same person", body["compare_similarity"]
    face = body["face2"]
    assert 0 < face["x1"] < face["x2"] <= FRAME_W and 0 < face["y1"] < face["y2"] <= FRAME_H
    assert len(drawn(page, "#canvas2")["points"]) == 68
    keep_screenshot(page, tmp_path, "demo-camera.png")
    assert page.blocked == []
    assert errors == []
