"""jobs: a reason code and a message for people, and a count of manual retries

Revision ID: 0003_runner
Revises: 0003_access
Create Date: 2026-11-30 17:40:00
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0003_runner"
down_revision: str | None = "0003_access"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    op.add_column("jobs", sa.Column("last_error_message", sa.String(length=500), nullable=True))
    op.add_column("jobs", sa.Column("retries", sa.Integer(), server_default="0", nullable=False))
    # Errors recorded before reason codes are raw exception text, which must not reach
    # tenant users: they become one code whose details are in the worker log.
    op.execute(
        "UPDATE jobs SET last_error = 'legacy', "
        "last_error_message = 'failed before reasons were recorded; see the worker log' "
        "WHERE last_error IS NOT NULL"
    )


def downgrade() -> None:
    op.drop_column("jobs", "retries")
    op.drop_column("jobs", "last_error_message")
