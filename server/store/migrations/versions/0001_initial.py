"""Initial schema: the scans table (no image bytes, no embeddings).

Revision ID: 0001
Revises:
Create Date: 2024-06-01
"""

from __future__ import annotations

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op
from sqlalchemy.dialects import postgresql

revision: str = "0001"
down_revision: str | None = None
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    face_json = sa.JSON().with_variant(postgresql.JSONB(), "postgresql")
    op.create_table(
        "scans",
        sa.Column("id", sa.Uuid(), primary_key=True),
        sa.Column("company_id", sa.String(255), nullable=False),
        sa.Column("created_date", sa.DateTime(timezone=True), nullable=False),
        sa.Column("updated_date", sa.DateTime(timezone=True), nullable=True),
        sa.Column("created_by_id", sa.String(255), nullable=False),
        sa.Column("updated_by_id", sa.String(255), nullable=True),
        sa.Column("reference", sa.String(255), nullable=False),
        sa.Column("sales_channel", sa.String(16), nullable=False),
        sa.Column("compare_result", sa.String(32), nullable=False),
        sa.Column("compare_similarity", sa.Float(), nullable=False),
        sa.Column("elapsed_time", sa.Float(), nullable=False),
        sa.Column("face1", face_json, nullable=False),
        sa.Column("face2", face_json, nullable=False),
    )
    op.create_index("ix_scans_company_id", "scans", ["company_id"])
    op.create_index("ix_scans_company_created", "scans", ["company_id", "created_date"])
    op.create_index("ix_scans_company_reference", "scans", ["company_id", "reference"])
    op.create_index("ix_scans_created_date", "scans", ["created_date"])


def downgrade() -> None:
    op.drop_table("scans")
