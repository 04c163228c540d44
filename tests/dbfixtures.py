"""Database fixtures for store tests: a throwaway PostgreSQL server per module and a fresh database
per test on it (``fresh_database``), and a helper that runs Python in another process."""

from __future__ import annotations

import os
import subprocess
import sys
import uuid
from pathlib import Path

import pytest

from core import db as dbm
from tests.postgres import postgres_server, unavailable_reason

REPO = Path(__file__).resolve().parent.parent


@pytest.fixture(scope="module")
def pg_url():
    reason = unavailable_reason()
    if reason:
        pytest.skip(reason)
    with postgres_server() as url:
        yield url
    dbm.dispose_all()


def fresh_database(base_url: str) -> str:
    """A new, empty database on the throwaway server of ``base_url``; returns its URL. One per
    test: tests never see each other's rows."""
    import sqlalchemy as sa

    name = f"t_{uuid.uuid4().hex[:12]}"
    eng = sa.create_engine(base_url, isolation_level="AUTOCOMMIT")
    with eng.connect() as c:
        c.exec_driver_sql(f"CREATE DATABASE {name}")
    eng.dispose()
    return base_url.rsplit("/", 1)[0] + "/" + name


@pytest.fixture(params=["sqlite", "postgresql"])
def shared_db(request, tmp_path, monkeypatch):
    """The database every instance of the test shares, as ``$PNEUMOSCOPE_DATABASE_URL`` (so other
    processes started by the test use it too): SQLite under tmp_path, or a fresh PostgreSQL database."""
    if request.param == "sqlite":
        url = f"sqlite:///{tmp_path / 'shared.db'}"
    else:
        url = fresh_database(request.getfixturevalue("pg_url"))
    monkeypatch.setenv(dbm.DATABASE_URL_ENV, url)
    yield url
    dbm.dispose_all()


def python(code: str, *args: str, timeout: float = 60) -> subprocess.Popen:
    """Start ``python -c code args...`` in the repository (inherits the environment)."""
    return subprocess.Popen([sys.executable, "-c", code, *args], cwd=REPO, text=True, env=dict(os.environ),
                            stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
