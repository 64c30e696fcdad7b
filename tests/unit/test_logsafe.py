"""Client-controlled values made safe for a log line."""

from __future__ import annotations

import pytest

from server.logsafe import safe_path, safe_text


@pytest.mark.parametrize(("raw", "logged"), [
    ("plain-ref 42", "plain-ref 42"),
    ("Zoë 契約", "Zoë 契約"),
    ("a\r\nb", "a\\x0d\\x0ab"),
    ("nul\x00esc\x1b[2J", "nul\\x00esc\\x1b[2J"),
    ("bidi\u202eltr\u2066", "bidi\\u202eltr\\u2066"),
    ("sep\u2028par\u2029nel\x85", "sep\\u2028par\\u2029nel\\x85"),
    ("zw\u200bbom\ufeff", "zw\\u200bbom\\ufeff"),
    ("quote' dq\" back\\", "quote\\x27 dq\\x22 back\\x5c"),
    ("\U000e0001tag", "\\U000e0001tag"),
])
def test_safe_text_escapes_what_rewrites_a_line(raw: str, logged: str) -> None:
    assert safe_text(raw) == logged


def test_safe_text_is_bounded() -> None:
    out = safe_text("\n" * 1000, limit=10)
    assert out == "\\x0a" * 10 + "...(+990 chars)"


@pytest.mark.parametrize(("path", "logged"), [
    ("/v1/face-recognition/5f0c8e1d", "/v1/face-recognition/5f0c8e1d"),
    ("/v1/x\r\n2026 INFO forged", "/v1/x%0D%0A2026%20INFO%20forged"),
    ("/a\x00\x1b[31m", "/a%00%1B%5B31m"),
    ("/é\u202e", "/%C3%A9%E2%80%AE"),
    ("/100%", "/100%25"),
])
def test_safe_path_is_printable_ascii_without_spaces(path: str, logged: str) -> None:
    assert safe_path(path) == logged


def test_safe_path_is_bounded() -> None:
    assert safe_path("/" + "a" * 5000, limit=20).startswith("/" + "a" * 19 + "...(+")
