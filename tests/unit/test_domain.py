"""The wire rules kept once in the domain: channel, compare result and reference parsing (the one reference rule
shared by create, update and the list filter), threshold and quality filter parsing, Spring page arithmetic."""

from __future__ import annotations

import pytest

from server.domain import (
    MAX_REFERENCE,
    Channel,
    CompareResult,
    Page,
    QualityFilter,
    ScanUpdate,
    parse_reference,
    parse_threshold,
)
from server.errors import InvalidField


@pytest.mark.parametrize(("raw", "want"), [("WEB", Channel.WEB), ("web", Channel.WEB), (" Mobile ", Channel.MOBILE),
                                          ("other", Channel.OTHER)])
def test_channel_ignores_case_and_surrounding_space(raw: str, want: Channel) -> None:
    assert Channel.parse(raw) is want


@pytest.mark.parametrize("raw", ["", None, "FAX", "W EB", "webb"])
def test_unknown_channel_names_the_field(raw: str | None) -> None:
    with pytest.raises(InvalidField) as info:
        Channel.parse(raw, "salesChannel")
    assert info.value.field == "salesChannel"


@pytest.mark.parametrize(("raw", "want"), [("Same person", CompareResult.SAME), ("same PERSON", CompareResult.SAME),
                                          (" Different person", CompareResult.DIFFERENT)])
def test_compare_result_ignores_case_and_surrounding_space(raw: str, want: CompareResult) -> None:
    assert CompareResult.parse(raw) is want


@pytest.mark.parametrize("raw", ["", "same", "Maybe", "Same  person"])
def test_unknown_compare_result_is_invalid(raw: str) -> None:
    with pytest.raises(InvalidField) as info:
        CompareResult.parse(raw)
    assert info.value.field == "compareResult"


def test_reference_rules() -> None:
    assert parse_reference("  contract-7 ") == "contract-7"
    assert parse_reference("r" * MAX_REFERENCE) == "r" * MAX_REFERENCE
    for bad in ("", "   ", "r" * (MAX_REFERENCE + 1), "a\x00b", "tab\there"):
        with pytest.raises(InvalidField) as info:
            parse_reference(bad)
        assert info.value.field == "reference"


@pytest.mark.parametrize("value", ["0002", "  padded  ", "Zoë-42", "契約-7", "👍🏽", "a\u0301", "x" * 255,
                                   "N°12/2024 (copy)"])
def test_visible_references_pass(value: str) -> None:
    assert parse_reference(value) == value.strip()


@pytest.mark.parametrize("value", [None, "", "   ", "x" * 256, "\u200b", "\u202e", "\u2028", "\u3164", "\u2800",
                                   "\u00a0\u3000", "\u0301", "a\x00b", "a\tb", "a\u202eb", "a\u200db",
                                   "a\ue000", "a\U000e0fff", "a\ud800"])
def test_invisible_or_disallowed_references_fail(value: str | None) -> None:
    with pytest.raises(InvalidField) as info:
        parse_reference(value)
    assert info.value.field == "reference"


def test_reference_rule_names_the_field_it_was_given() -> None:
    with pytest.raises(InvalidField) as info:
        parse_reference("\u202e", "ref")
    assert info.value.field == "ref"
    assert "ref must not contain" in str(info.value)


def test_scan_update_parse_validates_every_field() -> None:
    change = ScanUpdate.parse(compare_result="different person", compare_similarity=0.25, sales_channel="mobile",
                              reference=" r-2 ")
    assert change == ScanUpdate(CompareResult.DIFFERENT, 0.25, Channel.MOBILE, "r-2")
    assert ScanUpdate.parse() == ScanUpdate()
    for kwargs, field in (({"compare_similarity": 1.5}, "compareSimilarity"),
                          ({"sales_channel": "FAX"}, "salesChannel"), ({"compare_result": "maybe"}, "compareResult"),
                          ({"reference": ""}, "reference")):
        with pytest.raises(InvalidField) as info:
            ScanUpdate.parse(**kwargs)  # type: ignore[arg-type]
        assert info.value.field == field


@pytest.mark.parametrize(("total", "page", "size", "pages", "first", "last"), [
    (0, 0, 20, 0, True, True), (5, 0, 2, 3, True, False), (5, 2, 2, 3, False, True), (5, 7, 2, 3, False, True),
    (4, 1, 2, 2, False, True), (1, 0, 200, 1, True, True),
])
def test_page_arithmetic(total: int, page: int, size: int, pages: int, first: bool, last: bool) -> None:
    p = Page(content=[], total=total, page=page, size=size)
    assert (p.total_pages, p.first, p.last, p.empty) == (pages, first, last, True)


@pytest.mark.parametrize(("raw", "want"), [("LOW", QualityFilter.LOW), (" medium ", QualityFilter.MEDIUM),
                                           ("none", QualityFilter.NONE), ("Auto", QualityFilter.AUTO)])
def test_quality_filter_ignores_case_and_surrounding_space(raw: str, want: QualityFilter) -> None:
    assert QualityFilter.parse(raw) is want


@pytest.mark.parametrize("raw", [None, "", "EXTREME", "L0W", "low,high"])
def test_unknown_quality_filter_names_the_field(raw: str | None) -> None:
    with pytest.raises(InvalidField) as exc:
        QualityFilter.parse(raw)
    assert exc.value.field == "quality_filter" and "NONE, LOW, MEDIUM, HIGH, AUTO" in exc.value.detail


@pytest.mark.parametrize(("raw", "want"), [("0", 0.0), ("1", 1.0), (" 0.62 ", 0.62), (0.5, 0.5), ("5e-1", 0.5)])
def test_threshold_parses_numbers_within_0_1(raw: str | float, want: float) -> None:
    assert parse_threshold(raw) == want


@pytest.mark.parametrize("raw", [None, "", " ", "abc", "1.01", "-0.1", "nan", "inf", "-inf", "0,5", float("nan")])
def test_threshold_outside_0_1_or_not_a_number_is_refused(raw: str | float | None) -> None:
    with pytest.raises(InvalidField) as exc:
        parse_threshold(raw)
    assert exc.value.field == "threshold" and "0..1" in exc.value.detail
