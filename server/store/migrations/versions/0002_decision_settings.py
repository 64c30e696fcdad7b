"""Decision settings per scan: the threshold and the quality filter level a compare was decided with.

Both are NULL for scans stored before this revision: what was applied to them is not known (the server's
FACEREC_THRESHOLD may have changed since), so nothing is back-filled.

Revision ID: 0002
Revises: 0001
Create Date: 2026-11-24
"""

from __future__ import annotations

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0002"
down_revision: str | None = "0001"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    # batch_alter_table: SQLite cannot ALTER most things in place (adding nullable columns it can, but one
    # code path for both backends keeps later revisions uniform).
    with op.batch_alter_table("scans") as batch:
        batch.add_column(sa.Column("threshold", sa.Float(), nullable=True))
        batch.add_column(sa.Column("quality_filter", sa.String(8), nullable=True))


def downgrade() -> None:
    with op.batch_alter_table("scans") as batch:
        batch.drop_column("quality_filter")
        batch.drop_column("threshold")
