"""Image headers read without decoding, and the decode cost estimated from them."""

from __future__ import annotations

import io

import pytest
from PIL import Image

from server.errors import ImageTooLarge, UnsupportedImage
from server.inference.decode import DecodeLimits, decode_cost, read_header, reduced_scale

LIMITS = DecodeLimits()


def _encode(img: Image.Image, fmt: str, **kw: object) -> bytes:
    out = io.BytesIO()
    img.save(out, fmt, **kw)
    return out.getvalue()


@pytest.mark.parametrize(("img", "fmt", "mode"), [
    (Image.new("RGB", (300, 200)), "JPEG", "RGB"),
    (Image.new("L", (300, 200)), "PNG", "L"),
    (Image.new("RGBA", (300, 200)), "PNG", "RGBA"),
    (Image.new("CMYK", (300, 200)), "JPEG", "CMYK"),
    (Image.new("RGB", (300, 200)), "WEBP", "RGB"),
    (Image.new("RGB", (300, 200)), "BMP", "RGB"),
])
def test_header_names_size_mode_and_format(img: Image.Image, fmt: str, mode: str) -> None:
    header = read_header(_encode(img, fmt), LIMITS)
    assert (header.width, header.height, header.mode, header.format) == (300, 200, mode, fmt)


def test_cost_grows_with_pixels_and_alpha_costs_more() -> None:
    small = read_header(_encode(Image.new("RGB", (100, 100)), "PNG"), LIMITS)
    big = read_header(_encode(Image.new("RGB", (1000, 1000)), "PNG"), LIMITS)
    alpha = read_header(_encode(Image.new("RGBA", (1000, 1000)), "PNG"), LIMITS)
    palette = Image.new("P", (1000, 1000))
    transparent = read_header(_encode(palette, "PNG", transparency=0), LIMITS)
    assert transparent.transparency
    assert decode_cost(big)[0] == 100 * decode_cost(small)[0]
    assert decode_cost(alpha)[0] > decode_cost(big)[0]
    assert decode_cost(transparent)[0] > decode_cost(read_header(_encode(palette, "PNG"), LIMITS))[0]
    for header in (small, big, alpha, transparent):
        peak, kept = decode_cost(header)
        assert kept == header.width * header.height * 3 and peak > kept


def test_header_refuses_like_decoding_does() -> None:
    with pytest.raises(UnsupportedImage):
        read_header(b"", LIMITS)
    with pytest.raises(UnsupportedImage):
        read_header(b"GIF89a" + b"\0" * 100, LIMITS)
    with pytest.raises(UnsupportedImage):
        read_header(_encode(Image.new("RGB", (10, 10)), "GIF"), LIMITS)
    with pytest.raises(ImageTooLarge):
        read_header(_encode(Image.new("L", (500, 500)), "PNG"), DecodeLimits(max_pixels=1000))


@pytest.mark.parametrize(("size", "fmt", "scale"), [
    ((1280, 853), "JPEG", 2),  # 640 x 427: the long side still fills the 640 canvas
    ((1279, 853), "JPEG", 2),  # 1279 / 2 rounds up to 640
    ((1278, 853), "JPEG", 1),  # 639 would shrink what the detector sees
    ((1024, 1024), "JPEG", 1),
    ((853, 2600), "JPEG", 4),  # the long side is the height: 650
    ((6000, 4000), "JPEG", 8),
    ((6000, 4000), "PNG", 1),  # only JPEG decoders scale while decoding
])
def test_reduced_scale_keeps_the_long_side_at_least_the_canvas(size: tuple[int, int], fmt: str, scale: int) -> None:
    header = read_header(_encode(Image.new("RGB", size), fmt), LIMITS)
    assert reduced_scale(header, 640) == scale
    assert reduced_scale(header, 0) == 1  # off


def test_a_reduced_decode_costs_its_reduced_pixels() -> None:
    header = read_header(_encode(Image.new("RGB", (4000, 3000)), "JPEG"), LIMITS)
    peak, kept = decode_cost(header)
    peak2, kept2 = decode_cost(header, 2)
    assert (peak2, kept2) == (peak // 4, kept // 4)
    assert decode_cost(header, 8)[1] == 500 * 375 * 3
