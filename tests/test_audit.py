"""core.audit under concurrent writers, plus the admin page's audit filters / CSV."""

from __future__ import annotations

import csv
import datetime as dt
import io
import json
import os
import subprocess
import sys
import time
from pathlib import Path

import pytest

from core import audit
from ui import admin_components as ac

REPO = Path(__file__).resolve().parent.parent

WRITER = """
import os, sys, time
from core import audit
path, wid, n, go = sys.argv[1], sys.argv[2], int(sys.argv[3]), sys.argv[4]
while not os.path.exists(go):
    time.sleep(0.002)
pad = wid * 6000  # lines far above PIPE_BUF (4096 B): only the lock keeps them whole
for i in range(n):
    audit.append("predict", path=path, source=wid, version=i, error=pad)
"""


def test_concurrent_processes_never_interleave_lines(tmp_path):
    path = tmp_path / "audit.jsonl"
    go = tmp_path / "go"
    writers, n = ["A", "B", "C", "D"], 200
    procs = [subprocess.Popen([sys.executable, "-c", WRITER, str(path), w, str(n), str(go)], cwd=REPO,
                              env={**os.environ, "PYTHONPATH": str(REPO)}) for w in writers]
    time.sleep(0.5)
    go.touch()
    for p in procs:
        assert p.wait(timeout=120) == 0
    raw = path.read_bytes().split(b"\n")
    assert raw[-1] == b""  # ends with a newline
    lines = raw[:-1]
    assert len(lines) == len(writers) * n
    recs = [json.loads(line) for line in lines]  # every line is one valid JSON object
    for r in recs:
        assert r["error"] == r["source"] * 6000 and r["action"] == "predict"
    for w in writers:
        seqs = [r["version"] for r in recs if r["source"] == w]
        assert seqs == list(range(n))  # all present, in order, none duplicated
    assert len(audit.read(path)) == len(writers) * n


def test_forbidden_fields_are_dropped_and_unknown_actions_refused(tmp_path):
    path = tmp_path / "a.jsonl"
    rec = audit.append("predict", path=path, image=b"pixels", PatientName="Doe^Jane", model_version="v1")
    assert "image" not in rec and "PatientName" not in rec
    assert "Doe" not in path.read_text()
    with pytest.raises(ValueError, match="action must be one of"):
        audit.append("hack", path=path)


def test_read_filters_and_skips_damaged_lines(tmp_path):
    path = tmp_path / "a.jsonl"
    audit.append("login", path=path, outcome="ok")
    with open(path, "ab") as fh:
        fh.write(b'{"broken\n')
    audit.append("promote", path=path, outcome="ok", model_version="v2")
    assert [r["action"] for r in audit.read(path)] == ["login", "promote"]
    assert [r["action"] for r in audit.read(path, actions=["promote"])] == ["promote"]
    assert audit.read(tmp_path / "missing.jsonl") == []


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
    path = tmp_path / "a.jsonl"
    rec = audit.append("predict", path=path, model_version="v1", **{key: "Doe^Jane"})
    assert key not in rec and rec["model_version"] == "v1"
    assert "Doe" not in path.read_text()
    assert any(key in r.getMessage() and "Doe" not in r.getMessage() for r in caplog.records)


def test_every_field_the_project_writes_is_allow_listed():
    """The fields passed by the project's own audit.append calls all survive (nothing lost silently)."""
    import re

    found = set()
    for f in list((REPO / "core").rglob("*.py")) + list((REPO / "ui").rglob("*.py")) + list((REPO / "app_pages").rglob("*.py")):
        text = f.read_text(encoding="utf-8")
        for call in re.finditer(r"audit\.(?:append|training|prediction)\((.*?)\)\n", text, re.S):
            found |= set(re.findall(r"\b([a-z_]+)=", call.group(1)))
    found -= {"path", "config"}  # config: audit.training turns it into allow-listed recipe fields
    assert found and found <= audit.ALLOWED_FIELDS, found - audit.ALLOWED_FIELDS
