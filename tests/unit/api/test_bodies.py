"""JSON nesting measured without decoding; the PUT body's keys and types."""

from __future__ import annotations

import pytest

from server.api.http.bodies import json_depth
from server.api.schemas import scan_update_of
from server.domain import Channel, CompareResult
from server.errors import InvalidField


@pytest.mark.parametrize(("raw", "depth"), [
    (b"1", 0), (b'"[[[["', 0), (b"{}", 1), (b'{"a": [1, {"b": []}]}', 4), (b"[" * 5000 + b"]" * 5000, 5000),
    (b'{"a": "\\"[[[", "b": [[]]}', 3), (b'["\\\\", [[]]]', 3), (b'{"unterminated": "[[[', 4),
])
def test_json_depth(raw: bytes, depth: int) -> None:
    assert json_depth(raw) == depth


def test_update_takes_typed_camel_case_fields() -> None:
    change = scan_update_of({"compareResult": "Same person", "compareSimilarity": 1, "salesChannel": "WEB",
                             "reference": "r", "id": "ignored", "face1": {"x1": 1}})
    assert change.compare_result is CompareResult.SAME and change.compare_similarity == 1.0
    assert change.sales_channel is Channel.WEB and change.reference == "r"


def test_unknown_keys_are_all_named() -> None:
    with pytest.raises(InvalidField) as info:
        scan_update_of({"b_key": 1, "a_key": 2, "reference": "r"})
    assert info.value.field == "a_key" and "a_key, b_key" in info.value.detail


@pytest.mark.parametrize(("body", "field"), [
    ({"compareSimilarity": "0.5"}, "compareSimilarity"), ({"compareSimilarity": 1.5}, "compareSimilarity"),
    ({"reference": ""}, "reference"), ({"salesChannel": "FAX"}, "salesChannel"),
])
def test_values_are_taken_as_typed(body: dict[str, object], field: str) -> None:
    with pytest.raises(InvalidField) as info:
        scan_update_of(body)
    assert info.value.field == field
