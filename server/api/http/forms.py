"""Streaming reader of the compare form (channel, file1, file2, reference) enforcing per-file size limits."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from litestar import Request
from multipart import (  # type: ignore[import-untyped]
    MultipartSegment,
    ParserError,
    ParserLimitReached,
    PushMultipartParser,
    parse_options_header,
)

from server.errors import BadRequest, InvalidField, MissingField, PayloadTooLarge

FILE_FIELDS = ("file1", "file2")
TEXT_FIELDS = ("channel", "reference")
REQUIRED_FIELDS = ("channel", "file1", "file2", "reference")
# A reference is at most 255 characters; 4 KiB of UTF-8 leaves room for any of them and bounds the buffer.
MAX_TEXT_BYTES = 4096
# The form has four parts; a few unknown extras are tolerated, thousands of tiny parts are not.
MAX_PARTS = 16


@dataclass(frozen=True, slots=True)
class CompareForm:
    """The four fields of a compare request; content types are ignored (decoding decides what an image is)."""

    channel: str
    reference: str
    file1: bytes
    file2: bytes


def _boundary(request: Request[Any, Any, Any]) -> str:
    media_type, options = parse_options_header(request.headers.get("content-type", ""))
    boundary = options.get("boundary")
    if media_type != "multipart/form-data" or not boundary:
        raise BadRequest("expected a multipart/form-data body with a boundary")
    return str(boundary)


async def read_compare_form(request: Request[Any, Any, Any], *, max_file_bytes: int,
                            max_request_bytes: int) -> CompareForm:
    """Parse the body while it streams in, refusing an oversized file as soon as it passes its limit.

    Litestar's ``request_max_body_size`` bounds the whole body; the early Content-Length check below only
    gives the refusal a clearer detail.
    """
    boundary = _boundary(request)
    if (request.content_length or 0) > max_request_bytes:
        raise PayloadTooLarge(f"request body is over the {max_request_bytes} byte limit")
    values: dict[str, bytes] = {}
    seen: set[str] = set()
    name: str | None = None
    buf = bytearray()
    try:
        with PushMultipartParser(boundary, max_segment_count=MAX_PARTS) as parser:
            async for chunk in request.stream():
                if parser.closed:
                    continue  # an epilogue after the closing boundary carries nothing
                for event in parser.parse(chunk):
                    if isinstance(event, MultipartSegment):
                        name = str(event.name or "")
                        if name in seen:
                            raise BadRequest(f"field {name!r} appears more than once", field=name)
                        seen.add(name)
                        buf = bytearray()
                    elif event:
                        if name in FILE_FIELDS and len(buf) + len(event) > max_file_bytes:
                            raise PayloadTooLarge(f"{name} is over the {max_file_bytes} byte limit",
                                                  field=name)
                        if name in TEXT_FIELDS and len(buf) + len(event) > MAX_TEXT_BYTES:
                            raise InvalidField(f"{name} is too long", field=name)
                        if name in REQUIRED_FIELDS:
                            buf += event  # unknown fields are read past, never kept
                    elif name in REQUIRED_FIELDS:
                        values[name] = bytes(buf)
    except ParserLimitReached:
        raise BadRequest(f"too many form parts (at most {MAX_PARTS})") from None
    except ParserError:
        raise BadRequest("malformed multipart/form-data body") from None
    for field in REQUIRED_FIELDS:
        if field not in values:
            raise MissingField(f"missing form field {field}", field=field)
    return CompareForm(channel=_text(values, "channel"), reference=_text(values, "reference"),
                       file1=values["file1"], file2=values["file2"])


def _text(values: dict[str, bytes], field: str) -> str:
    try:
        return values[field].decode("utf-8")
    except UnicodeDecodeError:
        raise InvalidField(f"{field} is not valid UTF-8", field=field) from None
