"""budget: token budget counters per tenant and period, reservations with a lease, tenant
limits, and the usage ledger's columns and indexes for the usage analytics

Revision ID: 0004_budget
Revises: 0004_analyze
Create Date: 2026-11-30 21:00:00
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op
from sqlalchemy.dialects import postgresql

revision: str = "0004_budget"
down_revision: str | None = "0004_analyze"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    op.create_table(
        "token_budget_periods",
        sa.Column("tenant_id", sa.Uuid(), nullable=False),
        sa.Column("period_start", sa.DateTime(timezone=True), nullable=False),
        sa.Column("used", sa.BigInteger(), server_default="0", nullable=False),
        sa.Column("reserved", sa.BigInteger(), server_default="0", nullable=False),
        sa.CheckConstraint("used >= 0", name=op.f("ck_token_budget_periods_used")),
        sa.CheckConstraint("reserved >= 0", name=op.f("ck_token_budget_periods_reserved")),
        sa.ForeignKeyConstraint(
            ["tenant_id"],
            ["tenants.id"],
            name=op.f("fk_token_budget_periods_tenant_id_tenants"),
            ondelete="CASCADE",
        ),
        sa.PrimaryKeyConstraint("tenant_id", "period_start", name=op.f("pk_token_budget_periods")),
    )
    op.create_table(
        "budget_reservations",
        sa.Column("id", sa.Uuid(), nullable=False),
        sa.Column("tenant_id", sa.Uuid(), nullable=False),
        sa.Column("period_start", sa.DateTime(timezone=True), nullable=False),
        sa.Column("tokens", sa.BigInteger(), nullable=False),
        sa.Column("holder", sa.String(length=200), nullable=False),
        sa.Column("kind", sa.String(length=32), nullable=False),
        sa.Column("request_id", sa.String(length=64), nullable=True),
        sa.Column(
            "created_at",
            sa.DateTime(timezone=True),
            server_default=sa.text("now()"),
            nullable=False,
        ),
        sa.Column("expires_at", sa.DateTime(timezone=True), nullable=False),
        sa.ForeignKeyConstraint(
            ["tenant_id", "period_start"],
            ["token_budget_periods.tenant_id", "token_budget_periods.period_start"],
            name=op.f("fk_budget_reservations_tenant_id_token_budget_periods"),
            ondelete="CASCADE",
        ),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_budget_reservations")),
    )
    op.create_index(
        "ix_budget_reservations_expires_at", "budget_reservations", ["expires_at"], unique=False
    )
    op.create_index(
        "ix_budget_reservations_holder", "budget_reservations", ["holder"], unique=False
    )
    op.add_column(
        "tenants",
        sa.Column(
            "limits",
            postgresql.JSONB(astext_type=sa.Text()),
            server_default="{}",
            nullable=False,
        ),
    )
    op.add_column("usage_ledger", sa.Column("api_key_id", sa.Uuid(), nullable=True))
    op.add_column("usage_ledger", sa.Column("error", sa.String(length=64), nullable=True))
    # The platform-wide analytics read a time range over every tenant.
    op.create_index("ix_usage_ledger_created", "usage_ledger", ["created_at"], unique=False)


def downgrade() -> None:
    op.drop_index("ix_usage_ledger_created", table_name="usage_ledger")
    op.drop_column("usage_ledger", "error")
    op.drop_column("usage_ledger", "api_key_id")
    op.drop_column("tenants", "limits")
    op.drop_index("ix_budget_reservations_holder", table_name="budget_reservations")
    op.drop_index("ix_budget_reservations_expires_at", table_name="budget_reservations")
    op.drop_table("budget_reservations")
    op.drop_table("token_budget_periods")
