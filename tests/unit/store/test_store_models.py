"""Unit tests of the store's row codec, datetime type, sort map and error translation (no database)."""

from __future__ import annotations

import math
import sqlite3
from datetime import UTC, datetime, timedelta, timezone
from typing import Any

import pytest
from sqlalchemy import exc as sa_exc
from sqlalchemy.dialects.postgresql.asyncpg import PGDialect_asyncpg
from sqlalchemy.dialects.sqlite.aiosqlite import SQLiteDialect_aiosqlite

from server import errors
from server.domain import SORTABLE_FIELDS, FaceAnalysis, Point
from server.store import sql as store_sql
from server.store.models import ScanRow, UTCDateTime, face_from_json, face_to_json


def face(**changes: Any) -> FaceAnalysis:
    base: dict[str, Any] = dict(
        x1=1,
        y1=2,
        x2=30,
        y2=40,
        landmark_68=tuple(Point(i * 0.1, i / 3) for i in range(68)),
        eye_dist=0.1 + 0.2,
        face_luminance=128.5,
        face_occlusion=1 / 9,
        face_quality=0.77,
        left_eye_closed=0.0,
        right_eye_closed=1.0,
        mouth_opened=5e-324,
        pitch=-1.5,
        yaw=2.25,
        roll=math.pi,
    )
    base.update(changes)
    return FaceAnalysis(**base)


def test_face_json_round_trip_is_exact() -> None:
    original = face(detection_score=0.5, faces_found=3)
    data = face_to_json(original)
    assert data["landmark_68"][5] == [0.5, 5 / 3]
    assert len(data["landmark_68"]) == 68
    assert face_from_json(data) == original


def test_face_json_accepts_point_dicts_and_missing_defaults() -> None:
    data = face_to_json(face())
    data["landmark_68"] = [{"x": x, "y": y} for x, y in data["landmark_68"]]
    del data["detection_score"], data["faces_found"]
    restored = face_from_json(data)
    assert restored == face()
    assert restored.detection_score == 1.0 and restored.faces_found == 1


def test_face_json_holds_only_analysis_fields() -> None:
    assert set(face_to_json(face())) == set(FaceAnalysis.__dataclass_fields__)


@pytest.mark.parametrize(
    "dialect", [SQLiteDialect_aiosqlite(), PGDialect_asyncpg()], ids=["sqlite", "postgres"]
)
def test_utc_datetime_normalises(dialect: Any) -> None:
    kind = UTCDateTime()
    plus2 = datetime(2024, 1, 1, 14, 0, tzinfo=timezone(timedelta(hours=2)))
    bound = kind.process_bind_param(plus2, dialect)
    assert bound is not None and bound.replace(tzinfo=None) == datetime(2024, 1, 1, 12, 0)
    assert (bound.tzinfo is None) == (dialect.name == "sqlite")
    back = kind.process_result_value(bound, dialect)
    assert back == plus2 and back is not None and back.tzinfo == UTC
    assert kind.process_bind_param(None, dialect) is None
    with pytest.raises(ValueError, match="naive"):
        kind.process_bind_param(datetime(2024, 1, 1), dialect)


def test_sort_map_covers_the_api_fields() -> None:
    assert set(store_sql.SORT_COLUMNS) == set(SORTABLE_FIELDS)


def test_no_binary_columns_in_the_model() -> None:
    for column in ScanRow.__table__.columns:
        assert column.type.python_type is not bytes, column.name


def _dbapi(cls: type[sa_exc.DBAPIError], orig: BaseException) -> sa_exc.DBAPIError:
    return cls("INSERT INTO scans (secret) VALUES (?)", {}, orig)


class _PgError(Exception):
    def __init__(self, sqlstate: str) -> None:
        super().__init__("boom")
        self.sqlstate = sqlstate


@pytest.mark.parametrize(
    ("raised", "expected"),
    [
        (_dbapi(sa_exc.OperationalError, sqlite3.OperationalError("database is locked")), errors.Unavailable),
        (_dbapi(sa_exc.InterfaceError, Exception("closed")), errors.Unavailable),
        (sa_exc.TimeoutError("pool timeout"), errors.Unavailable),
        (ConnectionRefusedError(111, "refused"), errors.Unavailable),
        (_dbapi(sa_exc.DataError, Exception("too long")), errors.InvalidField),
        (_dbapi(sa_exc.DBAPIError, _PgError("22001")), errors.InvalidField),
        (_dbapi(sa_exc.IntegrityError, Exception("dup")), errors.FacerecError),
        (_dbapi(sa_exc.DBAPIError, _PgError("23505")), errors.FacerecError),
        (_dbapi(sa_exc.DBAPIError, ConnectionResetError()), errors.Unavailable),
        (_dbapi(sa_exc.ProgrammingError, Exception("syntax")), errors.FacerecError),
    ],
)
async def test_errors_are_translated_without_sql(raised: BaseException, expected: type[Exception]) -> None:
    with pytest.raises(expected) as caught:
        async with store_sql._translated():
            raise raised
    assert type(caught.value) is expected
    detail = str(caught.value)
    assert "INSERT" not in detail and "secret" not in detail
    if expected is errors.Unavailable:
        assert detail == "database unavailable"


async def test_domain_errors_pass_through() -> None:
    with pytest.raises(errors.NotFound):
        async with store_sql._translated():
            raise errors.NotFound("scan not found")


async def test_unrelated_errors_are_not_swallowed() -> None:
    with pytest.raises(KeyError):
        async with store_sql._translated():
            raise KeyError("bug")


def test_quality_components_round_trip_and_rows_without_them() -> None:
    from server.domain import QualityComponents

    comps = QualityComponents(size=0.5, sharpness=1.0, pose=0.25, illumination=0.9, occlusion=1 / 3, eyes=0.8,
                              presence=1.0)
    original = face(quality_components=comps)
    data = face_to_json(original)
    assert data["quality_components"] == comps.as_dict()
    assert face_from_json(data) == original
    # Faces stored before the components were kept come back without them, not with made-up values.
    del data["quality_components"]
    assert face_from_json(data).quality_components is None
