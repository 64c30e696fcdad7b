"""Streaming reader of the compare form (channel, file1, file2, reference; optional threshold, quality_filter)
enforcing per-file size limits and refusing fields it does not know."""

from __future__ import annotations

import difflib
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
TEXT_FIELDS = ("channel", "reference", "threshold", "quality_filter")
REQUIRED_FIELDS = ("channel", "file1", "file2", "reference")
OPTIONAL_FIELDS = ("threshold", "quality_filter")
KNOWN_FIELDS = (*REQUIRED_FIELDS, *OPTIONAL_FIELDS)
# A reference is at most 255 characters; 4 KiB of UTF-8 leaves room for any of them and bounds the buffer.
MAX_TEXT_BYTES = 4096
# The form has at most six parts (unknown ones are refused at their header); this bounds the parser anyway.
MAX_PARTS = 16
# How much of an unknown field's name a refusal repeats (names are caller input).
MAX_NAME_SHOWN = 64


@dataclass(frozen=True, slots=True)
class CompareForm:
    """The fields of a compare request; content types are ignored (decoding decides what an image is).

    ``threshold`` and ``quality_filter`` are None when the form did not send them (the server's defaults apply).
    """

    channel: str
    reference: str
    file1: bytes
    file2: bytes
    threshold: str | None = None
    quality_filter: str | None = None


def unknown_field(name: str) -> InvalidField:
    """The refusal of a form field the compare form does not have, with the nearest known name as a hint.

    A misspelt optional field (``treshold``) would otherwise be dropped and its default used without a word.
    """
    shown = name[:MAX_NAME_SHOWN]
    near = difflib.get_close_matches(name, KNOWN_FIELDS, n=1, cutoff=0.6)
    hint = f"; did you mean {near[0]!r}?" if near else f" (fields: {', '.join(KNOWN_FIELDS)})"
    return InvalidField(f"unknown form field {shown!r}{hint}", field=shown)


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
                        if name not in KNOWN_FIELDS:
                            raise unknown_field(name)  # at its header: nothing of it is read
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
                        buf += event
                    elif name is not None:
                        values[name] = bytes(buf)
    except ParserLimitReached:
        raise BadRequest(f"too many form parts (at most {MAX_PARTS})") from None
    except ParserError:
        raise BadRequest("malformed multipart/form-data body") from None
    for field in REQUIRED_FIELDS:
        if field not in values:
            raise MissingField(f"missing form field {field}", field=field)
    return CompareForm(channel=_text(values, "channel"), reference=_text(values, "reference"),
                       file1=values["file1"], file2=values["file2"],
                       threshold=_text(values, "threshold") if "threshold" in values else None,
                       quality_filter=_text(values, "quality_filter") if "quality_filter" in values else None)


def _text(values: dict[str, bytes], field: str) -> str:
    try:
        return values[field].decode("utf-8")
    except UnicodeDecodeError:
        raise InvalidField(f"{field} is not valid UTF-8", field=field) from None
