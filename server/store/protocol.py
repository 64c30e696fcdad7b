"""The ScanStore seam: what the API layers need from persistence, independent of the database."""

from __future__ import annotations

import uuid
from datetime import datetime
from typing import Protocol

from server.domain import Page, Scan, ScanQuery, ScanUpdate


class ScanStore(Protocol):
    """Tenant-scoped persistence of scans; every read and write is confined to one company.

    Unknown ids and other companies' ids both raise ``errors.NotFound`` (callers must not learn that an id
    exists elsewhere); a database that cannot be reached raises ``errors.Unavailable``.
    """

    async def open(self) -> None:
        """Connect and migrate the schema to the newest revision (safe to call from concurrent servers)."""
        ...

    async def close(self) -> None:
        """Release every pooled connection."""
        ...

    async def ping(self) -> bool:
        """True when the database answers a trivial query."""
        ...

    async def add(self, scan: Scan) -> None:
        """Store a new scan in one transaction."""
        ...

    async def get(self, company_id: str, scan_id: uuid.UUID) -> Scan:
        """The company's scan with this id."""
        ...

    async def update(
        self, company_id: str, scan_id: uuid.UUID, change: ScanUpdate, user_id: str, now: datetime
    ) -> Scan:
        """Apply the caller-mutable fields of ``change``, stamp updated date/user, return the new scan."""
        ...

    async def page(self, company_id: str, query: ScanQuery) -> Page:
        """One filtered, sorted page of the company's scans and the total matching count."""
        ...

    async def delete(self, company_id: str, scan_id: uuid.UUID) -> None:
        """Remove the company's scan with this id."""
        ...

    async def purge_older_than(self, cutoff: datetime) -> int:
        """Delete every company's scans created before ``cutoff``; returns how many went."""
        ...
