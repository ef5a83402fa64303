"""Domain claims: several accounts may claim one domain, the first verified owns it; alias
verification links carry their issue time (they expire after aliases.verify_link_ttl)

Revision ID: 0005
Revises: 0004
Create Date: 2026-12-02 12:00:00
"""
from alembic import op
import sqlalchemy as sa


revision = '0005'
down_revision = '0004'
branch_labels = None
depends_on = None

VERIFIED = sa.text('verified_at IS NOT NULL')
# 0001 created UNIQUE (name) without a name: PostgreSQL calls it domains_name_key, SQLite leaves it
# unnamed (the batch rebuild names it through this convention so that it can be dropped).
SQLITE_NAMES = {'uq': 'uq_%(table_name)s_%(column_0_name)s'}


def _name_unique(bind: sa.engine.Connection) -> str | None:
    if op.get_context().as_sql:  # offline (relay migrate --sql): PostgreSQL's name for 0001's constraint
        return 'domains_name_key'
    for uc in sa.inspect(bind).get_unique_constraints('domains'):
        if uc['column_names'] == ['name']:
            return uc['name']
    return None


def _rebuild_sqlite_domains(drop: str, create: str, columns: list[str], naming: dict | None = None) -> None:
    """SQLite rebuilds the table to change a constraint; with foreign keys on (inside a transaction
    they cannot be turned off), dropping the old table would cascade to dkim_keys: keep them aside."""
    op.execute('CREATE TEMP TABLE relay_keep_dkim AS SELECT * FROM dkim_keys')
    with op.batch_alter_table('domains', recreate='always', naming_convention=naming) as batch_op:
        batch_op.drop_constraint(drop, type_='unique')
        batch_op.create_unique_constraint(create, columns)
    op.execute('INSERT INTO dkim_keys SELECT * FROM relay_keep_dkim WHERE id NOT IN (SELECT id FROM dkim_keys)')
    op.execute('DROP TABLE relay_keep_dkim')


def upgrade() -> None:
    bind = op.get_bind()
    if bind.dialect.name == 'sqlite':
        _rebuild_sqlite_domains('uq_domains_name', 'uq_domains_account_name', ['account_id', 'name'], SQLITE_NAMES)
    else:
        name = _name_unique(bind)
        if name:
            op.drop_constraint(name, 'domains', type_='unique')
        op.create_unique_constraint('uq_domains_account_name', 'domains', ['account_id', 'name'])
    op.create_index('ix_domains_name', 'domains', ['name'], unique=False)
    op.create_index('uq_domains_verified_name', 'domains', ['name'], unique=True,
                    sqlite_where=VERIFIED, postgresql_where=VERIFIED)

    # Plain ADD COLUMN; a link sent before this revision counts from the alias's creation.
    op.add_column('aliases', sa.Column('verification_sent_at', sa.DateTime(timezone=True), nullable=True))
    op.execute('UPDATE aliases SET verification_sent_at = created_at WHERE verification_token IS NOT NULL')


def downgrade() -> None:
    with op.batch_alter_table('aliases', schema=None) as batch_op:
        batch_op.drop_column('verification_sent_at')
    # One row per name again: keep the verified claim (else the oldest), drop the other claims.
    op.execute(
        'DELETE FROM domains WHERE verified_at IS NULL AND EXISTS (SELECT 1 FROM domains d2 '
        'WHERE d2.name = domains.name AND d2.id <> domains.id AND (d2.verified_at IS NOT NULL '
        'OR d2.created_at < domains.created_at OR (d2.created_at = domains.created_at AND d2.id < domains.id)))')
    op.execute('DELETE FROM dkim_keys WHERE domain_id NOT IN (SELECT id FROM domains)')
    op.drop_index('uq_domains_verified_name', table_name='domains')
    op.drop_index('ix_domains_name', table_name='domains')
    bind = op.get_bind()
    if bind.dialect.name == 'sqlite':
        _rebuild_sqlite_domains('uq_domains_account_name', 'uq_domains_name', ['name'])
    else:
        op.drop_constraint('uq_domains_account_name', 'domains', type_='unique')
        op.create_unique_constraint('domains_name_key', 'domains', ['name'])
