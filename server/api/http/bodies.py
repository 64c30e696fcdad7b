"""Reading a small JSON request body: media type, size and nesting checked before anything is decoded.

Callers authenticate and authorise first; only then is the body read, and never more of it than the limit.
"""

from __future__ import annotations

import re
from typing import Any

import msgspec
from litestar import Request
from multipart import parse_options_header  # type: ignore[import-untyped]

from server.errors import BadRequest, PayloadTooLarge, UnsupportedMediaType

JSON_MEDIA_TYPE = "application/json"
# A JSON string literal (escapes included): brackets inside one are text, not structure.
_STRING = re.compile(rb'"(?:[^"\\]|\\.)*"', re.DOTALL)
_OPEN, _CLOSE = frozenset(b"[{"), frozenset(b"]}")


def json_depth(raw: bytes) -> int:
    """How deeply ``raw``'s arrays and objects nest (0 for a scalar), counted without decoding it."""
    depth = peak = 0
    for byte in _STRING.sub(b"", raw):
        if byte in _OPEN:
            depth += 1
            peak = max(peak, depth)
        elif byte in _CLOSE:
            depth -= 1
    return peak


async def read_limited(request: Request[Any, Any, Any], max_bytes: int) -> bytes:
    """The whole body, refused with 413 as soon as it (or its announced length) passes ``max_bytes``."""
    if (request.content_length or 0) > max_bytes:
        raise PayloadTooLarge(f"the body is over the {max_bytes} byte limit")
    body = bytearray()
    async for chunk in request.stream():
        body += chunk
        if len(body) > max_bytes:
            raise PayloadTooLarge(f"the body is over the {max_bytes} byte limit")
    return bytes(body)


async def read_json_object(request: Request[Any, Any, Any], *, max_bytes: int, max_depth: int) -> dict[str, Any]:
    """The body as a JSON object: ``application/json`` only (415), at most ``max_bytes`` (413) and ``max_depth``
    levels of nesting (400, checked before decoding, so no decoder recursion is ever at stake)."""
    media_type, _ = parse_options_header(request.headers.get("content-type", ""))
    if media_type != JSON_MEDIA_TYPE:
        raise UnsupportedMediaType(f"the body must be {JSON_MEDIA_TYPE}")
    raw = await read_limited(request, max_bytes)
    if json_depth(raw) > max_depth:
        raise BadRequest(f"the JSON body nests deeper than {max_depth} levels")
    try:
        value = msgspec.json.decode(raw)
    except msgspec.DecodeError:
        raise BadRequest("the body is not valid JSON") from None
    if not isinstance(value, dict):
        raise BadRequest("the body must be a JSON object")
    return value
