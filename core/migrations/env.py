"""Alembic environment: always run on the connection that core.migrations hands over."""

from alembic import context

from core.dbschema import metadata

connection = context.config.attributes.get("connection")
if connection is None:  # `alembic` CLI without our entry point: refuse rather than guess a database
    raise RuntimeError("Run migrations through core.db.connect() (python -m core db upgrade).")
context.configure(connection=connection, target_metadata=metadata, render_as_batch=True)
with context.begin_transaction():
    context.run_migrations()
