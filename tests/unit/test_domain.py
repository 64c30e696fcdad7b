"""The reference rule shared by create, update and the list filter."""

from __future__ import annotations

import pytest

from server.domain import check_reference
from server.errors import InvalidField


@pytest.mark.parametrize("value", ["0002", "  padded  ", "Zoë-42", "契約-7", "👍🏽", "a\u0301", "x" * 255,
                                   "N°12/2024 (copy)"])
def test_visible_references_pass(value: str) -> None:
    assert check_reference(value) == value.strip()


@pytest.mark.parametrize("value", [None, "", "   ", "x" * 256, "\u200b", "\u202e", "\u2028", "\u3164", "\u2800",
                                   "\u00a0\u3000", "\u0301", "a\x00b", "a\tb", "a\u202eb", "a\u200db",
                                   "a\ue000", "a\U000e0fff", "a\ud800"])
def test_invisible_or_disallowed_references_fail(value: str | None) -> None:
    with pytest.raises(InvalidField) as info:
        check_reference(value)
    assert info.value.field == "reference"
