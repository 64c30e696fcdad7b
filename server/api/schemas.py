"""msgspec wire schemas of the HTTP contract (snake_case compare response, camelCase scan entity, Spring page)."""

from __future__ import annotations

import re
from datetime import UTC, datetime
from typing import Annotated, Any

import msgspec

from server.domain import (
    MAX_REFERENCE,
    Channel,
    CompareResult,
    FaceAnalysis,
    Page,
    QualityComponents,
    Scan,
    ScanUpdate,
)
from server.errors import InvalidField


def wire_time(dt: datetime | None) -> str | None:
    """UTC timestamp as the contract writes it: ISO 8601 without offset, microseconds always present."""
    if dt is None:
        return None
    return dt.astimezone(UTC).strftime("%Y-%m-%dT%H:%M:%S.%f")


class PointOut(msgspec.Struct):
    x: float
    y: float


class QualityComponentsOut(msgspec.Struct):
    """The components of ``face_quality``, each 0..1 (1 = ideal); what ``quality_filter`` levels check."""

    size: float
    sharpness: float
    pose: float
    illumination: float
    occlusion: float
    eyes: float
    presence: float

    @classmethod
    def of(cls, c: QualityComponents | None) -> QualityComponentsOut | None:
        return None if c is None else cls(**c.as_dict())


class FaceOut(msgspec.Struct):
    """``<Face>`` of the contract; ``faces_found``, ``detection_score``, ``orientation_correction`` and
    ``quality_components`` are additions."""

    x1: int
    y1: int
    x2: int
    y2: int
    landmark_68: list[PointOut]
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
    faces_found: int
    detection_score: float
    orientation_correction: int
    quality_components: QualityComponentsOut | None

    @classmethod
    def of(cls, f: FaceAnalysis) -> FaceOut:
        return cls(
            x1=f.x1, y1=f.y1, x2=f.x2, y2=f.y2, landmark_68=[PointOut(p.x, p.y) for p in f.landmark_68],
            eye_dist=f.eye_dist, face_luminance=f.face_luminance, face_occlusion=f.face_occlusion,
            face_quality=f.face_quality, left_eye_closed=f.left_eye_closed, right_eye_closed=f.right_eye_closed,
            mouth_opened=f.mouth_opened, pitch=f.pitch, yaw=f.yaw, roll=f.roll, faces_found=f.faces_found,
            detection_score=f.detection_score, orientation_correction=f.orientation_correction,
            quality_components=QualityComponentsOut.of(f.quality_components),
        )


class CompareResponse(msgspec.Struct):
    """Response of ``POST .../compare_face`` (snake_case, exactly the contract's keys)."""

    id: str
    reference: str
    channel: str
    compare_result: str
    compare_similarity: float
    created: str
    face1: FaceOut
    face2: FaceOut
    threshold: float
    quality_filter: str

    @classmethod
    def of(cls, s: Scan) -> CompareResponse:
        # A scan just made always has both decision settings.
        assert s.threshold is not None and s.quality_filter is not None
        return cls(id=str(s.id), reference=s.reference, channel=s.sales_channel.value,
                   compare_result=s.compare_result.value, compare_similarity=s.compare_similarity,
                   created=wire_time(s.created_date) or "", face1=FaceOut.of(s.face1), face2=FaceOut.of(s.face2),
                   threshold=s.threshold, quality_filter=s.quality_filter.value)


class ScanEntity(msgspec.Struct, rename="camel"):
    """The stored scan as ``GET /v1/face-recognition/{id}`` returns it (camelCase)."""

    id: str
    company_id: str
    created_date: str
    updated_date: str | None
    created_by_id: str
    updated_by_id: str | None
    elapsed_time: float
    compare_result: str
    compare_similarity: float
    sales_channel: str
    reference: str
    face1: FaceOut
    face2: FaceOut
    threshold: float | None
    quality_filter: str | None

    @classmethod
    def of(cls, s: Scan) -> ScanEntity:
        return cls(id=str(s.id), company_id=s.company_id, created_date=wire_time(s.created_date) or "",
                   updated_date=wire_time(s.updated_date), created_by_id=s.created_by_id,
                   updated_by_id=s.updated_by_id, elapsed_time=s.elapsed_time,
                   compare_result=s.compare_result.value, compare_similarity=s.compare_similarity,
                   sales_channel=s.sales_channel.value, reference=s.reference,
                   face1=FaceOut.of(s.face1), face2=FaceOut.of(s.face2), threshold=s.threshold,
                   quality_filter=None if s.quality_filter is None else s.quality_filter.value)


class SortInfo(msgspec.Struct):
    sorted: bool
    unsorted: bool
    empty: bool


class ScanPage(msgspec.Struct, rename="camel"):
    """A Spring Data ``Page`` of scans."""

    content: list[ScanEntity]
    total_elements: int
    total_pages: int
    number: int
    size: int
    number_of_elements: int
    first: bool
    last: bool
    empty: bool
    sort: SortInfo

    @classmethod
    def of(cls, p: Page) -> ScanPage:
        return cls(content=[ScanEntity.of(s) for s in p.content], total_elements=p.total,
                   total_pages=p.total_pages, number=p.page, size=p.size, number_of_elements=len(p.content),
                   first=p.first, last=p.last, empty=p.empty, sort=SortInfo(True, False, False))


def _one_of(values: list[str]) -> msgspec.Meta:
    # Documented as the canonical spellings (what the server writes); the domain's parse also takes other cases.
    # The enum sits beside the generated ``oneOf [string, null]``, so it lists null too (absent = unchanged).
    return msgspec.Meta(extra_json_schema={"description": "case-insensitive",
                                           "extra": {"enum": [*values, None]}})


class ScanUpdateIn(msgspec.Struct, rename="camel", forbid_unknown_fields=True):
    """Body of ``PUT /v1/face-recognition/{id}``; every field optional (null = unchanged). The entity's
    server-owned fields are accepted and ignored by :func:`scan_update_of`, any other key is a 400.

    Types are strict (``"0.5"`` is no number); values are checked by ``ScanUpdate.parse``, the rules gRPC's
    UpdateScan uses too (400 naming the field). The OpenAPI request body is generated from this struct.
    """

    compare_result: Annotated[str, _one_of([r.value for r in CompareResult])] | None = None
    compare_similarity: Annotated[float, msgspec.Meta(ge=0.0, le=1.0)] | None = None
    sales_channel: Annotated[str, _one_of([c.value for c in Channel])] | None = None
    reference: Annotated[str, msgspec.Meta(min_length=1, max_length=MAX_REFERENCE)] | None = None


UPDATABLE_FIELDS = ("compareResult", "compareSimilarity", "salesChannel", "reference")
# The entity's own fields: a client that PUTs back what it read sends them; they are accepted and ignored.
# Derived from the entity, so a field added to it (e.g. the scan's decision settings) is covered at once.
SERVER_OWNED_FIELDS = frozenset(f.encode_name for f in msgspec.structs.fields(ScanEntity)) - set(UPDATABLE_FIELDS)
_MAX_NAMED = 10
_AT_FIELD = re.compile(r"^(?P<why>.*?)(?: - at `\$\.(?P<field>[A-Za-z]+)`)?$", re.DOTALL)


def scan_update_of(body: dict[str, Any]) -> ScanUpdate:
    """The change a PUT body asks for. Unknown or wrongly-cased keys are a 400 naming them (they would otherwise
    be silently dropped), and values are taken exactly as typed (``"0.5"`` is not a number), then by the domain's
    wire rules (:meth:`ScanUpdate.parse`: case-insensitive channel and verdict, the reference rule)."""
    unknown = sorted(k for k in body if k not in UPDATABLE_FIELDS and k not in SERVER_OWNED_FIELDS)
    if unknown:
        named = ", ".join(k[:64] for k in unknown[:_MAX_NAMED]) + (", ..." if len(unknown) > _MAX_NAMED else "")
        raise InvalidField(f"unknown field(s): {named}; the fields that can change are "
                           f"{', '.join(UPDATABLE_FIELDS)} (camelCase)", field=unknown[0][:64])
    try:
        data = msgspec.convert({k: body[k] for k in UPDATABLE_FIELDS if k in body}, ScanUpdateIn, strict=True)
    except msgspec.ValidationError as exc:
        match = _AT_FIELD.match(str(exc))
        field = match["field"] if match and match["field"] else None
        why = match["why"] if match else str(exc)
        raise InvalidField(f"invalid value for {field or 'the body'}: {why}", field=field) from None
    return ScanUpdate.parse(compare_result=data.compare_result, compare_similarity=data.compare_similarity,
                            sales_channel=data.sales_channel, reference=data.reference)


class Problem(msgspec.Struct, omit_defaults=True):
    """RFC 9457 problem details with a stable ``code``."""

    type: str
    title: str
    status: int
    code: str
    detail: str | None = None
    field: str | None = None
    instance: str | None = None
    request_id: str | None = None
    extra: dict[str, Any] | None = None
