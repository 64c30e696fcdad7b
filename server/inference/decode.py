"""Image decoding: format sniffing, pixel limits checked before decoding, reduced-scale JPEG decoding, EXIF orientation,
mode normalisation."""

from __future__ import annotations

import io
import warnings
from dataclasses import dataclass

import numpy as np
import numpy.typing as npt
from PIL import Image, ImageOps, UnidentifiedImageError

from server import tracing
from server.errors import ImageTooLarge, UnsupportedImage

# Pillow's own names; MPO is what cameras write for JPEGs with an embedded preview.
SUPPORTED_FORMATS = frozenset({"JPEG", "MPO", "PNG", "WEBP", "BMP"})
# Formats whose decoder can scale by 1/2, 1/4 or 1/8 while decoding (libjpeg's DCT scaling, Pillow's draft()).
REDUCIBLE_FORMATS = frozenset({"JPEG", "MPO"})
DCT_SCALES = (8, 4, 2)


@dataclass(frozen=True, slots=True)
class DecodeLimits:
    """Bounds every decoded image must respect."""

    max_pixels: int = 40_000_000
    min_side: int = 32
    max_side: int = 20_000


@dataclass(frozen=True, slots=True)
class ImageHeader:
    """What an image's header tells before any pixel is decoded."""

    width: int
    height: int
    mode: str  # Pillow's mode as opened (before conversion to RGB)
    format: str
    transparency: bool


# Peak bytes per pixel while decode_image runs, by what the header announces; measured on 40 MP images
# (bench/hardening.py): the codec's own buffer, Pillow's 4-byte pixels, the EXIF-transpose copy, mode conversions
# (alpha compositing makes three more) and the final RGB array. Change them together with decode_image.
_PEAK_BYTES_PER_PIXEL = {"1": 12, "L": 12, "P": 12, "RGB": 14, "YCbCr": 14, "CMYK": 18, "I;16": 18, "I;16B": 18,
                         "I;16L": 18, "I;16N": 18, "I": 18, "F": 18}
_WEBP_BYTES_PER_PIXEL = 26
_OTHER_BYTES_PER_PIXEL = 26  # alpha (RGBA, LA, PA, transparent palettes) and anything unexpected


def read_header(data: bytes, limits: DecodeLimits, *, field: str | None = None) -> ImageHeader:
    """The header of ``data``, refused as :func:`decode_image` would refuse it (format, pixel and side limits)."""
    if not data:
        raise UnsupportedImage("empty file", field=field)
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", Image.DecompressionBombWarning)
            with Image.open(io.BytesIO(data)) as img:
                fmt = img.format or ""
                if fmt not in SUPPORTED_FORMATS:
                    raise UnsupportedImage(f"unsupported image format {fmt or 'unknown'}", field=field)
                w, h = img.size
                if w * h > limits.max_pixels or max(w, h) > limits.max_side:
                    raise ImageTooLarge(f"image is {w}x{h}; the limit is {limits.max_pixels} pixels and "
                                        f"{limits.max_side} px a side", field=field)
                return ImageHeader(w, h, img.mode, fmt, "transparency" in img.info)
    except (UnsupportedImage, ImageTooLarge):
        raise
    except Image.DecompressionBombError as exc:
        raise ImageTooLarge("image dimensions over the limit", field=field) from exc
    except (UnidentifiedImageError, OSError, SyntaxError, ValueError, EOFError) as exc:
        raise UnsupportedImage("not a readable image (corrupt, truncated or unsupported)", field=field) from exc


def reduced_scale(header: ImageHeader, keep_long_side: int) -> int:
    """The largest DCT scale (1, 2, 4 or 8) a JPEG can be decoded at while its long side stays at least
    ``keep_long_side`` pixels (1: decode at full resolution; other formats always are)."""
    if header.format not in REDUCIBLE_FORMATS or keep_long_side <= 0:
        return 1
    long_side = max(header.width, header.height)
    return next((d for d in DCT_SCALES if -(-long_side // d) >= keep_long_side), 1)


def scaled_size(width: int, height: int, scale: int) -> tuple[int, int]:
    """The size libjpeg gives an image decoded at 1/``scale`` (sides rounded up)."""
    return -(-width // scale), -(-height // scale)


def decode_cost(header: ImageHeader, scale: int = 1) -> tuple[int, int]:
    """``(peak, kept)``: bytes decode_image needs at its peak for this image decoded at 1/``scale``, and the RGB
    array it returns."""
    width, height = scaled_size(header.width, header.height, scale)
    pixels = width * height
    if header.format == "WEBP":
        per_pixel = _WEBP_BYTES_PER_PIXEL
    elif header.transparency:
        per_pixel = _OTHER_BYTES_PER_PIXEL
    else:
        per_pixel = _PEAK_BYTES_PER_PIXEL.get(header.mode, _OTHER_BYTES_PER_PIXEL)
    return pixels * per_pixel, pixels * 3


def decode_image(data: bytes, limits: DecodeLimits, *, field: str | None = None) -> npt.NDArray[np.uint8]:
    """Decode ``data`` into an upright RGB ``(H, W, 3)`` uint8 array at full resolution (see
    :func:`decode_scaled`)."""
    return decode_scaled(data, limits, field=field)[0]


@tracing.traced("decode", lambda data, *_, **kw: {"bytes": len(data), "field": str(kw.get("field")),
                                                  "scale": int(kw.get("scale", 1))})
def decode_scaled(data: bytes, limits: DecodeLimits, *, field: str | None = None, scale: int = 1
                  ) -> tuple[npt.NDArray[np.uint8], int]:
    """Decode ``data`` into an upright RGB ``(H, W, 3)`` uint8 array, a JPEG at 1/``scale`` of its size when
    ``scale`` > 1 (DCT scaling: cheaper to decode, and already filtered); returns it and the scale it got
    (1 for other formats). A pixel ``(x, y)`` of it covers original pixels ``scale*x .. scale*x + scale - 1``.

    Raises :class:`UnsupportedImage` for anything that is not a complete JPEG/PNG/WebP/BMP and
    :class:`ImageTooLarge` when the header announces more pixels than allowed (checked before decoding,
    so a decompression bomb costs nothing). The limits apply to the full-size image.
    """
    if not data:
        raise UnsupportedImage("empty file", field=field)
    try:
        with warnings.catch_warnings():
            # Pillow warns (and at 2x raises) on huge images; we enforce our own limit below instead.
            warnings.simplefilter("ignore", Image.DecompressionBombWarning)
            img = Image.open(io.BytesIO(data))
            fmt = img.format or ""
            if fmt not in SUPPORTED_FORMATS:
                raise UnsupportedImage(f"unsupported image format {fmt or 'unknown'}", field=field)
            w, h = img.size
            if w * h > limits.max_pixels or max(w, h) > limits.max_side:
                raise ImageTooLarge(
                    f"image is {w}x{h}; the limit is {limits.max_pixels} pixels and {limits.max_side} px a side",
                    field=field,
                )
            if min(w, h) < limits.min_side:
                raise UnsupportedImage(f"image is {w}x{h}; each side must be at least {limits.min_side} px",
                                       field=field)
            got = 1
            if scale > 1 and fmt in REDUCIBLE_FORMATS:
                # Pillow picks the largest DCT scale that keeps the image at least this size: asking for the
                # floored sides gets exactly 1/scale (sides rounded up), never less than what was priced.
                drafted = img.draft(None, (max(1, w // scale), max(1, h // scale)))
                if drafted is not None:
                    got = max(1, round(w / drafted[1][2]))
            img.load()
            # Transposed in place: a photo without an EXIF turn is not copied.
            ImageOps.exif_transpose(img, in_place=True)
            return _to_rgb(img), got
    except (UnsupportedImage, ImageTooLarge):
        raise
    except Image.DecompressionBombError as exc:
        raise ImageTooLarge("image dimensions over the limit", field=field) from exc
    except (UnidentifiedImageError, OSError, SyntaxError, ValueError, EOFError) as exc:
        # Truncated or corrupt files surface as OSError/SyntaxError deep inside the codecs.
        raise UnsupportedImage("not a readable image (corrupt, truncated or unsupported)", field=field) from exc


def _to_rgb(img: Image.Image) -> npt.NDArray[np.uint8]:
    mode = img.mode
    if mode in ("I;16", "I;16B", "I;16L", "I;16N", "I"):
        # 16-bit grayscale: scale by the actual range of the type, not a clip to 255.
        arr = np.asarray(img, dtype=np.float32)
        peak = 65535.0 if arr.max(initial=0) > 255 else 255.0
        gray = np.clip(arr * (255.0 / peak), 0, 255).astype(np.uint8)
        return np.ascontiguousarray(np.repeat(gray[:, :, None], 3, axis=2))
    if mode == "F":
        arr = np.asarray(img, dtype=np.float32)
        lo, hi = float(arr.min(initial=0)), float(arr.max(initial=1))
        gray = ((arr - lo) * (255.0 / max(hi - lo, 1e-6))).astype(np.uint8)
        return np.ascontiguousarray(np.repeat(gray[:, :, None], 3, axis=2))
    if mode in ("RGBA", "LA", "PA") or (mode == "P" and "transparency" in img.info):
        # Transparent pixels become mid-grey rather than black so they do not read as a dark occluder.
        rgba = img.convert("RGBA")
        background = Image.new("RGBA", rgba.size, (128, 128, 128, 255))
        img = Image.alpha_composite(background, rgba)
    if img.mode != "RGB":
        img = img.convert("RGB")  # handles L, P, CMYK (with Pillow's inversion for Adobe JPEGs), YCbCr, 1
    return np.ascontiguousarray(np.asarray(img, dtype=np.uint8))
