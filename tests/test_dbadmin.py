"""python -m core db status|upgrade|copy-to (core/dbadmin.py), and the CLI's exit code 8."""

from __future__ import annotations

import pytest

from core import cli, exitcodes
from core import db as dbm
from core.dbadmin import copy_to, status
from tests.dbfixtures import pg_url  # noqa: F401 - fixture
from tests.helpers import free_port


@pytest.fixture(autouse=True)
def _fresh_engines(monkeypatch):
    monkeypatch.delenv(dbm.DATABASE_URL_ENV, raising=False)
    yield
    dbm.dispose_all()


def _fill(d: dbm.Database) -> None:
    for i in range(5):
        d.append("audit", {"action": "predict", "i": i})
    d.append("job:job-1", {"kind": "done"})
    d.append("feedback", {"id": "f1"})
    d.put("reader_study", "s1", {"cases": [1, 2]}, expect=None)
    d.put("pointer", "active", {"version": "v0001-tiny"}, expect=None)
    d.import_once("audit/audit.jsonl", "audit", [{"action": "predict", "i": 5}])
    d.try_lease("training", "host:1:abc", 30)


def test_status_counts_what_each_store_holds(tmp_path):
    d = dbm.connect(tmp_path)
    _fill(d)
    st = status(d)
    assert st["backend"] == "sqlite" and st["revision"] == st["head"]
    assert st["events"] == {"audit": 6, "feedback": 1, "job:<id>": 1}
    assert st["documents"] == {"pointer": 1, "reader_study": 1}
    assert st["imported"] == ["audit/audit.jsonl"] and st["leases"] == {"training": "host:1:abc"}


def test_status_command_prints_it(tmp_path, capsys):
    _fill(dbm.connect(tmp_path))
    assert cli.main(["--artifacts", str(tmp_path), "db", "status"]) == 0
    out = capsys.readouterr().out
    assert "schema    0001" in out and "audit" in out and "reader_study" in out and "training: held by host:1:abc" in out


@pytest.mark.parametrize("target", ["sqlite", "postgresql"])
def test_copy_to_an_empty_database_keeps_everything_in_order(tmp_path, capsys, request, target):
    src = dbm.connect(tmp_path)
    _fill(src)
    url = f"sqlite:///{tmp_path / 'target.db'}" if target == "sqlite" else request.getfixturevalue("pg_url")
    assert cli.main(["--artifacts", str(tmp_path), "db", "copy-to", url]) == 0
    assert "copied 8 events, 2 documents and 1 import records" in capsys.readouterr().out
    dst = dbm.connect(url=url)
    assert [r for _, r in dst.events("audit")] == [r for _, r in src.events("audit")]
    assert dst.get("reader_study", "s1").data == {"cases": [1, 2]} and dst.get("reader_study", "s1").revision == 1
    assert dst.imported("audit/audit.jsonl")
    assert dst.lease_holder("training") is None  # leases belong to running processes: not copied
    with pytest.raises(dbm.DatabaseError, match="not empty"):
        copy_to(src, dst)  # a second copy would double every event: refused


def test_an_unreachable_database_is_exit_code_8_and_a_sentence(tmp_path, capsys, monkeypatch):
    monkeypatch.setenv(dbm.DATABASE_URL_ENV, f"postgresql+psycopg://u:pw123@127.0.0.1:{free_port()}/x")
    code = cli.main(["--artifacts", str(tmp_path), "db", "status"])
    err = capsys.readouterr().err
    assert code == exitcodes.EXIT_DATABASE == 8
    assert err.startswith("error: The database") and "unavailable" in err and "pw123" not in err
    assert "Traceback" not in err


def test_copy_to_without_a_target_is_a_usage_error(tmp_path, capsys):
    assert cli.main(["--artifacts", str(tmp_path), "db", "copy-to"]) == exitcodes.EXIT_USAGE
    assert "needs the target URL" in capsys.readouterr().err
