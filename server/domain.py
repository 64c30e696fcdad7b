"""Domain types shared by the pipeline, the store and both APIs (wire schemas live apart, in api/)."""

from __future__ import annotations

import enum
import math
import unicodedata
import uuid
from dataclasses import dataclass, field
from datetime import datetime
from typing import ClassVar

from server.errors import InvalidField

# The longest reference a scan can hold (its column is VARCHAR(255)).
MAX_REFERENCE = 255
# Refused anywhere in a reference: controls, format characters (bidi overrides and isolates, zero-width spaces
# and joiners, BOM), line/paragraph separators, surrogates, private-use and unassigned code points. They hide,
# reorder or break the text a person reads in a UI, a log or a spreadsheet export.
_REFUSED_CATEGORIES = frozenset({"Cc", "Cf", "Zl", "Zp", "Cs", "Co", "Cn"})
# Letters and symbols that render as nothing: alone they make an invisible reference.
_BLANK_GLYPHS = frozenset("\u115f\u1160\u3164\uffa0\u2800")


class Channel(enum.StrEnum):
    """Sales channel a scan came through."""

    WEB = "WEB"
    MOBILE = "MOBILE"
    OTHER = "OTHER"

    @classmethod
    def parse(cls, value: str | None, field: str = "channel") -> Channel:
        """A channel from the wire, on every transport and in every place (compare, update, list filter): case
        and surrounding whitespace are ignored (``" web"`` is WEB); anything else is a 400 naming ``field``."""
        try:
            return cls((value or "").strip().upper())
        except ValueError:
            raise InvalidField(f"{field} must be one of WEB, MOBILE, OTHER", field=field) from None


class CompareResult(enum.StrEnum):
    """Verdict of a comparison."""

    SAME = "Same person"
    DIFFERENT = "Different person"

    @classmethod
    def parse(cls, value: str | None, field: str = "compareResult") -> CompareResult:
        """A verdict from the wire, by the same rule as :meth:`Channel.parse` (``"same PERSON"`` is SAME)."""
        wanted = (value or "").strip().casefold()
        for result in cls:
            if result.value.casefold() == wanted:
                return result
        raise InvalidField(f"{field} must be 'Same person' or 'Different person'", field=field)


class QualityFilter(enum.StrEnum):
    """How good a face must be to be compared (``quality_filter``); AUTO is the server's default level.

    The levels' component minimums are in ``server/analysis/quality.py``, measured with ``python -m
    bench.quality`` (README "Quality filter").
    """

    NONE = "NONE"
    LOW = "LOW"
    MEDIUM = "MEDIUM"
    HIGH = "HIGH"
    AUTO = "AUTO"

    @classmethod
    def parse(cls, value: str | None, field: str = "quality_filter") -> QualityFilter:
        """A level from the wire, by the same rule as :meth:`Channel.parse` (``" medium"`` is MEDIUM)."""
        try:
            return cls((value or "").strip().upper())
        except ValueError:
            raise InvalidField(f"{field} must be one of NONE, LOW, MEDIUM, HIGH, AUTO", field=field) from None


def parse_threshold(value: str | float | None, field: str = "threshold") -> float:
    """A decision threshold from the wire: a finite number within 0..1 on the ``compare_similarity`` scale
    (text is parsed, surrounding spaces dropped); a 400 naming ``field`` otherwise."""
    try:
        if value is None:
            raise ValueError("absent")
        t = float(value.strip() if isinstance(value, str) else value)
    except (TypeError, ValueError):
        raise InvalidField(f"{field} must be a number within 0..1", field=field) from None
    if not (math.isfinite(t) and 0.0 <= t <= 1.0):
        raise InvalidField(f"{field} must be a number within 0..1", field=field)
    return t


def parse_reference(value: str | None, field: str = "reference") -> str:
    """A reference from the wire, as stored and searched: surrounding whitespace dropped, then 1-255 characters,
    every one of them allowed and at least one visible; a 400 naming ``field`` and the rule otherwise. The one rule
    for compare, update and the list filter, over HTTP and gRPC."""
    ref = (value or "").strip()
    if not 1 <= len(ref) <= MAX_REFERENCE:
        raise InvalidField(f"{field} must be 1-{MAX_REFERENCE} characters", field=field)
    if any(unicodedata.category(ch) in _REFUSED_CATEGORIES for ch in ref):
        raise InvalidField(f"{field} must not contain control, format (bidi, zero-width) or line-separator "
                           "characters", field=field)
    if not any(_visible(ch) for ch in ref):
        raise InvalidField(f"{field} must contain a visible character", field=field)
    return ref


def _visible(ch: str) -> bool:
    # Letters, digits, punctuation and symbols show; marks (combining accents) and spaces alone do not.
    return unicodedata.category(ch)[0] in "LNPS" and ch not in _BLANK_GLYPHS


@dataclass(frozen=True, slots=True)
class Point:
    """A 2-D point in original-image pixels."""

    x: float
    y: float


@dataclass(frozen=True, slots=True)
class QualityComponents:
    """The components of ``face_quality``, each 0..1 with 1 = ideal for recognition (README "The face analysis")."""

    size: float  # inter-eye distance: 0 at <= 15 px, 1 at >= 60 px
    sharpness: float  # Laplacian variance of the aligned face (log scale)
    pose: float  # yaw and pitch away from frontal
    illumination: float  # face luma away from mid-grey (too dark or too bright)
    occlusion: float  # 1 - face_occlusion
    eyes: float  # open eyes (1 - 0.8 x the more closed eye)
    presence: float  # the landmarker's confidence that the crop holds a face

    NAMES: ClassVar[tuple[str, ...]] = ("size", "sharpness", "pose", "illumination", "occlusion", "eyes", "presence")

    @classmethod
    def of(cls, values: dict[str, float], digits: int = 4) -> QualityComponents:
        """From the attribute code's component dict (rounded like the other attributes)."""
        return cls(**{name: round(float(values[name]), digits) for name in cls.NAMES})

    def as_dict(self) -> dict[str, float]:
        return {name: float(getattr(self, name)) for name in self.NAMES}


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
    # Clockwise rotation (0, 90, 180 or 270 degrees) the service applied to the photo to find this face upright.
    orientation_correction: int = 0
    # None only for scans stored before the components were kept.
    quality_components: QualityComponents | None = None


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
    # The decision settings the verdict was made with (the request's, else the server's defaults at the time;
    # AUTO is stored as the level it stood for). None only for scans stored before they were recorded.
    threshold: float | None = None
    quality_filter: QualityFilter | None = None


@dataclass(frozen=True, slots=True)
class ScanUpdate:
    """Caller-mutable fields of a scan; None means unchanged."""

    compare_result: CompareResult | None = None
    compare_similarity: float | None = None
    sales_channel: Channel | None = None
    reference: str | None = None

    @classmethod
    def parse(cls, *, compare_result: str | None = None, compare_similarity: float | None = None,
              sales_channel: str | None = None, reference: str | None = None) -> ScanUpdate:
        """The change a caller asked for, validated by the wire rules (field names are the API's camelCase)."""
        if compare_similarity is not None and not 0.0 <= compare_similarity <= 1.0:
            raise InvalidField("compareSimilarity must be within 0..1", field="compareSimilarity")
        return cls(
            compare_result=None if compare_result is None else CompareResult.parse(compare_result),
            compare_similarity=compare_similarity,
            sales_channel=None if sales_channel is None else Channel.parse(sales_channel, "salesChannel"),
            reference=None if reference is None else parse_reference(reference),
        )


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
    """One page of scans plus the total count, with the Spring Data page arithmetic both APIs report."""

    content: list[Scan] = field(default_factory=list)
    total: int = 0
    page: int = 0
    size: int = 20

    @property
    def total_pages(self) -> int:
        """Pages of ``size`` needed for ``total`` scans (0 when there are none)."""
        return math.ceil(self.total / self.size) if self.size else 0

    @property
    def first(self) -> bool:
        return self.page == 0

    @property
    def last(self) -> bool:
        """True on the last page and on any page past it (Spring's rule)."""
        return self.page >= self.total_pages - 1

    @property
    def empty(self) -> bool:
        return not self.content
