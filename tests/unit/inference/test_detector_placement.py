"""Detector canvases: bucket choice, never upscaling, and exact mapping back from rotated/padded/cropped passes."""

from __future__ import annotations

import math

import numpy as np
import pytest

from server.inference.models.detector import (
    BUCKETS,
    Detection,
    Detector,
    Placement,
    bucket_for,
    eye_angle,
    nearest_centre,
    place,
    shifted,
    square_crop,
)


@pytest.mark.parametrize(("side", "expected"), [(1, 160), (160, 160), (161, 256), (250, 256), (256, 256),
                                                (257, 320), (320, 320), (321, 480), (480, 480), (481, 640),
                                                (640, 640), (641, 640)])
def test_bucket_is_the_smallest_that_holds_the_side(side: int, expected: int) -> None:
    assert bucket_for(side, 640) == expected


def test_bucket_respects_a_smaller_maximum() -> None:
    assert bucket_for(300, 320) == 320
    assert bucket_for(400, 320) == 320  # over every allowed bucket: the maximum (the image is scaled to fit)
    assert bucket_for(100, 256) == 160 and bucket_for(200, 256) == 256


def test_a_250px_photo_is_not_letterboxed_to_640() -> None:
    p = place(250, 250, 640)
    assert p.size == 256 and p.scale == 1.0  # own size on a 256 canvas: 0.16x the pixels of 640x640


@pytest.mark.parametrize("shape", [(64, 48), (250, 250), (480, 300), (1024, 820), (3000, 4000)])
def test_upscaled_only_to_fill_the_smallest_canvas_and_always_fits(shape: tuple[int, int]) -> None:
    h, w = shape
    for pad in (0.0, 0.25):
        for rot in (0, 45, 90, 135, 180, 270):
            p = place(h, w, 640, pad=pad, rotation=rot)
            assert p.scale <= 1.0 or p.size == BUCKETS[0]
            assert p.size in BUCKETS
            # Every corner of the image lands inside the canvas.
            corners = np.array([[0, 0], [w, 0], [0, h], [w, h]], np.float64)
            a = p.affine()
            mapped = corners @ a[:, :2].T + a[:, 2]
            assert (mapped >= -1e-6).all() and (mapped <= p.size + 1e-6).all(), (shape, pad, rot)


def test_a_thumbnail_fills_the_smallest_canvas() -> None:
    p = place(64, 48, 640)
    assert p.size == 160 and p.scale == pytest.approx(2.5)  # a 26-px face becomes 65 px on the canvas


def test_big_photo_first_pass_equals_the_old_letterbox() -> None:
    p = place(1024, 820, 640)
    assert (p.size, p.offset, p.rotation) == (640, (0, 0), 0)
    assert p.scale == pytest.approx(0.625)


@pytest.mark.parametrize("rotation", [0, 90, 180, 270])
@pytest.mark.parametrize("pad", [0.0, 0.25])
def test_quarter_turns_map_pixels_back_exactly(rotation: int, pad: float) -> None:
    """A marked pixel is found on the rendered canvas and mapped back to where it was in the original."""
    img = np.zeros((200, 320, 3), np.uint8)
    img[10, 60] = (255, 0, 0)  # red at pixel centre (60.5, 10.5)
    p = place(200, 320, 640, pad=pad, rotation=rotation)
    canvas = Detector.render(img, p)
    assert canvas.shape == (3, p.size, p.size)
    yy, xx = np.nonzero(canvas[2])  # BGR: red is channel 2
    assert len(yy) == 1
    back = p.to_original(np.array([[xx[0] + 0.5, yy[0] + 0.5]], np.float32))
    np.testing.assert_allclose(back, [[60.5, 10.5]], atol=1e-4)


@pytest.mark.parametrize("rotation", [45, 135, 225, 315, 30])
def test_other_angles_map_back_within_a_pixel(rotation: int) -> None:
    img = np.zeros((180, 270, 3), np.uint8)
    img[20:22, 70:72] = 255  # a 2x2 dot centred on (71, 21)
    p = place(180, 270, 640, pad=0.25, rotation=rotation)
    canvas = Detector.render(img, p)[0]
    yy, xx = np.nonzero(canvas > 60)
    w = canvas[yy, xx]
    centre = np.array([[(xx * w).sum() / w.sum() + 0.5, (yy * w).sum() / w.sum() + 0.5]], np.float32)
    np.testing.assert_allclose(p.to_original(centre), [[71.0, 21.0]], atol=0.3)


def test_box_of_a_turned_pass_keeps_its_size_and_centre() -> None:
    p = place(200, 200, 640, rotation=45)
    a = p.affine()
    centre = np.array([120.0, 80.0])
    c = a[:, :2] @ centre + a[:, 2]
    box = np.array([c[0] - 20, c[1] - 30, c[0] + 20, c[1] + 30], np.float32)  # 40 x 60 on the canvas, scale 1
    back = p.box_to_original(box)
    np.testing.assert_allclose((back[:2] + back[2:]) / 2, centre, atol=1e-3)
    np.testing.assert_allclose(back[2:] - back[:2], [40 / p.scale, 60 / p.scale], atol=1e-3)


def test_quarter_turn_box_swaps_width_and_height() -> None:
    p = place(200, 400, 640, rotation=90)
    a = p.affine()
    x1, y1 = a[:, :2] @ np.array([10.0, 20.0]) + a[:, 2]
    x2, y2 = a[:, :2] @ np.array([50.0, 30.0]) + a[:, 2]
    box = np.array([min(x1, x2), min(y1, y2), max(x1, x2), max(y1, y2)], np.float32)
    np.testing.assert_allclose(p.box_to_original(box), [10, 20, 50, 30], atol=1e-3)


def test_postprocess_maps_rotated_detections_to_the_original_image() -> None:
    """A detection decoded on a canvas turned 90 degrees comes back in original pixels, keypoints in face order."""
    det = Detector(640, score_threshold=0.5, min_face_px=1)
    p = place(200, 300, 640, rotation=90)  # canvas 320, the image turned clockwise
    a = p.affine()
    # A face at original box (40, 30)-(80, 70) with the subject's right eye at (50, 60), left eye at (50, 40):
    # lying on its side (turned counter-clockwise), so on the turned canvas it is upright.
    kps_img = np.array([[50, 60], [50, 40], [60, 50], [70, 58], [70, 42]], np.float64)
    kps_canvas = kps_img @ a[:, :2].T + a[:, 2]
    box_corners = np.array([[40, 30], [80, 70]], np.float64) @ a[:, :2].T + a[:, 2]
    x1, y1 = box_corners.min(axis=0)
    x2, y2 = box_corners.max(axis=0)
    s = 8
    n = p.size // s
    cx, cy = (x1 + x2) / 2, (y1 + y2) / 2
    col, row = int(cx // s), int(cy // s)
    outputs = {}
    for stride in (8, 16, 32):
        k = (p.size // stride) ** 2
        outputs[f"cls_{stride}"] = np.zeros((1, k, 1), np.float32)
        outputs[f"obj_{stride}"] = np.zeros((1, k, 1), np.float32)
        outputs[f"bbox_{stride}"] = np.zeros((1, k, 4), np.float32)
        outputs[f"kps_{stride}"] = np.zeros((1, k, 10), np.float32)
    anchor = row * n + col
    outputs["cls_8"][0, anchor, 0] = outputs["obj_8"][0, anchor, 0] = 0.9
    outputs["bbox_8"][0, anchor] = [cx / s - col, cy / s - row, math.log((x2 - x1) / s), math.log((y2 - y1) / s)]
    outputs["kps_8"][0, anchor] = (kps_canvas / s - [col, row]).ravel()
    (d,) = det.postprocess_placed(outputs, [p])[0]
    np.testing.assert_allclose(d.box, [40, 30, 80, 70], atol=1e-3)
    np.testing.assert_allclose(d.kps, kps_img, atol=1e-3)
    # The eye line, right eye to left eye, points up the image: the face is rolled -90 degrees.
    assert eye_angle(d.kps) == pytest.approx(-90.0)
    # The 40-px face is under a 41-px minimum given for this image (an image decoded at reduced scale counts
    # its minimum in its own pixels), and kept at 40.
    assert det.postprocess_placed(outputs, [p], [41.0]) == [[]]
    assert len(det.postprocess_placed(outputs, [p], [40.0])[0]) == 1


def test_one_batch_needs_one_canvas_size() -> None:
    det = Detector(640)
    imgs = [np.zeros((150, 150, 3), np.uint8), np.zeros((400, 400, 3), np.uint8)]
    with pytest.raises(ValueError, match="one canvas size"):
        det.preprocess_placed(imgs, [det.place(i) for i in imgs])
    batch = det.preprocess_placed(imgs[:1] * 2, [det.place(imgs[0]), det.place(imgs[0], rotation=180)])
    assert batch.shape == (2, 3, 160, 160)


def test_square_crop_pads_outside_the_image_and_shifts_back() -> None:
    img = np.full((100, 100, 3), 7, np.uint8)
    crop, origin = square_crop(img, np.array([80, 80, 100, 100], np.float32), 2.0)
    assert crop.shape == (40, 40, 3) and origin == (70, 70)
    assert crop[:30, :30].min() == 7 and crop[30:, :].max() == 0  # the part beyond the image is black
    d = Detection(np.array([5, 5, 25, 25], np.float32), np.full((5, 2), 10, np.float32), 0.9)
    back = shifted(d, origin, (100, 100))
    np.testing.assert_allclose(back.box, [75, 75, 95, 95])
    np.testing.assert_allclose(back.kps, np.full((5, 2), 80))


def test_nearest_centre() -> None:
    a = Detection(np.array([0, 0, 10, 10], np.float32), np.zeros((5, 2), np.float32), 0.99)
    b = Detection(np.array([40, 40, 60, 60], np.float32), np.zeros((5, 2), np.float32), 0.8)
    assert nearest_centre([a, b], (100, 100)) is b
    assert nearest_centre([], (100, 100)) is None


def test_placement_is_frozen_data() -> None:
    p = Placement(10, 20, 160, 1.0)
    with pytest.raises(AttributeError):
        p.size = 320  # type: ignore[misc]
