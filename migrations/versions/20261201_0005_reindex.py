"""index pointers: the live vector collection per index, for blue/green re-indexing

Revision ID: 0005_reindex
Revises: 0005_maintenance
Create Date: 2026-12-01 00:30:00
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op
from sqlalchemy.dialects import postgresql

revision: str = "0005_reindex"
down_revision: str | None = "0005_maintenance"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

JSON = postgresql.JSONB(astext_type=sa.Text())


def upgrade() -> None:
    op.create_table(
        "index_pointers",
        sa.Column("name", sa.String(length=64), nullable=False),
        sa.Column("live_collection", sa.String(length=200), nullable=False),
        sa.Column("live_models", JSON, server_default="{}", nullable=False),
        sa.Column("generation", sa.Integer(), server_default="1", nullable=False),
        sa.Column("previous_collection", sa.String(length=200), nullable=True),
        sa.Column("previous_models", JSON, nullable=True),
        sa.Column("previous_until", sa.DateTime(timezone=True), nullable=True),
        sa.Column("building_collection", sa.String(length=200), nullable=True),
        sa.Column("building_models", JSON, nullable=True),
        sa.Column("building_state", sa.String(length=16), nullable=True),
        sa.Column("building_started_at", sa.DateTime(timezone=True), nullable=True),
        sa.Column("building_done", sa.Integer(), server_default="0", nullable=False),
        sa.Column("building_total", sa.Integer(), server_default="0", nullable=False),
        sa.Column("last_report", JSON, server_default="{}", nullable=False),
        sa.Column(
            "updated_at", sa.DateTime(timezone=True), server_default=sa.func.now(), nullable=False
        ),
        sa.CheckConstraint(
            "building_collection IS NULL OR building_collection <> live_collection",
            name=op.f("ck_index_pointers_building_is_not_live"),
        ),
        sa.PrimaryKeyConstraint("name", name=op.f("pk_index_pointers")),
    )


def downgrade() -> None:
    op.drop_table("index_pointers")
