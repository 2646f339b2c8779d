"""operator controls: platform flags (read-only mode) and an index for the queue caps

Revision ID: 0004_ops
Revises: 0004_sandbox
Create Date: 2026-11-30 21:00:00
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op
from sqlalchemy.dialects import postgresql

revision: str = "0004_ops"
down_revision: str | None = "0004_sandbox"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    op.create_table(
        "platform_flags",
        sa.Column("name", sa.String(length=64), nullable=False),
        sa.Column(
            "value",
            postgresql.JSONB(astext_type=sa.Text()),
            server_default="{}",
            nullable=False,
        ),
        sa.Column(
            "updated_at", sa.DateTime(timezone=True), server_default=sa.func.now(), nullable=False
        ),
        sa.PrimaryKeyConstraint("name", name=op.f("pk_platform_flags")),
    )
    op.create_index(
        "ix_jobs_queued_kind_tenant",
        "jobs",
        ["kind", "tenant_id"],
        unique=False,
        postgresql_where=sa.text("state = 'queued'"),
    )


def downgrade() -> None:
    op.drop_index("ix_jobs_queued_kind_tenant", table_name="jobs")
    op.drop_table("platform_flags")
