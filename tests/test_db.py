"""core.db on both engines: embedded SQLite and a real, throwaway PostgreSQL (tests/postgres.py)."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import textwrap
import threading
import time
from pathlib import Path

import pytest

from core import db as dbm
from tests.dbfixtures import fresh_database, pg_url  # noqa: F401 - fixture

REPO = Path(__file__).resolve().parent.parent


@pytest.fixture(params=["sqlite", "postgresql"])
def url(request, tmp_path):
    if request.param == "sqlite":
        return f"sqlite:///{tmp_path / 'pneumoscope.db'}"
    return fresh_database(request.getfixturevalue("pg_url"))


@pytest.fixture
def db(url):
    d = dbm.connect(url=url)
    yield d
    dbm.dispose_all()


def test_default_is_sqlite_under_artifacts(tmp_path, monkeypatch):
    monkeypatch.delenv(dbm.DATABASE_URL_ENV, raising=False)
    assert dbm.database_url(tmp_path) == f"sqlite:///{(tmp_path / 'pneumoscope.db').resolve()}"
    monkeypatch.setenv(dbm.DATABASE_URL_ENV, "postgresql+psycopg://u:secret@h/db")
    assert dbm.database_url(tmp_path) == "postgresql+psycopg://u:secret@h/db"


def test_bad_url_names_the_variable_and_hides_the_password():
    with pytest.raises(dbm.DatabaseError) as e:
        dbm.connect(url="mysql://u:hunter2@h/db")
    assert "hunter2" not in str(e.value) and "sqlite" in str(e.value) and dbm.DATABASE_URL_ENV in str(e.value)


def test_unreachable_postgres_is_a_sentence_not_a_traceback():
    from tests.helpers import free_port

    with pytest.raises(dbm.DatabaseError) as e:
        dbm.connect(url=f"postgresql+psycopg://postgres:pw@127.0.0.1:{free_port()}/x")
    assert "unavailable" in str(e.value) and ":pw@" not in str(e.value)


def test_a_new_sqlite_file_opened_by_two_instances_at_once_waits_rather_than_fails(tmp_path):
    """Two instances starting together on a NEW SQLite file: switching it to WAL needs an exclusive
    lock, and SQLite refuses at once ("database is locked", its busy handler not called: the pragma
    already holds a read lock) while another instance holds a write lock. Here another connection
    holds one for 0.4 s: connect() must wait it out."""
    import sqlite3

    path = tmp_path / "new.db"
    other = sqlite3.connect(path, isolation_level=None, check_same_thread=False)
    other.execute("CREATE TABLE t (x)")  # a rollback-journal database, as the first opener sees it
    other.execute("BEGIN IMMEDIATE")  # another instance mid-write: it holds RESERVED until COMMIT
    timer = threading.Timer(0.4, lambda: other.execute("COMMIT"))
    timer.start()
    try:
        t0 = time.monotonic()
        d = dbm.connect(url=f"sqlite:///{path}")
        assert time.monotonic() - t0 >= 0.3  # it did wait for the other instance
        assert d.revision() is not None
        with sqlite3.connect(path) as fresh:
            assert fresh.execute("PRAGMA journal_mode").fetchone()[0] == "wal"
    finally:
        timer.join()
        other.close()
        dbm.dispose_all()


def test_schema_is_at_head_and_upgrade_is_idempotent(db, url):
    from core.dbschema import head_revision

    assert db.revision() == head_revision() == "0001"
    db.upgrade()  # a second instance starting: nothing to do, nothing broken
    dbm.dispose_all()
    assert dbm.connect(url=url).revision() == head_revision()


def test_streams_keep_order_and_are_separate(db):
    for i in range(5):
        db.append("audit", {"action": "predict", "i": i})
    db.append("feedback", {"id": "f1"})
    got = db.events("audit")
    assert [r["i"] for _, r in got] == [0, 1, 2, 3, 4]
    assert [s for s, _ in got] == sorted(s for s, _ in got)
    assert [r["i"] for _, r in db.events("audit", after=got[2][0])] == [3, 4]
    assert db.events("feedback") == [(got[-1][0] + 1, {"id": "f1"})]
    assert db.events("job:none") == []


@pytest.mark.parametrize("sql", ["UPDATE event_log SET data = '{}'", "DELETE FROM event_log"])
def test_event_log_is_append_only_in_the_database(db, sql):
    db.append("audit", {"action": "predict"})
    with pytest.raises(Exception, match="append-only"):
        with db.transaction() as c:
            c.exec_driver_sql(sql)
    assert db.events("audit") == [(1, {"action": "predict"})]


def test_oversized_event_refused(db):
    with pytest.raises(dbm.DatabaseError, match="over the"):
        db.append("audit", {"x": "a" * (dbm.MAX_EVENT_BYTES + 1)})
    assert db.events("audit") == []


def test_documents_compare_and_swap(db):
    assert db.get("study", "s1") is None
    assert db.put("study", "s1", {"n": 1}, expect=None) == 1
    with pytest.raises(dbm.Conflict):
        db.put("study", "s1", {"n": 9}, expect=None)  # create-only: it exists
    assert db.put("study", "s1", {"n": 2}, expect=1) == 2
    with pytest.raises(dbm.Conflict, match="changed by someone else"):
        db.put("study", "s1", {"n": 3}, expect=1)  # a stale writer loses
    doc = db.get("study", "s1")
    assert (doc.revision, doc.data) == (2, {"n": 2})
    assert db.put("study", "s1", {"n": 4}) == 3  # last writer wins when asked for
    assert [d.key for d in db.list("study")] == ["s1"]
    assert db.delete("study", "s1") and db.get("study", "s1") is None


def test_cas_under_threads_loses_no_increment(db):
    db.put("counter", "c", {"n": 0}, expect=None)

    def bump():
        for _ in range(20):
            while True:
                d = db.get("counter", "c")
                try:
                    db.put("counter", "c", {"n": d.data["n"] + 1}, expect=d.revision)
                    break
                except dbm.Conflict:
                    continue

    ts = [threading.Thread(target=bump) for _ in range(3)]
    for t in ts:
        t.start()
    for t in ts:
        t.join()
    assert db.get("counter", "c").data["n"] == 60


def test_lease_is_exclusive_renewable_and_lapses(db):
    assert db.try_lease("training", "a", 0.5)
    assert not db.try_lease("training", "b", 0.5)
    assert db.try_lease("training", "a", 0.5)  # the holder renews
    assert db.lease_holder("training")["holder"] == "a"
    time.sleep(0.6)
    assert db.lease_holder("training") is None
    assert db.try_lease("training", "b", 5)  # a lapsed lease (holder killed) is taken over
    db.release("training", "a")  # not the holder: nothing happens
    assert db.lease_holder("training")["holder"] == "b"
    db.release("training", "b")
    assert db.lease_holder("training") is None


@pytest.mark.slow  # processes / seconds of waiting: CI's slow set
def test_lease_object_renews_while_held(db):
    with dbm.Lease(db, "training", ttl_s=0.6) as ok:
        assert ok
        time.sleep(1.0)  # longer than the ttl: the thread kept it alive
        assert not db.try_lease("training", "other", 5)
        assert not dbm.Lease(db, "training", ttl_s=5).acquire()
    assert db.try_lease("training", "other", 5)


def test_prune_keeps_the_newest_documents_of_one_kind(db, monkeypatch):
    ticks = iter(range(1000))  # distinct write times (real ones can share a millisecond)
    monkeypatch.setattr(dbm, "_now_iso", lambda: f"2026-12-05T00:00:{next(ticks):06d}Z")
    for k in ("c", "a", "d", "b"):
        db.put("k", k, {"v": k})
    db.put("other", "x", {})
    db.put("k", "c", {"v": "again"})  # rewritten last: the newest
    assert db.prune("k", 2) == 2
    assert [d.key for d in db.list("k")] == ["b", "c"] and db.get("other", "x") is not None
    assert db.prune("k", 2) == 0


def test_import_once_is_idempotent(db):
    recs = [{"action": "predict", "i": i} for i in range(3)]
    assert db.import_once("audit/audit.jsonl", "audit", recs) == 3
    assert db.import_once("audit/audit.jsonl", "audit", recs) is None
    assert db.imported("audit/audit.jsonl")
    assert [r["i"] for _, r in db.events("audit")] == [0, 1, 2]


def test_import_documents_once_creates_only_missing(db):
    db.put("reader_study", "s1", {"v": "new"}, expect=None)
    docs = [("reader_study", "s1", {"v": "old"}), ("reader_study", "s2", {"v": "old"})]
    assert db.import_documents_once("studies/", docs) == 1
    assert db.import_documents_once("studies/", docs) is None
    assert db.get("reader_study", "s1").data == {"v": "new"}  # what the database already had wins
    assert db.get("reader_study", "s2").data == {"v": "old"}


def test_resolve_accepts_a_database_or_an_artifacts_root(tmp_path, monkeypatch):
    monkeypatch.delenv(dbm.DATABASE_URL_ENV, raising=False)
    d = dbm.resolve(tmp_path)
    assert dbm.resolve(d) is d and dbm.resolve(tmp_path) is d
    assert (tmp_path / dbm.SQLITE_NAME).is_file()
    dbm.dispose_all()


_WRITER = textwrap.dedent("""
    import sys
    from core import db as dbm
    d = dbm.connect(url=sys.argv[1])
    tag, n = sys.argv[2], int(sys.argv[3])
    for i in range(n):
        seq = d.append("audit", {"action": "predict", "w": tag, "i": i, "pad": "x" * 2000})
        print(seq, flush=True)   # printed only once the row is committed
""")


def _writer(url: str, tag: str, n: int) -> subprocess.Popen:
    return subprocess.Popen([sys.executable, "-c", _WRITER, url, tag, str(n)], cwd=REPO, text=True,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE)


@pytest.mark.slow  # processes / seconds of waiting: CI's slow set
def test_two_processes_append_concurrently_nothing_lost(db, url):
    procs = [_writer(url, t, 60) for t in ("a", "b")]
    outs = [p.communicate(timeout=120) for p in procs]
    assert all(p.returncode == 0 for p in procs), [o[1][-500:] for o in outs]
    rows = db.events("audit")
    assert len(rows) == 120 and len({s for s, _ in rows}) == 120
    for tag in ("a", "b"):  # each writer's own order is kept
        assert [r["i"] for _, r in rows if r["w"] == tag] == list(range(60))


@pytest.mark.slow  # processes / seconds of waiting: CI's slow set
def test_kill_9_during_writes_loses_nothing_confirmed_and_tears_nothing(db, url):
    p = _writer(url, "k", 100000)
    confirmed = []
    deadline = time.monotonic() + 60
    while len(confirmed) < 40 and time.monotonic() < deadline:
        line = p.stdout.readline()
        if line.strip():
            confirmed.append(int(line))
    os.kill(p.pid, signal.SIGKILL)
    p.wait(timeout=30)
    confirmed += [int(x) for x in p.stdout.read().split()]  # lines already in the pipe were committed too
    p.stdout.close()
    p.stderr.close()
    dbm.dispose_all()
    d2 = dbm.connect(url=url)
    rows = d2.events("audit")
    seqs = {s for s, _ in rows}
    assert set(confirmed) <= seqs  # nothing confirmed is lost
    assert all(r["pad"] == "x" * 2000 for _, r in rows)  # nothing torn
    with d2.transaction() as c:  # and no unparsable row hides among them
        assert c.exec_driver_sql("SELECT count(*) FROM event_log").scalar() == len(rows)
    # the database still takes writes after the kill
    assert d2.append("audit", {"action": "predict"}) > max(seqs)
