"""core.jobs: background training jobs end to end (real subprocesses, tiny 32 px config on
the committed samples), crash safety (kill -9 of the job and of the starter), exactly-one-job
under concurrent starts, cancel (request and SIGTERM), and -- since job state lives in the shared
database (issue 25) -- the training lease across processes and instances (SQLite and PostgreSQL),
a lease that lapses after a kill -9, a cancel from another instance, and the one-time import of
the job folders of before."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest

from core import audit, job_runner, jobs, locks, progress
from core import db as dbm
from core.config import Config
from core.registry import Registry
from tests.dbfixtures import fresh_database, pg_url  # noqa: F401 - fixtures

REPO = Path(__file__).resolve().parent.parent
JOB_TIMEOUT = 300


def long_config() -> Config:
    """Runs for minutes unless stopped: many cheap head epochs on images, no early stop."""
    return Config(backbone="micro", input_size=32, weights="none", head_units=8, head_epochs=1000, finetune_epochs=0, batch_size=4,
                  val_fraction=0.3, early_stopping_patience=1000, cache_features=False, seed=0)


@pytest.fixture()
def art(tmp_path, monkeypatch):
    """An empty registry root for one test (the job process inherits it; its database and audit
    trail are the root's own SQLite file)."""
    root = tmp_path / "art"
    root.mkdir()
    monkeypatch.setenv("PNEUMOSCOPE_ARTIFACTS", str(root))
    monkeypatch.delenv(dbm.DATABASE_URL_ENV, raising=False)
    return root


def _audit(root: Path, action: str) -> list[dict]:
    return audit.read(root, actions=[action])


def wait_for(pred, timeout: float = JOB_TIMEOUT, poll: float = 0.2, what: str = "condition"):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        v = pred()
        if v:
            return v
        time.sleep(poll)
    raise AssertionError(f"timed out after {timeout:.0f} s waiting for {what}")


def training_started(job: jobs.JobInfo):
    """True once the job has finished at least one training epoch."""
    events, _ = progress.read_events(job)
    return any(e.get("kind") == "epoch_end" and e.get("phase") == "head" for e in events)


@pytest.mark.slow
def test_start_progress_then_cancel(art, tmp_path, sample_root):
    job = jobs.start_job(long_config(), sample_root, artifacts=art, n_bootstrap=20)
    assert job.status == "queued" and job.pid and job.request["config"]["input_size"] == 32
    assert jobs.current_job(artifacts=art).job_id == job.job_id
    wait_for(lambda: training_started(job), what="the first training epoch")

    state = jobs.load_job(job).state
    assert state["status"] == "running" and state["pid"] == job.pid and state["started"] and state["host"] == jobs.HOST
    s = progress.summarize(job)
    assert s.phase == "head" and s.epochs == 1000 and s.epoch >= 1
    assert s.curves["head"]["loss"] and s.curves["head"]["val_auc"]
    assert s.to_dict()["eta_s"] is None or s.to_dict()["eta_s"] > 0
    events, _ = progress.read_events(job)
    assert {"stage", "phase_start", "epoch_end"} <= {e["kind"] for e in events}
    assert set(events[0]) >= {"kind", "phase", "epoch", "epochs", "batch", "batches", "metrics", "message", "elapsed_s"}
    assert "Phase 1" in progress.log_tail(job)

    t0 = time.monotonic()
    jobs.cancel(job)
    done = jobs.wait(job, timeout=JOB_TIMEOUT)
    assert done.status == "cancelled", done.state
    assert "cancel" in (done.error or "").lower()
    assert time.monotonic() - t0 < 60  # stops at the next batch, not at the end of 1000 epochs
    assert Registry(art).versions() == []  # nothing published
    assert not (art / "models").exists() or not any((art / "models").iterdir())
    outcomes = [r["outcome"] for r in _audit(art, "retrain")]
    assert outcomes == ["started", "cancelled"]
    assert _audit(art, "cancel")[0]["job_id"] == job.job_id
    assert locks.training_lock_holder(art) is None  # released by the job process
    with pytest.raises(jobs.JobError, match="not running"):
        jobs.cancel(done)


@pytest.mark.slow
def test_success_publishes_inactive_version_even_if_the_app_is_killed(registry_copy, tmp_path, monkeypatch, tiny_config):
    """The starter (standing in for the Streamlit server) is kill -9'd right after starting
    the job: the job lives on in its own session and publishes a version, not activated."""
    monkeypatch.setenv("PNEUMOSCOPE_ARTIFACTS", str(registry_copy.root))
    monkeypatch.delenv(dbm.DATABASE_URL_ENV, raising=False)
    before = [v.name for v in registry_copy.versions()]
    script = (
        "import json, sys, time\n"
        "from core import jobs\n"
        "from core.config import Config\n"
        f"cfg = Config.from_dict(json.loads({json.dumps(json.dumps(tiny_config.to_dict()))}))\n"
        f"job = jobs.start_job(cfg, {str(REPO / 'samples' / 'chest_xray')!r}, n_bootstrap=20)\n"
        "print(job.job_id, flush=True)\n"
        "time.sleep(600)\n"
    )
    app = subprocess.Popen([sys.executable, "-c", script], cwd=REPO, stdout=subprocess.PIPE, text=True,
                           env={**os.environ, "PYTHONPATH": str(REPO)})
    job_id = app.stdout.readline().strip()
    assert job_id, "starter did not start a job"
    app.kill()  # SIGKILL the "app"
    app.wait()
    done = jobs.wait(jobs.get_job(job_id, artifacts=registry_copy.root), timeout=JOB_TIMEOUT)
    assert done.status == "succeeded", (done.state, progress.log_tail(done))
    assert done.version and done.version not in before
    reg = Registry(registry_copy.root)
    assert [v.name for v in reg.versions()] == before + [done.version]
    assert reg.active_version() == "v0001-tiny"  # published, NOT activated
    card = json.loads((reg.models_dir / done.version / "card.json").read_text())
    assert card["input_size"] == 32 and card["weights_source"].startswith("none")
    assert done.state["test"]["roc_auc"] is not None and done.state["finished"]
    s = progress.summarize(done)
    assert s.done and "finetune" in s.curves and "head" in s.curves
    rec = [r for r in _audit(registry_copy.root, "retrain") if r["outcome"] == "succeeded"]
    assert rec and rec[0]["version"] == done.version


@pytest.mark.slow
def test_failure_missing_data_root_publishes_nothing(art, tmp_path, tiny_config):
    job = jobs.start_job(tiny_config, tmp_path / "no-such-data", artifacts=art)
    done = jobs.wait(job, timeout=JOB_TIMEOUT)
    assert done.status == "failed"
    assert "Data folder not found" in done.error and "PNEUMOSCOPE_DATA_ROOT" in done.error
    assert "Traceback" not in done.error
    assert Registry(art).versions() == []
    assert [r["outcome"] for r in _audit(art, "retrain")] == ["started", "failed"]
    assert "Data folder not found" in _audit(art, "retrain")[-1]["error"]


def test_bad_requests_are_refused_before_spawning(art, sample_root, tiny_config):
    with pytest.raises(ValueError, match="input_size"):
        jobs.start_job({**tiny_config.to_dict(), "input_size": 8}, sample_root, artifacts=art)
    with pytest.raises(ValueError, match="limit_per_class"):
        jobs.start_job(tiny_config, sample_root, artifacts=art, limit_per_class=0)
    assert jobs.list_jobs(artifacts=art) == []


@pytest.mark.slow
def test_kill9_mid_training_leaves_registry_intact_and_next_job_can_start(registry_copy, tmp_path, monkeypatch):
    monkeypatch.delenv(dbm.DATABASE_URL_ENV, raising=False)
    reg = registry_copy
    before = [(v.name, v.active) for v in reg.versions()]
    job = jobs.start_job(long_config(), REPO / "samples" / "chest_xray", artifacts=reg.root)
    wait_for(lambda: training_started(job), what="the first training epoch")
    os.kill(job.pid, signal.SIGKILL)
    # While "running" with the process gone, the next look at the job marks it failed (on this
    # host at once: its pid is gone; on another instance once the lease lapsed).
    dead = wait_for(lambda: (j := jobs.refresh(artifacts=reg.root)) is not None and not j.active and j,
                    what="dead-job detection")
    assert dead.status == "failed" and "process died" in dead.error
    assert [(v.name, v.active) for v in Registry(reg.root).versions()] == before
    loaded = Registry(reg.root).load()  # the active model still loads
    assert loaded.name == "v0001-tiny"
    assert any(r["outcome"] == "failed" and "died" in r.get("error", "") for r in _audit(reg.root, "retrain"))
    # The lock died with the process: a new job starts (and fails fast on a missing data root).
    nxt = jobs.start_job(long_config(), tmp_path / "missing", artifacts=reg.root)
    assert nxt.job_id != job.job_id
    assert jobs.wait(nxt, timeout=JOB_TIMEOUT).status == "failed"


@pytest.mark.slow
def test_sigterm_cancels_without_the_flag(art, sample_root):
    job = jobs.start_job(long_config(), sample_root, artifacts=art)
    wait_for(lambda: training_started(job), what="the first training epoch")
    os.kill(job.pid, signal.SIGTERM)
    done = jobs.wait(job, timeout=JOB_TIMEOUT)
    assert done.status == "cancelled" and "SIGTERM" in done.error
    assert Registry(art).versions() == []


@pytest.mark.slow
def test_concurrent_starts_from_threads_give_exactly_one_job(art, tmp_path, sample_root, tiny_config):
    n = 6
    barrier = threading.Barrier(n)
    results: list = [None] * n

    def go(i):
        barrier.wait()
        try:
            results[i] = jobs.start_job(tiny_config, sample_root, artifacts=art)
        except jobs.JobBusy as e:
            results[i] = e

    threads = [threading.Thread(target=go, args=(i,)) for i in range(n)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    started = [r for r in results if isinstance(r, jobs.JobInfo)]
    busy = [r for r in results if isinstance(r, jobs.JobBusy)]
    assert len(started) == 1 and len(busy) == n - 1, results
    assert "already running" in str(busy[0]) and f"on host {jobs.HOST}" in str(busy[0])
    assert len(jobs.list_jobs(artifacts=art)) == 1
    done = jobs.wait(jobs.cancel(started[0]), timeout=JOB_TIMEOUT)
    assert done.status == "cancelled"


@pytest.mark.slow
def test_concurrent_starts_from_processes_give_exactly_one_job(art, tmp_path, tiny_config):
    n = 4
    go = tmp_path / "go"
    script = (
        "import os, sys, time\n"
        "from core import jobs\n"
        "from core.config import Config\n"
        f"while not os.path.exists({str(go)!r}): time.sleep(0.005)\n"
        "cfg = Config(backbone='micro', input_size=32, weights='none', head_units=8, head_epochs=1, finetune_epochs=0)\n"
        "try:\n"
        f"    job = jobs.start_job(cfg, {str(REPO / 'samples' / 'chest_xray')!r}, artifacts={str(art)!r}, n_bootstrap=20)\n"
        "    print('STARTED', job.job_id)\n"
        "except jobs.JobBusy:\n"
        "    print('BUSY')\n"
    )
    procs = [subprocess.Popen([sys.executable, "-c", script], cwd=REPO, stdout=subprocess.PIPE, text=True,
                              env={**os.environ, "PYTHONPATH": str(REPO)}) for _ in range(n)]
    time.sleep(1.0)  # let every process import and spin on the go file
    go.touch()
    outs = [p.communicate(timeout=120)[0].strip() for p in procs]
    assert sorted(o.split()[0] for o in outs) == ["BUSY"] * (n - 1) + ["STARTED"], outs
    job_id = next(o.split()[1] for o in outs if o.startswith("STARTED"))
    assert [j.job_id for j in jobs.list_jobs(artifacts=art)] == [job_id]
    # Its starter has exited (the lease was handed over); the job still runs to completion on its own.
    done = jobs.wait(job_id, artifacts=art, timeout=JOB_TIMEOUT)
    assert done.status == "succeeded", (done.state, progress.log_tail(done))


# --- fast tests: no training process ---------------------------------------------------------
def _fake_job(art: Path, job_id: str, *, current: bool = True, **state) -> None:
    """A job document as a starter writes it (no process behind it unless the test makes one)."""
    db = jobs.database(art)
    state = {"job_id": job_id, "created": "2026-01-01T00:00:00+00:00", "host": jobs.HOST, **state}
    db.put(jobs.JOB_KIND, job_id, {"state": state, "request": {"job_id": job_id}}, expect=None)
    if current:
        db.put(jobs.POINTER_KIND, jobs.POINTER_KEY, {"job_id": job_id})


def _hold_for(art: Path, job_id: str) -> dbm.Lease:
    """The training lease, held for ``job_id`` (stands in for the job process)."""
    lease = locks.training_lease(art, data={"job_id": job_id})
    assert lease.acquire()
    return lease


def test_reconcile_marks_stale_running_job_failed(art):
    _fake_job(art, "old", status="running", pid=2**22 + 12345)
    job = jobs.refresh(artifacts=art)
    assert job.status == "failed" and "process died" in job.error and "is gone" in job.error
    assert jobs.reconcile(artifacts=art) == []  # terminal jobs are left alone
    assert [r["job_id"] for r in _audit(art, "retrain")] == ["old"]


def test_orphan_job_that_is_not_current_is_swept_by_a_full_reconcile(art):
    _fake_job(art, "orphan", status="queued", pid=None)  # starter killed before spawning
    _fake_job(art, "newer", status="succeeded")  # "current" points here
    assert jobs.refresh(artifacts=art).job_id == "newer"
    assert jobs.get_job("orphan", artifacts=art).status == "queued"  # the cheap check skips it
    assert jobs.reconcile(artifacts=art) == ["orphan"]
    assert jobs.get_job("orphan", artifacts=art).status == "failed"


def test_unanswered_cancel_is_escalated_to_sigterm(art, monkeypatch):
    victim = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(120)"])
    try:
        _fake_job(art, "stuck", status="running", pid=victim.pid)
        lease = _hold_for(art, "stuck")  # the "job" is alive and holds the lease
        try:
            job = jobs.cancel("stuck", artifacts=art)
            assert job.cancel_requested and job.state["cancel_requested_at"]
            assert jobs.cancel_requested("stuck", artifacts=art)
            assert jobs.refresh(artifacts=art).state.get("sigterm_sent") is None  # grace period
            monkeypatch.setattr(jobs, "CANCEL_GRACE_S", 0.0)
            assert jobs.refresh(artifacts=art).state.get("sigterm_sent")
            assert victim.wait(timeout=10) == -signal.SIGTERM
        finally:
            lease.release()
        assert jobs.refresh(artifacts=art).status == "failed"  # nobody holds its lease + still "running"
        assert _audit(art, "cancel")[0]["job_id"] == "stuck"
    finally:
        victim.kill()
        victim.wait()


def test_a_job_on_another_host_is_never_signalled(art, monkeypatch):
    _fake_job(art, "far", status="running", pid=os.getpid(), host="gpu-node-7")  # our pid, another machine
    lease = _hold_for(art, "far")
    try:
        monkeypatch.setattr(jobs, "CANCEL_GRACE_S", 0.0)
        jobs.cancel("far", artifacts=art, sigterm=True)
        job = jobs.refresh(artifacts=art)  # would SIGTERM this very process if it trusted the pid
        assert job.status == "running" and job.cancel_requested and not job.state.get("sigterm_sent")
        assert not jobs.running_here(job)
    finally:
        lease.release()


def test_running_job_with_lease_held_is_not_marked_dead_and_blocks_a_start(art):
    _fake_job(art, "live", status="running", pid=os.getpid())
    lease = _hold_for(art, "live")
    try:
        assert jobs.refresh(artifacts=art).status == "running" and jobs.running_here(jobs.current_job(artifacts=art))
        with pytest.raises(jobs.JobBusy, match=f"job live is running on host {jobs.HOST}") as e:
            jobs.start_job(Config(weights="none"), art, artifacts=art)
        assert e.value.holder.startswith("job live")
    finally:
        lease.release()
    assert jobs.refresh(artifacts=art).status == "failed"


def test_a_dead_pid_frees_its_lease_at_once_on_its_own_host(art, tiny_config, sample_root):
    _fake_job(art, "killed", status="running", pid=2**22 + 7)
    assert jobs.database(art).try_lease(locks.TRAINING_LEASE, "gone-holder", 60, {"job_id": "killed"})
    job, lease = jobs.create_job(tiny_config, sample_root, artifacts=art)  # no 60 s wait: the pid says it is dead
    try:
        assert jobs.get_job("killed", artifacts=art).status == "failed"
        assert locks.training_lock_holder(art)["data"]["job_id"] == job.job_id
    finally:
        lease.release()


def test_update_state_is_compare_and_swap(art):
    _fake_job(art, "j", status="running")
    rev = jobs.get_job("j", artifacts=art).revision
    assert jobs.update_state("j", artifacts=art, revision=rev, version="v1")[0]
    applied, state = jobs.update_state("j", artifacts=art, revision=rev, status="failed")  # decided on a stale read
    assert not applied and state["status"] == "running"
    assert not jobs.update_state("j", artifacts=art, expect=("queued",), status="failed")[0]
    assert jobs.get_job("j", artifacts=art).state["version"] == "v1"
    with pytest.raises(jobs.JobError, match="No training job"):
        jobs.get_job("../etc", artifacts=art)


def test_events_are_a_stream_read_incrementally(art):
    _fake_job(art, "e", status="running")
    job = jobs.get_job("e", artifacts=art)
    db = jobs.database(art)
    db.append(job.stream, {"kind": "stage", "phase": "data", "time": "2026-01-01T10:00:00.000Z"})
    events, off = progress.read_events(job)
    assert events == [{"kind": "stage", "phase": "data", "time": "2026-01-01T10:00:00.000Z"}]
    db.append(job.stream, {"kind": "batch", "phase": "head"})
    more, off2 = progress.read_events(job, off)
    assert more == [{"kind": "batch", "phase": "head"}] and off2 > off
    s = progress.summarize(job)
    assert s.n_events == 2 and s.last_event_at == pytest.approx(1767261600.0)
    assert progress.read_events(jobs.get_job("e", artifacts=art), off2) == ([], off2)


def test_training_lease_ttl_comes_from_the_environment(monkeypatch):
    monkeypatch.setenv(locks.TRAINING_TTL_ENV, "1.5")
    assert locks.training_ttl_s() == 1.5
    monkeypatch.setenv(locks.TRAINING_TTL_ENV, "soon")
    with pytest.raises(ValueError, match=r"between 0.2 and 3600\. Received: .*'soon'"):
        locks.training_ttl_s()
    monkeypatch.delenv(locks.TRAINING_TTL_ENV)
    assert locks.training_ttl_s() == locks.DEFAULT_TRAINING_TTL_S


def test_progress_summary_fraction_eta_and_curves():
    ev = [
        {"kind": "stage", "phase": "data", "message": "Indexing", "elapsed_s": 1.0},
        {"kind": "phase_start", "phase": "head", "epochs": 4, "message": "Phase 1", "elapsed_s": 10.0},
        {"kind": "batch", "phase": "head", "epoch": 1, "epochs": 4, "batch": 5, "batches": 10, "metrics": {"loss": 0.7}, "elapsed_s": 15.0},
    ]
    s = progress.ProgressSummary().update(ev)
    assert s.phase == "head" and s.epoch == 1 and s.batch_fraction == 0.5
    assert s.fraction == pytest.approx(0.125)
    assert s.eta_s == pytest.approx(5.0 * 0.875 / 0.125)  # 35 s left of the phase
    s.update([{"kind": "epoch_end", "phase": "head", "epoch": 1, "epochs": 4, "batches": 10,
               "metrics": {"loss": 0.6, "val_loss": 0.65, "auc": 0.7, "val_auc": 0.72}, "elapsed_s": 20.0}])
    assert s.fraction == pytest.approx(0.25) and s.eta_s == pytest.approx(30.0)
    s.update([{"kind": "phase_start", "phase": "finetune", "epochs": 2, "elapsed_s": 30.0},
              {"kind": "epoch_end", "phase": "finetune", "epoch": 1, "epochs": 2, "batches": 10,
               "metrics": {"loss": 0.5, "val_loss": 0.55}, "elapsed_s": 40.0}])
    rows = s.epoch_table()
    assert [(r["epoch"], r["phase"]) for r in rows] == [(1, "head"), (2, "finetune")]
    assert rows[1]["loss"] == 0.5
    s.update([{"kind": "done", "elapsed_s": 50.0}])
    assert s.done and s.eta_s is None


# promote / rollback / delete and the activation history: tests/test_admin_core.py (core.admin)


# --- issue 14: leftovers of a killed training are handled at the next job start ------------------
@pytest.mark.slow
def test_job_start_cleans_stale_staging_and_completes_an_interrupted_activation(registry_copy, tmp_path, monkeypatch,
                                                                                 tiny_config):
    import shutil

    monkeypatch.delenv(dbm.DATABASE_URL_ENV, raising=False)
    reg = registry_copy
    (reg.staging_dir / "v0005-killed.0badc0de").mkdir(parents=True)
    (reg.staging_dir / "v0005-killed.0badc0de" / "model.keras").write_bytes(b"x" * 4096)
    shutil.copytree(reg.models_dir / "v0001-tiny", reg.models_dir / "v0002-wanted")
    reg.pending_file.write_text("v0002-wanted\n")  # `train --activate` killed after the rename
    job = jobs.start_job(tiny_config, tmp_path / "missing-data", artifacts=reg.root)  # fails fast after the start
    assert jobs.wait(job, timeout=JOB_TIMEOUT).status == "failed"
    assert list(reg.staging_dir.iterdir()) == []
    assert reg.active_version() == "v0002-wanted" and not reg.pending_file.exists()


def test_recovery_is_skipped_quietly_on_a_broken_registry(tmp_path):
    (tmp_path / "art").write_text("not a folder")  # cannot even be listed
    from core import runner
    from core.config import Config
    from core.registry import Registry

    runner._chief_begin(Registry(tmp_path / "art"), Config(weights="none"), source="job", data_root=tmp_path,
                        job_id=None, requested_by=None, on_recovered=None)  # logs, never raises


# --- job folders of before issue 25: imported once, read as bounded regular files ----------------
def _old_job(art: Path, job_id: str, state: dict, events: bytes = b"", current: bool = True) -> Path:
    """A job folder as releases before the database wrote it."""
    d = jobs.jobs_root(art) / job_id
    d.mkdir(parents=True)
    (d / "state.json").write_text(json.dumps({"job_id": job_id, "created": "2025-12-01T00:00:00+00:00", **state}))
    (d / "request.json").write_text(json.dumps({"job_id": job_id, "config": {"input_size": 64}}))
    (d / "events.jsonl").write_bytes(events)
    if current:
        (jobs.jobs_root(art) / "current").write_text(job_id + "\n")
    return d


def test_old_job_folders_are_imported_once_for_the_history(art, monkeypatch):
    d = _old_job(art, "old-1", {"status": "succeeded", "version": "v0003-x"},
                 b'{"kind":"stage","phase":"data"}\nnot json\n{"kind":"batch"')  # damaged + torn lines skipped
    _old_job(art, "old-2", {"status": "running", "pid": 2**22 + 3}, current=False)  # killed under the old code
    hist = jobs.list_jobs(artifacts=art)
    assert {j.job_id: j.status for j in hist} == {"old-1": "succeeded", "old-2": "running"}
    job = jobs.current_job(artifacts=art)
    assert job.job_id == "old-1" and job.version == "v0003-x" and job.request["config"] == {"input_size": 64}
    assert progress.read_events(job)[0] == [{"kind": "stage", "phase": "data"}]
    assert jobs.reconcile(artifacts=art) == ["old-2"]  # nobody holds a lease for it: dead
    # another process (a fresh import pass) imports nothing twice, and the files are left untouched
    monkeypatch.setattr(jobs, "_IMPORTED", set())
    monkeypatch.setattr(dbm, "_JSONL_CHECKED", set())
    (d / "state.json").write_text(json.dumps({"job_id": "old-1", "status": "failed"}))  # too late: imported
    assert jobs.get_job("old-1", artifacts=art).status == "succeeded"
    assert len(progress.read_events(job)[0]) == 1 and (d / "events.jsonl").is_file()


def test_old_pointer_and_state_files_as_fifo_or_dev_zero_neither_hang_nor_grow(art):
    from helpers import run_with_timeout

    d = _old_job(art, "j1", {"status": "succeeded"})
    (jobs.jobs_root(art) / "current").unlink()
    os.mkfifo(jobs.jobs_root(art) / "current")
    for name in ("state.json", "request.json", "events.jsonl"):
        (d / name).unlink()
        os.mkfifo(d / name)
    assert run_with_timeout(lambda: jobs.list_jobs(artifacts=art), 10, "importing FIFO state files") == []
    assert run_with_timeout(lambda: jobs.current_job(artifacts=art), 10, "current_job() on a FIFO") is None
    (d / "job.log").unlink(missing_ok=True)
    os.mkfifo(d / "job.log")
    assert run_with_timeout(lambda: progress.log_tail(d), 10, "log_tail() on a FIFO") == ""
    if os.path.exists("/dev/zero"):
        d2 = _old_job(tmp := art / "zero", "j2", {"status": "succeeded"})
        for name in ("state.json", "events.jsonl", "job.log"):
            (d2 / name).unlink(missing_ok=True)
            (d2 / name).symlink_to("/dev/zero")
        assert run_with_timeout(lambda: jobs.list_jobs(artifacts=tmp), 10, "importing /dev/zero") == []
        assert run_with_timeout(lambda: progress.log_tail(d2), 10, "log_tail() on /dev/zero") == ""


def test_old_state_fields_of_the_wrong_type_are_dropped_and_linked_job_folders_skipped(art, tmp_path):
    d = _old_job(art, "j1", {"status": "running"})
    (d / "state.json").write_text(json.dumps({"status": ["running"], "pid": "123", "created": 5, "version": "v1"}))
    outside = tmp_path / "elsewhere"
    _old_job(outside, "j2", {"status": "running", "pid": 2**22 + 1}, current=False)
    (jobs.jobs_root(art) / "j2").symlink_to(jobs.jobs_root(outside) / "j2", target_is_directory=True)
    job = jobs.get_job("j1", artifacts=art)
    assert job.status == "unknown" and job.pid is None and job.version == "v1" and "created" not in job.state
    assert jobs.refresh(artifacts=art).job_id == "j1"  # no TypeError while comparing or sorting
    assert [j.job_id for j in jobs.list_jobs(artifacts=art)] == ["j1"]  # never imported through a link
    assert json.loads((jobs.jobs_root(outside) / "j2" / "state.json").read_text())["status"] == "running"


# --- the training lease across processes and instances (SQLite and PostgreSQL) ----------------------
@pytest.fixture(params=["sqlite", pytest.param("postgresql", marks=pytest.mark.slow)])
def shared(request, tmp_path, monkeypatch):
    """An artifacts root whose database is its own SQLite file, or a fresh PostgreSQL database
    named by $PNEUMOSCOPE_DATABASE_URL (what several instances share); child processes inherit it."""
    root = tmp_path / "art"
    root.mkdir()
    monkeypatch.setenv("PNEUMOSCOPE_ARTIFACTS", str(root))
    if request.param == "sqlite":
        monkeypatch.delenv(dbm.DATABASE_URL_ENV, raising=False)
    else:
        monkeypatch.setenv(dbm.DATABASE_URL_ENV, fresh_database(request.getfixturevalue("pg_url")))
    yield root
    dbm.dispose_all()


_HOLDER = """
import sys
from core import jobs
from core.config import Config
job, lease = jobs.create_job(Config(backbone="micro", input_size=32, weights="none"), sys.argv[2], artifacts=sys.argv[1],
                             requested_by="other instance")
jobs.update_state(job.job_id, artifacts=sys.argv[1], status="running")
print(job.job_id, flush=True)
sys.stdin.read()  # hold the lease until the test closes stdin (or kills this process)
jobs.update_state(job.job_id, artifacts=sys.argv[1], status="succeeded")
lease.release()
"""


def _holder(art: Path, sample_root: Path, **env) -> tuple[subprocess.Popen, str]:
    p = subprocess.Popen([sys.executable, "-c", _HOLDER, str(art), str(sample_root)], cwd=REPO, text=True,
                         stdin=subprocess.PIPE, stdout=subprocess.PIPE, env={**os.environ, **env})
    job_id = p.stdout.readline().strip()
    assert job_id, "the other process did not take the training lease"
    return p, job_id


def test_training_lease_refuses_a_second_training_from_another_process(shared, tiny_config, sample_root):
    p, job_id = _holder(shared, sample_root)
    try:
        with pytest.raises(jobs.JobBusy, match=f"job {job_id} is running on host {jobs.HOST}"):
            jobs.create_job(tiny_config, sample_root, artifacts=shared)
        assert locks.acquire_training_lock(shared) is None
        assert jobs.refresh(artifacts=shared).status == "running"  # alive: its lease is renewed
    finally:
        p.stdin.close()
        assert p.wait(timeout=60) == 0
    job, lease = jobs.create_job(tiny_config, sample_root, artifacts=shared)  # released: the next one starts
    lease.release()
    assert jobs.get_job(job_id, artifacts=shared).status == "succeeded"


@pytest.mark.slow
def test_a_job_killed_with_9_lapses_is_marked_failed_and_a_new_training_starts(shared, tiny_config, sample_root,
                                                                               monkeypatch):
    p, job_id = _holder(shared, sample_root, **{locks.TRAINING_TTL_ENV: "2"})
    os.kill(p.pid, signal.SIGKILL)
    p.wait(timeout=30)
    # Seen from another host (no pid fast path): the lease still holds until its ttl runs out ...
    monkeypatch.setattr(jobs, "HOST", "another-instance")
    with pytest.raises(jobs.JobBusy, match=job_id):
        jobs.create_job(tiny_config, sample_root, artifacts=shared)
    assert jobs.refresh(artifacts=shared).status == "running"
    # ... then it lapses: the job is marked failed and a new training starts.
    dead = wait_for(lambda: (j := jobs.refresh(artifacts=shared)) is not None and not j.active and j, timeout=20,
                    poll=0.1, what="the lease to lapse")
    assert dead.job_id == job_id and dead.status == "failed" and "no process renews" in dead.error
    job, lease = jobs.create_job(tiny_config, sample_root, artifacts=shared)
    lease.release()
    assert [r["job_id"] for r in _audit(shared, "retrain") if r["outcome"] == "failed"] == [job_id]


_JOB = """
import sys, time
from core import job_runner, jobs, training
from core.config import Config
from core.events import TrainingCancelled

def fake_train(config, data_root, *, should_stop, **kwargs):
    print("TRAINING", flush=True)
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:  # one "batch" every 20 ms
        if should_stop():
            raise TrainingCancelled("Training was cancelled.")
        time.sleep(0.02)
    raise RuntimeError("never cancelled")

training.train = fake_train
training.get_strategy = lambda name: None  # no TensorFlow in this test
job, lease = jobs.create_job(Config(backbone="micro", input_size=32, weights="none"), sys.argv[2], artifacts=sys.argv[1])
print(job.job_id, flush=True)
try:
    job_runner.execute(job.dir, job.request, lease=lease, signums=())
except TrainingCancelled:
    print("CANCELLED", flush=True)
finally:
    lease.release()
"""


def test_cancel_from_another_instance_stops_the_job(shared, sample_root, monkeypatch):
    p = subprocess.Popen([sys.executable, "-c", _JOB, str(shared), str(sample_root)], cwd=REPO, text=True,
                         stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    try:
        job_id = p.stdout.readline().strip()
        assert p.stdout.readline().strip() == "TRAINING", p.stderr.read()[-2000:]
        monkeypatch.setattr(jobs, "HOST", "another-instance")  # this process: another machine, no signals
        t0 = time.monotonic()
        jobs.cancel(job_id, artifacts=shared)
        assert p.stdout.readline().strip() == "CANCELLED"
        assert time.monotonic() - t0 < 10  # polled at most once a second
        assert p.wait(timeout=30) == 0
    finally:
        p.kill()
    job = jobs.get_job(job_id, artifacts=shared)
    assert job.status == "cancelled" and job.error == "Training was cancelled." and not job.state.get("sigterm_sent")
    assert locks.training_lock_holder(shared) is None


# --- moved from test_admin_issue15.py / test_issue17_gaps.py: the job process ----------------------
def test_training_job_process_runs_at_lower_priority(tmp_path, monkeypatch):
    calls = []
    monkeypatch.setattr(job_runner.os, "nice", lambda n: calls.append(n) or n)
    monkeypatch.delenv(dbm.DATABASE_URL_ENV, raising=False)
    assert job_runner.run(tmp_path / "jobs" / "job-x") != 0  # not registered: fails fast, after lowering its priority
    assert calls == [job_runner.JOB_NICENESS] and job_runner.JOB_NICENESS >= 10
    # and for real, in a process of its own
    r = subprocess.run([sys.executable, "-c", "import os; from core import job_runner; b = os.nice(0); job_runner._lower_priority(); print(os.nice(0) - b)"],
                       cwd=REPO, capture_output=True, text=True, timeout=120)
    assert r.stdout.strip() == str(job_runner.JOB_NICENESS), r.stderr


def test_job_subprocess_environment_silences_tensorflow(tmp_path, monkeypatch, sample_root):
    seen = {}

    class FakeProc:
        pid = os.getpid()

        def __init__(self, *a, **k):
            seen.update(k, args=a)

        def poll(self):
            return 0

    monkeypatch.setattr(jobs.subprocess, "Popen", FakeProc)
    monkeypatch.setenv("TF_CPP_MIN_LOG_LEVEL", "0")
    monkeypatch.delenv(dbm.DATABASE_URL_ENV, raising=False)
    job = jobs.start_job(Config(backbone="micro", input_size=32, weights="none"), sample_root, artifacts=tmp_path / "art")
    assert seen["env"]["TF_CPP_MIN_LOG_LEVEL"] == "3"
    # the child is told which lease to take over; until it does, the lease holds for the hand-over
    assert seen["args"][0][-2:] == ["--lease-holder", locks.training_lock_holder(tmp_path / "art")["holder"]]
    assert locks.training_lock_holder(tmp_path / "art")["data"]["job_id"] == job.job_id


@pytest.mark.slow
def test_job_retrain_audit_line_carries_the_number_of_feedback_images(tmp_path, monkeypatch, tiny_config, sample_root):
    import numpy as np

    from core.feedback import FeedbackStore, default_feedback_dir

    art = tmp_path / "art"
    art.mkdir()
    monkeypatch.setenv("PNEUMOSCOPE_ARTIFACTS", str(art))
    monkeypatch.delenv(dbm.DATABASE_URL_ENV, raising=False)
    store = FeedbackStore(default_feedback_dir(art))
    rng = np.random.default_rng(0)
    pixels = (rng.random((48, 48)) * 255).astype(np.uint8)  # not a validation or test file
    rec = store.record(image_sha256="ab" * 32, model_version="v0001-tiny", probability=0.9, threshold=0.5,
                       guard_status="accepted", guard_code="ok", reader_id="r-test", agree=False,
                       believed_label="NORMAL", consent=True, pixels=pixels)
    store.review(rec["id"], "accepted", "checked by a second reader")
    job = jobs.start_job(tiny_config.replace(include_feedback=True), sample_root, artifacts=art, n_bootstrap=20)
    done = jobs.wait(job, timeout=300)
    assert done.status == "succeeded", (done.state, progress.log_tail(done))
    lines = [r for r in audit.read(art, actions=["retrain"]) if r["outcome"] == "succeeded"]
    assert len(lines) == 1 and lines[0]["version"] == done.version
    assert lines[0]["feedback_images"] == 1


@pytest.mark.parametrize("exc, code", [
    (None, 0),
    ("cancel", 130),
    (ValueError("input_size must be ..."), 3),
    (MemoryError(), 1),
    (RuntimeError("boom"), 1),
    ("lost worker", 1),
    ("database", 8),
])
def test_the_job_process_exit_codes_follow_the_one_table(exc, code):
    from core import exitcodes, job_runner
    from core.db import DatabaseError
    from core.distribute import DistributedTrainingError
    from core.events import TrainingCancelled

    exc = {"cancel": TrainingCancelled("stop"), "lost worker": DistributedTrainingError("lost worker 1"),
           "database": DatabaseError("The database ... is unavailable")}.get(exc, exc) if isinstance(exc, str) else exc
    assert job_runner.exit_code(exc) == code
    assert code in {v for k, v in vars(exitcodes).items() if k.startswith("EXIT_")}
