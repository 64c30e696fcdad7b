"""The committed generated gRPC code matches the proto, and the servicer's wire translations."""

from __future__ import annotations

import subprocess
import sys
import uuid
from datetime import UTC, datetime, timedelta, timezone
from pathlib import Path

import pytest

from server.api.grpc.gen.facerec.v1 import face_recognition_pb2 as pb
from server.api.grpc.servicer import page_message, scan_message, scan_query
from server.api.query import parse_sort, parse_time
from server.api.schemas import ScanPage
from server.domain import Channel, CompareResult, FaceAnalysis, Page, Point, Scan
from server.errors import InvalidField

ROOT = Path(__file__).resolve().parents[3]
GEN = ROOT / "server" / "api" / "grpc" / "gen"


def _files(folder: Path) -> dict[str, str]:
    return {str(p.relative_to(folder)): p.read_text() for p in sorted(folder.rglob("*"))
            if p.is_file() and "__pycache__" not in p.parts}


def test_committed_generated_code_matches_the_proto(tmp_path: Path) -> None:
    pytest.importorskip("grpc_tools", reason="grpcio-tools (a dev dependency) regenerates the code")
    out = tmp_path / "gen"
    subprocess.run([sys.executable, str(ROOT / "scripts" / "gen_proto.py"), "--out", str(out)], check=True,
                   capture_output=True)
    fresh, committed = _files(out), _files(GEN)
    assert set(fresh) == set(committed), "run `make proto`"
    for name, text in fresh.items():
        assert committed[name] == text, f"{name} is stale: run `make proto`"


def test_generated_imports_are_absolute() -> None:
    grpc_module = (GEN / "facerec" / "v1" / "face_recognition_pb2_grpc.py").read_text()
    assert "from server.api.grpc.gen.facerec.v1 import face_recognition_pb2" in grpc_module
    assert "\nfrom facerec" not in grpc_module


def test_sort_parsing() -> None:
    assert parse_sort([]) == (("createdDate", True),)
    assert parse_sort(["reference", "compareSimilarity,DESC", " elapsedTime , asc "]) == (
        ("reference", False), ("compareSimilarity", True), ("elapsedTime", False))
    with pytest.raises(InvalidField) as err:
        parse_sort(["reference,up"])
    assert err.value.field == "sort"


def test_time_parsing_defaults_to_utc() -> None:
    assert parse_time("2024-05-01T12:12:06.090098", "createdFrom") == datetime(2024, 5, 1, 12, 12, 6, 90098,
                                                                                tzinfo=UTC)
    assert parse_time("2024-05-01T14:00:00+02:00", "createdTo").utcoffset() == timedelta(hours=2)
    with pytest.raises(InvalidField) as err:
        parse_time("May 1st", "createdTo")
    assert err.value.field == "createdTo"


def test_list_request_defaults_match_http() -> None:
    query = scan_query(pb.ListScansRequest())
    assert (query.page, query.size, query.sort) == (0, 20, (("createdDate", True),))
    assert query.reference is None and query.sales_channel is None and query.created_from is None
    # Same rules as the HTTP query string: an empty filter means no filter, size must be 1..200.
    explicit = scan_query(pb.ListScansRequest(size=5, reference="", sales_channel="web"))
    assert explicit.size == 5 and explicit.reference is None and explicit.sales_channel == Channel.WEB
    with pytest.raises(InvalidField):
        scan_query(pb.ListScansRequest(size=0))


def _scan(**changes: object) -> Scan:
    face = FaceAnalysis(1, 2, 3, 4, tuple(Point(i, -i) for i in range(68)), 1.0, 2.0, 0.1, 0.9, 0.0, 0.5, 0.2,
                        1.0, -2.0, 3.0)
    scan = Scan(uuid.uuid4(), "acme", datetime(2024, 5, 1, 14, 0, tzinfo=timezone(timedelta(hours=2))), "alice",
                "ref", Channel.WEB, CompareResult.SAME, 0.9, 0.05, face, face)
    for key, value in changes.items():
        setattr(scan, key, value)
    return scan


def test_scan_message_optional_fields() -> None:
    fresh = scan_message(_scan())
    assert not fresh.HasField("updated_date") and not fresh.HasField("updated_by_id")
    assert fresh.created_date == "2024-05-01T12:00:00.000000"  # converted to UTC like HTTP
    updated = scan_message(_scan(updated_date=datetime(2024, 5, 2, tzinfo=UTC), updated_by_id="bob"))
    assert (updated.updated_date, updated.updated_by_id) == ("2024-05-02T00:00:00.000000", "bob")


@pytest.mark.parametrize(("total", "page", "size", "count"), [(0, 0, 20, 0), (5, 0, 2, 2), (5, 2, 2, 1),
                                                               (5, 3, 2, 0), (40, 1, 20, 20)])
def test_both_transports_render_the_domain_page(total: int, page: int, size: int, count: int) -> None:
    domain = Page(content=[_scan() for _ in range(count)], total=total, page=page, size=size)
    expected = (total, domain.total_pages, page, size, count, domain.first, domain.last, domain.empty)
    for got in (page_message(domain), ScanPage.of(domain)):
        assert (got.total_elements, got.total_pages, got.number, got.size, got.number_of_elements, got.first,
                got.last, got.empty) == expected
        assert (got.sort.sorted, got.sort.unsorted, got.sort.empty) == (True, False, False)
