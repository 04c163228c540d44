"""core.csvsafe: one neutraliser for every CSV the project writes (OWASP CSV injection)."""

from __future__ import annotations

import csv
import io
import re
from pathlib import Path

import pytest

from core.csvsafe import csv_bytes, neutralise, write_csv

REPO = Path(__file__).resolve().parent.parent


@pytest.mark.parametrize("cell", ["=1+1", "+cmd|' /C calc'!A0", "-2+3", "@SUM(A1)", "\t=1", "\r=1", "\n=1",
                                  '=HYPERLINK("http://x","click")'])
def test_formula_cells_get_a_leading_apostrophe(cell):
    assert neutralise(cell) == "'" + cell


@pytest.mark.parametrize("value", ["x.png", "a=b", " =not at start", "", None, 0.97, -0.5, 3, True])
def test_other_values_are_unchanged(value):
    assert neutralise(value) == value  # numbers stay numbers (a negative number is not a formula)


def test_dicts_and_lists_become_json_and_are_neutralised_too():
    assert neutralise({"a": 1}) == '{"a": 1}'
    assert neutralise(["=x"]) == '["=x"]'


def test_csv_round_trip_keeps_the_text_and_no_cell_starts_a_formula():
    rows = [{"file": "=cmd.png", "p": 0.5, "msg": "+x\nsecond line"}, {"file": "ok.png", "p": None, "extra": "@y"}]
    text = csv_bytes(rows).decode("utf-8")
    got = list(csv.DictReader(io.StringIO(text)))
    assert [r["file"] for r in got] == ["'=cmd.png", "ok.png"]
    assert got[0]["msg"] == "'+x\nsecond line" and got[1]["extra"] == "'@y" and got[0]["p"] == "0.5"
    for r in got:
        assert not any(v and v[0] in "=+-@\t\r\n" for v in r.values())
    buf = io.StringIO()
    assert write_csv(buf, rows, fieldnames=["file"]) == 2
    assert buf.getvalue().splitlines() == ["file", "'=cmd.png", "ok.png"]


def test_audit_export_goes_through_the_neutraliser():
    from ui.admin_components import audit_csv

    rows = [{"time": "2026-01-01T00:00:00Z", "action": "predict", "outcome": "-1+1", "details": {"k": "=v"}}]
    got = list(csv.DictReader(io.StringIO(audit_csv(rows).decode("utf-8"))))
    assert got[0]["outcome"] == "'-1+1" and got[0]["details"] == '{"k": "=v"}'


def test_every_csv_the_project_writes_uses_core_csvsafe():
    """No other module writes CSV itself (to_csv, csv.writer, csv.DictWriter)."""
    pattern = re.compile(r"\.to_csv\(|csv\.writer\(|csv\.DictWriter\(")
    offenders = []
    for sub in ("core", "ui", "app_pages", "benchmarks"):
        for f in (REPO / sub).rglob("*.py"):
            if f.name != "csvsafe.py" and pattern.search(f.read_text(encoding="utf-8")):
                offenders.append(str(f.relative_to(REPO)))
    if (REPO / "streamlit_app.py").is_file() and pattern.search((REPO / "streamlit_app.py").read_text()):
        offenders.append("streamlit_app.py")
    assert offenders == []
