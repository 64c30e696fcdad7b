"""decode_image: formats, EXIF orientation, modes, rejects and the pixel limit checked before decoding."""

from __future__ import annotations

import io
import struct
import tracemalloc
import zlib
from collections.abc import Callable

import numpy as np
import numpy.typing as npt
import pytest
from PIL import Image

from server.errors import ImageTooLarge, UnsupportedImage
from server.inference.decode import DecodeLimits, decode_image, decode_scaled
from server.inference.pipeline import FaceResult

RGB = npt.NDArray[np.uint8]
LIMITS = DecodeLimits()


def _encode(img: Image.Image, fmt: str, **kw: object) -> bytes:
    buf = io.BytesIO()
    img.save(buf, format=fmt, **kw)
    return buf.getvalue()


@pytest.fixture(scope="module")
def portrait(photo: Callable[[str], RGB]) -> RGB:
    """obama_01 at half size (faster to encode and analyse; the face stays ~110 px wide)."""
    img = Image.fromarray(photo("obama_01"))
    return np.asarray(img.resize((img.width // 2, img.height // 2), Image.Resampling.LANCZOS))


@pytest.mark.parametrize(("fmt", "kw", "lossless"), [
    ("JPEG", {"quality": 92}, False),
    ("PNG", {}, True),
    ("WEBP", {"lossless": True}, True),
    ("WEBP", {"quality": 90}, False),
    ("BMP", {}, True),
])
def test_formats_decode_to_rgb(portrait: RGB, fmt: str, kw: dict[str, object], lossless: bool) -> None:
    out = decode_image(_encode(Image.fromarray(portrait), fmt, **kw), LIMITS)
    assert out.dtype == np.uint8 and out.shape == portrait.shape and out.flags["C_CONTIGUOUS"]
    diff = np.abs(out.astype(np.int16) - portrait.astype(np.int16))
    if lossless:
        assert diff.max() == 0
    else:
        assert diff.mean() < 4.0  # channels not swapped, nothing shifted


def test_rgb_channel_order_is_kept() -> None:
    img = np.zeros((64, 64, 3), np.uint8)
    img[..., 0] = 200  # pure red
    for fmt in ("PNG", "BMP", "JPEG"):
        out = decode_image(_encode(Image.fromarray(img), fmt), LIMITS)
        assert out[..., 0].mean() > 180 and out[..., 2].mean() < 20, fmt


@pytest.mark.parametrize(("orientation", "stored"), [
    (6, lambda a: np.rot90(a, 1)),  # 6: "rotate 90 CW to display": store the picture turned 90 CCW
    (8, lambda a: np.rot90(a, -1)),  # 8: "rotate 90 CCW to display": store it turned 90 CW
    (3, lambda a: np.rot90(a, 2)),  # 3: upside down
])
def test_exif_orientation_is_applied(portrait: RGB, orientation: int,
                                     stored: Callable[[RGB], RGB]) -> None:
    raw = np.ascontiguousarray(stored(portrait))
    exif = Image.Exif()
    exif[0x0112] = orientation
    data = _encode(Image.fromarray(raw), "JPEG", quality=95, exif=exif.tobytes())
    out = decode_image(data, LIMITS)
    assert out.shape == portrait.shape  # H and W swapped back for 6 and 8
    diff = np.abs(out.astype(np.int16) - portrait.astype(np.int16))
    assert diff.mean() < 4.0  # the upright picture, not a rotated or mirrored one


def test_exif_orientation_face_is_upright(portrait: RGB, analyze: Callable[[list[RGB]], list[FaceResult | None]]
                                          ) -> None:
    exif = Image.Exif()
    exif[0x0112] = 6
    data = _encode(Image.fromarray(np.ascontiguousarray(np.rot90(portrait, 1))), "JPEG", quality=92,
                   exif=exif.tobytes())
    (r,) = analyze([decode_image(data, LIMITS)])
    assert r is not None and abs(r.analysis.roll) < 10


def test_modes_normalise_to_rgb_uint8(portrait: RGB) -> None:
    gray = np.asarray(Image.fromarray(portrait).convert("L"))
    cases = {
        "L": Image.fromarray(gray),
        "RGBA": Image.fromarray(np.dstack([portrait, np.full(portrait.shape[:2], 255, np.uint8)])),
        "I;16": Image.fromarray(gray.astype(np.uint16) * 257),
        "P": Image.fromarray(portrait).convert("P"),
        "LA": Image.fromarray(gray).convert("LA"),
    }
    for mode, img in cases.items():
        assert img.mode == mode
        out = decode_image(_encode(img, "PNG"), LIMITS)
        assert out.dtype == np.uint8 and out.shape == (*portrait.shape[:2], 3), mode
    cmyk = decode_image(_encode(Image.fromarray(portrait).convert("CMYK"), "JPEG", quality=92), LIMITS)
    assert cmyk.shape == portrait.shape and np.abs(cmyk.astype(np.int16) - portrait).mean() < 6.0


def test_sixteen_bit_scales_by_range() -> None:
    ramp = (np.arange(256, dtype=np.uint16).reshape(16, 16).repeat(4, 0).repeat(4, 1)) * 257
    out = decode_image(_encode(Image.fromarray(ramp), "PNG"), LIMITS)
    expected = (ramp // 257).astype(np.uint8)
    assert np.abs(out[..., 0].astype(np.int16) - expected).max() <= 1
    assert (out[..., 0] == out[..., 1]).all() and (out[..., 1] == out[..., 2]).all()


def test_transparent_pixels_become_grey() -> None:
    rgba = np.zeros((40, 40, 4), np.uint8)  # fully transparent black
    out = decode_image(_encode(Image.fromarray(rgba), "PNG"), LIMITS)
    assert (out == 128).all()


def test_face_found_in_grayscale_cmyk_and_16_bit(portrait: RGB,
                                                 analyze: Callable[[list[RGB]], list[FaceResult | None]]) -> None:
    gray = np.asarray(Image.fromarray(portrait).convert("L"))
    encoded = [
        _encode(Image.fromarray(gray), "JPEG", quality=92),
        _encode(Image.fromarray(portrait).convert("CMYK"), "JPEG", quality=92),
        _encode(Image.fromarray(gray.astype(np.uint16) * 257), "PNG"),
        _encode(Image.fromarray(portrait), "WEBP", quality=90),
    ]
    results = analyze([decode_image(d, LIMITS) for d in encoded])
    for kind, r in zip(("grayscale", "CMYK", "16-bit", "webp"), results, strict=True):
        assert r is not None, kind
        assert r.analysis.faces_found == 1


def _jpeg(portrait: RGB) -> bytes:
    return _encode(Image.fromarray(portrait), "JPEG", quality=90)


@pytest.mark.parametrize("make", [
    lambda p: b"",
    lambda p: np.random.default_rng(0).integers(0, 256, 4096, dtype=np.uint8).tobytes(),
    lambda p: b"hello, this is plain text and not an image at all\n" * 20,
    lambda p: _jpeg(p)[: len(_jpeg(p)) // 2],
    lambda p: _encode(Image.fromarray(p), "PNG")[:2000],
    lambda p: _encode(Image.fromarray(p), "PNG")[:40],
    lambda p: _encode(Image.fromarray(p), "GIF"),
    lambda p: _encode(Image.fromarray(p), "TIFF"),
    lambda p: b"\xff\xd8\xff\xe0" + b"\x00" * 100,
], ids=["empty", "random", "text", "truncated-jpeg", "truncated-png", "png-header-only", "gif", "tiff",
        "jpeg-magic-only"])
def test_non_images_are_rejected(portrait: RGB, make: Callable[[RGB], bytes]) -> None:
    with pytest.raises(UnsupportedImage) as info:
        decode_image(make(portrait), LIMITS, field="image1")
    assert type(info.value) is UnsupportedImage
    assert info.value.field == "image1"


def test_tiny_image_is_rejected() -> None:
    with pytest.raises(UnsupportedImage) as info:
        decode_image(_encode(Image.new("RGB", (10, 10), (90, 60, 40)), "PNG"), LIMITS)
    assert type(info.value) is UnsupportedImage


def _png_claiming(width: int, height: int) -> bytes:
    """A tiny valid PNG whose IHDR is patched to announce ``width`` x ``height`` (CRC recomputed)."""
    data = bytearray(_encode(Image.new("RGB", (64, 64), (10, 20, 30)), "PNG"))
    assert data[12:16] == b"IHDR"
    data[16:24] = struct.pack(">II", width, height)
    data[29:33] = struct.pack(">I", zlib.crc32(bytes(data[12:29])) & 0xFFFFFFFF)
    return bytes(data)


def test_pixel_bomb_is_refused_before_decoding() -> None:
    bomb = _png_claiming(50_000, 50_000)
    assert len(bomb) < 1000
    tracemalloc.start()
    try:
        with pytest.raises(ImageTooLarge):
            decode_image(bomb, LIMITS)
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    # Never decoded: the peak is the header's, not the pixels' (no elapsed time judged: memory is the proof).
    assert peak < 5_000_000  # 50,000^2 x 3 bytes would be 7.5 GB


def test_pixel_and_side_limits() -> None:
    with pytest.raises(ImageTooLarge):
        decode_image(_png_claiming(20_001, 40), LIMITS)  # few pixels, one side over the limit
    small = DecodeLimits(max_pixels=64 * 64 - 1)
    with pytest.raises(ImageTooLarge):
        decode_image(_encode(Image.new("RGB", (64, 64)), "PNG"), small)
    assert decode_image(_encode(Image.new("RGB", (64, 64)), "PNG"), DecodeLimits(max_pixels=64 * 64)).shape == (
        64, 64, 3)


@pytest.mark.parametrize(("size", "scale"), [((1280, 853), 2), ((1001, 2003), 4), ((2401, 1601), 8)])
def test_scaled_decode_gives_the_priced_size(portrait: RGB, size: tuple[int, int], scale: int) -> None:
    """DCT scaling: sides divided by the scale and rounded up (what decode_cost priced), the same picture."""
    img = Image.fromarray(portrait).resize(size)
    data = _encode(img, "JPEG", quality=92)
    reduced, got = decode_scaled(data, LIMITS, scale=scale)
    assert got == scale
    assert reduced.shape == (-(-size[1] // scale), -(-size[0] // scale), 3)
    # Each reduced pixel is about the mean of its scale x scale block of the full decode (the last row and column
    # cover partial blocks).
    full = decode_image(data, LIMITS).astype(np.float32)
    h, w = reduced.shape[0] - 1, reduced.shape[1] - 1
    blocks = full[: h * scale, : w * scale].reshape(h, scale, w, scale, 3).mean(axis=(1, 3))
    assert float(np.abs(blocks - reduced[:h, :w]).mean()) < 2.0  # measured 0.4-0.45 grey levels


def test_scaled_decode_applies_exif_orientation_after_scaling(portrait: RGB) -> None:
    img = Image.fromarray(portrait).resize((1300, 700))
    exif = Image.Exif()
    exif[0x0112] = 6  # stored turned: shown after a clockwise quarter turn
    data = _encode(img, "JPEG", quality=92, exif=exif.tobytes())
    reduced, got = decode_scaled(data, LIMITS, scale=2)
    assert (got, reduced.shape) == (2, (650, 350, 3))
    assert decode_image(data, LIMITS).shape == (1300, 700, 3)


def test_other_formats_decode_at_full_size(portrait: RGB) -> None:
    data = _encode(Image.fromarray(portrait).resize((1400, 900)), "PNG")
    reduced, got = decode_scaled(data, LIMITS, scale=2)
    assert (got, reduced.shape) == (1, (900, 1400, 3))
