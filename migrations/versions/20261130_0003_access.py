"""access: per-user token version; a user's chats go with the user

Revision ID: 0003_access
Revises: 0002
Create Date: 2026-11-30 17:40:00
"""
from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = '0003_access'
down_revision: str | None = '0002'
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    # Raising a user's token version ends every session they have (tokens carry it).
    op.add_column(
        'users',
        sa.Column('token_version', sa.Integer(), server_default='0', nullable=False),
    )
    # A deleted user's chats are deleted with them: with SET NULL they became the tenant's
    # shared (API-key) chats, readable by every application of the tenant.
    op.drop_constraint(op.f('fk_chats_user_id_users'), 'chats', type_='foreignkey')
    op.create_foreign_key(
        op.f('fk_chats_user_id_users'), 'chats', 'users', ['user_id'], ['id'], ondelete='CASCADE'
    )


def downgrade() -> None:
    op.drop_constraint(op.f('fk_chats_user_id_users'), 'chats', type_='foreignkey')
    op.create_foreign_key(
        op.f('fk_chats_user_id_users'), 'chats', 'users', ['user_id'], ['id'], ondelete='SET NULL'
    )
    op.drop_column('users', 'token_version')
