"""Schema migrations of the shared database (Alembic), run by ``core.db.connect`` at start-up.

Why Alembic: it is what SQLAlchemy users expect, it records the schema version in the database
itself (``alembic_version``), and each step is a plain Python file under ``versions/``. Several
instances starting at once are serialised (PostgreSQL: an advisory transaction lock; SQLite: the
write lock of ``BEGIN IMMEDIATE``), so exactly one runs each step.

To add a step: copy the newest file under ``versions/``, set ``down_revision`` to its ``revision``.
"""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from core.db import Database

HERE = Path(__file__).resolve().parent
_ADVISORY_KEY = 0x50_4E_45_55  # "PNEU": one fixed key for schema upgrades


def alembic_config(connection=None):
    from alembic.config import Config

    cfg = Config()
    cfg.set_main_option("script_location", str(HERE))
    cfg.attributes["connection"] = connection
    return cfg


def upgrade_to_head(db: "Database") -> None:
    from alembic import command

    with db.transaction() as conn:
        if db.backend == "postgresql":
            conn.exec_driver_sql(f"SELECT pg_advisory_xact_lock({_ADVISORY_KEY})")
        command.upgrade(alembic_config(conn), "head")


def current_revision(db: "Database") -> str | None:
    from alembic.runtime.migration import MigrationContext

    with db.transaction() as conn:
        return MigrationContext.configure(conn).get_current_revision()


def head_revision() -> str:
    from alembic.script import ScriptDirectory

    return ScriptDirectory.from_config(alembic_config()).get_current_head()
