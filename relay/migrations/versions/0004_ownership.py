"""Tenancy: IP pools have an owner (an account, or the operator when NULL), operator pools may be
restricted to the accounts granted them.

Revision ID: 0004
Revises: 0003
Create Date: 2026-12-03 14:00:00
"""
from alembic import op
import sqlalchemy as sa


revision = '0004'
down_revision = '0003'
branch_labels = None
depends_on = None


def upgrade() -> None:
    with op.batch_alter_table('ip_pools', schema=None) as batch_op:
        batch_op.add_column(sa.Column('account_id', sa.String(length=40), nullable=True))
        batch_op.add_column(sa.Column('restricted', sa.Boolean(), nullable=False, server_default=sa.false()))
        batch_op.create_foreign_key('fk_ip_pools_account_id', 'accounts', ['account_id'], ['id'],
                                    ondelete='CASCADE')
        batch_op.create_index('ix_ip_pools_account_id', ['account_id'], unique=False)
    op.create_table('ip_pool_grants',
    sa.Column('ip_pool', sa.String(length=100), nullable=False),
    sa.Column('account_id', sa.String(length=40), nullable=False),
    sa.Column('created_at', sa.DateTime(timezone=True), nullable=False),
    sa.ForeignKeyConstraint(['ip_pool'], ['ip_pools.name'], ondelete='CASCADE'),
    sa.ForeignKeyConstraint(['account_id'], ['accounts.id'], ondelete='CASCADE'),
    sa.PrimaryKeyConstraint('ip_pool', 'account_id')
    )


def downgrade() -> None:
    op.drop_table('ip_pool_grants')
    with op.batch_alter_table('ip_pools', schema=None) as batch_op:
        batch_op.drop_index('ix_ip_pools_account_id')
        batch_op.drop_constraint('fk_ip_pools_account_id', type_='foreignkey')
        batch_op.drop_column('restricted')
        batch_op.drop_column('account_id')
