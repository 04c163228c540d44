"""core.jsonl: the one JSON-lines appender/reader (audit trail, feedback store, job events)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from core import jsonl

REPO = Path(__file__).resolve().parent.parent


def test_append_then_read_with_offsets(tmp_path):
    p = tmp_path / "log.jsonl"
    jsonl.append(p, {"a": 1})
    jsonl.append(p, {"b": Path("x")})  # values JSON cannot hold are written as text
    recs, off = jsonl.read(p)
    assert recs == [{"a": 1}, {"b": "x"}] and off == p.stat().st_size
    jsonl.append(p, {"c": 3})
    assert jsonl.read(p, offset=off) == ([{"c": 3}], p.stat().st_size)
    assert oct(p.stat().st_mode & 0o777) == oct(0o640 & ~_umask())


def _umask() -> int:
    m = os.umask(0)
    os.umask(m)
    return m


def test_torn_last_line_is_left_for_later_and_the_next_append_starts_fresh(tmp_path):
    p = tmp_path / "log.jsonl"
    jsonl.append(p, {"n": 1})
    jsonl.append(p, {"n": 2})
    confirmed = p.stat().st_size
    with open(p, "ab") as fh:
        fh.write(b'{"n": 3, "tor')  # a writer killed mid-line
    recs, off = jsonl.read(p)
    assert recs == [{"n": 1}, {"n": 2}] and off == confirmed  # nothing confirmed is lost
    line = jsonl.append(p, {"n": 4})
    assert line.startswith(b"\n")  # not glued onto the torn line
    assert jsonl.read_all(p) == [{"n": 1}, {"n": 2}, {"n": 4}]
    assert jsonl.read(p, offset=off)[0] == [{"n": 4}]  # an incremental reader skips the torn one too


def test_damaged_non_object_and_over_long_lines_are_skipped(tmp_path):
    p = tmp_path / "log.jsonl"
    p.write_bytes(b'{"ok":1}\nnot json\n[1,2]\n\xff\xfe\n{"big":"' + b"x" * 5000 + b'"}\n{"ok":2}\n')
    assert jsonl.read_all(p, max_line_bytes=1000) == [{"ok": 1}, {"ok": 2}]
    assert jsonl.read(p, max_line_bytes=1000)[1] == p.stat().st_size
    with pytest.raises(ValueError, match="at most 100 bytes"):
        jsonl.append(p, {"x": "y" * 200}, max_line_bytes=100)


def test_read_limit_bounds_each_call_and_the_next_call_goes_on(tmp_path):
    p = tmp_path / "log.jsonl"
    for i in range(50):
        jsonl.append(p, {"i": i}, fsync=False)
    seen, off, calls = [], 0, 0
    while True:
        recs, off = jsonl.read(p, offset=off, limit=64)
        calls += 1
        if not recs:
            break
        seen += recs
    assert [r["i"] for r in seen] == list(range(50)) and calls > 5


def test_every_append_is_fsynced(tmp_path, monkeypatch):
    calls = []
    real = os.fsync
    monkeypatch.setattr(jsonl.os, "fsync", lambda fd: calls.append(fd) or real(fd))
    jsonl.append(tmp_path / "a.jsonl", {"x": 1})
    jsonl.append(tmp_path / "a.jsonl", {"x": 2})
    assert len(calls) == 2
    jsonl.append(tmp_path / "a.jsonl", {"x": 3}, fsync=False)
    assert len(calls) == 2


def test_missing_fifo_and_symlink_are_not_read(tmp_path):
    from helpers import run_with_timeout

    assert jsonl.read(tmp_path / "none.jsonl", offset=7) == ([], 7)
    fifo = tmp_path / "fifo.jsonl"
    os.mkfifo(fifo)
    assert run_with_timeout(lambda: jsonl.read(fifo), 10, "read() on a FIFO") == ([], 0)
    real = tmp_path / "real.jsonl"
    jsonl.append(real, {"x": 1})
    link = tmp_path / "link.jsonl"
    link.symlink_to(real)
    assert jsonl.read_all(link) == []  # not followed by default
    assert jsonl.read_all(link, follow_symlinks=True) == [{"x": 1}]


WRITER = """
import sys
from core import jsonl, locks
path, who, n = sys.argv[1], sys.argv[2], int(sys.argv[3])
for i in range(n):
    with locks.file_lock(path + ".lock"):
        jsonl.append(path, {"who": who, "i": i, "pad": who * 3000}, fsync=(i % 10 == 0))
"""


def test_concurrent_appends_from_two_processes_do_not_interleave(tmp_path):
    p = tmp_path / "shared.jsonl"
    n = 150
    procs = [subprocess.Popen([sys.executable, "-c", WRITER, str(p), who, str(n)], cwd=REPO,
                              env={**os.environ, "PYTHONPATH": str(REPO)}) for who in ("a", "b")]
    for proc in procs:
        assert proc.wait(timeout=120) == 0
    lines = p.read_bytes().split(b"\n")
    assert lines[-1] == b"" and len(lines) == 2 * n + 1
    recs = [json.loads(raw) for raw in lines[:-1]]  # every line whole
    for who in ("a", "b"):
        mine = [r for r in recs if r["who"] == who]
        assert [r["i"] for r in mine] == list(range(n)) and all(r["pad"] == who * 3000 for r in mine)
