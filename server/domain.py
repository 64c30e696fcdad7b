"""Domain types shared by the pipeline, the store and both APIs (wire schemas live apart, in api/)."""

from __future__ import annotations

import enum
import unicodedata
import uuid
from dataclasses import dataclass, field
from datetime import datetime

from server.errors import InvalidField

MAX_REFERENCE = 255
# Refused anywhere in a reference: controls, format characters (bidi overrides and isolates, zero-width spaces
# and joiners, BOM), line/paragraph separators, surrogates, private-use and unassigned code points. They hide,
# reorder or break the text a person reads in a UI, a log or a spreadsheet export.
_REFUSED_CATEGORIES = frozenset({"Cc", "Cf", "Zl", "Zp", "Cs", "Co", "Cn"})
# Letters and symbols that render as nothing: alone they make an invisible reference.
_BLANK_GLYPHS = frozenset("\u115f\u1160\u3164\uffa0\u2800")


def check_reference(value: str | None) -> str:
    """A caller's ``reference`` as stored and searched: 1-255 characters after trimming, every one of them allowed
    and at least one visible; :class:`InvalidField` (400) naming the rule otherwise. One rule for create, update
    and the list filter, over HTTP and gRPC."""
    ref = (value or "").strip()
    if not 1 <= len(ref) <= MAX_REFERENCE:
        raise InvalidField(f"reference must be 1-{MAX_REFERENCE} characters", field="reference")
    if any(unicodedata.category(ch) in _REFUSED_CATEGORIES for ch in ref):
        raise InvalidField("reference must not contain control, format (bidi, zero-width) or line-separator "
                           "characters", field="reference")
    if not any(_visible(ch) for ch in ref):
        raise InvalidField("reference must contain a visible character", field="reference")
    return ref


def _visible(ch: str) -> bool:
    # Letters, digits, punctuation and symbols show; marks (combining accents) and spaces alone do not.
    return unicodedata.category(ch)[0] in "LNPS" and ch not in _BLANK_GLYPHS


class Channel(enum.StrEnum):
    """Sales channel a scan came through."""

    WEB = "WEB"
    MOBILE = "MOBILE"
    OTHER = "OTHER"


class CompareResult(enum.StrEnum):
    """Verdict of a comparison."""

    SAME = "Same person"
    DIFFERENT = "Different person"


@dataclass(frozen=True, slots=True)
class Point:
    """A 2-D point in original-image pixels."""

    x: float
    y: float


@dataclass(frozen=True, slots=True)
class FaceAnalysis:
    """Everything the API reports about one face (field meanings are documented in the README)."""

    x1: int
    y1: int
    x2: int
    y2: int
    landmark_68: tuple[Point, ...]
    eye_dist: float
    face_luminance: float
    face_occlusion: float
    face_quality: float
    left_eye_closed: float
    right_eye_closed: float
    mouth_opened: float
    pitch: float
    yaw: float
    roll: float
    detection_score: float = 1.0
    faces_found: int = 1


@dataclass(frozen=True, slots=True)
class Comparison:
    """Similarity of two faces and the verdict at the configured threshold."""

    cosine: float
    similarity: float  # calibrated 0..1
    result: CompareResult


@dataclass(frozen=True, slots=True)
class Principal:
    """The authenticated caller."""

    company_id: str
    user_id: str
    roles: frozenset[str]


@dataclass(slots=True)
class Scan:
    """One stored comparison (the entity behind GET/PUT/list)."""

    id: uuid.UUID
    company_id: str
    created_date: datetime  # UTC, naive-free: always timezone-aware
    created_by_id: str
    reference: str
    sales_channel: Channel
    compare_result: CompareResult
    compare_similarity: float
    elapsed_time: float  # seconds spent extracting both faces
    face1: FaceAnalysis
    face2: FaceAnalysis
    updated_date: datetime | None = None
    updated_by_id: str | None = None


@dataclass(frozen=True, slots=True)
class ScanUpdate:
    """Caller-mutable fields of a scan; None means unchanged."""

    compare_result: CompareResult | None = None
    compare_similarity: float | None = None
    sales_channel: Channel | None = None
    reference: str | None = None


SORTABLE_FIELDS = (
    "createdDate",
    "updatedDate",
    "reference",
    "salesChannel",
    "compareResult",
    "compareSimilarity",
    "elapsedTime",
)


@dataclass(frozen=True, slots=True)
class ScanQuery:
    """Filters, sort and page of a list request; sort fields use the API's camelCase names."""

    page: int = 0
    size: int = 20
    sort: tuple[tuple[str, bool], ...] = (("createdDate", True),)  # (field, descending)
    reference: str | None = None
    sales_channel: Channel | None = None
    compare_result: CompareResult | None = None
    created_from: datetime | None = None
    created_to: datetime | None = None


@dataclass(frozen=True, slots=True)
class Page:
    """One page of scans plus the total count."""

    content: list[Scan] = field(default_factory=list)
    total: int = 0
    page: int = 0
    size: int = 20
