"""Issue 15, items 6 and 7: admin page (models table, live figures, quiet log, ImageNet check
at form time) and a training job that yields the CPU to the app."""

from __future__ import annotations

import datetime as dt
import json
import os
import subprocess
import sys
import time
from pathlib import Path

import pytest
from test_admin_page import PASSWORD, _app, _button, _dataframes, _login, _text, env, reg_env  # noqa: F401

from core import jobs
from ui import admin_components as ac

REPO = Path(__file__).resolve().parent.parent


# --- models table ---------------------------------------------------------------------------------
def test_models_table_puts_the_metrics_first_and_fits(reg_env, monkeypatch):
    monkeypatch.setenv("PNEUMOSCOPE_ADMIN_PASSWORD", PASSWORD)
    at = _login(_app().run(), PASSWORD)
    assert not at.exception, at.exception
    table = next(df for df in _dataframes(at) if "version" in getattr(df, "columns", []))
    cols = list(table.columns)
    assert cols[:5] == ["version", "ROC-AUC", "sensitivity", "specificity", "accuracy"]
    assert len(cols) <= 7  # the rest is in the Compare table
    card = json.loads((reg_env["registry"].models_dir / "v0001-tiny" / "card.json").read_text())
    row = table[table["version"].str.startswith("v0001-tiny")].iloc[0]
    assert row["sensitivity"] == pytest.approx(round(100 * card["test"]["sensitivity"], 1))  # percent


# --- ImageNet weights at form time --------------------------------------------------------------
def test_offline_machine_is_told_at_form_time_to_pick_random_initialisation(reg_env, monkeypatch):
    from core import jobs as jobs_mod

    monkeypatch.setenv("PNEUMOSCOPE_ADMIN_PASSWORD", PASSWORD)
    monkeypatch.setattr("ui.admin_components.imagenet_status",
                        lambda *a, **k: (False, "no cached copy in ~/.keras/models and storage.googleapis.com cannot be reached"))
    started = []
    monkeypatch.setattr(jobs_mod, "start_job", lambda *a, **k: started.append(a))
    at = _login(_app().run(), PASSWORD)
    warn = " ".join(w.value for w in at.warning)
    assert "ImageNet weights cannot be had on this machine" in warn
    assert "none (random initialisation)" in warn and "Starting weights" in warn
    radio = at.radio[0]
    assert radio.value == "none"  # preselected, since the default would fail here
    radio.set_value("imagenet")
    at = _button(at, "Start training").click().run()
    assert not at.exception
    errors = " ".join(e.value for e in at.error)
    assert "none (random initialisation)" in errors and not started
    page = _text(at)
    assert "weights='none'" not in page and 'weights="none"' not in page


def test_imagenet_status_cached_file_network_probe_and_cache(tmp_path, monkeypatch):
    import socket

    calls = []

    def no_network(*a, **k):
        calls.append(a)
        raise OSError("unreachable")

    monkeypatch.setattr(socket, "create_connection", no_network)
    monkeypatch.setenv("KERAS_HOME", str(tmp_path / "keras"))
    monkeypatch.setattr(ac, "_imagenet_cache", {})
    ok, how = ac.imagenet_status(now=1000.0)
    assert not ok and "storage.googleapis.com" in how and len(calls) == 1
    assert ac.imagenet_status(now=1010.0) == (ok, how) and len(calls) == 1  # cached
    (tmp_path / "keras" / "models").mkdir(parents=True)
    (tmp_path / "keras" / "models" / ac.IMAGENET_FILE).write_bytes(b"h5")
    ok, how = ac.imagenet_status(now=1000.0 + ac.IMAGENET_CHECK_TTL_S + 1)
    assert ok and "cached copy" in how and len(calls) == 1  # no network needed


# --- live figures and the log --------------------------------------------------------------------
def _job(tmp_path, events: list[dict], started_ago: float, status: str = "running") -> jobs.JobInfo:
    d = tmp_path / "job-1"
    d.mkdir(exist_ok=True)
    started = (dt.datetime.now(dt.timezone.utc) - dt.timedelta(seconds=started_ago)).isoformat(timespec="seconds")
    (d / "state.json").write_text(json.dumps({"job_id": "job-1", "status": status, "pid": os.getpid(),
                                              "created": started, "started": started}))
    (d / "events.jsonl").write_text("".join(json.dumps(e) + "\n" for e in events))
    return jobs.load_job(d)


def test_elapsed_keeps_moving_and_epoch_eta_are_filled(tmp_path):
    ev = [{"kind": "stage", "phase": "data", "message": "Indexing", "elapsed_s": 0.5},
          {"kind": "phase_start", "phase": "head", "epochs": 60, "message": "Phase 1", "elapsed_s": 10.0},
          {"kind": "epoch_end", "phase": "head", "epoch": 1, "epochs": 60, "batches": 10, "metrics": {"loss": 0.5}, "elapsed_s": 12.0},
          {"kind": "batch", "phase": "head", "epoch": 2, "epochs": 60, "batch": 5, "batches": 10, "metrics": {}, "elapsed_s": 13.0}]
    job = _job(tmp_path, ev, started_ago=100)
    s = jobs.summarize(job)
    now = time.time()
    a = ac.live_figures(job, s, now=now)
    b = ac.live_figures(job, s, now=now + 65)  # no new event for a minute: Elapsed still moves
    assert a["epoch"] == "2/60" and a["phase"] == "head"
    assert a["elapsed"] in ("1 min 40 s", "1 min 41 s", "1 min 39 s")
    assert b["elapsed"] != a["elapsed"] and b["elapsed"].startswith("2 min")
    assert a["eta"] not in ("—", "n/a")
    # Before any epoch (decoding data): Epoch says so, the ETA is being estimated.
    (tmp_path / "early").mkdir()
    job2 = _job(tmp_path / "early", ev[:1], started_ago=5)
    c = ac.live_figures(job2, jobs.summarize(job2), now=now)
    assert c["epoch"] == "not started" and c["eta"] == "estimating…"


def test_job_log_is_shown_without_tensorflow_start_up_noise():
    raw = "\n".join([
        "WARNING: All log messages before absl::InitializeLog() is called are written to STDERR",
        "I0000 00:00:1796039982.249287   13153 port.cc:153] oneDNN custom operations are on. You may see ...",
        "I0000 00:00:1796039982.249615   13153 cudart_stub.cc:31] Could not find cuda drivers on your machine, GPU will not be used.",
        "E0000 00:00:1796039990.761022   13215 cuda_platform.cc:52] failed call to cuInit: INTERNAL: CUDA error",
        "2026-01-01 10:00:00,000 INFO core.jobs: Training job job-1 started (pid 42)",
        "2026-01-01 10:00:05,000 INFO core.jobs.progress: Phase 1: base frozen, training the head",
        "E0000 00:00:1796039990.761022   13215 some_kernel.cc:12] Out of memory while allocating",
    ])
    out = ac.clean_log(raw)
    assert out.splitlines() == raw.splitlines()[4:]


# --- the job process ------------------------------------------------------------------------------
def test_training_job_process_runs_at_lower_priority(tmp_path, monkeypatch):
    calls = []
    monkeypatch.setattr(jobs.os, "nice", lambda n: calls.append(n) or n)
    (tmp_path / "job-x").mkdir()
    assert jobs.run(tmp_path / "job-x") != 0  # no request.json: fails fast, after lowering its priority
    assert calls == [jobs.JOB_NICENESS] and jobs.JOB_NICENESS >= 10
    # and for real, in a process of its own
    r = subprocess.run([sys.executable, "-c", "import os; from core import jobs; b = os.nice(0); jobs._lower_priority(); print(os.nice(0) - b)"],
                       cwd=REPO, capture_output=True, text=True, timeout=120)
    assert r.stdout.strip() == str(jobs.JOB_NICENESS), r.stderr


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
    from core.config import Config

    jobs.start_job(Config(backbone="micro", input_size=32, weights="none"), sample_root, artifacts=tmp_path / "art",
                   audit_path=tmp_path / "audit.jsonl")
    assert seen["env"]["TF_CPP_MIN_LOG_LEVEL"] == "3"


def test_compare_table_shows_rates_and_threshold_in_percent(registry_copy):
    import shutil

    src = registry_copy.models_dir / "v0001-tiny"
    shutil.copytree(src, registry_copy.models_dir / "v0002-copy")
    m = json.loads((src / "metrics.json").read_text())["test"]
    rows = {r["metric"]: r for r in ac.compare(registry_copy, "v0001-tiny", "v0002-copy")["rows"]}
    acc, thr, auc = rows["Accuracy (test)"], rows["Threshold (test)"], rows["ROC-AUC (test)"]
    assert acc["v0001-tiny"] == f"{100 * m['accuracy']:.1f} %" and acc["difference"] == "+0.0 pts"
    assert thr["v0001-tiny"] == f"{100 * m['threshold']:.1f} %"
    assert auc["v0001-tiny"] == f"{m['roc_auc']:.3f}" and auc["difference"] == "+0.000"
