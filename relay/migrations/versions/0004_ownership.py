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


def _sqlite() -> bool:
    return op.get_bind().dialect.name == "sqlite"


def upgrade() -> None:
    # Plain ADD COLUMN: a batch rebuild of ip_pools would DROP the table that aliases and upstreams
    # reference, which SQLite refuses (or cascades) with foreign keys on. SQLite takes the reference
    # inline (a column whose default is NULL may carry one). No ON DELETE: removing an account deletes
    # its pools (and their upstreams) first (relay.store.directory.remove_account).
    if _sqlite():
        if 'account_id' not in {c['name'] for c in sa.inspect(op.get_bind()).get_columns('ip_pools')}:
            op.execute('ALTER TABLE ip_pools ADD COLUMN account_id VARCHAR(40) '  # (a downgrade leaves it)
                       'REFERENCES accounts (id)')
    else:
        op.add_column('ip_pools', sa.Column('account_id', sa.String(length=40), nullable=True))
        op.create_foreign_key('fk_ip_pools_account_id', 'ip_pools', 'accounts', ['account_id'], ['id'])
    op.add_column('ip_pools', sa.Column('restricted', sa.Boolean(), nullable=False, server_default=sa.false()))
    op.create_index('ix_ip_pools_account_id', 'ip_pools', ['account_id'], unique=False)
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
    op.drop_index('ix_ip_pools_account_id', table_name='ip_pools')
    if _sqlite():  # no table rebuild (see upgrade); SQLite cannot drop a column that holds a reference
        op.execute('ALTER TABLE ip_pools DROP COLUMN restricted')
        op.execute('UPDATE ip_pools SET account_id = NULL')  # (left in place, unused by 0003)
        return
    op.drop_constraint('fk_ip_pools_account_id', 'ip_pools', type_='foreignkey')
    op.drop_column('ip_pools', 'restricted')
    op.drop_column('ip_pools', 'account_id')
