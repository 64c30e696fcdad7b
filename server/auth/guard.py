"""Role names and the role check every action runs before touching data."""

from __future__ import annotations

import logging

from server.domain import Principal
from server.errors import Forbidden

log = logging.getLogger(__name__)

ROLE_COMPARE = "face:compare"
ROLE_READ = "face:read"
ROLE_UPDATE = "face:update"
ROLE_DELETE = "face:delete"
ALL_ROLES = (ROLE_COMPARE, ROLE_READ, ROLE_UPDATE, ROLE_DELETE)


def require_role(principal: Principal, role: str) -> None:
    """Raise :class:`Forbidden` unless ``principal`` holds ``role``."""
    if role not in principal.roles:
        # Naming the role is safe (it is public API vocabulary) and tells the caller what to ask for.
        log.info("authorization failed: user %r of company %r lacks role %s (has: %s)", principal.user_id,
                 principal.company_id, role, ",".join(sorted(principal.roles)) or "none",
                 extra={"auth_failure": f"missing role {role}"})
        raise Forbidden(f"missing role {role}")
