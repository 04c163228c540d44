"""The shared database: what several app instances (and training workers) must agree on.

Audit trail, clinician feedback, reader studies, job state and events, the active-version pointer
and its history, sign-in throttling and the training lock live here, so N app instances behind a
load balancer behave as one. Model versions stay immutable folders on a path all instances share
(``core.registry``); only the small facts about them live in the database.

Where the database is::

    PNEUMOSCOPE_DATABASE_URL unset  -> sqlite:///<artifacts>/pneumoscope.db  (embedded, nothing to install)
    PNEUMOSCOPE_DATABASE_URL=postgresql+psycopg://user:pw@host:5432/pneumoscope  -> PostgreSQL

Three shapes cover every store (SQLAlchemy Core, schema versioned by Alembic, ``core/migrations``):

- ``event_log``: append-only streams (``audit``, ``feedback``, ``activation``, ``job:<id>``). Each
  row is one JSON object; rows are never updated or deleted -- the database refuses it (a trigger),
  so "append-only" does not rest on every caller's good manners.
- ``documents``: JSON documents by (kind, key) with a revision number; writers compare-and-swap
  on it (``put(..., expect=rev)``), which is how a reader study keeps a single writer and the
  active pointer changes atomically across instances.
- ``leases``: named locks with an expiry, renewed by their holder (the training lock). A holder
  killed with -9 stops renewing, so its lease lapses instead of wedging every instance.

Why not the JSON-lines files and file locks of before: a file lock is only as wide as one machine's
kernel (and NFS ``flock`` is not to be trusted), and every instance would need the same folder.
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import socket
import sqlite3
import threading
import time
import uuid
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Iterator

import sqlalchemy as sa
from sqlalchemy.engine import Engine

from core.dbschema import documents, event_log, leases, legacy_imports
from core.jsonl import parse_object

log = logging.getLogger(__name__)

DATABASE_URL_ENV = "PNEUMOSCOPE_DATABASE_URL"
SQLITE_NAME = "pneumoscope.db"
MAX_DOC_BYTES = 8 * 1024 * 1024  # one reader study of 500 cases is ~200 KB; a bound, not a target
MAX_EVENT_BYTES = 64 * 1024  # an audit line is ~300 bytes
BUSY_TIMEOUT_S = 30.0  # SQLite: how long a writer waits for another instance's transaction


class DatabaseError(RuntimeError):
    """The database cannot be reached or refused an operation; the message says which and why."""


class Conflict(DatabaseError):
    """A compare-and-swap lost: somebody else wrote the document first."""


def _now_iso() -> str:
    from core.formatting import utc_now_iso

    return utc_now_iso("milliseconds", zulu=True)


def database_url(artifacts: str | os.PathLike | None = None) -> str:
    """``$PNEUMOSCOPE_DATABASE_URL``, else the embedded SQLite file under the artifacts folder."""
    env = os.environ.get(DATABASE_URL_ENV, "").strip()
    if env:
        return env
    from core.config import default_artifacts_dir

    root = Path(artifacts) if artifacts is not None else default_artifacts_dir()
    return f"sqlite:///{(root / SQLITE_NAME).resolve()}"


def redact(url: str) -> str:
    """The URL without its password, for messages and logs."""
    try:
        return sa.make_url(url).render_as_string(hide_password=True)
    except Exception:  # noqa: BLE001 - an unparsable URL is shown as a placeholder, never echoed
        return "<unparsable database URL>"


def _set_wal(cur, deadline_s: float = BUSY_TIMEOUT_S) -> None:
    """``PRAGMA journal_mode=WAL``, retried: switching a NEW database needs a write lock taken while
    the pragma already holds a read lock, and for that upgrade SQLite answers "database is locked" at
    once, without its busy handler, if another instance opening the same new file is writing (two
    instances starting together). Once one has switched, the mode is stored in the file and later
    connections take no write lock for it."""
    end = time.monotonic() + deadline_s
    delay = 0.005
    while True:
        try:
            cur.execute("PRAGMA journal_mode=WAL")
            return
        except sqlite3.OperationalError as e:
            if "locked" not in str(e) and "busy" not in str(e):
                raise
            if time.monotonic() >= end:
                raise
            time.sleep(delay)
            delay = min(delay * 2, 0.2)


def _sqlite_engine(url: sa.URL) -> Engine:
    path = url.database
    if path and path != ":memory:":
        Path(path).parent.mkdir(parents=True, exist_ok=True)
    # isolation_level=None + our own BEGIN IMMEDIATE: pysqlite's implicit transactions would take the
    # write lock late (on the first write), which deadlocks two read-then-write transactions.
    eng = sa.create_engine(url, connect_args={"timeout": BUSY_TIMEOUT_S, "isolation_level": None,
                                              "check_same_thread": False})

    @sa.event.listens_for(eng, "connect")
    def _on_connect(dbapi_conn, _record):
        cur = dbapi_conn.cursor()
        cur.execute(f"PRAGMA busy_timeout={int(BUSY_TIMEOUT_S * 1000)}")
        _set_wal(cur)  # readers never wait for the writer
        cur.execute("PRAGMA synchronous=FULL")  # a confirmed write survives a power cut
        cur.close()

    @sa.event.listens_for(eng, "begin")
    def _on_begin(conn):
        conn.exec_driver_sql("BEGIN IMMEDIATE")

    return eng


def _make_engine(url_text: str) -> Engine:
    try:
        url = sa.make_url(url_text)
    except Exception as e:  # noqa: BLE001 - message names the variable, not the secret
        raise DatabaseError(f"{DATABASE_URL_ENV} is not a database URL (e.g. postgresql+psycopg://user@host/db). "
                            f"Received: {DATABASE_URL_ENV}={redact(url_text)}") from e
    backend = url.get_backend_name()
    if backend == "sqlite":
        return _sqlite_engine(url)
    if backend == "postgresql":
        return sa.create_engine(url, pool_pre_ping=True, pool_size=5, max_overflow=5,
                                connect_args={"connect_timeout": 10, "application_name": "pneumoscope"})
    raise DatabaseError(f"database must be one of ('sqlite', 'postgresql'). Received: {DATABASE_URL_ENV}={redact(url_text)}")


_ENGINES: dict[str, "Database"] = {}
_ENGINES_LOCK = threading.Lock()


def connect(artifacts: str | os.PathLike | None = None, *, url: str | None = None, migrate: bool = True) -> "Database":
    """The database for ``artifacts`` (or ``url``), schema upgraded to head once per process."""
    url = url or database_url(artifacts)
    with _ENGINES_LOCK:
        db = _ENGINES.get(url)
        if db is None:
            db = Database(_make_engine(url), url)
            if migrate:
                db.upgrade()
            _ENGINES[url] = db
        return db


def resolve(where: "Database | str | os.PathLike | None" = None) -> "Database":
    """A :class:`Database` as given, or the one of an artifacts root (None: the default root)."""
    return where if isinstance(where, Database) else connect(where)


def dispose_all() -> None:
    """Close every pooled connection (tests; after fork)."""
    with _ENGINES_LOCK:
        for db in _ENGINES.values():
            db.engine.dispose()
        _ENGINES.clear()


@dataclass(frozen=True)
class Document:
    kind: str
    key: str
    revision: int
    updated_at: str
    data: dict


def _dumps(obj: Any, limit: int, what: str) -> str:
    text = json.dumps(obj, default=str, separators=(",", ":"), allow_nan=True)
    size = len(text.encode())
    if size > limit:
        raise DatabaseError(f"{what} is {size:,} bytes, over the {limit:,}-byte limit.")
    return text


class Database:
    """One database: event streams, documents, leases. Thread-safe; share one per process."""

    def __init__(self, engine: Engine, url: str):
        self.engine = engine
        self.url = url

    @property
    def backend(self) -> str:
        return self.engine.dialect.name

    def describe(self) -> str:
        return redact(self.url)

    @contextlib.contextmanager
    def transaction(self) -> Iterator[sa.Connection]:
        try:
            with self.engine.begin() as conn:
                yield conn
        except sa.exc.OperationalError as e:
            raise DatabaseError(f"The database {self.describe()} is unavailable: {str(e.orig).strip()[:300]}") from e

    # --- schema --------------------------------------------------------------------------------
    def upgrade(self) -> None:
        """Bring the schema to the newest Alembic revision (serialised across instances)."""
        from alembic import command

        from core.dbschema import ADVISORY_KEY, alembic_config

        with self.transaction() as conn:
            if self.backend == "postgresql":  # one instance migrates; the others wait, then find nothing to do
                conn.exec_driver_sql(f"SELECT pg_advisory_xact_lock({ADVISORY_KEY})")
            command.upgrade(alembic_config(conn), "head")

    def revision(self) -> str | None:
        """The schema revision stored in the database (``alembic_version``)."""
        from alembic.runtime.migration import MigrationContext

        with self.transaction() as conn:
            return MigrationContext.configure(conn).get_current_revision()

    # --- append-only streams -------------------------------------------------------------------
    def append(self, stream: str, record: dict, *, conn: sa.Connection | None = None) -> int:
        """Append one JSON object to ``stream``; returns its sequence number once committed."""
        row = {"stream": stream, "at": str(record.get("time") or _now_iso()),
               "data": _dumps(record, MAX_EVENT_BYTES, f"An event for {stream!r}")}
        if conn is not None:
            return int(conn.execute(event_log.insert().values(**row)).inserted_primary_key[0])
        with self.transaction() as c:
            return int(c.execute(event_log.insert().values(**row)).inserted_primary_key[0])

    def append_many(self, stream: str, records: list[dict], *, conn: sa.Connection) -> int:
        rows = [{"stream": stream, "at": str(r.get("time") or _now_iso()),
                 "data": _dumps(r, MAX_EVENT_BYTES, f"An event for {stream!r}")} for r in records]
        if rows:
            conn.execute(event_log.insert(), rows)
        return len(rows)

    def events(self, stream: str, *, after: int = 0, limit: int | None = None) -> list[tuple[int, dict]]:
        """(seq, record) of ``stream`` in append order, after ``after``. Unreadable rows are skipped."""
        q = (sa.select(event_log.c.seq, event_log.c.data)
             .where(event_log.c.stream == stream, event_log.c.seq > after).order_by(event_log.c.seq))
        if limit is not None:
            q = q.limit(limit)
        with self.transaction() as c:
            rows = c.execute(q).all()
        out = []
        for seq, text in rows:
            rec = parse_object(text)
            if rec is not None:
                out.append((int(seq), rec))
        return out

    def streams(self, prefix: str) -> list[str]:
        with self.transaction() as c:
            return [r[0] for r in c.execute(sa.select(event_log.c.stream).distinct()
                                             .where(event_log.c.stream.startswith(prefix, autoescape=True)))]

    # --- documents (compare-and-swap) ----------------------------------------------------------
    def get(self, kind: str, key: str, *, conn: sa.Connection | None = None) -> Document | None:
        q = sa.select(documents).where(documents.c.kind == kind, documents.c.key == key)
        if conn is not None:
            row = conn.execute(q).first()
        else:
            with self.transaction() as c:
                row = c.execute(q).first()
        if row is None:
            return None
        data = parse_object(row.data)
        return Document(kind, key, int(row.revision), row.updated_at, data if data is not None else {})

    def list(self, kind: str) -> list[Document]:
        with self.transaction() as c:
            rows = c.execute(sa.select(documents).where(documents.c.kind == kind).order_by(documents.c.key)).all()
        return [Document(kind, r.key, int(r.revision), r.updated_at, parse_object(r.data) or {}) for r in rows]

    def put(self, kind: str, key: str, data: dict, *, expect: int | None = -1,
            conn: sa.Connection | None = None) -> int:
        """Write a document; returns its new revision.

        ``expect=-1``: last writer wins. ``expect=None``: only if absent. ``expect=N``: only if the
        stored revision is still N (else :class:`Conflict`): the compare-and-swap.
        """
        if conn is None:
            with self.transaction() as c:
                return self.put(kind, key, data, expect=expect, conn=c)
        text = _dumps(data, MAX_DOC_BYTES, f"The {kind} document {key!r}")
        now = _now_iso()
        current = conn.execute(sa.select(documents.c.revision)
                               .where(documents.c.kind == kind, documents.c.key == key)).scalar()
        if current is None:
            if expect not in (-1, None, 0):
                raise Conflict(f"The {kind} {key!r} was removed by someone else.")
            try:
                with conn.begin_nested():
                    conn.execute(documents.insert().values(kind=kind, key=key, revision=1, updated_at=now, data=text))
            except sa.exc.IntegrityError as e:
                raise Conflict(f"The {kind} {key!r} was created by someone else at the same time.") from e
            return 1
        if expect is None:
            raise Conflict(f"The {kind} {key!r} already exists.")
        cond = [documents.c.kind == kind, documents.c.key == key]
        if expect != -1:
            cond.append(documents.c.revision == expect)
        res = conn.execute(documents.update().where(*cond)
                           .values(revision=documents.c.revision + 1, updated_at=now, data=text))
        if res.rowcount != 1:
            raise Conflict(f"The {kind} {key!r} was changed by someone else (revision {current}, "
                           f"expected {expect}).")
        return int(current) + 1

    def delete(self, kind: str, key: str) -> bool:
        with self.transaction() as c:
            return c.execute(documents.delete().where(documents.c.kind == kind, documents.c.key == key)).rowcount > 0

    def prune(self, kind: str, keep: int) -> int:
        """Delete all but the ``keep`` most recently written documents of ``kind``; returns how many went."""
        newest_first = (sa.select(documents.c.key).where(documents.c.kind == kind)
                        .order_by(documents.c.updated_at.desc(), documents.c.key).offset(keep))
        with self.transaction() as c:
            return c.execute(documents.delete().where(documents.c.kind == kind,
                                                      documents.c.key.in_(newest_first.scalar_subquery()))).rowcount

    # --- leases (cross-instance locks) ---------------------------------------------------------
    def try_lease(self, name: str, holder: str, ttl_s: float, data: dict | None = None) -> bool:
        """Take (or renew, for the same holder) the lease ``name`` for ``ttl_s`` seconds."""
        now = time.time()
        text = _dumps(data or {}, MAX_EVENT_BYTES, "Lease data")
        with self.transaction() as c:
            res = c.execute(leases.update()
                            .where(leases.c.name == name,
                                   sa.or_(leases.c.holder == holder, leases.c.expires_at < now))
                            .values(holder=holder, acquired_at=now, expires_at=now + ttl_s, data=text))
            if res.rowcount == 1:
                return True
            if c.execute(sa.select(leases.c.name).where(leases.c.name == name)).first() is not None:
                return False
            try:
                with c.begin_nested():
                    c.execute(leases.insert().values(name=name, holder=holder, acquired_at=now,
                                                     expires_at=now + ttl_s, data=text))
            except sa.exc.IntegrityError:
                return False
            return True

    def release(self, name: str, holder: str) -> None:
        with self.transaction() as c:
            c.execute(leases.delete().where(leases.c.name == name, leases.c.holder == holder))

    def lease_holder(self, name: str) -> dict | None:
        """``{"holder", "expires_in_s", "data"}`` of a live lease, or None."""
        with self.transaction() as c:
            row = c.execute(sa.select(leases).where(leases.c.name == name)).first()
        if row is None or row.expires_at < time.time():
            return None
        return {"holder": row.holder, "expires_in_s": row.expires_at - time.time(), "data": parse_object(row.data) or {}}

    # --- one-time imports of the files of releases before the database ------------------------
    @staticmethod
    def _claim_import(c: sa.Connection, source: str, rows: int) -> bool:
        """Record ``source`` as imported inside the caller's transaction; False when it was (by
        another instance too, at the same moment: the primary key decides)."""
        if c.execute(sa.select(legacy_imports.c.source).where(legacy_imports.c.source == source)).first():
            return False
        try:
            with c.begin_nested():
                c.execute(legacy_imports.insert().values(source=source, imported_at=_now_iso(), rows=rows))
        except sa.exc.IntegrityError:
            return False
        return True

    def import_once(self, source: str, stream: str, records: list[dict]) -> int | None:
        """Append ``records`` to ``stream`` and remember ``source``, in one transaction. Returns
        the number imported, or None when ``source`` was imported before (idempotent)."""
        with self.transaction() as c:
            if not self._claim_import(c, source, len(records)):
                return None
            return self.append_many(stream, records, conn=c)

    def import_documents_once(self, source: str, docs: list[tuple[str, str, dict]]) -> int | None:
        """Create the (kind, key, data) documents that do not exist yet and remember ``source``, in
        one transaction. Returns how many were created, or None when ``source`` was imported before."""
        with self.transaction() as c:
            if not self._claim_import(c, source, len(docs)):
                return None
            made = 0
            for kind, key, data in docs:
                if self.get(kind, key, conn=c) is None:
                    self.put(kind, key, data, expect=None, conn=c)
                    made += 1
            return made

    def imported(self, source: str) -> bool:
        with self.transaction() as c:
            return c.execute(sa.select(legacy_imports.c.source)
                             .where(legacy_imports.c.source == source)).first() is not None


def holder_id() -> str:
    """Who holds a lease: host, process and a random part (a pid is reused after a restart)."""
    return f"{socket.gethostname()[:60]}:{os.getpid()}:{uuid.uuid4().hex[:8]}"


class Lease:
    """A lease kept alive by a background thread while held: ``with Lease(db, "training") as ok:``.

    ``ttl_s`` bounds how long a lease outlives a holder killed with -9; the thread renews it every
    ttl/3. If renewal fails (database gone, or another holder took it after a long stall),
    :attr:`lost` is set so the holder can stop.
    """

    def __init__(self, db: Database, name: str, *, ttl_s: float = 30.0, holder: str | None = None,
                 data: dict | None = None):
        self.db, self.name, self.ttl_s = db, name, ttl_s
        self.holder = holder or holder_id()
        self.data = data or {}
        self.lost = threading.Event()
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self.held = False

    def acquire(self) -> bool:
        self.held = self.db.try_lease(self.name, self.holder, self.ttl_s, self.data)
        if self.held:
            self._thread = threading.Thread(target=self._renew, name=f"lease-{self.name}", daemon=True)
            self._thread.start()
        return self.held

    def _renew(self) -> None:
        while not self._stop.wait(self.ttl_s / 3):
            try:
                ok = self.db.try_lease(self.name, self.holder, self.ttl_s, self.data)
            except DatabaseError as e:
                log.warning("Could not renew the %s lease: %s", self.name, e)
                ok = False
            if not ok:
                self.lost.set()
                return

    def release(self) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout=5)
        if self.held:
            try:
                self.db.release(self.name, self.holder)
            except DatabaseError as e:  # the lease lapses by itself after ttl_s
                log.warning("Could not release the %s lease: %s", self.name, e)
            self.held = False

    def hand_over(self, ttl_s: float | None = None) -> str:
        """Stop renewing without releasing: another process (e.g. a job process this one spawned)
        takes the lease over as the same holder (``Lease(db, name, holder=...)`` then ``acquire``).
        With ``ttl_s``, renew once for that long first: the time the other process has to take
        over before the lease lapses. Returns the holder id to pass on."""
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout=5)
        if self.held and ttl_s is not None:
            self.db.try_lease(self.name, self.holder, ttl_s, self.data)
        self.held = False
        return self.holder

    def __enter__(self) -> bool:
        return self.acquire()

    def __exit__(self, *exc) -> None:
        self.release()


# --- the JSON-lines files of before, imported once ------------------------------------------------
_JSONL_CHECKED: set[tuple[str, str]] = set()  # (database URL, source) looked at by this process
_JSONL_LOCK = threading.Lock()


def import_jsonl_once(db: Database, artifacts: str | os.PathLike, relpath: str, stream: str) -> int | None:
    """Append the records of the old JSON-lines file ``<artifacts>/<relpath>`` to ``stream``, once.

    Idempotent by ``relpath`` across processes and instances (:meth:`Database.import_once`); this
    process looks at the file once per database. Read with ``core.jsonl``'s tolerant reader: a torn
    last line or a damaged line is skipped and counted in the log line. The file is left in place,
    untouched (nothing writes it any more). Returns the number imported, or None when there was
    nothing to do (no file, or imported before)."""
    from core import jsonl

    key = (db.url, relpath)
    with _JSONL_LOCK:
        if key in _JSONL_CHECKED:
            return None
        path = Path(artifacts) / relpath
        if not path.is_file() or db.imported(relpath):
            _JSONL_CHECKED.add(key)
            return None
        records = jsonl.read_all(path, follow_symlinks=True)
        try:
            lines = sum(1 for ln in path.read_bytes().split(b"\n") if ln.strip())
        except OSError:
            lines = len(records)
        n = db.import_once(relpath, stream, records)
        _JSONL_CHECKED.add(key)
    if n is not None:
        log.info("Imported %d record(s) of %s into the %r stream of %s (skipped %d torn or damaged line(s)); "
                 "the file is no longer written", n, path, stream, db.describe(), max(0, lines - len(records)))
    return n
