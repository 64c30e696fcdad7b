"""Data at rest is private to the service's user, and a scan's ``reference`` is visible text.

Files: the SQLite database and its WAL/SHM files are 0600 and the directories the server or the CLI create are
0700, whatever the umask (the test uses 022, the usual default). References: control, format (bidi overrides,
zero-width), line/paragraph separator characters are refused, and so are references with nothing visible in
them, on create, update and the list filter, over HTTP and gRPC.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import sqlite3
import stat
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest
import pytest_asyncio
from harness import COMPARE, LOCAL_CPU, PAIR, SCANS, Harness, assert_grpc, assert_problem, grpc_error

from server.api.grpc.gen.facerec.v1 import face_recognition_pb2 as pb
from server.settings import PROJECT_ROOT
from tooling.serve import ServeProcess

pytestmark = [pytest.mark.asyncio(loop_scope="module"), pytest.mark.served()]
# The child processes of the file tests: CPU models of this checkout, one inference thread (the machine is shared).
SERVE_ENV = {**LOCAL_CPU, "FACEREC_ORT_INTRA_THREADS": "1",
             "FACEREC_MODEL_REPOSITORY": str(PROJECT_ROOT / "model_repository")}


def _mode(path: Path) -> int:
    return stat.S_IMODE(path.stat().st_mode)


@contextlib.contextmanager
def _umask(mask: int) -> Iterator[None]:
    old = os.umask(mask)
    try:
        yield
    finally:
        os.umask(old)


# --------------------------------------------------------------------------- files and directories


def _server_creates_private_data_dir_and_database(tmp_path: Path, faces_dir: Path) -> None:
    data = tmp_path / "fresh" / "data"
    data.parent.mkdir()  # where ServeProcess writes the server's log
    with _umask(0o022):
        proc = ServeProcess(data, env=SERVE_ENV).start()
    try:
        token = proc.token("acme")
        with httpx.Client(base_url=proc.url, timeout=120) as client:
            resp = client.post(COMPARE, headers={"Authorization": f"Bearer {token}"},
                               data={"channel": "WEB", "reference": "private-1"},
                               files={"file1": ("a.jpg", (faces_dir / PAIR[0]).read_bytes()),
                                      "file2": ("b.jpg", (faces_dir / PAIR[1]).read_bytes())})
            assert resp.status_code == 200, resp.text
        db = data / "facerec.sqlite3"
        files = [db, db.with_name(db.name + "-wal"), db.with_name(db.name + "-shm")]
        for f in files:
            assert f.is_file(), f
        assert {f.name: oct(_mode(f)) for f in files} == {f.name: "0o600" for f in files}
        for d in (data, data / "auth"):
            assert _mode(d) == 0o700, (d, oct(_mode(d)))
    finally:
        proc.stop()


def _existing_database_files_are_tightened(tmp_path: Path) -> None:
    data = tmp_path / "data"
    data.mkdir()
    db = data / "facerec.sqlite3"
    with contextlib.closing(sqlite3.connect(db)) as conn:
        conn.execute("PRAGMA journal_mode=WAL")
        conn.execute("CREATE TABLE t (x)")
    for f in data.iterdir():
        f.chmod(0o644)
    with _umask(0o022):
        proc = ServeProcess(data, env=SERVE_ENV)
        try:
            proc.start()
        finally:
            proc.stop()
    for f in data.iterdir():
        if f.is_file():
            assert _mode(f) == 0o600, (f, oct(_mode(f)))


def _cli_creates_a_private_data_dir(tmp_path: Path) -> None:
    data = tmp_path / "cli" / "data"
    with _umask(0o022):
        out = subprocess.run([sys.executable, "-m", "server", "token", "--company", "acme"],
                             env={**os.environ, "FACEREC_DATA_DIR": str(data)}, capture_output=True, text=True,
                             cwd=PROJECT_ROOT, check=False)
    assert out.returncode == 0, out.stderr
    for d in (data, data.parent, data / "auth"):
        assert _mode(d) == 0o700, (d, oct(_mode(d)))
    assert _mode(data / "auth" / "signing-key.pem") == 0o600


async def test_server_creates_private_data_dir_and_database(tmp_path: Path, faces_dir: Path) -> None:
    # Blocking (a child process, sockets): off the module's event loop.
    await asyncio.to_thread(_server_creates_private_data_dir_and_database, tmp_path, faces_dir)


async def test_existing_database_files_are_tightened(tmp_path: Path) -> None:
    # Blocking (a child process, sockets): off the module's event loop.
    await asyncio.to_thread(_existing_database_files_are_tightened, tmp_path)


async def test_cli_creates_a_private_data_dir(tmp_path: Path) -> None:
    # Blocking (a child process, sockets): off the module's event loop.
    await asyncio.to_thread(_cli_creates_a_private_data_dir, tmp_path)


# --------------------------------------------------------------------------- references


@pytest_asyncio.fixture(scope="module", loop_scope="module")
async def scan_id(env: Harness, faces_dir: Path) -> str:
    scan = await env.stored_scan((faces_dir / PAIR[0]).read_bytes(), (faces_dir / PAIR[1]).read_bytes(),
                                 reference="ref-ok")
    return str(scan["id"])


INVISIBLE = [
    ("zero-width-space", "\u200b"),
    ("rlo", "\u202e"),
    ("line-separator", "\u2028"),
    ("paragraph-separator", "\u2029"),
    ("bom", "\ufeff"),
    ("word-joiner", "\u2060"),
    ("hangul-filler", "\u3164"),
    ("braille-blank", "\u2800"),
    ("combining-only", "\u034f\u0301"),
    ("nbsp-and-em-space", "\u00a0\u2003"),
    ("rlo-inside", "invoice\u202e7cod.exe"),
    ("isolate-inside", "a\u2066b\u2069"),
    ("line-separator-inside", "ref\u2028INFO forged"),
    ("zero-width-inside", "ref\u200b-1"),
    ("nel-inside", "ref\x85x"),
    ("private-use", "ref\ue000"),
    ("unassigned", "ref\U000e0fff"),
]
VISIBLE = ["Zoë-42", "契約-7", "ref with inner spaces", "👍🏽", "N°12/2024", "a\u0301"]


@pytest.mark.parametrize("reference", [c[1] for c in INVISIBLE], ids=[c[0] for c in INVISIBLE])
async def test_invisible_references_are_refused_http(env: Harness, faces_dir: Path, scan_id: str,
                                                     reference: str) -> None:
    created = await env.http_compare((faces_dir / PAIR[0]).read_bytes(), (faces_dir / PAIR[1]).read_bytes(),
                                     reference=reference)
    assert_problem(created, 400, "invalid_field", field="reference")
    updated = await env.http.put(f"{SCANS}/{scan_id}", headers=env.headers(), json={"reference": reference})
    assert_problem(updated, 400, "invalid_field", field="reference")
    listed = await env.http.get(SCANS, headers=env.headers(), params={"reference": reference})
    assert_problem(listed, 400, "invalid_field", field="reference")


@pytest.mark.parametrize("reference", [c[1] for c in INVISIBLE], ids=[c[0] for c in INVISIBLE])
async def test_invisible_references_are_refused_grpc(env: Harness, faces_dir: Path, scan_id: str,
                                                     reference: str) -> None:
    err = await grpc_error(env.grpc_compare((faces_dir / PAIR[0]).read_bytes(), (faces_dir / PAIR[1]).read_bytes(),
                                            reference=reference))
    assert_grpc(err, 400, "invalid_field", field="reference")
    err = await grpc_error(env.stub.UpdateScan(pb.UpdateScanRequest(id=scan_id, reference=reference),
                                               metadata=env.metadata()))
    assert_grpc(err, 400, "invalid_field", field="reference")
    err = await grpc_error(env.stub.ListScans(pb.ListScansRequest(reference=reference), metadata=env.metadata()))
    assert_grpc(err, 400, "invalid_field", field="reference")


@pytest.mark.parametrize("reference", VISIBLE)
async def test_visible_references_are_accepted(env: Harness, scan_id: str, reference: str) -> None:
    resp = await env.http.put(f"{SCANS}/{scan_id}", headers=env.headers(), json={"reference": reference})
    assert resp.status_code == 200 and resp.json()["reference"] == reference, resp.text
    listed = await env.http.get(SCANS, headers=env.headers(), params={"reference": reference})
    assert listed.status_code == 200 and listed.json()["totalElements"] >= 1, listed.text
    got = await env.stub.UpdateScan(pb.UpdateScanRequest(id=scan_id, reference=reference), metadata=env.metadata())
    assert got.reference == reference
