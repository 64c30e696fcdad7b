"""SQLAlchemy ORM model of the ``scans`` table and its conversion to and from the domain ``Scan``."""

from __future__ import annotations

import uuid
from collections.abc import Mapping, Sequence
from datetime import UTC, datetime
from typing import Any

from sqlalchemy import JSON, DateTime, Float, Index, String, Uuid
from sqlalchemy.dialects.postgresql import JSONB
from sqlalchemy.engine import Dialect
from sqlalchemy.orm import DeclarativeBase, Mapped, mapped_column
from sqlalchemy.types import TypeDecorator

from server.domain import (
    MAX_REFERENCE,
    Channel,
    CompareResult,
    FaceAnalysis,
    Point,
    QualityComponents,
    QualityFilter,
    Scan,
)


class UTCDateTime(TypeDecorator[datetime]):
    """A timezone-aware datetime that always comes back in UTC.

    SQLite keeps no offset, so values are converted to UTC before they are written (which also makes its
    string comparisons order correctly) and tagged UTC when read; PostgreSQL's ``timestamptz`` returns the
    session's zone, which is normalised to UTC too so both backends give identical values.
    """

    impl = DateTime(timezone=True)
    cache_ok = True

    def process_bind_param(self, value: datetime | None, dialect: Dialect) -> datetime | None:
        if value is None:
            return None
        if value.tzinfo is None:
            raise ValueError("naive datetime: the store only accepts timezone-aware datetimes")
        value = value.astimezone(UTC)
        # SQLite would write the offset-less text anyway; stripping it here keeps the format uniform.
        return value.replace(tzinfo=None) if dialect.name == "sqlite" else value

    def process_result_value(self, value: datetime | None, dialect: Dialect) -> datetime | None:
        if value is None:
            return None
        if value.tzinfo is None:
            return value.replace(tzinfo=UTC)
        return value.astimezone(UTC)


# JSONB on PostgreSQL (compact, indexable later); plain JSON text elsewhere.
FaceJSON = JSON().with_variant(JSONB(), "postgresql")


class Base(DeclarativeBase):
    """Declarative base of the store's tables."""


class ScanRow(Base):
    """One stored comparison. There is deliberately no column for image bytes or embeddings."""

    __tablename__ = "scans"

    id: Mapped[uuid.UUID] = mapped_column(Uuid(), primary_key=True)
    company_id: Mapped[str] = mapped_column(String(255), index=True)
    created_date: Mapped[datetime] = mapped_column(UTCDateTime())
    updated_date: Mapped[datetime | None] = mapped_column(UTCDateTime(), nullable=True)
    created_by_id: Mapped[str] = mapped_column(String(255))
    updated_by_id: Mapped[str | None] = mapped_column(String(255), nullable=True)
    reference: Mapped[str] = mapped_column(String(MAX_REFERENCE))
    sales_channel: Mapped[str] = mapped_column(String(16))
    compare_result: Mapped[str] = mapped_column(String(32))
    compare_similarity: Mapped[float] = mapped_column(Float())
    elapsed_time: Mapped[float] = mapped_column(Float())
    face1: Mapped[dict[str, Any]] = mapped_column(FaceJSON)
    face2: Mapped[dict[str, Any]] = mapped_column(FaceJSON)
    # The decision settings of the scan (migration 0002); NULL for scans stored before they were recorded.
    threshold: Mapped[float | None] = mapped_column(Float(), nullable=True)
    quality_filter: Mapped[str | None] = mapped_column(String(8), nullable=True)

    __table_args__ = (
        Index("ix_scans_company_created", "company_id", "created_date"),
        Index("ix_scans_company_reference", "company_id", "reference"),
        Index("ix_scans_created_date", "created_date"),  # retention purge scans by date across companies
    )


_FLOAT_FIELDS = (
    "eye_dist",
    "face_luminance",
    "face_occlusion",
    "face_quality",
    "left_eye_closed",
    "right_eye_closed",
    "mouth_opened",
    "pitch",
    "yaw",
    "roll",
    "detection_score",
)
_INT_FIELDS = ("x1", "y1", "x2", "y2", "faces_found", "orientation_correction")


def face_to_json(face: FaceAnalysis) -> dict[str, Any]:
    """A JSON-ready dict of a face; landmarks become ``[x, y]`` pairs (compact, exact float repr)."""
    data: dict[str, Any] = {name: int(getattr(face, name)) for name in _INT_FIELDS}
    data.update({name: float(getattr(face, name)) for name in _FLOAT_FIELDS})
    data["landmark_68"] = [[float(p.x), float(p.y)] for p in face.landmark_68]
    qc = face.quality_components
    data["quality_components"] = None if qc is None else qc.as_dict()
    return data


def _point(raw: Sequence[Any] | Mapping[str, Any]) -> Point:
    # Both encodings are read so rows written by hand or by an older writer still load.
    if isinstance(raw, Mapping):
        return Point(float(raw["x"]), float(raw["y"]))
    return Point(float(raw[0]), float(raw[1]))


def face_from_json(data: Mapping[str, Any]) -> FaceAnalysis:
    """The face a :func:`face_to_json` dict describes (missing optional fields take their defaults)."""
    kwargs: dict[str, Any] = {name: int(data[name]) for name in _INT_FIELDS if name in data}
    kwargs.update({name: float(data[name]) for name in _FLOAT_FIELDS if name in data})
    kwargs["landmark_68"] = tuple(_point(p) for p in data.get("landmark_68", ()))
    qc = data.get("quality_components")
    if isinstance(qc, Mapping):  # absent from faces stored before the components were kept
        kwargs["quality_components"] = QualityComponents(**{n: float(qc[n]) for n in QualityComponents.NAMES})
    return FaceAnalysis(**kwargs)


def row_from_scan(scan: Scan) -> ScanRow:
    """A new ORM row holding a domain scan."""
    return ScanRow(
        id=scan.id,
        company_id=scan.company_id,
        created_date=scan.created_date,
        updated_date=scan.updated_date,
        created_by_id=scan.created_by_id,
        updated_by_id=scan.updated_by_id,
        reference=scan.reference,
        sales_channel=Channel(scan.sales_channel).value,
        compare_result=CompareResult(scan.compare_result).value,
        compare_similarity=float(scan.compare_similarity),
        elapsed_time=float(scan.elapsed_time),
        face1=face_to_json(scan.face1),
        face2=face_to_json(scan.face2),
        threshold=None if scan.threshold is None else float(scan.threshold),
        quality_filter=None if scan.quality_filter is None else QualityFilter(scan.quality_filter).value,
    )


def scan_from_row(row: ScanRow) -> Scan:
    """The domain scan an ORM row holds."""
    return Scan(
        id=row.id,
        company_id=row.company_id,
        created_date=row.created_date,
        created_by_id=row.created_by_id,
        reference=row.reference,
        sales_channel=Channel(row.sales_channel),
        compare_result=CompareResult(row.compare_result),
        compare_similarity=row.compare_similarity,
        elapsed_time=row.elapsed_time,
        face1=face_from_json(row.face1),
        face2=face_from_json(row.face2),
        updated_date=row.updated_date,
        updated_by_id=row.updated_by_id,
        threshold=row.threshold,
        quality_filter=None if row.quality_filter is None else QualityFilter(row.quality_filter),
    )
