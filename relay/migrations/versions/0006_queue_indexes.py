"""Queue indexes: recipients by lease owner (lease renewal, recovery), events by time (retention)

Revision ID: 0006
Revises: 0005
Create Date: 2026-12-03 15:10:00
"""
from alembic import op


revision = '0006'
down_revision = '0005'
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_index('ix_recipients_lease_owner', 'recipients', ['lease_owner'], unique=False)
    op.create_index('ix_events_at', 'events', ['at'], unique=False)


def downgrade() -> None:
    op.drop_index('ix_events_at', table_name='events')
    op.drop_index('ix_recipients_lease_owner', table_name='recipients')
