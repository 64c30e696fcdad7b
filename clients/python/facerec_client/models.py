"""Typed results of the facerec API, built from the HTTP JSON or the gRPC messages alike."""

from __future__ import annotations

import enum
import uuid
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any


class Channel(enum.StrEnum):
    """Sales channel of a scan."""

    WEB = "WEB"
    MOBILE = "MOBILE"
    OTHER = "OTHER"


class Verdict(enum.StrEnum):
    """``compare_result``: whether the similarity reached the server's threshold."""

    SAME = "Same person"
    DIFFERENT = "Different person"


class QualityFilter(enum.StrEnum):
    """``quality_filter``: how good a face must be to be compared; AUTO is the server's default level."""

    NONE = "NONE"
    LOW = "LOW"
    MEDIUM = "MEDIUM"
    HIGH = "HIGH"
    AUTO = "AUTO"


def parse_time(value: str) -> datetime:
    """The API's timestamps: ISO 8601, UTC when no offset is given (the wire format has none)."""
    dt = datetime.fromisoformat(value)
    return dt if dt.tzinfo is not None else dt.replace(tzinfo=UTC)


@dataclass(frozen=True, slots=True)
class Point:
    """A landmark in original-image pixels."""

    x: float
    y: float


@dataclass(frozen=True, slots=True)
class QualityComponents:
    """The components of ``face_quality``, each 0..1 (1 = ideal): what the quality filter levels check."""

    size: float
    sharpness: float
    pose: float
    illumination: float
    occlusion: float
    eyes: float
    presence: float

    @classmethod
    def from_json(cls, d: Mapping[str, Any] | None) -> QualityComponents | None:
        if not d:
            return None
        return cls(**{k: float(d[k]) for k in ("size", "sharpness", "pose", "illumination", "occlusion", "eyes",
                                              "presence")})

    @classmethod
    def from_proto(cls, face: Any) -> QualityComponents | None:
        if not face.HasField("quality_components"):
            return None
        m = face.quality_components
        return cls(size=m.size, sharpness=m.sharpness, pose=m.pose, illumination=m.illumination,
                   occlusion=m.occlusion, eyes=m.eyes, presence=m.presence)


@dataclass(frozen=True, slots=True)
class Face:
    """``<Face>``: the box, 68 landmarks and the attributes of the compared face of one image."""

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
    faces_found: int
    detection_score: float
    orientation_correction: int = 0  # clockwise quarter turn (0/90/180/270) applied to find the face
    # None when the server is older than the components, or for scans stored before they were kept.
    quality_components: QualityComponents | None = None

    @classmethod
    def from_json(cls, d: Mapping[str, Any]) -> Face:
        return cls(
            x1=int(d["x1"]), y1=int(d["y1"]), x2=int(d["x2"]), y2=int(d["y2"]),
            landmark_68=tuple(Point(float(p["x"]), float(p["y"])) for p in d["landmark_68"]),
            eye_dist=float(d["eye_dist"]), face_luminance=float(d["face_luminance"]),
            face_occlusion=float(d["face_occlusion"]), face_quality=float(d["face_quality"]),
            left_eye_closed=float(d["left_eye_closed"]), right_eye_closed=float(d["right_eye_closed"]),
            mouth_opened=float(d["mouth_opened"]), pitch=float(d["pitch"]), yaw=float(d["yaw"]),
            roll=float(d["roll"]), faces_found=int(d.get("faces_found", 1)),
            detection_score=float(d.get("detection_score", 0.0)),
            orientation_correction=int(d.get("orientation_correction", 0)),
            quality_components=QualityComponents.from_json(d.get("quality_components")),
        )

    @classmethod
    def from_proto(cls, m: Any) -> Face:
        return cls(
            x1=m.x1, y1=m.y1, x2=m.x2, y2=m.y2, landmark_68=tuple(Point(p.x, p.y) for p in m.landmark_68),
            eye_dist=m.eye_dist, face_luminance=m.face_luminance, face_occlusion=m.face_occlusion,
            face_quality=m.face_quality, left_eye_closed=m.left_eye_closed, right_eye_closed=m.right_eye_closed,
            mouth_opened=m.mouth_opened, pitch=m.pitch, yaw=m.yaw, roll=m.roll, faces_found=m.faces_found,
            detection_score=m.detection_score, orientation_correction=m.orientation_correction,
            quality_components=QualityComponents.from_proto(m),
        )


@dataclass(frozen=True, slots=True)
class Comparison:
    """The answer to a compare: the stored scan's id and the verdict with both faces' analyses."""

    id: uuid.UUID
    reference: str
    channel: Channel
    compare_result: Verdict
    compare_similarity: float
    created: datetime
    face1: Face
    face2: Face
    # What the verdict was decided with (AUTO resolved to the server's level); None from older servers.
    threshold: float | None = None
    quality_filter: QualityFilter | None = None

    @property
    def same_person(self) -> bool:
        return self.compare_result is Verdict.SAME

    @classmethod
    def from_json(cls, d: Mapping[str, Any]) -> Comparison:
        return cls(id=uuid.UUID(d["id"]), reference=d["reference"], channel=Channel(d["channel"]),
                   compare_result=Verdict(d["compare_result"]), compare_similarity=float(d["compare_similarity"]),
                   created=parse_time(d["created"]), face1=Face.from_json(d["face1"]),
                   face2=Face.from_json(d["face2"]), threshold=_opt_float(d.get("threshold")),
                   quality_filter=_opt_level(d.get("quality_filter")))

    @classmethod
    def from_proto(cls, m: Any) -> Comparison:
        return cls(id=uuid.UUID(m.id), reference=m.reference, channel=Channel(m.channel),
                   compare_result=Verdict(m.compare_result), compare_similarity=m.compare_similarity,
                   created=parse_time(m.created), face1=Face.from_proto(m.face1), face2=Face.from_proto(m.face2),
                   threshold=m.threshold if m.quality_filter else None, quality_filter=_opt_level(m.quality_filter))


@dataclass(frozen=True, slots=True)
class Scan:
    """A stored scan (the camelCase entity over HTTP)."""

    id: uuid.UUID
    company_id: str
    created_date: datetime
    updated_date: datetime | None
    created_by_id: str
    updated_by_id: str | None
    elapsed_time: float
    compare_result: Verdict
    compare_similarity: float
    sales_channel: Channel
    reference: str
    face1: Face
    face2: Face
    # None for scans stored before the server recorded them.
    threshold: float | None = None
    quality_filter: QualityFilter | None = None

    @classmethod
    def from_json(cls, d: Mapping[str, Any]) -> Scan:
        updated = d.get("updatedDate")
        return cls(id=uuid.UUID(d["id"]), company_id=d["companyId"], created_date=parse_time(d["createdDate"]),
                   updated_date=parse_time(updated) if updated else None, created_by_id=d["createdById"],
                   updated_by_id=d.get("updatedById"), elapsed_time=float(d["elapsedTime"]),
                   compare_result=Verdict(d["compareResult"]), compare_similarity=float(d["compareSimilarity"]),
                   sales_channel=Channel(d["salesChannel"]), reference=d["reference"],
                   face1=Face.from_json(d["face1"]), face2=Face.from_json(d["face2"]),
                   threshold=_opt_float(d.get("threshold")), quality_filter=_opt_level(d.get("qualityFilter")))

    @classmethod
    def from_proto(cls, m: Any) -> Scan:
        return cls(id=uuid.UUID(m.id), company_id=m.company_id, created_date=parse_time(m.created_date),
                   updated_date=parse_time(m.updated_date) if m.HasField("updated_date") else None,
                   created_by_id=m.created_by_id,
                   updated_by_id=m.updated_by_id if m.HasField("updated_by_id") else None,
                   elapsed_time=m.elapsed_time, compare_result=Verdict(m.compare_result),
                   compare_similarity=m.compare_similarity, sales_channel=Channel(m.sales_channel),
                   reference=m.reference, face1=Face.from_proto(m.face1), face2=Face.from_proto(m.face2),
                   threshold=m.threshold if m.HasField("threshold") else None,
                   quality_filter=_opt_level(m.quality_filter if m.HasField("quality_filter") else None))


@dataclass(frozen=True, slots=True)
class ScanPage:
    """A page of scans (Spring Data shape)."""

    content: tuple[Scan, ...]
    total_elements: int
    total_pages: int
    number: int
    size: int
    number_of_elements: int
    first: bool
    last: bool
    empty: bool

    @classmethod
    def from_json(cls, d: Mapping[str, Any]) -> ScanPage:
        return cls(content=tuple(Scan.from_json(s) for s in d["content"]), total_elements=d["totalElements"],
                   total_pages=d["totalPages"], number=d["number"], size=d["size"],
                   number_of_elements=d["numberOfElements"], first=d["first"], last=d["last"], empty=d["empty"])

    @classmethod
    def from_proto(cls, m: Any) -> ScanPage:
        return cls(content=tuple(Scan.from_proto(s) for s in m.content), total_elements=m.total_elements,
                   total_pages=m.total_pages, number=m.number, size=m.size,
                   number_of_elements=m.number_of_elements, first=m.first, last=m.last, empty=m.empty)


@dataclass(frozen=True, slots=True)
class ScanFilter:
    """What ``list_scans`` asks for: a page, a sort and optional exact-match filters."""

    page: int = 0
    size: int = 20
    sort: Sequence[str] = ()
    reference: str | None = None
    sales_channel: Channel | str | None = None
    compare_result: Verdict | str | None = None
    created_from: datetime | str | None = None
    created_to: datetime | str | None = None

    def query(self) -> dict[str, str | int | list[str]]:
        """HTTP query parameters (camelCase names)."""
        out: dict[str, str | int | list[str]] = {"page": self.page, "size": self.size}
        if self.sort:
            out["sort"] = list(self.sort)
        for key, value in (("reference", self.reference), ("salesChannel", self.sales_channel),
                           ("compareResult", self.compare_result), ("createdFrom", self.created_from),
                           ("createdTo", self.created_to)):
            if value is not None:
                out[key] = _text(value)
        return out


def _opt_float(value: object) -> float | None:
    return None if value is None else float(value)  # type: ignore[arg-type]


def _opt_level(value: object) -> QualityFilter | None:
    return QualityFilter(str(value)) if value else None


def _text(value: object) -> str:
    if isinstance(value, datetime):
        return value.isoformat()
    if isinstance(value, enum.Enum):
        return str(value.value)
    return str(value)


def text_of(value: object) -> str:
    """A filter or update value as the wire carries it (enums by value, datetimes in ISO 8601)."""
    return _text(value)
