"""core.jobs: background training jobs end to end (real subprocesses, tiny 32 px config on
the committed samples), crash safety (kill -9 of the job and of the starter), exactly-one-job
under concurrent starts, cancel (flag and SIGTERM), and the registry admin helpers."""

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
from core.config import Config
from core.registry import Registry

REPO = Path(__file__).resolve().parent.parent
JOB_TIMEOUT = 300


def long_config() -> Config:
    """Runs for minutes unless stopped: many cheap head epochs on images, no early stop."""
    return Config(backbone="micro", input_size=32, weights="none", head_units=8, head_epochs=1000, finetune_epochs=0, batch_size=4,
                  val_fraction=0.3, early_stopping_patience=1000, cache_features=False, seed=0)


@pytest.fixture()
def art(tmp_path, monkeypatch):
    """An empty registry root + audit log for one test (the job process inherits both)."""
    root = tmp_path / "art"
    root.mkdir()
    monkeypatch.setenv("PNEUMOSCOPE_ARTIFACTS", str(root))
    monkeypatch.setenv("PNEUMOSCOPE_AUDIT_LOG", str(tmp_path / "audit.jsonl"))
    return root


def _audit(tmp_path: Path, action: str) -> list[dict]:
    return audit.read(tmp_path / "audit.jsonl", actions=[action])


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
    assert job.status == "queued" and job.pid and (job.dir / "request.json").is_file()
    assert jobs.current_job(root=jobs.jobs_root(art)).job_id == job.job_id
    wait_for(lambda: training_started(job), what="the first training epoch")

    state = jobs.read_state(job.dir)
    assert state["status"] == "running" and state["pid"] == job.pid and state["started"]
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
    outcomes = [r["outcome"] for r in _audit(tmp_path, "retrain")]
    assert outcomes == ["started", "cancelled"]
    assert _audit(tmp_path, "cancel")[0]["job_id"] == job.job_id
    with pytest.raises(jobs.JobError, match="not running"):
        jobs.cancel(done)


@pytest.mark.slow
def test_success_publishes_inactive_version_even_if_the_app_is_killed(registry_copy, tmp_path, monkeypatch, tiny_config):
    """The starter (standing in for the Streamlit server) is kill -9'd right after starting
    the job: the job lives on in its own session and publishes a version, not activated."""
    monkeypatch.setenv("PNEUMOSCOPE_ARTIFACTS", str(registry_copy.root))
    monkeypatch.setenv("PNEUMOSCOPE_AUDIT_LOG", str(tmp_path / "audit.jsonl"))
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
    root = jobs.jobs_root(registry_copy.root)
    done = jobs.wait(jobs.get_job(job_id, root=root), timeout=JOB_TIMEOUT)
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
    rec = [r for r in _audit(tmp_path, "retrain") if r["outcome"] == "succeeded"]
    assert rec and rec[0]["version"] == done.version


@pytest.mark.slow
def test_failure_missing_data_root_publishes_nothing(art, tmp_path, tiny_config):
    job = jobs.start_job(tiny_config, tmp_path / "no-such-data", artifacts=art)
    done = jobs.wait(job, timeout=JOB_TIMEOUT)
    assert done.status == "failed"
    assert "Data folder not found" in done.error and "PNEUMOSCOPE_DATA_ROOT" in done.error
    assert "Traceback" not in done.error
    assert Registry(art).versions() == []
    assert [r["outcome"] for r in _audit(tmp_path, "retrain")] == ["started", "failed"]
    assert "Data folder not found" in _audit(tmp_path, "retrain")[-1]["error"]


def test_bad_requests_are_refused_before_spawning(art, sample_root, tiny_config):
    with pytest.raises(ValueError, match="input_size"):
        jobs.start_job({**tiny_config.to_dict(), "input_size": 8}, sample_root, artifacts=art)
    with pytest.raises(ValueError, match="limit_per_class"):
        jobs.start_job(tiny_config, sample_root, artifacts=art, limit_per_class=0)
    assert jobs.list_jobs(root=jobs.jobs_root(art)) == []


@pytest.mark.slow
def test_kill9_mid_training_leaves_registry_intact_and_next_job_can_start(registry_copy, tmp_path, monkeypatch):
    monkeypatch.setenv("PNEUMOSCOPE_AUDIT_LOG", str(tmp_path / "audit.jsonl"))
    reg = registry_copy
    before = [(v.name, v.active) for v in reg.versions()]
    job = jobs.start_job(long_config(), REPO / "samples" / "chest_xray", artifacts=reg.root)
    wait_for(lambda: training_started(job), what="the first training epoch")
    os.kill(job.pid, signal.SIGKILL)
    root = jobs.jobs_root(reg.root)
    # While "running" with the process gone, the next look at the job marks it failed.
    dead = wait_for(lambda: (j := jobs.refresh(root=root)) is not None and not j.active and j, what="dead-job detection")
    assert dead.status == "failed" and "process died" in dead.error
    assert [(v.name, v.active) for v in Registry(reg.root).versions()] == before
    loaded = Registry(reg.root).load()  # the active model still loads
    assert loaded.name == "v0001-tiny"
    assert any(r["outcome"] == "failed" and "died" in r.get("error", "") for r in _audit(tmp_path, "retrain"))
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
    assert "already running" in str(busy[0])
    assert len(jobs.list_jobs(root=jobs.jobs_root(art))) == 1
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
    root = jobs.jobs_root(art)
    assert [j.job_id for j in jobs.list_jobs(root=root)] == [job_id]
    # Its starter has exited; the job still runs to completion on its own.
    done = jobs.wait(job_id, root=root, timeout=JOB_TIMEOUT)
    assert done.status == "succeeded", (done.state, progress.log_tail(done))


# --- fast tests: no training process ---------------------------------------------------------
def _fake_job(root: Path, job_id: str, **state) -> Path:
    d = root / job_id
    d.mkdir(parents=True)
    (d / "request.json").write_text(json.dumps({"job_id": job_id}))
    jobs.update_state(d, job_id=job_id, created="2026-01-01T00:00:00+00:00", **state)
    (root / "current").write_text(job_id)
    return d


def test_reconcile_marks_stale_running_job_failed(tmp_path):
    root = tmp_path / "jobs"
    _fake_job(root, "old", status="running", pid=2**22 + 12345)
    job = jobs.refresh(root=root)
    assert job.status == "failed" and "process died" in job.error and "is gone" in job.error
    # Terminal jobs are left alone.
    assert jobs.reconcile(root=root) == []


def test_orphan_job_that_is_not_current_is_swept_by_a_full_reconcile(tmp_path):
    root = tmp_path / "jobs"
    _fake_job(root, "orphan", status="queued", pid=None)  # starter killed before spawning
    _fake_job(root, "newer", status="succeeded")  # "current" points here
    assert jobs.refresh(root=root).job_id == "newer"
    assert jobs.read_state(root / "orphan")["status"] == "queued"  # the cheap check skips it
    assert jobs.reconcile(root=root) == ["orphan"]
    assert jobs.read_state(root / "orphan")["status"] == "failed"


def test_unanswered_cancel_is_escalated_to_sigterm(tmp_path, monkeypatch):
    root = tmp_path / "jobs"
    victim = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(120)"])
    try:
        d = _fake_job(root, "stuck", status="running", pid=victim.pid)
        fd = locks.try_training_lock(root)  # the "job" is alive and holds the lock
        try:
            job = jobs.cancel("stuck", root=root, audit_path=tmp_path / "a.jsonl")
            assert (d / "cancel").is_file() and job.state["cancel_requested_at"]
            assert jobs.refresh(root=root).state.get("sigterm_sent") is None  # grace period
            monkeypatch.setattr(jobs, "CANCEL_GRACE_S", 0.0)
            assert jobs.refresh(root=root).state.get("sigterm_sent")
            assert victim.wait(timeout=10) == -signal.SIGTERM
        finally:
            os.close(fd)
        assert jobs.refresh(root=root).status == "failed"  # lock free + still "running"
    finally:
        victim.kill()
        victim.wait()


def test_running_job_with_lock_held_is_not_marked_dead(tmp_path):
    root = tmp_path / "jobs"
    _fake_job(root, "live", status="running", pid=os.getpid())
    fd = locks.try_training_lock(root)  # stands in for the job process holding the lock
    try:
        assert jobs.refresh(root=root).status == "running"
        with pytest.raises(jobs.JobBusy):
            jobs.start_job(Config(weights="none"), tmp_path, artifacts=tmp_path)
    finally:
        os.close(fd)
    assert jobs.refresh(root=root).status == "failed"


def test_read_events_skips_partial_and_damaged_lines(tmp_path):
    d = tmp_path / "job"
    d.mkdir()
    (d / "events.jsonl").write_bytes(b'{"kind":"stage","phase":"data"}\nnot json\n{"kind":"batch"')
    events, off = progress.read_events(d)
    assert events == [{"kind": "stage", "phase": "data"}]
    with open(d / "events.jsonl", "ab") as fh:
        fh.write(b',"phase":"head"}\n')
    more, off2 = progress.read_events(d, off)
    assert more == [{"kind": "batch", "phase": "head"}] and off2 > off


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

    monkeypatch.setenv("PNEUMOSCOPE_AUDIT_LOG", str(tmp_path / "audit.jsonl"))
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

    runner._chief_begin(Registry(tmp_path / "art"), Config(weights="none"), source="job", audit_path=tmp_path / "a.jsonl",
                        data_root=tmp_path, job_id=None, requested_by=None, on_recovered=None)  # logs, never raises


# --- job pointer and state files are read as bounded regular files (issue 21) ----------------------
def test_current_pointer_and_state_files_as_fifo_or_dev_zero_neither_hang_nor_grow(tmp_path):
    from helpers import run_with_timeout

    root = tmp_path / "jobs"
    d = _fake_job(root, "j1", status="succeeded")
    (root / "current").unlink()
    os.mkfifo(root / "current")
    assert run_with_timeout(lambda: jobs.current_job(root=root), 10, "current_job() on a FIFO") is None
    (root / "current").unlink()
    (root / "current").write_text("j1")
    for name in ("state.json", "request.json"):
        (d / name).unlink()
        os.mkfifo(d / name)
    job = run_with_timeout(lambda: jobs.current_job(root=root), 10, "load_job() on FIFO state files")
    assert job.state == {} and job.request == {} and job.status == "unknown"
    (d / "events.jsonl").unlink(missing_ok=True)
    os.mkfifo(d / "events.jsonl")
    (d / "job.log").unlink(missing_ok=True)
    os.mkfifo(d / "job.log")
    assert run_with_timeout(lambda: progress.read_events(d), 10, "read_events() on a FIFO") == ([], 0)
    assert run_with_timeout(lambda: progress.log_tail(d), 10, "log_tail() on a FIFO") == ""
    if os.path.exists("/dev/zero"):
        for name in ("state.json", "events.jsonl", "job.log"):
            (d / name).unlink()
            (d / name).symlink_to("/dev/zero")
        assert run_with_timeout(lambda: jobs.read_state(d), 10, "read_state() on /dev/zero") == {}
        assert run_with_timeout(lambda: progress.read_events(d), 10, "read_events() on /dev/zero") == ([], 0)
        assert run_with_timeout(lambda: progress.log_tail(d), 10, "log_tail() on /dev/zero") == ""


def test_state_fields_of_the_wrong_type_are_dropped_and_linked_job_folders_skipped(tmp_path):
    root = tmp_path / "jobs"
    d = _fake_job(root, "j1", status="running")
    (d / "state.json").write_text(json.dumps({"status": ["running"], "pid": "123", "created": 5, "version": "v1"}))
    job = jobs.load_job(d)
    assert job.status == "unknown" and job.pid is None and job.version == "v1" and "created" not in job.state
    assert jobs.refresh(root=root).job_id == "j1"  # no TypeError while comparing or sorting
    outside = tmp_path / "elsewhere"
    _fake_job(outside, "j2", status="running", pid=2**22 + 1)
    (root / "j2").symlink_to(outside / "j2", target_is_directory=True)
    (root / "current").write_text("j2")
    assert [j.job_id for j in jobs.list_jobs(root=root)] == ["j1"]
    assert jobs.current_job(root=root) is None
    jobs.reconcile(root=root)  # never updates a job through a link
    assert jobs.read_state(outside / "j2")["status"] == "running"


# --- moved from test_admin_issue15.py / test_issue17_gaps.py: the job process ----------------------
def test_training_job_process_runs_at_lower_priority(tmp_path, monkeypatch):
    calls = []
    monkeypatch.setattr(job_runner.os, "nice", lambda n: calls.append(n) or n)
    (tmp_path / "job-x").mkdir()
    assert job_runner.run(tmp_path / "job-x") != 0  # no request.json: fails fast, after lowering its priority
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
            seen.update(k)

        def poll(self):
            return 0

    monkeypatch.setattr(jobs.subprocess, "Popen", FakeProc)
    monkeypatch.setenv("TF_CPP_MIN_LOG_LEVEL", "0")
    jobs.start_job(Config(backbone="micro", input_size=32, weights="none"), sample_root, artifacts=tmp_path / "art",
                   audit_path=tmp_path / "audit.jsonl")
    assert seen["env"]["TF_CPP_MIN_LOG_LEVEL"] == "3"


@pytest.mark.slow
def test_job_retrain_audit_line_carries_the_number_of_feedback_images(tmp_path, monkeypatch, tiny_config, sample_root):
    import numpy as np

    from core.feedback import FeedbackStore, default_feedback_dir

    art = tmp_path / "art"
    art.mkdir()
    log = tmp_path / "audit.jsonl"
    monkeypatch.setenv("PNEUMOSCOPE_ARTIFACTS", str(art))
    monkeypatch.setenv("PNEUMOSCOPE_AUDIT_LOG", str(log))
    store = FeedbackStore(default_feedback_dir(art), audit_path=log)
    rng = np.random.default_rng(0)
    pixels = (rng.random((48, 48)) * 255).astype(np.uint8)  # not a validation or test file
    rec = store.record(image_sha256="ab" * 32, model_version="v0001-tiny", probability=0.9, threshold=0.5,
                       guard_status="accepted", guard_code="ok", reader_id="r-test", agree=False,
                       believed_label="NORMAL", consent=True, pixels=pixels)
    store.review(rec["id"], "accepted", "checked by a second reader")
    job = jobs.start_job(tiny_config.replace(include_feedback=True), sample_root, artifacts=art, n_bootstrap=20)
    done = jobs.wait(job, timeout=300)
    assert done.status == "succeeded", (done.state, progress.log_tail(done))
    lines = [r for r in audit.read(log, actions=["retrain"]) if r["outcome"] == "succeeded"]
    assert len(lines) == 1 and lines[0]["version"] == done.version
    assert lines[0]["feedback_images"] == 1
