"""Initial schema: event_log (append-only), documents (compare-and-swap), leases, legacy_imports.

Revision ID: 0001
Revises:
"""

import sqlalchemy as sa
from alembic import op

revision = "0001"
down_revision = None
branch_labels = None
depends_on = None

APPEND_ONLY = "event_log rows are append-only"


def upgrade() -> None:
    op.create_table(
        "event_log",
        sa.Column("seq", sa.BigInteger().with_variant(sa.Integer(), "sqlite"), primary_key=True, autoincrement=True),
        sa.Column("stream", sa.String(80), nullable=False),
        sa.Column("at", sa.String(40), nullable=False),
        sa.Column("data", sa.Text(), nullable=False),
    )
    op.create_index("ix_event_log_stream_seq", "event_log", ["stream", "seq"])
    op.create_table(
        "documents",
        sa.Column("kind", sa.String(40), primary_key=True),
        sa.Column("key", sa.String(160), primary_key=True),
        sa.Column("revision", sa.Integer(), nullable=False),
        sa.Column("updated_at", sa.String(40), nullable=False),
        sa.Column("data", sa.Text(), nullable=False),
    )
    op.create_table(
        "leases",
        sa.Column("name", sa.String(80), primary_key=True),
        sa.Column("holder", sa.String(160), nullable=False),
        sa.Column("acquired_at", sa.Float(), nullable=False),
        sa.Column("expires_at", sa.Float(), nullable=False),
        sa.Column("data", sa.Text(), nullable=False, server_default="{}"),
    )
    op.create_table(
        "legacy_imports",
        sa.Column("source", sa.String(512), primary_key=True),
        sa.Column("imported_at", sa.String(40), nullable=False),
        sa.Column("rows", sa.Integer(), nullable=False),
    )
    # The database itself refuses to change or remove an event (audit rows are never updated).
    if op.get_bind().dialect.name == "postgresql":
        op.execute(f"""
            CREATE FUNCTION pneumoscope_append_only() RETURNS trigger AS $$
            BEGIN RAISE EXCEPTION '{APPEND_ONLY}'; END; $$ LANGUAGE plpgsql""")
        op.execute("""CREATE TRIGGER event_log_append_only BEFORE UPDATE OR DELETE ON event_log
                      FOR EACH ROW EXECUTE FUNCTION pneumoscope_append_only()""")
        op.execute("""CREATE TRIGGER event_log_no_truncate BEFORE TRUNCATE ON event_log
                      FOR EACH STATEMENT EXECUTE FUNCTION pneumoscope_append_only()""")
    else:
        for verb in ("UPDATE", "DELETE"):
            op.execute(f"""CREATE TRIGGER event_log_no_{verb.lower()} BEFORE {verb} ON event_log
                           BEGIN SELECT RAISE(ABORT, '{APPEND_ONLY}'); END""")


def downgrade() -> None:
    if op.get_bind().dialect.name == "postgresql":
        op.execute("DROP TRIGGER IF EXISTS event_log_append_only ON event_log")
        op.execute("DROP TRIGGER IF EXISTS event_log_no_truncate ON event_log")
        op.execute("DROP FUNCTION IF EXISTS pneumoscope_append_only()")
    for name in ("legacy_imports", "leases", "documents"):
        op.drop_table(name)
    op.drop_index("ix_event_log_stream_seq", "event_log")
    op.drop_table("event_log")
