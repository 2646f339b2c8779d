"""maintenance: a job's report (``jobs.result``) and the platform's own tenant, which owns
the platform-wide maintenance jobs

Revision ID: 0005_maintenance
Revises: 0004_review
Create Date: 2026-12-01 00:40:00
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op
from sqlalchemy.dialects import postgresql

revision: str = "0005_maintenance"
down_revision: str | None = "0004_review"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

# haven.maintenance.PLATFORM_TENANT_ID / PLATFORM_TENANT_SLUG (repeated: a migration does not
# import the application, whose code moves on).
PLATFORM_TENANT_ID = "00000000-0000-0000-0000-000000000001"
PLATFORM_TENANT_SLUG = "_platform"


def upgrade() -> None:
    op.add_column(
        "jobs",
        sa.Column(
            "result", postgresql.JSONB(astext_type=sa.Text()), server_default="{}", nullable=False
        ),
    )
    op.execute(
        sa.text(
            "INSERT INTO tenants (id, slug, name, is_active) "
            "VALUES (CAST(:id AS uuid), :slug, 'Platform (maintenance)', false) "
            "ON CONFLICT DO NOTHING"
        ).bindparams(id=PLATFORM_TENANT_ID, slug=PLATFORM_TENANT_SLUG)
    )


def downgrade() -> None:
    op.execute(
        sa.text("DELETE FROM tenants WHERE id = CAST(:id AS uuid)").bindparams(
            id=PLATFORM_TENANT_ID
        )
    )
    op.drop_column("jobs", "result")
