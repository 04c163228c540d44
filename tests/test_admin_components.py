"""ui.admin_components: the admin page's non-widget logic (ImageNet availability, live job
figures, the quiet job log, the version comparison, the retrain form's configuration)."""

from __future__ import annotations

import datetime as dt
import json
import os
import shutil
import time

from core import jobs, progress
from core.evaluation import compare_reports
from ui import admin_components as ac


# --- ImageNet weights at form time --------------------------------------------------------------
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
    d = tmp_path / "jobs" / "job-1"  # an old job folder: imported into the database when first looked at
    d.mkdir(parents=True, exist_ok=True)
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
    s = progress.summarize(job)
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
    c = ac.live_figures(job2, progress.summarize(job2), now=now)
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


# --- the version comparison -----------------------------------------------------------------------
def test_compare_table_shows_rates_and_threshold_in_percent(registry_copy):
    src = registry_copy.models_dir / "v0001-tiny"
    shutil.copytree(src, registry_copy.models_dir / "v0002-copy")
    m = json.loads((src / "metrics.json").read_text())["test"]
    rows = {r["metric"]: r for r in ac.compare(registry_copy, "v0001-tiny", "v0002-copy")["rows"]}
    acc, thr, auc = rows["Accuracy (test)"], rows["Threshold (test)"], rows["ROC-AUC (test)"]
    assert acc["v0001-tiny"] == f"{100 * m['accuracy']:.1f} %" and acc["difference"] == "+0.0 pts"
    assert thr["v0001-tiny"] == f"{100 * m['threshold']:.1f} %"
    assert auc["v0001-tiny"] == f"{m['roc_auc']:.3f}" and auc["difference"] == "+0.000"


def test_admin_compare_is_the_core_comparison(registry_copy):
    shutil.copytree(registry_copy.models_dir / "v0001-tiny", registry_copy.models_dir / "v0002-copy")
    got = ac.compare(registry_copy, "v0001-tiny", "v0002-copy")
    cards = {v.name: v.card for v in registry_copy.versions()}
    want = compare_reports(registry_copy.read_json("v0001-tiny", "metrics.json"),
                           registry_copy.read_json("v0002-copy", "metrics.json"), "v0001-tiny", "v0002-copy",
                           cards["v0001-tiny"], cards["v0002-copy"])
    assert got == want


# --- the retrain form's test hook -------------------------------------------------------------------
def _form_config():
    return ac.build_config(input_size=64, weights_mode="none", head_epochs=5, finetune_epochs=5, head_learning_rate=1e-3,
                           finetune_learning_rate=1e-5, batch_size=32, val_fraction=0.2, seed=0)


def test_tiny_training_hook_is_off_by_default_and_replaces_the_recipe_when_set(monkeypatch):
    monkeypatch.delenv("PNEUMOSCOPE_TEST_TINY_TRAINING", raising=False)
    cfg = _form_config()
    assert (cfg.backbone, cfg.input_size, cfg.head_epochs, cfg.batch_size) == ("vgg19", 64, 5, 32)
    monkeypatch.setenv("PNEUMOSCOPE_TEST_TINY_TRAINING", "0")
    assert _form_config().backbone == "vgg19"
    monkeypatch.setenv("PNEUMOSCOPE_TEST_TINY_TRAINING", "1")
    cfg = _form_config()
    assert (cfg.backbone, cfg.input_size, cfg.weights, cfg.head_units) == ("micro", 32, "none", 8)
    assert cfg.head_epochs == 2 and cfg.finetune_epochs == 1 and cfg.batch_size == 8
