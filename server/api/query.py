"""List parameters shared by HTTP and gRPC (Spring-style page/size/sort plus filters) -> ScanQuery."""

from __future__ import annotations

from datetime import UTC, datetime

from server.domain import SORTABLE_FIELDS, Channel, CompareResult, ScanQuery, parse_reference
from server.errors import InvalidField

MAX_PAGE_SIZE = 200
# page * size is a row offset: bounded so no database integer overflows (SQLite's is 64-bit, Python's is not).
MAX_OFFSET = 2**31 - 1


def parse_sort(values: list[str] | None) -> tuple[tuple[str, bool], ...]:
    """``field[,asc|desc]`` items (direction defaults to asc) -> ``((field, descending), ...)``."""
    if not values:
        return ScanQuery().sort
    out: list[tuple[str, bool]] = []
    for raw in values:
        parts = [p.strip() for p in raw.split(",")]
        field, direction = parts[0], (parts[1].lower() if len(parts) > 1 else "asc")
        if len(parts) > 2 or field not in SORTABLE_FIELDS or direction not in ("asc", "desc"):
            raise InvalidField(f"sort must be one of {', '.join(SORTABLE_FIELDS)} optionally followed by "
                               ",asc or ,desc", field="sort")
        if all(field != f for f, _ in out):  # a repeated field adds nothing: the first mention decides
            out.append((field, direction == "desc"))
    return tuple(out)


def parse_time(value: str | None, field: str) -> datetime | None:
    """ISO 8601 date or date-time; one without an offset is taken as UTC (the API's timestamps are UTC)."""
    if not value:
        return None
    try:
        parsed = datetime.fromisoformat(value.strip())
        if parsed.tzinfo is None:
            return parsed.replace(tzinfo=UTC)
        parsed.astimezone(UTC)  # an offset can push year 1 or 9999 out of range; the store converts to UTC
        return parsed
    except (ValueError, OverflowError):
        raise InvalidField(f"{field} must be an ISO 8601 date or date-time", field=field) from None


def parse_reference_filter(value: str | None) -> str | None:
    """The exact-match reference filter: absent or empty is no filter (proto3 cannot tell them apart); anything
    else follows the rule of a stored reference, :func:`server.domain.parse_reference`, trimmed like one: a filter
    no stored reference could equal (too long; control, bidi or zero-width characters; only whitespace or nothing
    visible) is a 400 rather than a query (PostgreSQL refuses NUL in text outright)."""
    if not value:
        return None
    return parse_reference(value)


def build_query(*, page: int, size: int, sort: list[str] | None, reference: str | None,
                sales_channel: str | None, compare_result: str | None, created_from: str | None,
                created_to: str | None) -> ScanQuery:
    """Validate the list parameters (400 ``invalid_field`` naming the parameter) into a :class:`ScanQuery`."""
    if page < 0:
        raise InvalidField("page must be >= 0", field="page")
    if not 1 <= size <= MAX_PAGE_SIZE:
        raise InvalidField(f"size must be within 1..{MAX_PAGE_SIZE}", field="size")
    if page * size > MAX_OFFSET:
        raise InvalidField(f"page * size must not exceed {MAX_OFFSET}", field="page")
    channel = Channel.parse(sales_channel, "salesChannel") if sales_channel else None
    result = CompareResult.parse(compare_result) if compare_result else None
    start, end = parse_time(created_from, "createdFrom"), parse_time(created_to, "createdTo")
    if start and end and start > end:
        raise InvalidField("createdFrom must not be after createdTo", field="createdFrom")
    return ScanQuery(page=page, size=size, sort=parse_sort(sort), reference=parse_reference_filter(reference),
                     sales_channel=channel, compare_result=result, created_from=start, created_to=end)
