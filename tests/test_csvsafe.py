"""core.csvsafe: one neutraliser for every CSV the project writes (OWASP CSV injection)."""

from __future__ import annotations

import ast
import csv
import io
import re
import subprocess
from pathlib import Path

import pytest

from core.csvsafe import csv_bytes, neutralise, write_csv
from tests.helpers import ast_findings, project_sources

REPO = Path(__file__).resolve().parent.parent


@pytest.mark.parametrize("cell", ["=1+1", "+cmd", "-2+3", "@SUM(A1)", "\t", "\r1", "\nx",
                                  '=HYPERLINK("http://x")'])
def test_formula_cells_get_a_leading_apostrophe(cell):
    assert neutralise(cell) == "'" + cell


@pytest.mark.parametrize("cell, expected", [
    ("+cmd|' /C calc'!A0", "'+cmd|' /C calc'!A0"),
    ("\t=1", "'\t'=1"), ("\r=1", "'\r'=1"), ("\n=1", "'\n'=1"),
    ('=HYPERLINK("http://x","click")', '\'=HYPERLINK("http://x","click")'),
])
def test_a_formula_at_the_start_and_after_a_separator_gets_both_apostrophes(cell, expected):
    assert neutralise(cell) == expected


@pytest.mark.parametrize("value", ["x.png", "a=b", "x - y.png", "a,b;c|d", "mean 10, sd 3", "-0.5", "+3", "x;-5", "1e-3",
                                   "", None, 0.97, -0.5, 3, True])
def test_other_values_are_unchanged(value):
    assert neutralise(value) == value  # numbers stay numbers (a negative number is not a formula), as text too


@pytest.mark.parametrize("cell, expected", [
    ("x;=1+1", "x;'=1+1"),  # a spreadsheet that splits on ";" would see a live formula in the second field
    ("a,@SUM(1)", "a,'@SUM(1)"),
    ("ok\n=cmd", "ok\n'=cmd"),  # a line break starts a new row in a splitter that does not honour quotes
    ("ok\r\n+cmd", "ok\r\n'+cmd"),
    ("a|-2+3", "a|'-2+3"),
    ("a\t=1", "a\t'=1"),
    ("x; =1+1", "x;' =1+1"),  # leading spaces are skipped: the apostrophe goes where the field begins
    (" =1+1", "' =1+1"),
    ('x; "=1+1"', 'x;\' "=1+1"'),
    ("=a;=b,@c", "'=a;'=b,'@c"),  # every field, not only the first one
    ("x;\uff1d1+1", "x;'\uff1d1+1"),  # full-width equals sign
    ("x;-", "x;'-"),  # a lone minus is not a number
])
def test_formula_starts_after_any_separator_are_neutralised(cell, expected):
    assert neutralise(cell) == expected


@pytest.mark.parametrize("sep", [",", ";", "\t", "|", "\n", "\r"])
def test_no_field_starts_a_formula_whichever_separator_a_spreadsheet_splits_on(sep):
    """Round trip through the CSV writer and reader, then split every cell on each separator the way
    a spreadsheet opened with another separator (or a text-to-columns) would: no field starts a formula."""
    cells = ["x;=1+1", "a,@SUM(1)", "ok\n=cmd", "p|+1+1", "q\t-1+2", "r\r=3", "s, =cmd", "-0.5", "plain.png"]
    rows = [{"file": c, "n": i} for i, c in enumerate(cells)]
    got = list(csv.DictReader(io.StringIO(csv_bytes(rows).decode("utf-8"), newline="")))
    assert [int(r["n"]) for r in got] == list(range(len(cells)))  # one row per input
    for r in got:
        for field in re.split("\r\n|" + re.escape(sep), r["file"]):
            f = field.lstrip(' "')
            if f and f[0] in "=+-@":
                assert re.fullmatch(r"[+-]?\d+(\.\d+)?", f), (r["file"], sep, field)  # only plain numbers may


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


def _to_csv_call(node) -> str | None:
    """A call of a ``.to_csv(...)`` method (pandas), whatever the object is called."""
    if isinstance(node, ast.Call) and isinstance(node.func, ast.Attribute) and node.func.attr == "to_csv":
        return "to_csv(...)"
    return None


def test_every_csv_the_project_writes_uses_core_csvsafe(tmp_path):
    """No other module writes CSV itself. ruff's TID251 refuses csv.writer / csv.DictWriter outside
    core/csvsafe.py (pyproject.toml); a pandas ``.to_csv`` on any object is found here, on the
    syntax tree, never in comments or strings."""
    assert ast_findings(project_sources(REPO), _to_csv_call) == []
    planted = tmp_path / "planted.py"
    planted.write_text('frame.to_csv("x.csv")  # a comment saying .to_csv( is fine\ntext = "df.to_csv(p)"\n')
    assert ast_findings([planted], _to_csv_call) == ["planted.py:1: to_csv(...)"]


def test_ruff_refuses_a_csv_writer_outside_csvsafe():
    import shutil

    ruff = shutil.which("ruff")
    if ruff is None:
        pytest.skip("ruff is not installed (requirements-dev.txt)")
    source = "import csv\nimport io\n\ncsv.DictWriter(io.StringIO(), fieldnames=[])\ncsv.writer(io.StringIO())\n"
    r = subprocess.run([ruff, "check", "--no-cache", "--output-format", "concise", "--stdin-filename", "core/planted.py", "-"],
                       cwd=REPO, input=source, capture_output=True, text=True)
    assert r.returncode == 1 and r.stdout.count("TID251") == 2 and "core.csvsafe" in r.stdout, r.stdout


def test_csv_bytes_of_an_undecodable_file_name_is_utf8_with_the_byte_visible():
    assert csv_bytes([{"file": "z\udcff.png"}]).decode("utf-8").splitlines() == ["file", "z\\udcff.png"]
