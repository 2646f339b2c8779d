"""documents and chunks: the detected language (ISO 639-1, or "und")

Revision ID: 0004_lang
Revises: 0004_budget
Create Date: 2026-11-30 21:00:00
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0004_lang"
down_revision: str | None = "0004_budget"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    # Chunks indexed before detection existed stay "und" until their document is indexed
    # again (haven maintenance relex fills them in).
    op.add_column(
        "documents", sa.Column("lang", sa.String(length=8), server_default="und", nullable=False)
    )
    op.add_column(
        "chunks", sa.Column("lang", sa.String(length=8), server_default="und", nullable=False)
    )


def downgrade() -> None:
    op.drop_column("chunks", "lang")
    op.drop_column("documents", "lang")
