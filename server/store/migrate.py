"""Programmatic Alembic: the config is built in code and migrations run on a connection the store hands in."""

from __future__ import annotations

from pathlib import Path

from alembic import command
from alembic.config import Config
from alembic.runtime.migration import MigrationContext
from alembic.script import ScriptDirectory
from sqlalchemy import Connection, text

MIGRATIONS_DIR = Path(__file__).resolve().parent / "migrations"
# Any fixed 64-bit number works; it only has to be the same in every process migrating one database.
ADVISORY_LOCK_KEY = 0x66616365726563  # "facerec"


def alembic_config(url: str | None = None, connection: Connection | None = None) -> Config:
    """An Alembic config pointing at the bundled scripts; ``connection`` makes env.py reuse it."""
    cfg = Config()
    cfg.set_main_option("script_location", str(MIGRATIONS_DIR))
    if url is not None:
        # ConfigParser interpolation would choke on '%' in passwords.
        cfg.set_main_option("sqlalchemy.url", url.replace("%", "%%"))
    cfg.attributes["connection"] = connection
    return cfg


def lock_for_migration(connection: Connection) -> None:
    """Serialise concurrent startups on PostgreSQL: the lock is held until the migration transaction ends.

    Whoever waits re-reads the version table after the winner commits and finds nothing left to do.
    SQLite has no such lock; a SQLite store is meant for a single server process.
    """
    if connection.dialect.name == "postgresql":
        connection.execute(text("SELECT pg_advisory_xact_lock(:key)"), {"key": ADVISORY_LOCK_KEY})


def upgrade(connection: Connection, revision: str = "head") -> None:
    """Migrate the database behind ``connection`` (already in a transaction) to ``revision``."""
    lock_for_migration(connection)
    command.upgrade(alembic_config(connection=connection), revision)


def current_revision(connection: Connection) -> str | None:
    """The revision the database is at, or None when it was never migrated."""
    return MigrationContext.configure(connection).get_current_revision()


def head_revision() -> str | None:
    """The newest revision shipped with the package."""
    return ScriptDirectory.from_config(alembic_config()).get_current_head()
