"""reviews: who submitted what (idempotency), the archives' objects, and the results' outbox

Revision ID: 0004_review
Revises: 0004_lang
Create Date: 2026-11-30 21:20:00
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op
from sqlalchemy.dialects import postgresql

revision: str = "0004_review"
down_revision: str | None = "0004_lang"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    op.add_column("reviews", sa.Column("created_by", sa.Uuid(), nullable=True))
    op.add_column("reviews", sa.Column("idempotency_key", sa.String(length=64), nullable=True))
    op.add_column("reviews", sa.Column("new_sha256", sa.String(length=64), nullable=True))
    op.add_column("reviews", sa.Column("old_sha256", sa.String(length=64), nullable=True))
    op.add_column("reviews", sa.Column("logs_sha256", sa.String(length=64), nullable=True))
    op.add_column(
        "reviews",
        sa.Column(
            "objects", postgresql.JSONB(astext_type=sa.Text()), server_default="{}", nullable=False
        ),
    )
    op.add_column("reviews", sa.Column("finished_at", sa.DateTime(timezone=True), nullable=True))
    op.create_index(
        "ux_reviews_tenant_idempotency", "reviews", ["tenant_id", "idempotency_key"], unique=True
    )
    op.create_index(
        "ix_reviews_tenant_student_assignment",
        "reviews",
        ["tenant_id", "student_id", "assignment_id", "created_at"],
    )
    op.create_table(
        "review_deliveries",
        sa.Column("id", sa.Uuid(), nullable=False),
        sa.Column("tenant_id", sa.Uuid(), nullable=False),
        sa.Column("review_id", sa.Uuid(), nullable=False),
        sa.Column("idempotency_key", sa.String(length=100), nullable=False),
        sa.Column(
            "payload", postgresql.JSONB(astext_type=sa.Text()), server_default="{}", nullable=False
        ),
        sa.Column("state", sa.String(length=16), server_default="pending", nullable=False),
        sa.Column("attempts", sa.Integer(), server_default="0", nullable=False),
        sa.Column(
            "next_attempt_at", sa.DateTime(timezone=True), server_default=sa.func.now(), nullable=False
        ),
        sa.Column("delivered_to", sa.String(length=1000), nullable=True),
        sa.Column("delivered_at", sa.DateTime(timezone=True), nullable=True),
        sa.Column("last_error", sa.String(length=500), nullable=True),
        sa.Column("log", postgresql.JSONB(astext_type=sa.Text()), server_default="[]", nullable=False),
        sa.Column("created_at", sa.DateTime(timezone=True), server_default=sa.func.now(), nullable=False),
        sa.Column("updated_at", sa.DateTime(timezone=True), server_default=sa.func.now(), nullable=False),
        sa.ForeignKeyConstraint(["tenant_id"], ["tenants.id"], ondelete="CASCADE"),
        sa.ForeignKeyConstraint(["review_id"], ["reviews.id"], ondelete="CASCADE"),
        sa.PrimaryKeyConstraint("id"),
        sa.UniqueConstraint("idempotency_key"),
    )
    op.create_index("ix_review_deliveries_tenant_id", "review_deliveries", ["tenant_id"])
    op.create_index("ix_review_deliveries_review_id", "review_deliveries", ["review_id"])
    op.create_index("ix_review_deliveries_due", "review_deliveries", ["state", "next_attempt_at"])


def downgrade() -> None:
    op.drop_table("review_deliveries")
    op.drop_index("ix_reviews_tenant_student_assignment", table_name="reviews")
    op.drop_index("ux_reviews_tenant_idempotency", table_name="reviews")
    for column in ("finished_at", "objects", "logs_sha256", "old_sha256", "new_sha256"):
        op.drop_column("reviews", column)
    op.drop_column("reviews", "idempotency_key")
    op.drop_column("reviews", "created_by")
