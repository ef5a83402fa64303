"""Queue indexes: recipients by lease owner (lease renewal, recovery), pending recipients by due time
(claims), recipients by message and address (per-recipient updates), messages by IP pool (a pool's
parked mail), events by time (retention); messages may name the one upstream chosen for them

Revision ID: 0006
Revises: 0005
Create Date: 2026-12-03 15:10:00
"""
from alembic import op
import sqlalchemy as sa

PENDING_DUE = sa.text("state IN ('queued', 'deferred')")


revision = '0006'
down_revision = '0005'
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_index('ix_recipients_lease_owner', 'recipients', ['lease_owner'], unique=False)
    op.create_index('ix_events_at', 'events', ['at'], unique=False)
    op.create_index('ix_recipients_pending_due', 'recipients', ['next_attempt_at'], unique=False,
                    postgresql_where=PENDING_DUE, sqlite_where=PENDING_DUE)
    op.create_index('ix_recipients_message_address', 'recipients', ['message_id', 'address'], unique=False)
    op.create_index('ix_messages_ip_pool', 'messages', ['ip_pool'], unique=False)
    op.add_column('messages', sa.Column('upstream_id', sa.String(length=40), nullable=True))


def downgrade() -> None:
    with op.batch_alter_table('messages', schema=None) as batch_op:
        batch_op.drop_column('upstream_id')
    op.drop_index('ix_messages_ip_pool', table_name='messages')
    op.drop_index('ix_recipients_message_address', table_name='recipients')
    op.drop_index('ix_recipients_pending_due', table_name='recipients')
    op.drop_index('ix_events_at', table_name='events')
    op.drop_index('ix_recipients_lease_owner', table_name='recipients')
