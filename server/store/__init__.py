"""Scan persistence: the ScanStore protocol and the factory choosing SQLite or PostgreSQL from settings."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from server.settings import Settings
from server.store.protocol import ScanStore
from server.store.sql import SqlScanStore

__all__ = ["ScanStore", "SqlScanStore", "create_store"]


def create_store(settings: Settings, *, connect_args: Mapping[str, Any] | None = None) -> ScanStore:
    """The store the settings describe: PostgreSQL when ``database_url`` is set, else SQLite in ``data_dir``.

    Nothing connects until :meth:`ScanStore.open`, which also creates the data directory and migrates.
    """
    return SqlScanStore(settings.effective_database_url, connect_args=connect_args)
