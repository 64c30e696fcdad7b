"""Hostile and odd input over HTTP and gRPC: always the documented 4xx (never a 5xx, hang or crash).

One runtime per (store, inference backend) serves both transports; after each barrage a valid compare must
still succeed. Images are made small so the whole module stays cheap.
"""

from __future__ import annotations

import asyncio
import dataclasses
import io
import struct
import uuid
import zlib
from collections.abc import AsyncIterator, Callable
from pathlib import Path
from typing import Any

import grpc
import httpx
import numpy as np
import pytest
from harness import COMPARE, SCANS, Harness, assert_grpc, assert_problem, grpc_error, multipart
from PIL import Image

from server.api.grpc.gen.facerec.v1 import face_recognition_pb2 as pb

MAX_FILE = 1_500_000
MAX_REQUEST = 3_500_000

pytestmark = [pytest.mark.asyncio(loop_scope="module"),
              pytest.mark.served(max_file_bytes=MAX_FILE, max_request_bytes=MAX_REQUEST)]
BOUNDARY = "hostile-boundary"


# --------------------------------------------------------------------------- images


def _jpeg(img: Image.Image, **kw: Any) -> bytes:
    out = io.BytesIO()
    img.save(out, "JPEG", quality=90, **kw)
    return out.getvalue()


def _png(img: Image.Image) -> bytes:
    out = io.BytesIO()
    img.save(out, "PNG")
    return out.getvalue()


def _chunk(kind: bytes, data: bytes) -> bytes:
    return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))


def png_header_only(width: int, height: int) -> bytes:
    """A PNG whose IHDR claims ``width`` x ``height`` (RGB, 8 bit) with a tiny, bogus IDAT."""
    ihdr = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)
    return (b"\x89PNG\r\n\x1a\n" + _chunk(b"IHDR", ihdr) + _chunk(b"IDAT", zlib.compress(b"\0" * 64))
            + _chunk(b"IEND", b""))


def png16_rgb(img: Image.Image) -> bytes:
    """A 16-bit-per-channel RGB PNG (Pillow cannot write one), written by hand from an 8-bit RGB image."""
    arr = np.asarray(img.convert("RGB"), dtype=np.uint16) * 257
    h, w, _ = arr.shape
    raw = b"".join(b"\0" + arr[y].astype(">u2").tobytes() for y in range(h))
    ihdr = struct.pack(">IIBBBBB", w, h, 16, 2, 0, 0, 0)
    return b"\x89PNG\r\n\x1a\n" + _chunk(b"IHDR", ihdr) + _chunk(b"IDAT", zlib.compress(raw)) + _chunk(b"IEND", b"")


def jpeg_claiming(width: int, height: int) -> bytes:
    """A small real baseline JPEG whose SOF0 marker is patched to announce ``width`` x ``height``."""
    data = bytearray(_jpeg(Image.new("RGB", (64, 64), (120, 90, 60))))
    sof = data.index(b"\xff\xc0")
    # SOF0: marker, length (2), precision (1), height (2), width (2), ...
    struct.pack_into(">HH", data, sof + 5, height, width)
    return bytes(data)


def exif_rotated(img: Image.Image) -> bytes:
    """The photo stored turned on its side with EXIF orientation 6 (display = rotate 90° clockwise)."""
    stored = img.transpose(Image.Transpose.ROTATE_90)  # counter-clockwise; orientation 6 turns it back
    exif = Image.Exif()
    exif[0x0112] = 6
    return _jpeg(stored, exif=exif.tobytes())


@dataclasses.dataclass(frozen=True)
class Photos:
    face1: Image.Image  # obama_01, downscaled
    face2: Image.Image  # obama_02, downscaled

    @property
    def jpeg1(self) -> bytes:
        return _jpeg(self.face1)

    @property
    def jpeg2(self) -> bytes:
        return _jpeg(self.face2)


@pytest.fixture(scope="module")
def photos(faces_dir: Path) -> Photos:
    def small(name: str) -> Image.Image:
        with Image.open(faces_dir / name) as raw:
            im = raw.convert("RGB")
        im.thumbnail((400, 400))
        return im

    return Photos(small("obama_01_portrait_2012.jpg"), small("obama_02_congress_2009.jpg"))


# --------------------------------------------------------------------------- one app, both transports


async def http_compare(env: Harness, file1: bytes, file2: bytes, **kw: Any) -> httpx.Response:
    return await env.http_compare(file1, file2, **kw)


async def grpc_compare(env: Harness, file1: bytes, file2: bytes, **kw: Any) -> pb.CompareFacesResponse:
    return await env.grpc_compare(file1, file2, **kw)


async def assert_still_serving(env: Harness, photos: Photos) -> None:
    resp = await http_compare(env, photos.jpeg1, photos.jpeg2)
    assert resp.status_code == 200, resp.text
    assert resp.json()["compare_result"] == "Same person"
    assert (await grpc_compare(env, photos.jpeg1, photos.jpeg2)).compare_result == "Same person"


# --------------------------------------------------------------------------- files that are not (good) images

BadFile = Callable[[Photos], bytes]
BAD_FILES: list[tuple[str, BadFile, int, str]] = [
    ("empty", lambda p: b"", 415, "unsupported_image"),
    ("truncated-jpeg", lambda p: p.jpeg1[: len(p.jpeg1) // 2], 415, "unsupported_image"),
    ("jpeg-header-only", lambda p: p.jpeg1[:200], 415, "unsupported_image"),
    ("truncated-png", lambda p: _png(p.face1)[:5000], 415, "unsupported_image"),
    ("random-bytes", lambda p: np.random.default_rng(7).bytes(20_000), 415, "unsupported_image"),
    ("text", lambda p: b"Dear server,\nthis is a letter, not a photo.\n" * 20, 415, "unsupported_image"),
    ("gif", lambda p: _gif(p.face1), 415, "unsupported_image"),
    ("png-50000x50000", lambda p: png_header_only(50_000, 50_000), 413, "image_too_large"),
    ("png-15000x15000", lambda p: png_header_only(15_000, 15_000), 413, "image_too_large"),
    ("jpeg-sof0-50000x50000", lambda p: jpeg_claiming(50_000, 50_000), 413, "image_too_large"),
    ("jpeg-sof0-65500x1000", lambda p: jpeg_claiming(65_500, 1_000), 413, "image_too_large"),
    ("png-0x0", lambda p: png_header_only(0, 0), 415, "unsupported_image"),
    ("tiny-16x16", lambda p: _png(p.face1.resize((16, 16))), 415, "unsupported_image"),
    ("face-too-small", lambda p: _jpeg(p.face1.resize((40, 40))), 422, "no_face"),
    ("over-file-limit", lambda p: b"\xff\xd8" + b"\0" * (MAX_FILE + 10), 413, "payload_too_large"),
]


def _gif(img: Image.Image) -> bytes:
    out = io.BytesIO()
    img.save(out, "GIF")
    return out.getvalue()


@pytest.mark.parametrize(("make", "status", "code"), [c[1:] for c in BAD_FILES], ids=[c[0] for c in BAD_FILES])
async def test_bad_file_http(env: Harness, photos: Photos, make: BadFile, status: int, code: str) -> None:
    bad = make(photos)
    for field, pair in (("file1", (bad, photos.jpeg2)), ("file2", (photos.jpeg1, bad))):
        assert_problem(await http_compare(env, *pair), status, code, field)


@pytest.mark.parametrize(("make", "status", "code"), [c[1:] for c in BAD_FILES], ids=[c[0] for c in BAD_FILES])
async def test_bad_file_grpc(env: Harness, photos: Photos, make: BadFile, status: int, code: str) -> None:
    bad = make(photos)
    for field, pair in (("file1", (bad, photos.jpeg2)), ("file2", (photos.jpeg1, bad))):
        err = await grpc_error(grpc_compare(env, *pair))
        if not bad:  # proto3 cannot tell an empty bytes field from an absent one
            assert_grpc(err, 400, "missing_field", field)
        else:
            assert_grpc(err, status, code, field)


async def test_server_keeps_serving_after_bad_files(env: Harness, photos: Photos) -> None:
    await assert_still_serving(env, photos)


# --------------------------------------------------------------------------- odd but valid images

GoodFile = Callable[[Photos], bytes]
GOOD_FILES: list[tuple[str, GoodFile]] = [
    ("cmyk-jpeg", lambda p: _jpeg(p.face1.convert("CMYK"))),
    ("grayscale-jpeg", lambda p: _jpeg(p.face1.convert("L"))),
    ("grayscale-16bit-png", lambda p: _png(Image.fromarray(
        np.asarray(p.face1.convert("L"), dtype=np.uint16) * 257))),
    ("rgb-16bit-png", lambda p: png16_rgb(p.face1)),
    ("rgba-png", lambda p: _png(_with_alpha(p.face1))),
    ("palette-png", lambda p: _png(p.face1.convert("P", palette=Image.Palette.ADAPTIVE))),
    ("webp", lambda p: _webp(p.face1)),
    ("bmp", lambda p: _bmp(p.face1)),
    ("exif-rotated-jpeg", lambda p: exif_rotated(p.face1)),
    ("progressive-jpeg", lambda p: _jpeg(p.face1, progressive=True)),
]


def _with_alpha(img: Image.Image) -> Image.Image:
    rgba = img.convert("RGBA")
    alpha = np.full((img.height, img.width), 255, np.uint8)
    alpha[:, :20] = 0  # a transparent strip at the left edge
    rgba.putalpha(Image.fromarray(alpha))
    return rgba


def _webp(img: Image.Image) -> bytes:
    out = io.BytesIO()
    img.save(out, "WEBP", quality=90)
    return out.getvalue()


def _bmp(img: Image.Image) -> bytes:
    out = io.BytesIO()
    img.save(out, "BMP")
    return out.getvalue()


@pytest.mark.parametrize("make", [c[1] for c in GOOD_FILES], ids=[c[0] for c in GOOD_FILES])
async def test_unusual_but_valid_images(env: Harness, photos: Photos, make: GoodFile) -> None:
    odd = make(photos)
    resp = await http_compare(env, odd, photos.jpeg2, name1="odd.bin")
    assert resp.status_code == 200, resp.text
    body = resp.json()
    assert body["compare_result"] == "Same person", body["compare_similarity"]
    face = body["face1"]
    # Coordinates are in the upright image's pixels (for the EXIF photo: after applying the orientation).
    assert 0 <= face["x1"] < face["x2"] <= photos.face1.width and 0 <= face["y1"] < face["y2"] <= photos.face1.height
    via_grpc = await grpc_compare(env, odd, photos.jpeg2)
    assert via_grpc.compare_result == "Same person"
    assert (via_grpc.face1.x1, via_grpc.face1.y2) == (face["x1"], face["y2"])


# --------------------------------------------------------------------------- the form itself


def form_parts(p: Photos, **override: bytes | None) -> list[tuple[str, bytes, str | None]]:
    fields: dict[str, tuple[bytes, str | None]] = {
        "channel": (b"WEB", None), "reference": (b"ref-1", None),
        "file1": (p.jpeg1, "a.jpg"), "file2": (p.jpeg2, "b.jpg"),
    }
    parts = []
    for name, (default, filename) in fields.items():
        value = override.get(name, default)
        if value is not None:
            parts.append((name, value, filename))
    return parts


FormCase = Callable[[Photos], list[tuple[str, bytes, str | None]]]
FORM_CASES: list[tuple[str, FormCase, int, str, str | None]] = [
    ("missing-channel", lambda p: form_parts(p, channel=None), 400, "missing_field", "channel"),
    ("missing-reference", lambda p: form_parts(p, reference=None), 400, "missing_field", "reference"),
    ("missing-file1", lambda p: form_parts(p, file1=None), 400, "missing_field", "file1"),
    ("missing-file2", lambda p: form_parts(p, file2=None), 400, "missing_field", "file2"),
    ("no-parts", lambda p: [], 400, "missing_field", None),
    ("duplicate-file1", lambda p: [*form_parts(p), ("file1", p.jpeg1, "c.jpg")], 400, "bad_request", "file1"),
    ("duplicate-reference", lambda p: [*form_parts(p), ("reference", b"again", None)], 400, "bad_request",
     "reference"),
    ("unknown-channel", lambda p: form_parts(p, channel=b"FAX"), 400, "invalid_field", "channel"),
    ("empty-channel", lambda p: form_parts(p, channel=b""), 400, "invalid_field", "channel"),
    ("empty-reference", lambda p: form_parts(p, reference=b"   "), 400, "invalid_field", "reference"),
    ("reference-256-chars", lambda p: form_parts(p, reference=b"r" * 256), 400, "invalid_field", "reference"),
    ("reference-5000-bytes", lambda p: form_parts(p, reference=b"r" * 5000), 400, "invalid_field", "reference"),
    ("reference-not-utf8", lambda p: form_parts(p, reference=b"caf\xe9-\xff\xfe"), 400, "invalid_field",
     "reference"),
    ("reference-control-chars", lambda p: form_parts(p, reference=b"a\x00b\x1b[2J"), 400, "invalid_field",
     "reference"),
    # Unknown fields are refused at the first one's header (before the parser's part limit is reached).
    ("too-many-parts", lambda p: [*form_parts(p), *((f"x{i}", b"1", None) for i in range(40))], 400,
     "invalid_field", "x0"),
    ("unknown-field", lambda p: [*form_parts(p), ("treshold", b"0.9", None)], 400, "invalid_field", "treshold"),
    ("threshold-out-of-range", lambda p: [*form_parts(p), ("threshold", b"2", None)], 400, "invalid_field",
     "threshold"),
    ("threshold-5000-bytes", lambda p: [*form_parts(p), ("threshold", b"0" * 5000, None)], 400, "invalid_field",
     "threshold"),
    ("quality-filter-not-utf8", lambda p: [*form_parts(p), ("quality_filter", b"\xff\xfe", None)], 400,
     "invalid_field", "quality_filter"),
    ("duplicate-threshold", lambda p: [*form_parts(p), ("threshold", b"0.5", None), ("threshold", b"0.6", None)],
     400, "bad_request", "threshold"),
]


@pytest.mark.parametrize(("make", "status", "code", "field"), [c[1:] for c in FORM_CASES],
                         ids=[c[0] for c in FORM_CASES])
async def test_bad_form_http(env: Harness, photos: Photos, make: FormCase, status: int, code: str,
                             field: str | None) -> None:
    headers = {**env.headers(), "content-type": f"multipart/form-data; boundary={BOUNDARY}"}
    resp = await env.http.post(COMPARE, headers=headers, content=multipart(make(photos), BOUNDARY))
    assert_problem(resp, status, code, field)


@pytest.mark.parametrize(("content_type", "body"), [
    ("application/json", b'{"channel": "WEB"}'),
    ("multipart/form-data", b"--x\r\n"),  # no boundary parameter
    (f"multipart/form-data; boundary={BOUNDARY}", b"garbage without any boundary line"),
    (f"multipart/form-data; boundary={BOUNDARY}", f"--{BOUNDARY}\r\nno headers end".encode()),
    (f"multipart/form-data; boundary={BOUNDARY}", b""),
    ("text/plain", b"hello"),
], ids=["json", "no-boundary", "no-delimiter", "unterminated-part", "empty", "text"])
async def test_not_a_form_http(env: Harness, content_type: str, body: bytes) -> None:
    resp = await env.http.post(COMPARE, headers={**env.headers(), "content-type": content_type}, content=body)
    assert resp.status_code == 400, resp.text
    assert resp.headers["content-type"].startswith("application/problem+json")


@pytest.mark.parametrize(("change", "code", "field"), [
    ({"channel": "FAX"}, "invalid_field", "channel"),
    ({"channel": ""}, "invalid_field", "channel"),
    ({"reference": ""}, "invalid_field", "reference"),
    ({"reference": "r" * 256}, "invalid_field", "reference"),
    ({"reference": "a\x00b"}, "invalid_field", "reference"),
    ({"reference": "\u202e\u0007bell"}, "invalid_field", "reference"),
], ids=["unknown-channel", "empty-channel", "empty-reference", "long-reference", "nul", "bell"])
async def test_bad_fields_grpc(env: Harness, photos: Photos, change: dict[str, str], code: str, field: str) -> None:
    err = await grpc_error(grpc_compare(env, photos.jpeg1, photos.jpeg2, **change))
    assert_grpc(err, 400, code, field)


async def test_non_utf8_reference_grpc(env: Harness, photos: Photos) -> None:
    """Raw protobuf whose string field holds invalid UTF-8: refused as INVALID_ARGUMENT, not an internal error."""

    def field(number: int, value: bytes) -> bytes:
        return _varint(number << 3 | 2) + _varint(len(value)) + value

    raw = field(1, b"WEB") + field(2, b"caf\xe9\xff") + field(3, photos.jpeg1) + field(4, photos.jpeg2)
    call = env.channel.unary_unary("/facerec.v1.FaceRecognition/CompareFaces",
                                   request_serializer=lambda b: b, response_deserializer=lambda b: b)
    err = await grpc_error(call(raw, metadata=env.metadata(), timeout=60))
    assert err.code() == grpc.StatusCode.INVALID_ARGUMENT, (err.code(), err.details())


def _varint(n: int) -> bytes:
    out = bytearray()
    while True:
        byte, n = n & 0x7F, n >> 7
        out.append(byte | (0x80 if n else 0))
        if not n:
            return bytes(out)


async def test_server_keeps_serving_after_bad_forms(env: Harness, photos: Photos) -> None:
    await assert_still_serving(env, photos)


# --------------------------------------------------------------------------- bodies far over the limit


async def test_huge_streamed_body_is_refused_while_streaming(serve_target: Any, photos: Photos) -> None:
    """200 MB sent chunked (no Content-Length) to a server with a 300 kB limit: 413 long before the end."""
    total = 200 * 1024 * 1024
    piece = b"\0" * (256 * 1024)
    sent = 0

    async def body() -> AsyncIterator[bytes]:
        nonlocal sent
        head = (f"--{BOUNDARY}\r\nContent-Disposition: form-data; name=\"file1\"; filename=\"a.jpg\"\r\n\r\n")
        yield head.encode()
        while sent < total:
            sent += len(piece)
            yield piece

    async with serve_target(max_file_bytes=100_000, max_request_bytes=300_000) as api:
        headers = {**api.headers(), "content-type": f"multipart/form-data; boundary={BOUNDARY}"}
        resp = await asyncio.wait_for(api.http.post(COMPARE, headers=headers, content=body()), 30)
        assert "content-length" not in resp.request.headers
        assert_problem(resp, 413, "payload_too_large")
        assert sent < 2 * 1024 * 1024, sent  # stopped within a few chunks of the limit, not after 200 MB
        # A declared Content-Length over the limit is refused before a byte of the body is read.
        sent = 0
        resp = await api.http.post(COMPARE, headers={**headers, "content-length": str(total)}, content=body())
        assert_problem(resp, 413, "payload_too_large")
        assert sent <= len(piece), sent
        ok = await api.http.post(COMPARE, headers=api.headers(), data={"channel": "WEB", "reference": "r"},
                                   files={"file1": ("a.jpg", photos.jpeg1), "file2": ("b.jpg", photos.jpeg2)})
        assert ok.status_code == 200, ok.text


async def test_huge_json_body_on_put_is_refused(env: Harness) -> None:
    body = b'{"reference": "' + b"r" * (MAX_REQUEST + 10) + b'"}'
    resp = await env.http.put(f"{SCANS}/{uuid.uuid4()}", headers={**env.headers(), "content-type": "application/json"},
                              content=body)
    assert_problem(resp, 413, "payload_too_large")


# --------------------------------------------------------------------------- ids and query strings


@pytest.mark.parametrize("scan_id", ["not-a-uuid", "42", "0" * 5000, "é-ü-日本", "%00", "' OR 1=1 --",
                                     "12345678-1234-1234-1234-1234567890ag"])
async def test_non_uuid_ids(env: Harness, scan_id: str) -> None:
    url = f"{SCANS}/{scan_id}"
    for method, kw in (("GET", {}), ("PUT", {"json": {"reference": "x"}}), ("DELETE", {})):
        resp = await env.http.request(method, url, headers=env.headers(), **kw)
        assert_problem(resp, 400, "invalid_id")
    for call in (env.stub.GetScan(pb.GetScanRequest(id=scan_id), metadata=env.metadata()),
                 env.stub.UpdateScan(pb.UpdateScanRequest(id=scan_id, reference="x"), metadata=env.metadata()),
                 env.stub.DeleteScan(pb.DeleteScanRequest(id=scan_id), metadata=env.metadata())):
        assert_grpc(await grpc_error(call), 400, "invalid_id")


async def test_path_tricks_never_reach_data(env: Harness) -> None:
    for path in (f"{SCANS}/../../etc/passwd", f"{SCANS}/a/b", f"{SCANS}/%2e%2e%2f", "/v1/../../health/live/x"):
        resp = await env.http.get(path, headers=env.headers(company="nobody"))
        assert resp.status_code in (400, 404), (path, resp.status_code, resp.text)
        assert resp.headers["content-type"].startswith("application/problem+json")
    # A doubled slash is the list route: the caller's own (here: empty) list, nothing else.
    resp = await env.http.get(f"{SCANS}//", headers=env.headers(company="nobody"))
    assert resp.status_code in (200, 404), resp.text
    if resp.status_code == 200:
        assert resp.json()["content"] == []


HOSTILE_QUERIES: list[tuple[str, dict[str, Any], str]] = [
    ("page-negative", {"page": "-1"}, "page"),
    ("page-float", {"page": "1.5"}, "page"),
    ("page-huge", {"page": str(10**20)}, "page"),
    ("page-int64-edge", {"page": str(2**63)}, "page"),
    ("page-big-offset", {"page": str(10**15), "size": "200"}, "page"),
    ("size-zero", {"size": "0"}, "size"),
    ("size-billion", {"size": str(10**9)}, "size"),
    ("size-negative", {"size": "-5"}, "size"),
    ("sort-sql-injection", {"sort": "createdDate;DROP TABLE scans"}, "sort"),
    ("sort-injection-direction", {"sort": "createdDate,desc;DROP TABLE scans--"}, "sort"),
    ("sort-unknown-field", {"sort": "id,desc"}, "sort"),
    ("sort-internal-column", {"sort": "company_id"}, "sort"),
    ("sort-three-parts", {"sort": "createdDate,desc,asc"}, "sort"),
    ("sort-unicode", {"sort": "créé,desc"}, "sort"),
    ("sort-empty-field", {"sort": ",desc"}, "sort"),
    ("channel-unknown", {"salesChannel": "FAX'--"}, "salesChannel"),
    ("result-unknown", {"compareResult": "1 OR 1=1"}, "compareResult"),
    ("created-garbage", {"createdFrom": "'; DELETE FROM scans; --"}, "createdFrom"),
    ("created-year-1-with-offset", {"createdFrom": "0001-01-01T00:00:00+05:00"}, "createdFrom"),
    ("created-year-9999-negative-offset", {"createdTo": "9999-12-31T23:59:59-05:00"}, "createdTo"),
    ("created-from-after-to", {"createdFrom": "2024-05-02", "createdTo": "2024-05-01"}, "createdFrom"),
    ("reference-nul", {"reference": "a\x00b"}, "reference"),
]


@pytest.mark.parametrize(("params", "field"), [c[1:] for c in HOSTILE_QUERIES], ids=[c[0] for c in HOSTILE_QUERIES])
async def test_hostile_query_strings(env: Harness, params: dict[str, Any], field: str) -> None:
    resp = await env.http.get(SCANS, headers=env.headers(), params=params)
    assert_problem(resp, 400, "invalid_field", field)


@pytest.mark.parametrize(("fields", "field"), [
    ({"page": -1}, "page"), ({"size": 10**9}, "size"), ({"size": -1}, "size"), ({"page": 2**31 - 1}, "page"),
    ({"sort": ["createdDate;DROP TABLE scans"]}, "sort"), ({"sort": ["id,desc"]}, "sort"),
    ({"sales_channel": "FAX"}, "salesChannel"), ({"created_from": "0001-01-01T00:00:00+05:00"}, "createdFrom"),
    ({"reference": "a\x00b"}, "reference"),
], ids=["page-negative", "size-billion", "size-negative", "page-int32-max", "sort-injection", "sort-unknown",
        "channel", "created-overflow", "reference-nul"])
async def test_hostile_list_requests_grpc(env: Harness, fields: dict[str, Any], field: str) -> None:
    page_fields = {"size": 200} if "size" not in fields and "page" in fields else {}
    err = await grpc_error(env.stub.ListScans(pb.ListScansRequest(**page_fields, **fields), metadata=env.metadata()))
    assert_grpc(err, 400, "invalid_field", field)


async def test_harmless_odd_queries_still_answer(env: Harness) -> None:
    for params in ({"reference": "'; DROP TABLE scans; --"}, {"reference": "日本語 ✓"}, {"reference": "%_%"},
                   {"reference": "*"}):
        resp = await env.http.get(SCANS, headers=env.headers(), params=params)
        assert resp.status_code == 200, (params, resp.text)
        assert resp.json()["content"] == []  # exact match: no wildcard or injection widens the filter
    for params in ({"sort": ["reference,DESC", "reference"]}, {"page": "0", "size": "200"}, {"unknown": "x"}):
        resp = await env.http.get(SCANS, headers=env.headers(), params=params)
        assert resp.status_code == 200, (params, resp.text)
    # Invalid UTF-8 percent-escapes in the query.
    resp = await env.http.get(f"{SCANS}?reference=%ff%fe&sort=%c3%28", headers=env.headers())
    assert resp.status_code in (200, 400), resp.text


async def test_server_keeps_serving_after_hostile_queries(env: Harness, photos: Photos) -> None:
    await assert_still_serving(env, photos)
    listed = await env.http.get(SCANS, headers=env.headers(), params={"size": 200})
    assert listed.status_code == 200 and listed.json()["totalElements"] >= 1
