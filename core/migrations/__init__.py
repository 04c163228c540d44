"""Schema migrations of the shared database (Alembic), run by ``core.db.connect`` at start-up.

Why Alembic: it is what SQLAlchemy users expect, it records the schema version in the database
itself (``alembic_version``), and each step is a plain Python file under ``versions/``. Several
instances starting at once are serialised (PostgreSQL: an advisory transaction lock; SQLite: the
write lock of ``BEGIN IMMEDIATE``), so exactly one runs each step.

To add a step: copy the newest file under ``versions/``, set ``down_revision`` to its ``revision``,
and change the tables in ``core/dbschema.py`` to match.
"""
