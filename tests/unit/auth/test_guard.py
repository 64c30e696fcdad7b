from __future__ import annotations

import pytest

from server.auth import (
    ALL_ROLES,
    ROLE_COMPARE,
    ROLE_DELETE,
    ROLE_READ,
    ROLE_UPDATE,
    require_role,
)
from server.domain import Principal
from server.errors import Forbidden


def principal(*roles: str) -> Principal:
    return Principal(company_id="acme", user_id="u1", roles=frozenset(roles))


def test_role_names_are_the_contract() -> None:
    assert (ROLE_COMPARE, ROLE_READ, ROLE_UPDATE, ROLE_DELETE) == (
        "face:compare",
        "face:read",
        "face:update",
        "face:delete",
    )
    assert set(ALL_ROLES) == {ROLE_COMPARE, ROLE_READ, ROLE_UPDATE, ROLE_DELETE}


def test_require_role_passes_when_held() -> None:
    require_role(principal(ROLE_READ, ROLE_COMPARE), ROLE_READ)


@pytest.mark.parametrize("held", [(), (ROLE_READ,), (ROLE_COMPARE, ROLE_DELETE)])
def test_missing_role_is_forbidden(held: tuple[str, ...]) -> None:
    with pytest.raises(Forbidden) as exc:
        require_role(principal(*held), ROLE_UPDATE)
    assert exc.value.status == 403
    assert ROLE_UPDATE in exc.value.detail


def test_role_match_is_exact() -> None:
    with pytest.raises(Forbidden):
        require_role(principal("face:*", "FACE:READ", "face"), ROLE_READ)
