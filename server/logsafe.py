"""Client-controlled values made safe to put in a log message: one line, nothing that rewrites or hides text.

A text log trusts line breaks to separate records: a CR/LF (or NEL, U+2028, U+2029, VT, FF) in a logged path or
claim plants a line that looks like a record of its own; NUL, ANSI escapes and bidi overrides rewrite or hide what
a terminal shows. Every value a client controls goes through :func:`safe_text` or :func:`safe_path` at the log call
site, whatever the log format (a JSON formatter escapes again; nothing is lost).
"""

from __future__ import annotations

import unicodedata
import urllib.parse

# Categories escaped by safe_text: controls, format characters (bidi overrides, zero-width), line and paragraph
# separators, surrogates, private use and unassigned code points.
_UNSAFE_CATEGORIES = frozenset({"Cc", "Cf", "Zl", "Zp", "Cs", "Co", "Cn"})
# Escaped too, so a value cannot close the quotes a message puts around it.
_QUOTING = frozenset("\\'\"")
# RFC 3986 path characters kept readable; everything else (controls, spaces, non-ASCII, '%') is percent-encoded.
_PATH_SAFE = "/:@!$&'()*+,;=-._~"
MAX_TEXT = 256
MAX_PATH = 1024


def _escape(ch: str) -> str:
    code = ord(ch)
    if code <= 0xFF:
        return f"\\x{code:02x}"
    if code <= 0xFFFF:
        return f"\\u{code:04x}"
    return f"\\U{code:08x}"


def _bounded(text: str, limit: int) -> str:
    if len(text) <= limit:
        return text
    return f"{text[:limit]}...(+{len(text) - limit} chars)"


def safe_text(value: object, limit: int = MAX_TEXT) -> str:
    """``value`` as one printable line: backslash, quotes and every unsafe character escaped (``\\x0a``, ``\\u202e``),
    at most ``limit`` characters of the original kept."""
    text = str(value)
    cut = len(text) - limit
    if cut > 0:
        text = text[:limit]
    escaped = "".join(_escape(ch) if ch in _QUOTING or unicodedata.category(ch) in _UNSAFE_CATEGORIES else ch
                      for ch in text)
    return escaped + (f"...(+{cut} chars)" if cut > 0 else "")


def safe_path(path: str, limit: int = MAX_PATH) -> str:
    """A (decoded) URL path for a log line: percent-encoded back to printable ASCII without spaces, bounded."""
    return _bounded(urllib.parse.quote(path, safe=_PATH_SAFE, errors="backslashreplace"), limit)
