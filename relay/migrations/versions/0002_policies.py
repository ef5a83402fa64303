"""policies: quota limits, daily usage, rate buckets; case-insensitive suppression lookup

Revision ID: 0002
Revises: 0001
Create Date: 2026-11-28 10:00:00
"""
from alembic import op
import sqlalchemy as sa


revision = '0002'
down_revision = '0001'
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table('quota_limits',
    sa.Column('target', sa.String(length=200), nullable=False),
    sa.Column('kind', sa.String(length=16), nullable=False),
    sa.Column('account_id', sa.String(length=40), nullable=True),
    sa.Column('subject', sa.String(length=320), nullable=False),
    sa.Column('ip_pool', sa.String(length=100), nullable=True),
    sa.Column('rate_count', sa.Integer(), nullable=True),
    sa.Column('rate_per', sa.Integer(), nullable=True),
    sa.Column('daily', sa.Integer(), nullable=True),
    sa.Column('warmup', sa.JSON(), nullable=True),
    sa.Column('warmup_start', sa.Date(), nullable=True),
    sa.Column('updated_at', sa.DateTime(timezone=True), nullable=False),
    sa.ForeignKeyConstraint(['account_id'], ['accounts.id'], ondelete='CASCADE'),
    sa.PrimaryKeyConstraint('target')
    )
    with op.batch_alter_table('quota_limits', schema=None) as batch_op:
        batch_op.create_index(batch_op.f('ix_quota_limits_account_id'), ['account_id'], unique=False)

    op.create_table('quota_usage',
    sa.Column('target', sa.String(length=200), nullable=False),
    sa.Column('day', sa.Date(), nullable=False),
    sa.Column('count', sa.Integer(), nullable=False),
    sa.PrimaryKeyConstraint('target', 'day')
    )
    op.create_table('quota_buckets',
    sa.Column('target', sa.String(length=200), nullable=False),
    sa.Column('tokens', sa.Float(), nullable=False),
    sa.Column('refilled_at', sa.Float(), nullable=False),
    sa.PrimaryKeyConstraint('target')
    )
    op.create_index('ix_suppressions_account_lower', 'suppressions',
                    ['account_id', sa.text('lower(address)')], unique=False)


def downgrade() -> None:
    op.drop_index('ix_suppressions_account_lower', table_name='suppressions')
    op.drop_table('quota_buckets')
    op.drop_table('quota_usage')
    with op.batch_alter_table('quota_limits', schema=None) as batch_op:
        batch_op.drop_index(batch_op.f('ix_quota_limits_account_id'))
    op.drop_table('quota_limits')
