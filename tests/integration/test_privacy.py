"""Privacy by default: no image byte and no embedding is written to disk, the database or the logs; retention
deletes old scans; deleting a scan is audited (who, which, when)."""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import logging
import uuid
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import sqlalchemy as sa
from harness import SCANS, WAIT_S, Harness, assert_grpc, assert_problem, grpc_error
from litestar import Litestar

from server.api.grpc.gen.facerec.v1 import face_recognition_pb2 as pb
from server.api.http import RequestIdLogFilter
from server.app import create_app
from server.errors import NotFound
from server.inference.context import INTERNAL
from server.inference.decode import DecodeLimits, decode_image
from server.store.sql import SqlScanStore
from tooling.wait import wait_until

pytestmark = [pytest.mark.asyncio(loop_scope="module"), pytest.mark.served(retention_days=30)]

PHOTOS = ("obama_01_portrait_2012.jpg", "obama_02_congress_2009.jpg", "biden_02_vp_portrait_2013.jpg")
FORBIDDEN_COLUMN_WORDS = ("image", "photo", "file", "blob", "embedding", "vector", "feature", "template", "bytes")


def _store(env: Harness) -> SqlScanStore:
    store = env.runtime.store
    assert isinstance(store, SqlScanStore)
    return store


async def _database_dump(env: Harness) -> bytes:
    """Every row of every table, as text and raw bytes (whatever the backend)."""
    store = _store(env)
    out = bytearray()
    async with store.engine.connect() as conn:
        tables = await conn.run_sync(lambda c: sa.inspect(c).get_table_names())
        for table in tables:
            for row in (await conn.execute(sa.text(f'SELECT * FROM "{table}"'))).all():
                for value in row:
                    out += value if isinstance(value, bytes | bytearray | memoryview) else repr(value).encode()
                    out += b"\n"
    return bytes(out)


def _files_under(root: Path) -> bytes:
    return b"".join(p.read_bytes() for p in sorted(root.rglob("*")) if p.is_file())


def _image_markers(data: bytes) -> list[bytes]:
    """Distinctive 64-byte slices of an uploaded file (start of the entropy-coded data, middle, end)."""
    return [data[n: n + 64] for n in (len(data) // 4, len(data) // 2, len(data) - 200)]


def _embedding_markers(embedding: np.ndarray[Any, Any]) -> list[bytes]:
    vec = np.asarray(embedding, dtype=np.float32)
    markers = [vec.tobytes(), vec[:4].tobytes(), vec.astype(">f4")[:4].tobytes(), vec.astype(np.float64)[:4].tobytes()]
    head = [float(v) for v in vec[:4]]
    for fmt in ("{!r}", "{:.6f}", "{:.5f}", "{:.4f}"):
        texts = [fmt.format(v) for v in head]
        markers += [", ".join(texts).encode(), ",".join(texts).encode()]
    markers += [repr(v).encode() for v in head]  # full-precision reprs are distinctive on their own
    return markers


async def test_no_image_or_embedding_on_disk_in_db_or_logs(env: Harness, faces_dir: Path,
                                                          caplog: pytest.LogCaptureFixture) -> None:
    files = [(faces_dir / name).read_bytes() for name in PHOTOS]
    caplog.set_level(logging.DEBUG)
    http = await env.http_compare(files[0], files[1], reference="privacy-1")
    assert http.status_code == 200, http.text
    grpc_resp = await env.grpc_compare(files[0], files[2], reference="privacy-2")
    assert grpc_resp.compare_result == "Different person"
    failed = await env.http_compare(files[2], b"\xff\xd8\xff" + files[1][3:6000], reference="privacy-3")
    assert failed.status_code == 415
    await env.http.get(f"{SCANS}/{http.json()['id']}", headers=env.headers())
    # The embeddings the pipeline makes of these very files (what a leak would have written).
    limits = DecodeLimits()
    results = await env.runtime.pipeline.analyze([decode_image(f, limits) for f in files], INTERNAL)
    embeddings = [r.embedding for r in results if r is not None]
    assert len(embeddings) == 3

    with contextlib.suppress(Exception):  # make SQLite's WAL content visible in the main file too
        async with _store(env).engine.connect() as conn:
            await conn.exec_driver_sql("PRAGMA wal_checkpoint(PASSIVE)")
    on_disk = _files_under(env.runtime.settings.data_dir)
    in_db = await _database_dump(env)
    assert b"privacy-1" in in_db and b"privacy-2" in in_db  # the dump does hold the scans
    responses = http.content + grpc_resp.SerializeToString()
    logs = (caplog.text + "\n".join(repr(r.__dict__) for r in caplog.records)).encode("utf-8", "replace")
    for where, blob in (("data dir", on_disk), ("database", in_db), ("logs", logs)):
        for i, data in enumerate(files):
            for marker in _image_markers(data):
                assert marker not in blob, f"bytes of image {i} found in the {where}"
        for i, embedding in enumerate(embeddings):
            for marker in _embedding_markers(embedding):
                assert marker not in blob, f"embedding {i} found in the {where}: {marker[:40]!r}"
    for embedding in embeddings:  # the API answers never carry the embedding either
        assert all(m not in responses for m in _embedding_markers(embedding)[:2])


async def test_scans_table_has_no_image_or_embedding_column(env: Harness) -> None:
    async with _store(env).engine.connect() as conn:
        columns = await conn.run_sync(lambda c: sa.inspect(c).get_columns("scans"))
    names = {c["name"].lower() for c in columns}
    assert {"id", "company_id", "face1", "face2", "reference"} <= names
    assert not [n for n in names if any(w in n for w in FORBIDDEN_COLUMN_WORDS)], names
    binary = [c["name"] for c in columns if isinstance(c["type"], sa.LargeBinary | sa.ARRAY)]
    assert not binary, binary


async def test_stored_face_json_holds_only_the_documented_analysis(env: Harness, faces_dir: Path) -> None:
    files = [(faces_dir / name).read_bytes() for name in PHOTOS[:2]]
    resp = await env.http_compare(*files, reference="privacy-json")
    assert resp.status_code == 200
    entity = (await env.http.get(f"{SCANS}/{resp.json()['id']}", headers=env.headers())).json()
    for key in ("face1", "face2"):
        assert not {"embedding", "image", "crop", "aligned"} & entity[key].keys()
        assert len(entity[key]) <= 20  # the <Face> fields, nothing bulky


# --------------------------------------------------------------------------- retention


async def _lifespan(app: Litestar) -> tuple[asyncio.Task[None], asyncio.Queue[dict[str, Any]]]:
    """Run the app's ASGI lifespan (what uvicorn does) until ``lifespan.shutdown`` is sent."""
    inbox: asyncio.Queue[dict[str, Any]] = asyncio.Queue()
    outbox: asyncio.Queue[dict[str, Any]] = asyncio.Queue()
    await inbox.put({"type": "lifespan.startup"})

    async def receive() -> dict[str, Any]:
        return await inbox.get()

    async def send(message: Any) -> None:
        await outbox.put(dict(message))

    task = asyncio.create_task(app({"type": "lifespan", "asgi": {"version": "3.0"}, "state": {}},  # type: ignore[arg-type]
                                   receive, send))
    started = await asyncio.wait_for(outbox.get(), 30)
    assert started["type"] == "lifespan.startup.complete", started
    return task, inbox


async def test_retention_task_purges_old_scans_and_keeps_recent_ones(env: Harness, faces_dir: Path) -> None:
    files = [(faces_dir / name).read_bytes() for name in PHOTOS[:2]]
    resp = await env.http_compare(*files, headers=env.headers(company="retention-co"), reference="recent")
    assert resp.status_code == 200
    store = env.runtime.store
    recent = await store.get("retention-co", uuid.UUID(resp.json()["id"]))
    now = datetime.now(UTC)
    old = dataclasses.replace(recent, id=uuid.uuid4(), reference="old", created_date=now - timedelta(days=40))
    edge = dataclasses.replace(recent, id=uuid.uuid4(), reference="29-days", created_date=now - timedelta(days=29))
    await store.add(old)
    await store.add(edge)

    assert env.runtime.settings.retention_days == 30
    app = create_app(env.runtime.settings, env.runtime)  # its lifespan starts the app's own retention task
    task, inbox = await _lifespan(app)
    try:
        async def purged() -> bool:
            try:
                await store.get("retention-co", old.id)
            except NotFound:
                return True
            return False

        # The purge runs as the app starts; the bound only catches a purge that never comes.
        await wait_until(purged, within_s=WAIT_S, what="the retention task to purge the old scan")
        assert (await store.get("retention-co", recent.id)).reference == "recent"
        assert (await store.get("retention-co", edge.id)).reference == "29-days"
    finally:
        await inbox.put({"type": "lifespan.shutdown"})
        await asyncio.wait_for(task, 30)
    listed = await env.http.get(SCANS, headers=env.headers(company="retention-co"), params={"sort": "reference"})
    assert [s["reference"] for s in listed.json()["content"]] == ["29-days", "recent"]


# --------------------------------------------------------------------------- deletion is audited


def _audit_records(caplog: pytest.LogCaptureFixture, scan_id: str) -> list[logging.LogRecord]:
    return [r for r in caplog.records if getattr(r, "scan_id", None) == scan_id and scan_id in r.getMessage()]


async def test_delete_is_audited_and_removes_the_scan_http(env: Harness, faces_dir: Path,
                                                           caplog: pytest.LogCaptureFixture) -> None:
    files = [(faces_dir / name).read_bytes() for name in PHOTOS[:2]]
    created = await env.http_compare(*files, headers=env.headers(company="audit-co", user="alice"))
    sid = created.json()["id"]
    caplog.handler.addFilter(RequestIdLogFilter())
    caplog.set_level(logging.INFO)
    before = datetime.now(UTC).timestamp()
    resp = await env.http.delete(f"{SCANS}/{sid}", headers={**env.headers(company="audit-co", user="bob"),
                                                            "X-Request-ID": "audit-req-1"})
    assert resp.status_code == 204, resp.text
    assert resp.headers["x-request-id"] == "audit-req-1"
    records = _audit_records(caplog, sid)
    assert len(records) == 1, [r.getMessage() for r in caplog.records]
    record = records[0]
    message = record.getMessage()
    # Who (user and company), what (the scan id) and when (the record's time), in the message itself so any
    # log format shows them, and as structured fields for JSON formatters.
    assert "bob" in message and "audit-co" in message and sid in message
    assert (record.scan_id, record.company_id, record.user_id) == (sid, "audit-co", "bob")  # type: ignore[attr-defined]
    assert record.request_id == "audit-req-1"  # type: ignore[attr-defined]
    assert before - 1 <= record.created <= datetime.now(UTC).timestamp() + 1
    assert_problem(await env.http.get(f"{SCANS}/{sid}", headers=env.headers(company="audit-co")), 404, "not_found")
    again = await env.http.delete(f"{SCANS}/{sid}", headers=env.headers(company="audit-co"))
    assert_problem(again, 404, "not_found")
    assert len(_audit_records(caplog, sid)) == 1  # a failed delete is not recorded as a deletion


async def test_delete_is_audited_and_removes_the_scan_grpc(env: Harness, faces_dir: Path,
                                                           caplog: pytest.LogCaptureFixture) -> None:
    files = [(faces_dir / name).read_bytes() for name in PHOTOS[:2]]
    created = await env.grpc_compare(*files, metadata=env.metadata(company="audit-co"))
    caplog.set_level(logging.INFO)
    await env.stub.DeleteScan(pb.DeleteScanRequest(id=created.id), metadata=env.metadata(company="audit-co",
                                                                                        user="carol"))
    records = _audit_records(caplog, created.id)
    assert len(records) == 1
    assert "carol" in records[0].getMessage() and "audit-co" in records[0].getMessage()
    err = await grpc_error(env.stub.GetScan(pb.GetScanRequest(id=created.id),
                                            metadata=env.metadata(company="audit-co")))
    assert_grpc(err, 404, "not_found")
