"""SQLAlchemy implementation of the ScanStore for SQLite (aiosqlite) and PostgreSQL (asyncpg)."""

from __future__ import annotations

import sqlite3
import uuid
from collections.abc import AsyncIterator, Mapping
from contextlib import asynccontextmanager
from datetime import datetime
from pathlib import Path
from typing import Any

from sqlalchemy import ColumnElement, delete, event, func, select, text
from sqlalchemy import exc as sa_exc
from sqlalchemy.engine import make_url
from sqlalchemy.ext.asyncio import AsyncEngine, AsyncSession, async_sessionmaker, create_async_engine
from sqlalchemy.orm import InstrumentedAttribute

from server import errors, tracing
from server.domain import MAX_REFERENCE, SORTABLE_FIELDS, Channel, CompareResult, Page, Scan, ScanQuery, ScanUpdate
from server.files import ensure_private_dir, ensure_private_file, tighten
from server.store import migrate
from server.store.models import ScanRow, row_from_scan, scan_from_row

# API (camelCase) sort names -> columns; kept in step with domain.SORTABLE_FIELDS by a unit test.
SORT_COLUMNS: dict[str, InstrumentedAttribute[Any]] = {
    "createdDate": ScanRow.created_date,
    "updatedDate": ScanRow.updated_date,
    "reference": ScanRow.reference,
    "salesChannel": ScanRow.sales_channel,
    "compareResult": ScanRow.compare_result,
    "compareSimilarity": ScanRow.compare_similarity,
    "elapsedTime": ScanRow.elapsed_time,
}
assert set(SORT_COLUMNS) == set(SORTABLE_FIELDS)

UNAVAILABLE = "database unavailable"


# asyncpg errors meaning "no usable server connection", matched by name so this module needs no asyncpg import
# (SQLite-only installs, and asyncpg ships no type information).
_ASYNCPG_CONNECTION_ERRORS = frozenset(
    {
        "PostgresConnectionError",
        "ConnectionDoesNotExistError",
        "CannotConnectNowError",
        "AdminShutdownError",
        "CrashShutdownError",
    }
)


def _is_asyncpg_connection_error(exc: BaseException) -> bool:
    return any(
        cls.__module__.startswith("asyncpg") and cls.__name__ in _ASYNCPG_CONNECTION_ERRORS
        for cls in type(exc).__mro__
    )


def _caused_by_connection_loss(exc: BaseException) -> bool:
    """True when a driver error (or anything in its cause chain) means the server could not be reached."""
    seen: set[int] = set()
    current: BaseException | None = exc
    while current is not None and id(current) not in seen:
        seen.add(id(current))
        if isinstance(
            current, OSError | TimeoutError | sqlite3.OperationalError
        ) or _is_asyncpg_connection_error(current):
            return True
        if isinstance(current, sa_exc.DBAPIError) and current.connection_invalidated:
            return True
        nxt = getattr(current, "orig", None)
        current = nxt if isinstance(nxt, BaseException) else (current.__cause__ or current.__context__)
    return False


def _sqlstate(exc: sa_exc.DBAPIError) -> str:
    """The SQLSTATE a PostgreSQL error carries ("" when none): the asyncpg adapter does not always pick the
    matching SQLAlchemy class (a too-long string arrives as a plain DBAPIError), the code is reliable."""
    for candidate in (exc.orig, getattr(exc.orig, "__cause__", None)):
        code = getattr(candidate, "sqlstate", None) or getattr(candidate, "pgcode", None)
        if isinstance(code, str):
            return code
    return ""


@asynccontextmanager
async def _translated() -> AsyncIterator[None]:
    """Turn database failures into the service's error taxonomy; SQL text never reaches a caller."""
    try:
        yield
    except errors.FacerecError:
        raise
    except (sa_exc.OperationalError, sa_exc.InterfaceError, sa_exc.TimeoutError, OSError) as exc:
        raise errors.Unavailable(UNAVAILABLE) from exc
    except sa_exc.DBAPIError as exc:
        sqlstate = _sqlstate(exc)
        if isinstance(exc, sa_exc.DataError) or sqlstate.startswith("22"):
            raise errors.InvalidField("a value does not fit the stored field") from exc
        if isinstance(exc, sa_exc.IntegrityError) or sqlstate.startswith("23"):
            # Only the generated id is unique and the domain type fills every NOT NULL: a server bug.
            raise errors.FacerecError("the scan conflicts with a stored scan") from exc
        if _caused_by_connection_loss(exc):
            raise errors.Unavailable(UNAVAILABLE) from exc
        raise errors.FacerecError() from exc
    except Exception as exc:
        # SQLAlchemy wraps every statement error, so a bare asyncpg error can only come from connecting
        # (server starting up, database missing, auth refused): to the caller the database is unavailable.
        if type(exc).__module__.startswith("asyncpg") or _caused_by_connection_loss(exc):
            raise errors.Unavailable(UNAVAILABLE) from exc
        raise


def _check_reference(reference: str) -> None:
    # SQLite ignores VARCHAR lengths, so the limit is enforced here for both backends alike.
    if not 1 <= len(reference) <= MAX_REFERENCE:
        raise errors.InvalidField(f"reference must be 1-{MAX_REFERENCE} characters", field="reference")


def _check_aware(value: datetime, name: str) -> None:
    if value.tzinfo is None or value.utcoffset() is None:
        raise errors.InvalidField(f"{name} must be timezone-aware", field=name)


def _validate(scan: Scan) -> None:
    _check_reference(scan.reference)
    _check_aware(scan.created_date, "createdDate")
    if scan.updated_date is not None:
        _check_aware(scan.updated_date, "updatedDate")
    try:
        Channel(scan.sales_channel)
        CompareResult(scan.compare_result)
    except ValueError as exc:
        raise errors.InvalidField(str(exc)) from exc


def _filters(company_id: str, query: ScanQuery) -> list[ColumnElement[bool]]:
    where: list[ColumnElement[bool]] = [ScanRow.company_id == company_id]
    if query.reference is not None:
        where.append(ScanRow.reference == query.reference)
    if query.sales_channel is not None:
        where.append(ScanRow.sales_channel == Channel(query.sales_channel).value)
    if query.compare_result is not None:
        where.append(ScanRow.compare_result == CompareResult(query.compare_result).value)
    if query.created_from is not None:
        _check_aware(query.created_from, "createdFrom")
        where.append(ScanRow.created_date >= query.created_from)
    if query.created_to is not None:
        _check_aware(query.created_to, "createdTo")
        where.append(ScanRow.created_date < query.created_to)
    return where


def _order_by(sort: tuple[tuple[str, bool], ...]) -> list[ColumnElement[Any]]:
    clauses: list[ColumnElement[Any]] = []
    for name, descending in sort:
        column = SORT_COLUMNS.get(name)
        if column is None:
            raise errors.InvalidField(f"cannot sort by {name!r}", field="sort")
        # NULLs (never-updated scans) go last in both directions, identically on both backends.
        clauses.append((column.desc() if descending else column.asc()).nulls_last())
    # The id makes the order total, so consecutive pages neither repeat nor skip rows.
    clauses.append(ScanRow.id.asc())
    return clauses


SQLITE_BUSY_TIMEOUT_MS = 30_000


def _sqlite_pragmas(dbapi_connection: Any, _record: Any) -> None:
    # WAL lets readers run beside the single writer; busy_timeout waits for the writer instead of failing. With
    # `serve --workers N` every worker writes to the one file: on a 16-core node at 8 workers and 256 compares in
    # flight, 3 of ~1,100 compares were answered 503 (the store's refusal), most likely a 5 s lock wait: a writer
    # whose process is starved of CPU holds the lock longer. A refusal there wastes a finished analysis, so wait
    # as long as a compare's default deadline (30 s); PostgreSQL is the store for many workers.
    cursor = dbapi_connection.cursor()
    try:
        cursor.execute("PRAGMA journal_mode=WAL")
        cursor.execute(f"PRAGMA busy_timeout={SQLITE_BUSY_TIMEOUT_MS}")
    finally:
        cursor.close()


def _private_sqlite_files(db: Path) -> None:
    """Create the database file 0600 before SQLite does (it would follow the umask, usually 0644); SQLite gives
    its -wal and -shm files the database file's mode. Files left readable by an older version are tightened."""
    ensure_private_dir(db.parent)
    ensure_private_file(db)
    for suffix in ("-wal", "-shm", "-journal"):
        tighten(db.with_name(db.name + suffix))


class SqlScanStore:
    """A ScanStore on any SQLAlchemy async URL (tested with sqlite+aiosqlite and postgresql+asyncpg)."""

    def __init__(
        self,
        url: str,
        *,
        connect_args: Mapping[str, Any] | None = None,
        pool_size: int = 10,
        connect_timeout_s: float = 5.0,
        command_timeout_s: float = 30.0,
    ) -> None:
        self.url = make_url(url)
        self.dialect = self.url.get_backend_name()
        args: dict[str, Any] = {}
        options: dict[str, Any] = {}
        if self.dialect == "postgresql":
            args["timeout"] = connect_timeout_s  # asyncpg's connect timeout (its default is a minute)
            # A statement on a connection whose server vanished (no RST: a partition) would otherwise wait for
            # TCP's own timeout, minutes; this bounds it and the caller gets 503.
            args["command_timeout"] = command_timeout_s
            # Pre-ping replaces connections a database restart killed, so the store recovers by itself.
            options.update(pool_pre_ping=True, pool_size=pool_size, max_overflow=pool_size)
        args.update(connect_args or {})
        self.engine: AsyncEngine = create_async_engine(self.url, connect_args=args, **options)
        if self.dialect == "sqlite":
            event.listen(self.engine.sync_engine, "connect", _sqlite_pragmas)
        self._sessions = async_sessionmaker(self.engine, expire_on_commit=False)

    def __repr__(self) -> str:
        return f"SqlScanStore({self.url.render_as_string(hide_password=True)!r})"

    @asynccontextmanager
    async def _session(self) -> AsyncIterator[AsyncSession]:
        async with _translated(), self._sessions() as session, session.begin():
            yield session

    async def open(self) -> None:
        async with _translated():
            if self.dialect == "sqlite" and self.url.database not in (None, "", ":memory:"):
                _private_sqlite_files(Path(self.url.database))
            async with self.engine.begin() as connection:
                await connection.run_sync(migrate.upgrade)

    async def close(self) -> None:
        await self.engine.dispose()

    async def ping(self) -> bool:
        try:
            async with self.engine.connect() as connection:
                await connection.execute(text("SELECT 1"))
        except (TimeoutError, sa_exc.SQLAlchemyError, OSError):
            return False
        return True

    @tracing.traced("store.add")
    async def add(self, scan: Scan) -> None:
        _validate(scan)
        async with self._session() as session:
            session.add(row_from_scan(scan))

    async def _row(
        self, session: AsyncSession, company_id: str, scan_id: uuid.UUID, *, lock: bool
    ) -> ScanRow:
        stmt = select(ScanRow).where(ScanRow.id == scan_id, ScanRow.company_id == company_id)
        if lock:
            stmt = stmt.with_for_update()  # a no-op on SQLite, whose writers are serialised anyway
        row = (await session.execute(stmt)).scalar_one_or_none()
        if row is None:
            raise errors.NotFound("scan not found")
        return row

    @tracing.traced("store.get")
    async def get(self, company_id: str, scan_id: uuid.UUID) -> Scan:
        async with self._session() as session:
            return scan_from_row(await self._row(session, company_id, scan_id, lock=False))

    @tracing.traced("store.update")
    async def update(
        self, company_id: str, scan_id: uuid.UUID, change: ScanUpdate, user_id: str, now: datetime
    ) -> Scan:
        _check_aware(now, "updatedDate")
        if change.reference is not None:
            _check_reference(change.reference)
        async with self._session() as session:
            row = await self._row(session, company_id, scan_id, lock=True)
            if change.compare_result is not None:
                row.compare_result = CompareResult(change.compare_result).value
            if change.compare_similarity is not None:
                row.compare_similarity = float(change.compare_similarity)
            if change.sales_channel is not None:
                row.sales_channel = Channel(change.sales_channel).value
            if change.reference is not None:
                row.reference = change.reference
            row.updated_date = now
            row.updated_by_id = user_id
            await session.flush()
            return scan_from_row(row)

    @tracing.traced("store.page")
    async def page(self, company_id: str, query: ScanQuery) -> Page:
        if query.page < 0:
            raise errors.InvalidField("page must be >= 0", field="page")
        if query.size < 1:
            raise errors.InvalidField("size must be >= 1", field="size")
        where = _filters(company_id, query)
        rows_stmt = (
            select(ScanRow)
            .where(*where)
            .order_by(*_order_by(query.sort))
            .offset(query.page * query.size)
            .limit(query.size)
        )
        count_stmt = select(func.count()).select_from(ScanRow).where(*where)
        async with self._session() as session:
            total = (await session.execute(count_stmt)).scalar_one()
            rows = (await session.execute(rows_stmt)).scalars().all()
            content = [scan_from_row(row) for row in rows]
        return Page(content=content, total=int(total), page=query.page, size=query.size)

    @tracing.traced("store.delete")
    async def delete(self, company_id: str, scan_id: uuid.UUID) -> None:
        stmt = delete(ScanRow).where(ScanRow.id == scan_id, ScanRow.company_id == company_id)
        async with self._session() as session:
            result = await session.execute(stmt)
            if _rowcount(result) == 0:
                raise errors.NotFound("scan not found")

    async def purge_older_than(self, cutoff: datetime) -> int:
        _check_aware(cutoff, "cutoff")
        async with self._session() as session:
            result = await session.execute(delete(ScanRow).where(ScanRow.created_date < cutoff))
            return _rowcount(result)


def _rowcount(result: object) -> int:
    # DELETE returns a CursorResult; the ORM types it as the generic Result, which has no rowcount.
    count = getattr(result, "rowcount", 0)
    return int(count) if isinstance(count, int) else 0
