"""One ScanStore contract, run against SQLite and PostgreSQL alike."""

from __future__ import annotations

import asyncio
import dataclasses
import json
import uuid
from collections.abc import AsyncIterator, Callable
from datetime import UTC, datetime, timedelta, timezone
from pathlib import Path
from typing import Any

import pytest
import sqlalchemy as sa
from harness import new_schema, pg_exec, pg_url, postgres_dsn

from server import errors
from server.domain import (
    Channel,
    CompareResult,
    FaceAnalysis,
    Point,
    QualityComponents,
    QualityFilter,
    Scan,
    ScanQuery,
    ScanUpdate,
)
from server.settings import Settings
from server.store import SqlScanStore, create_store, migrate
from server.store import models as store_models
from server.store import sql as store_sql


class Backend:
    """Makes stores on one isolated database (a temp SQLite file, or a fresh PostgreSQL schema)."""

    def __init__(self, kind: str, url: str, connect_args: dict[str, Any] | None = None) -> None:
        self.kind = kind
        self.url = url
        self.connect_args = connect_args
        self.made: list[SqlScanStore] = []

    def make(self) -> SqlScanStore:
        store = SqlScanStore(self.url, connect_args=self.connect_args)
        self.made.append(store)
        return store


@pytest.fixture(params=["sqlite", pytest.param("postgres", marks=pytest.mark.postgres)])
async def backend(request: pytest.FixtureRequest, tmp_path: Path) -> AsyncIterator[Backend]:
    if request.param == "sqlite":
        made = Backend("sqlite", f"sqlite+aiosqlite:///{tmp_path / 'data' / 'facerec.sqlite3'}")
        yield made
        for store in made.made:
            await store.close()
        return
    dsn = postgres_dsn()
    schema = new_schema("t")
    await pg_exec(dsn, f'CREATE SCHEMA "{schema}"')
    # Each test gets its own schema: search_path makes the store create and use its tables there.
    made = Backend("postgres", pg_url(dsn), {"server_settings": {"search_path": schema}})
    try:
        yield made
    finally:
        for store in made.made:
            await store.close()
        await pg_exec(dsn, f'DROP SCHEMA "{schema}" CASCADE')


@pytest.fixture
async def store(backend: Backend) -> SqlScanStore:
    opened = backend.make()
    await opened.open()
    return opened


T0 = datetime(2024, 5, 1, 12, 12, 6, 90098, tzinfo=UTC)


def make_face(seed: float = 0.0) -> FaceAnalysis:
    # Values chosen to catch lossy float storage: non-terminating binary fractions, negatives, tiny numbers.
    return FaceAnalysis(
        x1=10,
        y1=20,
        x2=110,
        y2=140,
        landmark_68=tuple(Point(x=i / 3 + seed, y=-(i * 0.1) + 1e-9) for i in range(68)),
        eye_dist=42.123456789012345 + seed,
        face_luminance=0.1 + 0.2,
        face_occlusion=1 / 7,
        face_quality=0.987654321,
        left_eye_closed=0.01,
        right_eye_closed=2e-17,
        mouth_opened=0.5,
        pitch=-3.3333333333333335,
        yaw=12.5,
        roll=-0.7071067811865476,
        detection_score=0.9321,
        faces_found=2,
        quality_components=QualityComponents(size=0.1 + 0.2, sharpness=1.0, pose=1 / 3, illumination=0.0,
                                             occlusion=2e-17 + seed, eyes=0.8, presence=0.999999),
    )


def make_scan(company: str = "acme", **changes: Any) -> Scan:
    scan = Scan(
        id=uuid.uuid4(),
        company_id=company,
        created_date=T0,
        created_by_id="user-1",
        reference="0002",
        sales_channel=Channel.WEB,
        compare_result=CompareResult.SAME,
        compare_similarity=0.8381234567891234,
        elapsed_time=0.123456789,
        face1=make_face(0.0),
        face2=make_face(0.5),
        threshold=0.6180339887498949,
        quality_filter=QualityFilter.MEDIUM,
    )
    return dataclasses.replace(scan, **changes)


async def count_rows(store: SqlScanStore) -> int:
    async with store.engine.connect() as conn:
        return int((await conn.execute(sa.text("SELECT count(*) FROM scans"))).scalar_one())


# --- add / get


async def test_add_get_round_trip(store: SqlScanStore) -> None:
    scan = make_scan()
    await store.add(scan)
    got = await store.get("acme", scan.id)
    assert got == scan
    assert got.face1 == scan.face1 and got.face2 == scan.face2
    assert got.created_date.tzinfo is not None and got.created_date.utcoffset() == timedelta(0)
    assert got.created_date == T0 and got.created_date.microsecond == T0.microsecond
    assert got.updated_date is None and got.updated_by_id is None
    assert isinstance(got.sales_channel, Channel) and isinstance(got.compare_result, CompareResult)


async def test_non_utc_dates_come_back_as_the_same_instant_in_utc(store: SqlScanStore) -> None:
    local = datetime(2024, 5, 1, 14, 0, 0, 123, tzinfo=timezone(timedelta(hours=2)))
    scan = make_scan(created_date=local)
    await store.add(scan)
    got = await store.get("acme", scan.id)
    assert got.created_date == local
    assert got.created_date.utcoffset() == timedelta(0)
    assert got.created_date.hour == 12


async def test_get_unknown_or_other_company_is_not_found(store: SqlScanStore) -> None:
    scan = make_scan()
    await store.add(scan)
    with pytest.raises(errors.NotFound) as other:
        await store.get("globex", scan.id)
    with pytest.raises(errors.NotFound) as unknown:
        await store.get("acme", uuid.uuid4())
    # Same error, same text: an id in another company is indistinguishable from no id at all.
    assert other.value.detail == unknown.value.detail


async def test_naive_datetime_is_refused(store: SqlScanStore) -> None:
    with pytest.raises(errors.InvalidField):
        await store.add(make_scan(created_date=datetime(2024, 1, 1)))
    assert await count_rows(store) == 0


# --- update


async def test_update_changes_only_mutable_fields(store: SqlScanStore) -> None:
    scan = make_scan()
    await store.add(scan)
    now = T0 + timedelta(hours=1, microseconds=5)
    change = ScanUpdate(
        compare_result=CompareResult.DIFFERENT,
        compare_similarity=0.25,
        sales_channel=Channel.MOBILE,
        reference="contract-9",
    )
    updated = await store.update("acme", scan.id, change, "user-2", now)
    expected = dataclasses.replace(
        scan,
        compare_result=CompareResult.DIFFERENT,
        compare_similarity=0.25,
        sales_channel=Channel.MOBILE,
        reference="contract-9",
        updated_date=now,
        updated_by_id="user-2",
    )
    assert updated == expected
    assert await store.get("acme", scan.id) == expected


async def test_update_partial_keeps_the_rest(store: SqlScanStore) -> None:
    scan = make_scan()
    await store.add(scan)
    now = T0 + timedelta(days=1)
    updated = await store.update("acme", scan.id, ScanUpdate(compare_similarity=0.5), "u3", now)
    assert updated == dataclasses.replace(scan, compare_similarity=0.5, updated_date=now, updated_by_id="u3")
    empty = await store.update("acme", scan.id, ScanUpdate(), "u4", now + timedelta(seconds=1))
    assert empty.compare_similarity == 0.5 and empty.updated_by_id == "u4"


async def test_update_other_company_is_not_found_and_changes_nothing(store: SqlScanStore) -> None:
    scan = make_scan()
    await store.add(scan)
    with pytest.raises(errors.NotFound):
        await store.update("globex", scan.id, ScanUpdate(reference="x"), "intruder", T0)
    with pytest.raises(errors.NotFound):
        await store.update("acme", uuid.uuid4(), ScanUpdate(reference="x"), "u", T0)
    assert await store.get("acme", scan.id) == scan


async def test_update_invalid_reference_changes_nothing(store: SqlScanStore) -> None:
    scan = make_scan()
    await store.add(scan)
    with pytest.raises(errors.InvalidField):
        await store.update("acme", scan.id, ScanUpdate(reference="r" * 256), "u", T0)
    assert await store.get("acme", scan.id) == scan


# --- page


async def test_page_paginates(store: SqlScanStore) -> None:
    scans = [make_scan(created_date=T0 + timedelta(minutes=i)) for i in range(5)]
    for scan in scans:
        await store.add(scan)
    newest_first = [s.id for s in reversed(scans)]
    seen = []
    for number, expected_len in enumerate([2, 2, 1]):
        page = await store.page("acme", ScanQuery(page=number, size=2))
        assert page.total == 5 and page.page == number and page.size == 2
        assert len(page.content) == expected_len
        seen += [s.id for s in page.content]
    assert seen == newest_first
    beyond = await store.page("acme", ScanQuery(page=3, size=2))
    assert beyond.content == [] and beyond.total == 5
    assert (await store.page("acme", ScanQuery(page=0, size=2))).content[0] == scans[-1]


async def test_page_invalid_arguments(store: SqlScanStore) -> None:
    with pytest.raises(errors.InvalidField):
        await store.page("acme", ScanQuery(page=-1))
    with pytest.raises(errors.InvalidField):
        await store.page("acme", ScanQuery(size=0))
    with pytest.raises(errors.InvalidField) as bad_sort:
        await store.page("acme", ScanQuery(sort=(("id; DROP TABLE scans", False),)))
    assert bad_sort.value.field == "sort"
    with pytest.raises(errors.InvalidField):
        await store.page("acme", ScanQuery(created_from=datetime(2024, 1, 1)))


@pytest.fixture
async def varied(store: SqlScanStore) -> list[Scan]:
    """Scans with ties in every sortable field, in two companies."""
    specs = [
        ("r1", Channel.WEB, CompareResult.SAME, 0.9, 0.2, 0),
        ("r2", Channel.MOBILE, CompareResult.DIFFERENT, 0.1, 0.3, 1),
        ("r1", Channel.OTHER, CompareResult.SAME, 0.5, 0.2, 2),
        ("r3", Channel.WEB, CompareResult.DIFFERENT, 0.5, 0.1, 3),
        ("r2", Channel.WEB, CompareResult.SAME, 0.9, 0.4, 3),
        ("r4", Channel.MOBILE, CompareResult.SAME, 0.3, 0.1, 5),
    ]
    scans = []
    for ref, channel, result, sim, elapsed, minute in specs:
        scan = make_scan(
            reference=ref,
            sales_channel=channel,
            compare_result=result,
            compare_similarity=sim,
            elapsed_time=elapsed,
            created_date=T0 + timedelta(minutes=minute),
        )
        await store.add(scan)
        scans.append(scan)
    # Two scans get an updated date (the rest stay NULL) so updatedDate sorting meets NULLs.
    scans[1] = await store.update("acme", scans[1].id, ScanUpdate(), "u", T0 + timedelta(days=2))
    scans[4] = await store.update("acme", scans[4].id, ScanUpdate(), "u", T0 + timedelta(days=1))
    await store.add(make_scan("globex", reference="r1"))
    return scans


async def test_page_filters(store: SqlScanStore, varied: list[Scan]) -> None:
    async def ids(**filters: Any) -> set[uuid.UUID]:
        page = await store.page("acme", ScanQuery(size=100, **filters))
        assert page.total == len(page.content)
        return {s.id for s in page.content}

    def where(pred: Callable[[Scan], bool]) -> set[uuid.UUID]:
        return {s.id for s in varied if pred(s)}

    assert await ids(reference="r1") == where(lambda s: s.reference == "r1")
    assert await ids(reference="r") == set()  # exact, not prefix
    assert await ids(sales_channel=Channel.WEB) == where(lambda s: s.sales_channel == Channel.WEB)
    assert await ids(compare_result=CompareResult.DIFFERENT) == where(
        lambda s: s.compare_result == CompareResult.DIFFERENT
    )
    start, end = T0 + timedelta(minutes=2), T0 + timedelta(minutes=5)
    # created_from is inclusive, created_to exclusive: minutes 2, 3, 3 but not 5.
    assert await ids(created_from=start, created_to=end) == where(lambda s: start <= s.created_date < end)
    assert len(await ids(created_from=start, created_to=end)) == 3
    assert await ids(reference="r2", sales_channel=Channel.WEB) == {varied[4].id}
    assert await ids(reference="nope") == set()


def _expected_order(scans: list[Scan], attr: str, descending: bool) -> list[uuid.UUID]:
    present = [s for s in scans if getattr(s, attr) is not None]
    missing = [s for s in scans if getattr(s, attr) is None]

    def key(s: Scan) -> Any:
        value = getattr(s, attr)
        return value.value if isinstance(value, Channel | CompareResult) else value

    # Primary key in the requested direction, id ascending within ties, NULLs last.
    by_id = sorted(present, key=lambda s: s.id)
    # sorted() is stable even with reverse=True, so ties keep the id-ascending order.
    ordered = sorted(by_id, key=key, reverse=descending)
    return [s.id for s in ordered] + [s.id for s in sorted(missing, key=lambda s: s.id)]


SORTS = [
    ("createdDate", "created_date"),
    ("updatedDate", "updated_date"),
    ("reference", "reference"),
    ("salesChannel", "sales_channel"),
    ("compareResult", "compare_result"),
    ("compareSimilarity", "compare_similarity"),
    ("elapsedTime", "elapsed_time"),
]


@pytest.mark.parametrize("descending", [False, True], ids=["asc", "desc"])
@pytest.mark.parametrize(("field", "attr"), SORTS, ids=[f for f, _ in SORTS])
async def test_page_sorts(
    store: SqlScanStore, varied: list[Scan], field: str, attr: str, descending: bool
) -> None:
    page = await store.page("acme", ScanQuery(size=100, sort=((field, descending),)))
    assert [s.id for s in page.content] == _expected_order(varied, attr, descending)


async def test_page_sorts_by_several_fields(store: SqlScanStore, varied: list[Scan]) -> None:
    query = ScanQuery(size=100, sort=(("reference", False), ("compareSimilarity", True)))
    page = await store.page("acme", query)
    expected = sorted(varied, key=lambda s: (s.reference, -s.compare_similarity, s.id))
    assert [s.id for s in page.content] == [s.id for s in expected]


async def test_paging_is_stable_when_sort_keys_tie(store: SqlScanStore) -> None:
    scans = [make_scan() for _ in range(11)]  # identical created_date for all
    for scan in scans:
        await store.add(scan)
    for descending in (False, True):
        seen: list[uuid.UUID] = []
        for number in range(4):
            page = await store.page(
                "acme", ScanQuery(page=number, size=3, sort=(("createdDate", descending),))
            )
            seen += [s.id for s in page.content]
        assert seen == sorted(s.id for s in scans)


async def test_page_never_crosses_companies(store: SqlScanStore) -> None:
    mine = make_scan("acme", reference="shared")
    theirs = make_scan("globex", reference="shared")
    await store.add(mine)
    await store.add(theirs)
    page = await store.page("acme", ScanQuery(reference="shared"))
    assert [s.id for s in page.content] == [mine.id] and page.total == 1
    assert (await store.page("initech", ScanQuery())).total == 0


# --- delete / retention


async def test_delete(store: SqlScanStore) -> None:
    scan, other = make_scan(), make_scan()
    await store.add(scan)
    await store.add(other)
    with pytest.raises(errors.NotFound):
        await store.delete("globex", scan.id)
    await store.delete("acme", scan.id)
    with pytest.raises(errors.NotFound):
        await store.get("acme", scan.id)
    with pytest.raises(errors.NotFound):
        await store.delete("acme", scan.id)
    assert await store.get("acme", other.id) == other


async def test_purge_older_than(store: SqlScanStore) -> None:
    old = [make_scan(c, created_date=T0 - timedelta(days=40)) for c in ("acme", "globex")]
    edge = make_scan(created_date=T0)
    new = make_scan(created_date=T0 + timedelta(seconds=1))
    for scan in [*old, edge, new]:
        await store.add(scan)
    assert await store.purge_older_than(T0) == 2  # strictly older: the scan at the cutoff stays
    assert {s.id for s in (await store.page("acme", ScanQuery())).content} == {edge.id, new.id}
    assert await store.purge_older_than(T0) == 0
    with pytest.raises(errors.InvalidField):
        await store.purge_older_than(datetime(2024, 1, 1))


# --- lifecycle / schema


async def test_migrations_are_idempotent(backend: Backend) -> None:
    first = backend.make()
    await first.open()
    await first.open()
    second = backend.make()
    await second.open()
    scan = make_scan()
    await second.add(scan)
    assert await first.get("acme", scan.id) == scan
    async with first.engine.connect() as conn:
        assert await conn.run_sync(migrate.current_revision) == migrate.head_revision() == "0002"


async def test_scans_from_before_0002_keep_their_rows_without_decision_settings(backend: Backend) -> None:
    """A database at 0001 holding a scan is upgraded in place: the row survives, its threshold and quality filter
    read as unknown (None), and new scans store theirs."""
    store = backend.make()
    if backend.kind == "sqlite":
        Path(str(store.url.database)).parent.mkdir(parents=True, exist_ok=True)
    async with store.engine.begin() as conn:
        await conn.run_sync(migrate.upgrade, "0001")
    old = make_scan(threshold=None, quality_filter=None)
    face = {k: v for k, v in store_models.face_to_json(old.face1).items() if k != "quality_components"}
    async with store.engine.begin() as conn:
        await conn.execute(sa.text(
            "INSERT INTO scans (id, company_id, created_date, created_by_id, reference, sales_channel, "
            "compare_result, compare_similarity, elapsed_time, face1, face2) VALUES (:id, 'acme', :created, "
            "'user-1', 'old', 'WEB', 'Same person', 0.8, 0.1, :face, :face)"
        ).bindparams(sa.bindparam("id", type_=sa.Uuid()), sa.bindparam("face", type_=store_models.FaceJSON),
                     sa.bindparam("created", type_=store_models.UTCDateTime())),
            {"id": old.id, "created": T0, "face": face})
        assert await conn.run_sync(migrate.current_revision) == "0001"
    await store.open()  # migrates to head
    got = await store.get("acme", old.id)
    assert (got.reference, got.threshold, got.quality_filter) == ("old", None, None)
    assert got.face1.quality_components is None and got.face1.landmark_68 == old.face1.landmark_68
    new = make_scan()
    await store.add(new)
    assert await store.get("acme", new.id) == new
    assert (new.threshold, new.quality_filter) == (0.6180339887498949, QualityFilter.MEDIUM)


async def test_concurrent_open(backend: Backend) -> None:
    if backend.kind == "sqlite":
        pytest.skip("SQLite stores serve one process; concurrent startup is a PostgreSQL concern")
    stores = [backend.make() for _ in range(4)]
    await asyncio.gather(*(s.open() for s in stores))
    assert all([await s.ping() for s in stores])


async def test_ping(store: SqlScanStore) -> None:
    assert await store.ping() is True


async def test_schema_holds_no_image_bytes_or_embeddings(store: SqlScanStore) -> None:
    def columns(conn: sa.Connection) -> list[Any]:
        return list(sa.inspect(conn).get_columns("scans"))

    async with store.engine.connect() as conn:
        cols = await conn.run_sync(columns)
    names = {c["name"] for c in cols}
    assert names == {
        "id",
        "company_id",
        "created_date",
        "updated_date",
        "created_by_id",
        "updated_by_id",
        "reference",
        "sales_channel",
        "compare_result",
        "compare_similarity",
        "elapsed_time",
        "face1",
        "face2",
        "threshold",
        "quality_filter",
    }
    for col in cols:
        assert not isinstance(col["type"], sa.LargeBinary), col
        assert "BLOB" not in str(col["type"]).upper() and "BYTEA" not in str(col["type"]).upper(), col
    assert not any(word in name for name in names for word in ("image", "embedding", "vector", "bytes"))


async def test_faces_hold_no_embedding(store: SqlScanStore) -> None:
    scan = make_scan()
    await store.add(scan)
    async with store.engine.connect() as conn:
        raw = (await conn.execute(sa.text("SELECT face1 FROM scans"))).scalar_one()
    face = raw if isinstance(raw, dict) else json.loads(raw)
    assert set(face) == {f.name for f in dataclasses.fields(FaceAnalysis)}


# --- failed writes


async def test_too_long_reference_is_refused_and_leaves_no_row(store: SqlScanStore) -> None:
    with pytest.raises(errors.InvalidField) as exc:
        await store.add(make_scan(reference="r" * 256))
    assert exc.value.field == "reference"
    with pytest.raises(errors.InvalidField):
        await store.add(make_scan(reference=""))
    assert await count_rows(store) == 0
    await store.add(make_scan(reference="r" * 255))
    assert await count_rows(store) == 1


async def test_database_rejection_is_typed_and_leaves_no_row(
    store: SqlScanStore, backend: Backend, monkeypatch: pytest.MonkeyPatch
) -> None:
    if backend.kind == "sqlite":
        pytest.skip("SQLite does not enforce VARCHAR lengths; the store's own check covers it")
    # Bypass the store's own check so the database's varchar(255) is what refuses the value.
    monkeypatch.setattr(store_sql, "_check_reference", lambda reference: None)
    with pytest.raises(errors.InvalidField) as exc:
        await store.add(make_scan(reference="r" * 300))
    assert "SELECT" not in exc.value.detail and "INSERT" not in exc.value.detail
    assert await count_rows(store) == 0
    assert await store.ping()  # the pool is still usable after the failed transaction


async def test_duplicate_id_is_typed_and_keeps_the_first(store: SqlScanStore) -> None:
    scan = make_scan()
    await store.add(scan)
    with pytest.raises(errors.FacerecError) as exc:
        await store.add(dataclasses.replace(scan, reference="other"))
    assert "INSERT" not in exc.value.detail
    assert await store.get("acme", scan.id) == scan
    assert await count_rows(store) == 1


# --- factory and unavailability (not per backend)


async def test_create_store_defaults_to_sqlite_in_data_dir(tmp_path: Path) -> None:
    settings = Settings(data_dir=tmp_path / "nested" / "data")
    store = create_store(settings)
    try:
        await store.open()
        await store.add(make_scan())
        assert settings.sqlite_path.is_file()
        assert await store.ping()
    finally:
        await store.close()


@pytest.mark.postgres
async def test_create_store_uses_database_url() -> None:
    dsn = postgres_dsn()
    store = create_store(Settings(database_url=pg_url(dsn)))
    assert isinstance(store, SqlScanStore) and store.dialect == "postgresql"
    try:
        assert await store.ping()
    finally:
        await store.close()


async def test_unreachable_postgres_is_unavailable() -> None:
    # Port 9 (discard) on loopback refuses connections: nothing listens there.
    store = SqlScanStore("postgresql+asyncpg://postgres@127.0.0.1:9/test", connect_timeout_s=2)
    try:
        assert await store.ping() is False
        with pytest.raises(errors.Unavailable) as exc:
            await store.open()
        assert exc.value.detail == "database unavailable"
        with pytest.raises(errors.Unavailable):
            await store.get("acme", uuid.uuid4())
        with pytest.raises(errors.Unavailable):
            await store.add(make_scan())
    finally:
        await store.close()


async def test_unusable_sqlite_path_is_unavailable(tmp_path: Path) -> None:
    blocker = tmp_path / "not-a-dir"
    blocker.write_text("x")
    store = SqlScanStore(f"sqlite+aiosqlite:///{blocker / 'db.sqlite3'}")
    try:
        assert await store.ping() is False
        with pytest.raises(errors.Unavailable):
            await store.open()
        with pytest.raises(errors.Unavailable):
            await store.page("acme", ScanQuery())
    finally:
        await store.close()
