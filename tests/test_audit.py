"""core.audit in the shared database (core.db) under concurrent writers, the one-time import of the
old audit.jsonl, plus the admin page's audit filters / CSV."""

from __future__ import annotations

import csv
import datetime as dt
import io
import json
import logging
import os
import subprocess
import sys
from pathlib import Path

import pytest

from core import audit
from core import db as dbm
from ui import admin_components as ac
from tests.dbfixtures import fresh_database, pg_url  # noqa: F401 - fixtures

REPO = Path(__file__).resolve().parent.parent


@pytest.fixture(autouse=True)
def _own_database(monkeypatch):
    """Each test's artifacts root has its own SQLite file unless a test names PostgreSQL."""
    monkeypatch.delenv(dbm.DATABASE_URL_ENV, raising=False)
    yield
    dbm.dispose_all()


WRITER = """
import sys
from core import audit
root, wid, n = sys.argv[1], sys.argv[2], int(sys.argv[3])
for i in range(n):
    audit.append("predict", artifacts=root, source=wid, version=i, error=wid * 2000)
"""


@pytest.mark.parametrize("backend", ["sqlite", pytest.param("postgresql", marks=pytest.mark.slow)])
def test_two_processes_append_concurrently_nothing_lost(tmp_path, monkeypatch, request, backend):
    env = {k: v for k, v in os.environ.items() if k != dbm.DATABASE_URL_ENV}
    if backend == "postgresql":
        env[dbm.DATABASE_URL_ENV] = fresh_database(request.getfixturevalue("pg_url"))
        monkeypatch.setenv(dbm.DATABASE_URL_ENV, env[dbm.DATABASE_URL_ENV])
    audit.read(tmp_path)  # the schema exists before the writers race (as after any app start)
    writers, n = ["A", "B"], 60
    procs = [subprocess.Popen([sys.executable, "-c", WRITER, str(tmp_path), w, str(n)], cwd=REPO, text=True,
                              env={**env, "PYTHONPATH": str(REPO)}, stderr=subprocess.PIPE) for w in writers]
    errs = [p.communicate(timeout=120)[1] for p in procs]
    assert all(p.returncode == 0 for p in procs), [e[-500:] for e in errs]
    assert all("Could not write" not in e for e in errs), errs
    recs = audit.read(tmp_path)
    assert len(recs) == len(writers) * n
    for r in recs:
        assert r["error"] == r["source"] * 2000 and r["action"] == "predict"  # nothing torn
    for w in writers:
        assert [r["version"] for r in recs if r["source"] == w] == list(range(n))  # all there, in order, once


def test_forbidden_fields_are_dropped_and_unknown_actions_refused(tmp_path):
    rec = audit.append("predict", artifacts=tmp_path, image=b"pixels", PatientName="Doe^Jane", model_version="v1")
    assert "image" not in rec and "PatientName" not in rec
    assert "Doe" not in json.dumps(audit.read(tmp_path))
    with pytest.raises(ValueError, match="action must be one of"):
        audit.append("hack", artifacts=tmp_path)


def test_read_filters_by_action_and_accepts_a_database(tmp_path):
    audit.append("login", artifacts=tmp_path, outcome="ok")
    audit.append("promote", artifacts=tmp_path, outcome="ok", model_version="v2")
    assert [r["action"] for r in audit.read(tmp_path)] == ["login", "promote"]
    assert [r["action"] for r in audit.read(tmp_path, actions=["promote"])] == ["promote"]
    db = dbm.connect(tmp_path)
    audit.append("delete", artifacts=db, outcome="ok")
    assert [r["action"] for r in audit.read(db)] == ["login", "promote", "delete"]
    assert audit.read(tmp_path / "other") == []  # another artifacts root: another trail


def test_the_event_log_refuses_rewriting_an_audit_event(tmp_path):
    audit.append("login", artifacts=tmp_path, outcome="ok")
    with pytest.raises(Exception, match="append-only"):
        with audit.database(tmp_path).transaction() as c:
            c.exec_driver_sql("UPDATE event_log SET data = '{}'")
    assert audit.read(tmp_path)[0]["outcome"] == "ok"


def test_a_database_failure_is_logged_never_raised(tmp_path, monkeypatch, caplog):
    """An audit failure must not take a prediction away from a clinician."""
    from types import SimpleNamespace

    monkeypatch.setenv(dbm.DATABASE_URL_ENV, "mysql://u:hunter2@h/db")  # refused by core.db: a DatabaseError
    pred = SimpleNamespace(model_version="v1", threshold=0.4, ok=True, label="NORMAL", sha256="ab" * 32,
                           guard_code=None)
    with caplog.at_level(logging.ERROR, logger="core.audit"):
        rec = audit.prediction(pred, "upload", artifacts=tmp_path)
    assert rec["outcome"] == "NORMAL"
    assert any("Could not write the predict audit event" in r.getMessage() and "hunter2" not in r.getMessage()
               for r in caplog.records)
    with pytest.raises(dbm.DatabaseError):  # a reader (the admin page) is told, as a sentence
        audit.read(tmp_path)


def test_legacy_audit_file_is_imported_once_and_left_untouched(tmp_path, caplog):
    legacy = tmp_path / "audit" / "audit.jsonl"
    legacy.parent.mkdir()
    body = (b'{"time":"2025-01-01T00:00:00.000Z","action":"promote","outcome":"ok","model_version":"v1"}\n'
            b'{"broken\n'
            b'{"time":"2025-01-02T00:00:00.000Z","action":"login","outcome":"ok"}\n'
            b'{"time":"2025-01-03T00:00:00.000Z","action":"del')  # torn by a crash: no final newline
    legacy.write_bytes(body)
    with caplog.at_level(logging.INFO, logger="core.db"):
        audit.append("delete", artifacts=tmp_path, outcome="ok")  # first use of the root: the import
    assert [r["action"] for r in audit.read(tmp_path)] == ["promote", "login", "delete"]
    assert any("Imported 2 record(s)" in r.getMessage() and "skipped 2 torn or damaged" in r.getMessage()
               for r in caplog.records)
    # another process (nothing remembered here) or another instance: not imported a second time
    dbm.dispose_all()
    dbm._JSONL_CHECKED.clear()
    audit.append("login", artifacts=tmp_path, outcome="failed")
    assert [r["action"] for r in audit.read(tmp_path)] == ["promote", "login", "delete", "login"]
    assert legacy.read_bytes() == body  # left in place, never written again


RECS = [
    {"time": "2026-01-01T10:00:00.000Z", "action": "predict", "model_version": "v0001-a", "outcome": "NORMAL"},
    {"time": "2026-01-02T10:00:00.000Z", "action": "promote", "model_version": "v0002-b", "previous": "v0001-a", "outcome": "ok"},
    {"time": "2026-01-03T10:00:00.000Z", "action": "retrain", "version": "v0003-c", "outcome": "succeeded", "test": {"roc_auc": 0.9}},
    {"time": "garbage", "action": "login", "outcome": "failed"},
]


def test_filter_audit_by_action_date_and_version():
    assert [r["action"] for r in ac.filter_audit(RECS)] == ["login", "retrain", "promote", "predict"]  # newest first
    assert [r["action"] for r in ac.filter_audit(RECS, actions=["promote", "retrain"])] == ["retrain", "promote"]
    got = ac.filter_audit(RECS, start=dt.date(2026, 1, 2), end=dt.date(2026, 1, 2))
    assert [r["action"] for r in got] == ["promote"]
    assert [r["action"] for r in ac.filter_audit(RECS, version="v0003")] == ["retrain"]
    # "previous" counts too: a rollback/promote away from a version is part of its story.
    assert [r["action"] for r in ac.filter_audit(RECS, version="V0001")] == ["promote", "predict"]


def test_audit_csv_has_known_columns_first_and_flattens_nested_values():
    data = ac.audit_csv(ac.filter_audit(RECS))
    rows = list(csv.DictReader(io.StringIO(data.decode())))
    assert len(rows) == 4
    header = data.decode().splitlines()[0].split(",")
    assert header[:3] == ["time", "action", "outcome"]
    assert json.loads(rows[1]["test"]) == {"roc_auc": 0.9}


def test_audit_csv_carries_the_threshold_in_percent():
    """Issue 22 item 10: like every CSV here, threshold_pct in percent (the log keeps fractions)."""
    recs = [{"time": "2026-01-01T10:00:00.000Z", "action": "predict", "model_version": "v1", "threshold": 0.18958,
             "outcome": "NORMAL"}, {"time": "2026-01-02T10:00:00.000Z", "action": "login", "outcome": "ok"}]
    rows = list(csv.DictReader(io.StringIO(ac.audit_csv(recs).decode())))
    assert rows[0]["threshold_pct"] == "19.0" and rows[1]["threshold_pct"] == "" and "threshold" not in rows[0]
    assert recs[0]["threshold"] == 0.18958  # the records themselves are not changed


@pytest.mark.parametrize("key", ["PatientName", "patientname", "Patient Name", "PATIENT_NAME", "patient-id",
                                 "PatientBirthDate", "Image", "pixels", "OtherPatientIDs", "accession_number"])
def test_identifying_fields_are_dropped_whatever_their_spelling(tmp_path, key, caplog):
    rec = audit.append("predict", artifacts=tmp_path, model_version="v1", **{key: "Doe^Jane"})
    assert key not in rec and rec["model_version"] == "v1"
    assert "Doe" not in json.dumps(audit.read(tmp_path))
    assert any(key in r.getMessage() and "Doe" not in r.getMessage() for r in caplog.records)


