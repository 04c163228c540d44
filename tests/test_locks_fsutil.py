"""core.fsutil (atomic writes), core.locks (file locks, the training lease) and the job process's exit codes (issue 16)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from core import db as dbm
from core import exitcodes, fsutil, jobs, locks

REPO = Path(__file__).resolve().parent.parent


def test_atomic_write_replaces_whole_file_and_leaves_no_temp(tmp_path):
    p = tmp_path / "sub" / "f.json"
    fsutil.atomic_write_text(p, "old")
    fsutil.write_json_atomic(p, {"a": 1})
    assert json.loads(p.read_text()) == {"a": 1}
    assert sorted(x.name for x in p.parent.iterdir()) == ["f.json"]


def test_atomic_write_failure_keeps_the_old_file(tmp_path, monkeypatch):
    p = tmp_path / "f.txt"
    fsutil.atomic_write_bytes(p, b"old")

    def boom(*a, **k):
        raise OSError("disk full (test)")

    monkeypatch.setattr(fsutil.os, "replace", boom)
    with pytest.raises(OSError, match="disk full"):
        fsutil.atomic_write_bytes(p, b"new")
    assert p.read_bytes() == b"old" and [x.name for x in tmp_path.iterdir()] == ["f.txt"]


def test_atomic_write_mode(tmp_path):
    p = fsutil.atomic_write_bytes(tmp_path / "private", b"x", mode=0o600)
    assert p.stat().st_mode & 0o777 == 0o600


def test_file_lock_excludes_another_process(tmp_path):
    lock = tmp_path / "x.lock"
    code = ("import sys; from core import locks\n"
            "l = locks.file_lock(sys.argv[1], timeout=0.2)\n"
            "try:\n    l.acquire()\nexcept locks.Timeout:\n    sys.exit(7)\n")
    with locks.file_lock(lock):
        r = subprocess.run([sys.executable, "-c", code, str(lock)], cwd=REPO, timeout=60)
        assert r.returncode == 7
    assert subprocess.run([sys.executable, "-c", code, str(lock)], cwd=REPO, timeout=60).returncode == 0


def test_training_lock_is_exclusive_names_its_holder_and_is_freed_on_release(tmp_path, monkeypatch):
    monkeypatch.delenv(dbm.DATABASE_URL_ENV, raising=False)
    lock = locks.acquire_training_lock(tmp_path, data={"purpose": "models clean-staging"})
    assert lock is not None
    try:
        assert locks.acquire_training_lock(tmp_path) is None
        holder = locks.training_lock_holder(tmp_path)
        assert locks.describe_holder(holder) == f"models clean-staging on host {locks.HOST} (pid {os.getpid()})"
    finally:
        lock.release()
    assert locks.training_lock_holder(tmp_path) is None
    again = locks.acquire_training_lock(tmp_path)
    assert again is not None
    again.release()


def test_one_exit_code_table():
    e = exitcodes
    assert (e.EXIT_OK, e.EXIT_ERROR, e.EXIT_USAGE, e.EXIT_DATA, e.EXIT_PARTIAL, e.EXIT_MODEL, e.EXIT_BUSY, e.EXIT_PACS,
            e.EXIT_CANCELLED) == (0, 1, 2, 3, 4, 5, 6, 7, 130)


def test_job_process_started_by_hand_while_busy_exits_6(tmp_path, monkeypatch):
    monkeypatch.delenv(dbm.DATABASE_URL_ENV, raising=False)
    db = jobs.database(tmp_path)
    db.put(jobs.JOB_KIND, "job-1", {"state": {"job_id": "job-1", "status": "queued"},
                                    "request": {"job_id": "job-1", "config": {}, "data_root": str(tmp_path),
                                                "artifacts": str(tmp_path.resolve())}}, expect=None)
    lock = locks.acquire_training_lock(tmp_path)  # another training holds the lock
    try:
        r = subprocess.run([sys.executable, "-m", "core.job_runner", str(jobs.jobs_root(tmp_path) / "job-1")], cwd=REPO,
                           timeout=120, capture_output=True, text=True)
    finally:
        lock.release()
    assert r.returncode == exitcodes.EXIT_BUSY, r.stderr
    job = jobs.get_job("job-1", artifacts=tmp_path)
    assert job.status == "failed" and "Another training job" in job.error
    assert "another training holds the lock" in job.log_path.read_text()


def test_a_lock_file_that_is_a_link_or_fifo_is_replaced_never_followed(tmp_path):
    """Issue 21: lock files live under artifacts/ too. A symlink in a lock file's place (to a file
    outside) is neither opened, truncated nor created through, and a FIFO does not block; the entry
    is replaced by a regular lock file and the lock works."""
    import functools

    from helpers import run_with_timeout

    outside = tmp_path / "outside.txt"
    outside.write_text("precious")
    for name, take in (("a.lock", lambda p: locks.file_lock(p, timeout=5).acquire()),):
        p = tmp_path / "art" / name
        p.parent.mkdir(exist_ok=True)
        p.symlink_to(outside)
        run_with_timeout(functools.partial(take, p), 10, f"locking {name} (a symlink)")
        assert p.is_file() and not p.is_symlink() and outside.read_text() == "precious"
        p.unlink()
        p.symlink_to(tmp_path / "created-outside.lock")  # a dangling link: nothing is created there
        run_with_timeout(functools.partial(take, p), 10, f"locking {name} (a dangling symlink)")
        assert not (tmp_path / "created-outside.lock").exists()
        p.unlink()
        os.mkfifo(p)
        run_with_timeout(functools.partial(take, p), 10, f"locking {name} (a FIFO)")
        assert p.is_file()
