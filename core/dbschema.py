"""The shared database's tables (SQLAlchemy Core) and where its Alembic migrations live.

Kept apart from ``core.db`` so the migration environment (``core/migrations/env.py``) can import
the tables without importing the code that runs the migrations.
"""

from __future__ import annotations

from pathlib import Path

import sqlalchemy as sa

MIGRATIONS = Path(__file__).resolve().parent / "migrations"
ADVISORY_KEY = 0x504E4555  # "PNEU": the PostgreSQL advisory lock that serialises schema upgrades

metadata = sa.MetaData()

event_log = sa.Table(
    "event_log", metadata,
    sa.Column("seq", sa.BigInteger().with_variant(sa.Integer(), "sqlite"), primary_key=True, autoincrement=True),
    sa.Column("stream", sa.String(80), nullable=False),
    sa.Column("at", sa.String(40), nullable=False),
    sa.Column("data", sa.Text(), nullable=False),
    sa.Index("ix_event_log_stream_seq", "stream", "seq"),
)

documents = sa.Table(
    "documents", metadata,
    sa.Column("kind", sa.String(40), primary_key=True),
    sa.Column("key", sa.String(160), primary_key=True),
    sa.Column("revision", sa.Integer(), nullable=False),
    sa.Column("updated_at", sa.String(40), nullable=False),
    sa.Column("data", sa.Text(), nullable=False),
)

leases = sa.Table(
    "leases", metadata,
    sa.Column("name", sa.String(80), primary_key=True),
    sa.Column("holder", sa.String(160), nullable=False),
    sa.Column("acquired_at", sa.Float(), nullable=False),
    sa.Column("expires_at", sa.Float(), nullable=False),
    sa.Column("data", sa.Text(), nullable=False, server_default="{}"),
)

legacy_imports = sa.Table(
    "legacy_imports", metadata,
    sa.Column("source", sa.String(512), primary_key=True),
    sa.Column("imported_at", sa.String(40), nullable=False),
    sa.Column("rows", sa.Integer(), nullable=False),
)


def alembic_config(connection=None):
    """An Alembic config bound to ``connection`` (migrations always run on the caller's connection)."""
    from alembic.config import Config

    cfg = Config()
    cfg.set_main_option("script_location", str(MIGRATIONS))
    cfg.attributes["connection"] = connection
    return cfg


def head_revision() -> str:
    from alembic.script import ScriptDirectory

    return ScriptDirectory.from_config(alembic_config()).get_current_head()
