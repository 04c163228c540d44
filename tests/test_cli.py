"""Tests for ``python -m core``: exit codes as a user sees them (subprocess) and the commands
themselves in-process through ``core.cli.main`` (faster)."""

from __future__ import annotations

import csv
import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from core import cli, exitcodes
from helpers import run_with_timeout

REPO = Path(__file__).resolve().parent.parent


def _run(*args, env_extra=None, timeout=180):
    env = {**os.environ, "TF_CPP_MIN_LOG_LEVEL": "3", **(env_extra or {})}
    return subprocess.run([sys.executable, "-m", "core", *args], cwd=REPO, env=env, capture_output=True,
                          text=True, timeout=timeout)


def _no_traceback(text: str):
    assert "Traceback" not in text, text


# --- subprocess: exit codes as scripted against ---------------------------------------------------
def test_help_exits_0():
    r = _run("--help")
    assert r.returncode == 0
    for cmd in ("train", "evaluate", "predict", "data", "models", "export"):
        assert cmd in r.stdout


def test_unknown_command_exits_2():
    r = _run("frobnicate")
    assert r.returncode == exitcodes.EXIT_USAGE == 2
    assert "invalid choice" in r.stderr
    _no_traceback(r.stderr)


@pytest.mark.slow
def test_train_with_missing_data_root_exits_3(tmp_path):
    r = _run("--artifacts", str(tmp_path / "art"), "train", "--data-root", str(tmp_path / "missing"),
             "--weights", "none", "--input-size", "32")
    assert r.returncode == exitcodes.EXIT_DATA == 3, r.stderr
    assert "error: Data folder not found" in r.stderr and str(tmp_path / "missing") in r.stderr
    _no_traceback(r.stderr)
    assert not (tmp_path / "art" / "models").exists()  # nothing published


@pytest.mark.slow
def test_predict_without_model_exits_5(tmp_path, sample_root):
    empty = tmp_path / "empty-artifacts"
    r = _run("predict", str(sample_root / "test" / "NORMAL"), env_extra={"PNEUMOSCOPE_ARTIFACTS": str(empty)})
    assert r.returncode == exitcodes.EXIT_MODEL == 5
    assert "No active model" in r.stderr and "python -m core train" in r.stderr
    _no_traceback(r.stderr)


# --- in-process ----------------------------------------------------------------------------------------
def _main(capsys, *args):
    code = cli.main(list(args))
    out = capsys.readouterr()
    _no_traceback(out.err)
    return code, out.out, out.err


def test_usage_errors_exit_2(capsys, registry_copy):
    art = str(registry_copy.root)
    with pytest.raises(SystemExit) as ei:
        cli.main(["--artifacts", art, "predict"])  # missing inputs
    assert ei.value.code == 2
    capsys.readouterr()
    code, _, err = _main(capsys, "--artifacts", art, "models", "activate")
    assert code == 2 and "needs a version name" in err
    code, _, err = _main(capsys, "--artifacts", art, "train", "--data-root", "x", "--input-size", "8", "--weights", "none")
    assert code == 2 and "Received: input_size=8" in err


@pytest.fixture()
def bad_files(tmp_path, sample_root):
    d = tmp_path / "inputs"
    d.mkdir()
    good = sorted((sample_root / "test" / "PNEUMONIA").iterdir())[:2]
    for g in good:
        shutil.copy(g, d / g.name)
    (d / "zz_not_an_image.jpeg").write_text("hello")
    (d / "zz_empty.png").write_bytes(b"")
    (d / "notes.txt").write_text("ignored: not an image suffix")
    return d, [g.name for g in good]


def test_predict_some_bad_files_exits_4_and_writes_csv(capsys, registry_copy, bad_files, tmp_path):
    d, good = bad_files
    out_csv = tmp_path / "out.csv"
    cams = tmp_path / "cams"
    code, _, err = _main(capsys, "--artifacts", str(registry_copy.root), "predict", str(d), "--csv", str(out_csv),
                         "--gradcam-dir", str(cams))
    assert code == exitcodes.EXIT_PARTIAL == 4
    assert "wrote 5 rows" in err
    rows = list(csv.DictReader(out_csv.open()))
    assert len(rows) == 5  # notes.txt is not an image: marked SKIPPED, not left out (issue 22)
    by_name = {Path(r["file"]).name: r for r in rows}
    notes = by_name["notes.txt"]
    assert notes["result"] == "SKIPPED" and notes["ok"] == "False" and notes["error_code"] == "not_an_image"
    assert notes["message"] == "skipped: not an image (text)" and notes["probability_pneumonia_pct"] == ""
    assert "5 files: " in err and ", 2 unreadable, 1 skipped (not an image)" in err
    assert f"{d / 'notes.txt'}: not an image (text)" in err
    for g in good:
        r = by_name[g]
        assert r["ok"] == "True" and r["result"] in ("NORMAL", "PNEUMONIA", "INDETERMINATE")
        assert 0.0 <= float(r["probability_pneumonia_pct"]) <= 100.0  # percent, like the app (issue 15)
        assert r["model_version"] == "v0001-tiny" and len(r["sha256"]) == 64
    for bad in ("zz_not_an_image.jpeg", "zz_empty.png"):
        r = by_name[bad]
        assert r["ok"] == "False" and r["result"] == "ERROR"
        assert r["error_code"] and r["message"]
    method = registry_copy.load().config.explain_method
    assert sorted(p.name for p in cams.iterdir()) == sorted(cli.heatmap_name(d / g, method) for g in good)


def _film_dicom(sample_root, preamble: bool = True) -> bytes:
    """A sample film as a valid CR DICOM (8-bit MONOCHROME2)."""
    import cv2
    from test_imageio import make_dicom

    film = cv2.imread(str(sorted((sample_root / "test" / "PNEUMONIA").iterdir())[0]), cv2.IMREAD_GRAYSCALE)
    return make_dicom(film, preamble=preamble)


def test_predict_folder_of_pacs_exports_is_analysed_by_content(capsys, registry_copy, tmp_path, sample_root):
    """Issue 22 item 1: DICOMs named IMG0001, scan.dicom (and a bare data set without preamble) in
    a folder are analysed like the same files named on the command line."""
    d = tmp_path / "pacs"
    (d / "sub").mkdir(parents=True)
    (d / "IMG0001").write_bytes(_film_dicom(sample_root))
    (d / "scan.dicom").write_bytes(_film_dicom(sample_root))
    (d / "sub" / "IMG0002").write_bytes(_film_dicom(sample_root, preamble=False))
    out_csv = tmp_path / "out.csv"
    code, _, err = _main(capsys, "--artifacts", str(registry_copy.root), "predict", str(d), "--csv", str(out_csv))
    assert "no image files" not in err and "skipped" not in err
    rows = {Path(r["file"]).name: r for r in csv.DictReader(out_csv.open())}
    assert set(rows) == {"IMG0001", "scan.dicom", "IMG0002"}
    assert all(r["ok"] == "True" and r["result"] != "ERROR" for r in rows.values()), rows
    assert "3 files:" in err and "0 unreadable" in err and code in (0, 4)
    # The same answer as each file given by name.
    code1, out1, _ = _main(capsys, "--artifacts", str(registry_copy.root), "predict", str(d / "IMG0001"))
    assert out1.split()[0] == rows["IMG0001"]["result"]


def test_predict_mixed_folder_names_and_marks_what_it_skipped(capsys, registry_copy, tmp_path, sample_root):
    d = tmp_path / "mixed"
    d.mkdir()
    (d / "IMG0001").write_bytes(_film_dicom(sample_root))
    (d / "notes.txt").write_text("clinical notes, not an image")
    (d / "README").write_text("no extension, text")
    (d / "blank").write_bytes(b"")
    (d / "report.pdf").write_bytes(b"%PDF-1.4\n%\xe2\xe3\xcf\xd3\n1 0 obj\n<<>>\nendobj\n")
    out_csv = tmp_path / "out.csv"
    code, _, err = _main(capsys, "--artifacts", str(registry_copy.root), "predict", str(d), "--csv", str(out_csv))
    assert code in (0, 4)  # skipped entries alone never fail a run
    assert "skipped 4 entries that are not an image file:" in err
    for name, why in (("notes.txt", "text"), ("README", "text"), ("blank", "empty"), ("report.pdf", "a PDF document")):
        assert f"{d / name}: not an image ({why})" in err
    assert "5 files: " in err and ", 4 skipped (not an image)" in err
    rows = {Path(r["file"]).name: r for r in csv.DictReader(out_csv.open())}
    assert rows["IMG0001"]["ok"] == "True"
    assert {n for n, r in rows.items() if r["result"] == "SKIPPED"} == {"notes.txt", "README", "blank", "report.pdf"}
    # A folder with nothing to analyse: exit 3, and still says what it skipped.
    (d / "IMG0001").unlink()
    code, _, err = _main(capsys, "--artifacts", str(registry_copy.root), "predict", str(d))
    assert code == exitcodes.EXIT_DATA and "no image files found in the given inputs (4 skipped, named above)" in err
    assert f"{d / 'notes.txt'}: not an image (text)" in err


def test_predict_table_to_stdout_and_exit_0(capsys, registry_copy, sample_root):
    files = sorted((sample_root / "test" / "NORMAL").iterdir())[:2]
    code, out, _ = _main(capsys, "--artifacts", str(registry_copy.root), "predict", *map(str, files))
    assert code == 0
    lines = out.strip().splitlines()
    assert len(lines) == 2 and all(str(f) in ln for f, ln in zip(files, lines))


def test_predict_all_bad_files_exits_3(capsys, registry_copy, tmp_path):
    bad = tmp_path / "bad.jpeg"
    bad.write_text("nope")
    out_csv = tmp_path / "out.csv"
    code, _, _ = _main(capsys, "--artifacts", str(registry_copy.root), "predict", str(bad),
                       str(tmp_path / "missing.png"), "--csv", str(out_csv))
    assert code == exitcodes.EXIT_DATA == 3
    rows = list(csv.DictReader(out_csv.open()))
    assert [r["ok"] for r in rows] == ["False", "False"]
    assert rows[1]["error_code"] == "not_found"  # imageio's own code: a missing file is not an unreadable one


def test_predict_empty_folder_exits_3(capsys, registry_copy, tmp_path):
    (tmp_path / "empty").mkdir()
    code, _, err = _main(capsys, "--artifacts", str(registry_copy.root), "predict", str(tmp_path / "empty"))
    assert code == 3 and "no image files" in err


def test_evaluate_exits_0_and_writes_report(capsys, registry_copy, sample_root, tmp_path):
    out_json = tmp_path / "report.json"
    code, out, _ = _main(capsys, "--artifacts", str(registry_copy.root), "evaluate", "--data-root", str(sample_root),
                         "--split", "test", "--json", str(out_json))
    assert code == 0
    summary = json.loads(out)
    assert summary["version"] == "v0001-tiny" and summary["n"] == 8
    assert 0 <= summary["roc_auc"] <= 1 and len(summary["confusion_matrix"]) == 2
    report = json.loads(out_json.read_text())
    assert len(report["predictions"]) == 8 and report["split"] == "test"
    # same numbers as at training time (same model, same images, same calibration)
    stored = registry_copy.load().metrics()["test"]
    assert summary["roc_auc"] == pytest.approx(stored["roc_auc"], abs=1e-6)
    assert summary["accuracy_pct"] == round(100 * stored["accuracy"], 1)  # percent in --json (issue 22)
    assert report["accuracy"] == pytest.approx(stored["accuracy"])  # the full report keeps metrics.json's fractions


def test_evaluate_missing_split_exits_3(capsys, registry_copy, sample_root, tmp_path):
    root = tmp_path / "data"
    shutil.copytree(sample_root / "train", root / "train")
    code, _, err = _main(capsys, "--artifacts", str(registry_copy.root), "evaluate", "--data-root", str(root))
    assert code == 3 and "'test'" in err


def test_data_info(capsys, sample_root):
    code, out, _ = _main(capsys, "data", "--data-root", str(sample_root))
    assert code == 0
    assert "train" in out and "NORMAL=   10" in out and "class weights" in out


def test_data_info_missing_root_exits_3(capsys, tmp_path):
    code, _, err = _main(capsys, "data", "--data-root", str(tmp_path / "nope"))
    assert code == 3 and "Data folder not found" in err


def test_models_list_activate_delete(capsys, registry_copy):
    reg = registry_copy
    art = str(reg.root)
    shutil.copytree(reg.models_dir / "v0001-tiny", reg.models_dir / "v0002-copy")
    card = json.loads((reg.models_dir / "v0002-copy" / "card.json").read_text())
    card.update(version="v0002-copy", created="9999-12-31T00:00:00+00:00")
    (reg.models_dir / "v0002-copy" / "card.json").write_text(json.dumps(card))

    code, out, _ = _main(capsys, "--artifacts", art, "models", "list")
    assert code == 0
    lines = out.strip().splitlines()
    assert lines[0].startswith("* v0001-tiny") and lines[1].startswith("  v0002-copy")
    assert "32px" in lines[0] and "test_auc=" in lines[0]

    assert _main(capsys, "--artifacts", art, "models", "activate", "v0002-copy")[0] == 0
    assert reg.active_version() == "v0002-copy"
    code, _, err = _main(capsys, "--artifacts", art, "models", "delete", "v0002-copy")
    assert code == 5 and "Refusing to delete the active version" in err
    assert _main(capsys, "--artifacts", art, "models", "delete", "v0001-tiny")[0] == 0
    assert [v.name for v in reg.versions()] == ["v0002-copy"]
    code, _, err = _main(capsys, "--artifacts", art, "models", "activate", "v0001-tiny")
    assert code == 5 and "Cannot activate" in err
    code, _, err = _main(capsys, "--artifacts", art, "models", "activate", "../escape")
    assert code == 5 and "Received: version=" in err
    assert reg.active_version() == "v0002-copy"


def test_models_list_empty_registry(capsys, tmp_path):
    code, out, _ = _main(capsys, "--artifacts", str(tmp_path), "models", "list")
    assert code == 0 and "no versions" in out


def test_train_maps_flags_publishes_and_prints_summary(capsys, tmp_path, sample_root, trained_registry, monkeypatch):
    """cmd_train without paying for a training: core.training.train is replaced by a stub that
    records what the CLI asked for and returns the tiny fixture model as a TrainResult.
    (train() itself is covered by test_training.py and the trained_registry fixture.)"""
    from core import training
    from core.events import ProgressEvent
    from core.ood import OODStats
    from core.registry import Registry

    src = trained_registry.load()
    calls = {}

    def fake_train(config, data_root, **kwargs):
        calls.update(config=config, data_root=data_root, **kwargs)
        kwargs["progress"](ProgressEvent("phase_start", "head", epochs=1, message="Phase 1: stub"))
        return training.TrainResult(
            # (the CLI has no --head-units flag; the stub's model has the tiny head)
            model=src.model, config=config.replace(head_units=src.config.head_units, backbone=src.config.backbone),
            operating_point=src.operating_point,
            history=trained_registry.read_json(None, "history.json"), metrics=src.metrics(),
            provenance=trained_registry.read_json(None, "provenance.json"), ood=OODStats.load(src.path),
        )

    monkeypatch.setattr(training, "train", fake_train)
    art = tmp_path / "art"
    code, out, err = _main(
        capsys, "--artifacts", str(art), "train", "--data-root", str(sample_root), "--weights", "none",
        "--input-size", "32", "--head-epochs", "3", "--finetune-epochs", "0", "--batch-size", "8",
        "--val-fraction", "0.3", "--seed", "5", "--precision", "mixed_bfloat16", "--threshold-policy", "youden",
        "--naive-phase1", "--limit-per-class", "4", "--version", "v0001-cli", "--activate",
        "--finetune-schedule", "cosine", "--label-smoothing", "0.05", "--average-last-epochs", "2",
    )
    assert code == 0, err
    cfg = calls["config"]
    assert (cfg.input_size, cfg.weights, cfg.head_epochs, cfg.finetune_epochs, cfg.batch_size) == (32, "none", 3, 0, 8)
    assert (cfg.val_fraction, cfg.seed, cfg.precision, cfg.threshold_policy) == (0.3, 5, "mixed_bfloat16", "youden")
    assert (cfg.finetune_schedule, cfg.label_smoothing, cfg.average_last_epochs) == ("cosine", 0.05, 2)
    assert calls["data_root"] == sample_root and calls["naive_phase1"] is True and calls["limit_per_class"] == 4
    assert "Phase 1: stub" in err  # progress goes to stderr
    summary = json.loads(out)
    assert summary["version"] == "v0001-cli" and summary["active"] is True
    assert summary["test"]["n"] == 8 and "val_roc_auc" in summary
    assert 0 <= summary["test"]["accuracy_pct"] <= 100 and "accuracy" not in summary["test"]  # percent (issue 22)
    reg = Registry(art)
    assert reg.active_version() == "v0001-cli"
    assert reg.load().config.threshold_policy == "youden"
    # the same run as an admin-page job (core.runner): job record, audit lines with the same fields
    from core import audit

    job = _cli_job(art)
    assert job.status == "succeeded" and job.version == "v0001-cli" and job.state["test"]["roc_auc"] is not None
    recs = audit.read(artifacts=art)
    assert [(r["action"], r["outcome"]) for r in recs] == [("retrain", "started"), ("retrain", "succeeded"), ("promote", "ok")]
    assert recs[1]["job_id"] == job.job_id and recs[1]["version"] == "v0001-cli" and recs[1]["feedback_images"] == 0


def test_train_config_file_with_flag_overrides(capsys, tmp_path, monkeypatch):
    from core import training
    from core.config import Config
    from core.events import TrainingCancelled

    cfg_file = tmp_path / "cfg.json"
    Config(weights="none", head_units=16, dropout=0.3).save(cfg_file)
    seen = {}

    def fake_train(config, data_root, **kwargs):
        seen["config"] = config
        raise TrainingCancelled("stop here")

    monkeypatch.setattr(training, "train", fake_train)
    code, _, err = _main(capsys, "--artifacts", str(tmp_path / "a"), "train", "--config", str(cfg_file),
                         "--weights", "none", "--input-size", "48")
    assert code == exitcodes.EXIT_CANCELLED == 130 and "cancelled" in err
    c = seen["config"]
    assert (c.head_units, c.dropout, c.input_size) == (16, 0.3, 48)  # file values kept, flags override


def test_train_config_file_values_kept_for_flags_not_given(capsys, tmp_path, monkeypatch):
    from core import training
    from core.config import Config
    from core.events import TrainingCancelled

    cfg_file = tmp_path / "cfg.json"
    Config(weights="none", input_size=48, head_epochs=3, batch_size=8, seed=5).save(cfg_file)
    seen = {}

    def fake_train(config, data_root, **kwargs):
        seen["config"] = config
        raise TrainingCancelled("stop here")

    monkeypatch.setattr(training, "train", fake_train)
    code, _, _ = _main(capsys, "--artifacts", str(tmp_path / "a"), "train", "--config", str(cfg_file),
                       "--finetune-epochs", "0")
    assert code == 130
    c = seen["config"]
    assert (c.weights, c.input_size, c.head_epochs, c.batch_size, c.seed, c.finetune_epochs) == ("none", 48, 3, 8, 5, 0)


def _cli_job(art):
    from core import jobs

    job = jobs.current_job(artifacts=art)
    assert job is not None and job.request["requested_by"] == "cli"
    return job


def test_train_runs_as_a_registered_job_the_admin_page_shows(capsys, tmp_path, sample_root, monkeypatch):
    """``python -m core train`` is a job in the foreground: state, events and log like a page's job,
    the lock held while it runs, the same audit lines (core.runner.run_training)."""
    import signal

    from core import audit, locks, progress, training
    from core.events import ProgressEvent, TrainingCancelled

    art = tmp_path / "art"
    seen = {}

    def fake_train(config, data_root, *, progress, should_stop, feedback_dir, **kwargs):
        job = _cli_job(art)
        seen.update(status=job.status, pid=job.pid, busy=locks.acquire_training_lock(art),
                    feedback_dir=feedback_dir, handler=signal.getsignal(signal.SIGTERM))
        progress(ProgressEvent("phase_start", "head", epochs=3, message="Phase 1: stub"))
        progress(ProgressEvent("epoch_end", "head", epoch=1, epochs=3, metrics={"loss": 0.5}))
        raise TrainingCancelled("stop here")

    monkeypatch.setattr(training, "train", fake_train)
    before = signal.getsignal(signal.SIGTERM)
    code, out, err = _main(capsys, "--artifacts", str(art), "train", "--data-root", str(sample_root), "--weights", "none",
                           "--input-size", "32")
    assert code == exitcodes.EXIT_CANCELLED and err.strip().endswith("cancelled: stop here") and out == ""
    assert seen["status"] == "running" and seen["pid"] == os.getpid() and seen["busy"] is None
    assert seen["feedback_dir"] == art.resolve() / "feedback" and seen["handler"] != before
    assert signal.getsignal(signal.SIGTERM) == before  # restored for the rest of the process
    job = _cli_job(art)
    assert job.status == "cancelled" and job.error == "stop here" and job.state["finished"]
    s = progress.summarize(job)
    assert s.phase == "head" and s.curves["head"]["loss"] == [0.5]
    assert "Training job" in progress.log_tail(job) and "Phase 1: stub" in err
    recs = audit.read(artifacts=art, actions=["retrain"])
    assert [(r["outcome"], r["source"], r["job_id"]) for r in recs] == [("started", "cli", job.job_id),
                                                                          ("cancelled", "cli", job.job_id)]
    lease = locks.acquire_training_lock(art)
    assert lease is not None  # released
    lease.release()


@pytest.mark.parametrize("how", ["cancel flag", "SIGTERM"])
def test_train_is_cancelled_from_the_admin_page_like_a_job(capsys, tmp_path, sample_root, monkeypatch, how):
    """The page's Cancel writes the flag that should_stop polls; after the grace period it sends
    SIGTERM to the job's pid, here the CLI process: both end the CLI training as cancelled (130)."""
    import signal
    import time

    from core import jobs, training
    from core.events import TrainingCancelled

    art = tmp_path / "art"

    def fake_train(config, data_root, *, should_stop, **kwargs):
        job = _cli_job(art)
        if how == "SIGTERM":
            os.kill(job.pid, signal.SIGTERM)  # what jobs.refresh sends once the grace period is over
        else:
            jobs.cancel(job)
        deadline = time.monotonic() + 10
        while not should_stop() and time.monotonic() < deadline:  # the training's next batch
            time.sleep(0.01)
        raise TrainingCancelled("Training was cancelled.")

    monkeypatch.setattr(training, "train", fake_train)
    code, _, err = _main(capsys, "--artifacts", str(art), "train", "--data-root", str(sample_root), "--weights", "none",
                         "--input-size", "32")
    assert code == exitcodes.EXIT_CANCELLED and "cancelled: Training was cancelled" in err
    assert ("SIGTERM" in err) == (how == "SIGTERM")
    assert _cli_job(art).status == "cancelled"


def test_train_refuses_while_another_training_holds_the_lock(capsys, tmp_path, sample_root):
    """The CLI shares the admin page's training lock: a second training exits 6 at once."""
    from core import locks

    art = tmp_path / "art"
    lease = locks.acquire_training_lock(art)
    assert lease is not None
    try:
        code = cli.main(["--artifacts", str(art), "train", "--data-root", str(sample_root), "--weights", "none",
                         "--input-size", "32", "--head-epochs", "1", "--finetune-epochs", "0"])
    finally:
        lease.release()
    assert code == exitcodes.EXIT_BUSY == 6
    assert "another training job is running" in capsys.readouterr().err
    assert not (art / "models").exists()


def test_predict_rotate180_fixes_an_upside_down_film(capsys, registry_copy, sample_root, tmp_path):
    import cv2

    src = sorted((sample_root / "test" / "NORMAL").iterdir())[0]
    turned = tmp_path / "turned.png"
    cv2.imwrite(str(turned), cv2.imread(str(src), cv2.IMREAD_GRAYSCALE)[::-1, ::-1])
    out_csv = tmp_path / "out.csv"
    code, _, _ = _main(capsys, "--artifacts", str(registry_copy.root), "predict", str(turned), "--csv", str(out_csv))
    (row,) = list(csv.DictReader(out_csv.open()))
    assert code == exitcodes.EXIT_DATA and row["guard_code"] == "upside_down" and row["result"] == "REJECTED"
    _main(capsys, "--artifacts", str(registry_copy.root), "predict", str(turned), "--csv", str(out_csv), "--rotate180")
    (row,) = list(csv.DictReader(out_csv.open()))
    assert row["guard_code"] != "upside_down"


# --- issue 14: hardening -------------------------------------------------------------------------
@pytest.mark.skipif(not os.path.exists("/dev/zero"), reason="no /dev/zero")
@pytest.mark.slow
def test_predict_device_file_exits_3_without_reading_it(registry_copy):
    """Was: memory grew without bound (18 GB in 60 s). Run with an 8 GB address-space cap so a
    regression fails this test instead of the machine."""
    import resource

    def cap():
        resource.setrlimit(resource.RLIMIT_AS, (8 * 2**30, 8 * 2**30))

    env = {**os.environ, "TF_CPP_MIN_LOG_LEVEL": "3"}
    r = subprocess.run([sys.executable, "-m", "core", "--artifacts", str(registry_copy.root), "predict", "/dev/zero"],
                       cwd=REPO, env=env, capture_output=True, text=True, timeout=120, preexec_fn=cap)
    _no_traceback(r.stderr)
    assert r.returncode == exitcodes.EXIT_DATA == 3, r.stderr
    assert "character device" in r.stderr and "not a regular file" in r.stderr


def test_predict_named_pipe_exits_3_and_folder_walk_skips_pipes(capsys, registry_copy, tmp_path, sample_root):
    fifo = tmp_path / "pipe.png"
    os.mkfifo(fifo)
    code, _, err = run_with_timeout(what="the command", timeout=60.0, fn=lambda: _main(capsys, "--artifacts", str(registry_copy.root), "predict", str(fifo)))
    assert code == 3 and "named pipe" in err
    d = tmp_path / "folder"
    d.mkdir()
    os.mkfifo(d / "zz_pipe.jpeg")
    shutil.copy(sorted((sample_root / "test" / "NORMAL").iterdir())[0], d / "a.jpeg")
    code, out, err = run_with_timeout(what="the command", timeout=60.0, fn=lambda: _main(capsys, "--artifacts", str(registry_copy.root), "predict", str(d)))
    assert code in (0, 4) and "skipped 1 entry that is not an image file" in err
    assert f"{d / 'zz_pipe.jpeg'}: not a regular file (a named pipe (FIFO))" in err
    assert "a.jpeg" in out
    (pipe_line,) = [ln for ln in out.splitlines() if "zz_pipe" in ln]
    assert pipe_line.startswith("SKIPPED")


def test_predict_csv_neutralises_formulas_and_rejected_rows_have_no_probability(capsys, registry_copy, tmp_path,
                                                                                  sample_root):
    import cv2
    import numpy as np

    d = tmp_path / "in"
    d.mkdir()
    shutil.copy(sorted((sample_root / "test" / "NORMAL").iterdir())[0], d / "=HYPERLINK(1).jpeg")
    cv2.imwrite(str(d / "+grey.png"), np.full((300, 300), 128, np.uint8))  # rejected: nearly uniform
    cv2.imwrite(str(d / "@grey2.png"), np.full((300, 300), 90, np.uint8))
    out_csv = tmp_path / "out.csv"
    code, _, _ = _main(capsys, "--artifacts", str(registry_copy.root), "predict", str(d), "--csv", str(out_csv))
    assert code in (0, 4)
    raw = out_csv.read_text()
    rows = list(csv.DictReader(raw.splitlines()))
    for r in rows:  # no cell may start a formula
        assert not any(v and v[0] in "=+-@\t\r" for v in r.values()), r
    names = sorted(Path(r["file"].lstrip("'")).name for r in rows)
    assert names == ["+grey.png", "=HYPERLINK(1).jpeg", "@grey2.png"]
    rejected = [r for r in rows if r["guard_status"] == "rejected"]
    assert len(rejected) == 2
    for r in rejected:
        assert r["result"] == "REJECTED"
        assert all(v == "" for k, v in r.items() if "prob" in k), r
    # The table on stdout: the rejected lines carry no number before the file name.
    code, out, _ = _main(capsys, "--artifacts", str(registry_copy.root), "predict", str(d / "+grey.png"))
    line = next(ln for ln in out.splitlines() if "+grey.png" in ln)
    assert line.startswith("REJECTED") and not any(ch.isdigit() for ch in line.split(str(d))[0])


def test_gradcam_maps_of_inputs_sharing_a_base_name_do_not_overwrite(capsys, registry_copy, tmp_path, sample_root):
    src = sorted((sample_root / "test" / "PNEUMONIA").iterdir())[:2]
    for sub, f in zip(("a", "b"), src):
        (tmp_path / sub).mkdir()
        shutil.copy(f, tmp_path / sub / "x.jpeg")
    cams = tmp_path / "cams"
    code, _, _ = _main(capsys, "--artifacts", str(registry_copy.root), "predict", str(tmp_path / "a" / "x.jpeg"),
                       str(tmp_path / "b" / "x.jpeg"), "--gradcam-dir", str(cams))
    maps = sorted(p.name for p in cams.iterdir())
    method = registry_copy.load().config.explain_method
    assert len(maps) == 2 and all(m.startswith("x_") and m.endswith(f"_{method}.png") for m in maps)
    assert cli.heatmap_name(tmp_path / "a" / "x.jpeg", "hirescam") == cli.heatmap_name(tmp_path / "a" / "x.jpeg", "hirescam")
    assert cli.heatmap_name(tmp_path / "x.jpeg", "gradcam++").endswith("_gradcampp.png")


@pytest.mark.parametrize("kind", ["garbage", "lambda", "wrong_shape"])
@pytest.mark.slow
def test_damaged_or_unsafe_model_exits_5_with_one_line(registry_copy, tmp_path, sample_root, kind):
    import keras

    model = registry_copy.models_dir / "v0001-tiny" / "model.keras"
    if kind == "garbage":
        model.write_bytes(os.urandom(4000))
    else:
        inp = keras.Input((4,))
        out = keras.layers.Lambda(lambda t: t * 2)(inp) if kind == "lambda" else keras.layers.Dense(2)(inp)
        keras.Model(inp, out).save(str(model))
    f = sorted((sample_root / "test" / "NORMAL").iterdir())[0]
    r = _run("--artifacts", str(registry_copy.root), "predict", str(f))
    _no_traceback(r.stderr)
    assert r.returncode == exitcodes.EXIT_MODEL == 5, r.stderr
    lines = [ln for ln in r.stderr.splitlines() if ln.startswith("error:")]
    assert len(lines) == 1 and "could not be loaded" in lines[0] and "v0001-tiny" in lines[0]
    assert not any(ln.startswith(("{", "}", '"', "  ")) for ln in r.stderr.splitlines())  # no config dump
    if kind == "lambda":
        assert "safe mode" in lines[0]


def test_models_clean_staging_and_pending_activation(capsys, registry_copy):
    from core import locks

    reg = registry_copy
    art = str(reg.root)
    (reg.staging_dir / "v0009-x.deadbeef").mkdir(parents=True)
    (reg.staging_dir / "v0009-x.deadbeef" / "model.keras").write_bytes(b"x" * 1000)
    shutil.copytree(reg.models_dir / "v0001-tiny", reg.models_dir / "v0002-new")
    (reg.root / "PENDING_ACTIVATION").write_text("v0002-new\n")  # killed between rename and ACTIVE

    code, out, err = _main(capsys, "--artifacts", art, "models", "list")
    assert code == 0 and "v0002-new" in err and "--activate" in err and "stopped before it was activated" in err
    lease = locks.acquire_training_lock(reg.root)  # a training is running: nothing is touched
    try:
        code, _, err = _main(capsys, "--artifacts", art, "models", "clean-staging")
    finally:
        lease.release()
    assert code == exitcodes.EXIT_BUSY == 6 and "training job is running" in err
    assert (reg.staging_dir / "v0009-x.deadbeef").exists() and reg.active_version() == "v0001-tiny"

    code, out, err = _main(capsys, "--artifacts", art, "models", "clean-staging")
    assert code == 0 and "removed 1 stale entry" in out and "activated v0002-new" in out
    assert not any(reg.staging_dir.iterdir()) and reg.active_version() == "v0002-new"
    assert reg.pending_activation() is None
    code, out, _ = _main(capsys, "--artifacts", art, "models", "clean-staging")
    assert code == 0 and "nothing to clean" in out


@pytest.mark.slow
def test_export_of_a_model_of_the_wrong_shape_exits_5_with_one_line(registry_copy, tmp_path):
    import keras

    model = registry_copy.models_dir / "v0001-tiny" / "model.keras"
    inp = keras.Input((4,))
    keras.Model(inp, keras.layers.Dense(2)(inp)).save(str(model))
    r = _run("--artifacts", str(registry_copy.root), "export", "--out", str(tmp_path / "sm"))
    _no_traceback(r.stderr)
    assert r.returncode == exitcodes.EXIT_MODEL == 5, r.stderr
    lines = [ln for ln in r.stderr.splitlines() if ln.startswith("error:")]
    assert len(lines) == 1 and "v0001-tiny" in lines[0]


# --- names are text (issue 21) ----------------------------------------------------------------------
HOSTILE_NAMES = (
    "a\nNORMAL            2.1 %  b_patient.jpeg",  # a newline that would forge a second result row
    "c\x1b[2K\x1b[1A\r.jpeg",  # ANSI: erase the line, cursor up, carriage return
    "d\u202egpj.exe.jpeg",  # a right-to-left override
    "e\u2066f\u200bg\u0085.jpeg",  # an isolate, a zero-width space, a C1 next-line
)


def _hidden_chars(text: str) -> list[str]:
    import unicodedata

    return [hex(ord(c)) for c in text if c != "\n" and unicodedata.category(c) in ("Cc", "Cf", "Cs", "Zl", "Zp")]


def test_predict_table_has_one_visible_line_per_input_whatever_the_file_names(capsys, registry_copy, tmp_path, sample_root):
    src = sorted((sample_root / "test" / "PNEUMONIA").iterdir())[0]
    d = tmp_path / "in"
    d.mkdir()
    files = []
    for name in HOSTILE_NAMES:
        shutil.copy(src, d / name)
        files.append(d / name)
    files.append(d / "missing\nERROR.png")  # unreadable: its name is in the message column too
    code, out, err = _main(capsys, "--artifacts", str(registry_copy.root), "predict", *map(str, files))
    assert code in (0, 4)
    lines = out.splitlines()
    assert len(lines) == len(files), out  # exactly one row per input: nothing forged
    for f, line in zip(files, lines):
        assert cli.printable(str(f)) in line  # the row names its own file, escaped
        assert line.split()[0] in ("NORMAL", "PNEUMONIA", "INDETERMINATE", "REJECTED", "ERROR"), line
    assert _hidden_chars(out) == [] and _hidden_chars(err) == []
    assert "\\nNORMAL" in lines[0] and "\\x1b[2K\\x1b[1A\\r" in lines[1] and "d\\u202egpj" in lines[2]
    assert "\\u2066f\\u200bg\\x85" in lines[3]
    assert lines[-1].startswith("ERROR") and "missing\\nERROR.png" in lines[-1]


def test_predict_prints_an_undecodable_file_name_escaped(capsys, registry_copy, tmp_path, sample_root):
    src = sorted((sample_root / "test" / "NORMAL").iterdir())[0]
    d = tmp_path / "in"
    d.mkdir()
    try:
        raw = os.path.join(os.fsencode(d), b"z\xff\x1b.jpeg")  # not UTF-8: a lone surrogate once decoded
        shutil.copyfile(src, raw)
    except (OSError, UnicodeError):
        pytest.skip("this file system does not take non-UTF-8 names")
    code, out, err = _main(capsys, "--artifacts", str(registry_copy.root), "predict", str(d))
    assert code in (0, 4)
    (line,) = out.splitlines()
    assert "z\\udcff\\x1b.jpeg" in line and _hidden_chars(out + err) == []
    out_csv = tmp_path / "out.csv"  # the CSV is UTF-8 and names the file with its byte visible
    code, _, err = _main(capsys, "--artifacts", str(registry_copy.root), "predict", str(d), "--csv", str(out_csv))
    assert code in (0, 4) and "wrote 1 rows" in err
    (row,) = list(csv.DictReader(out_csv.open(encoding="utf-8")))
    assert row["file"].endswith("z\\udcff\x1b.jpeg")


def test_cli_error_messages_print_names_as_one_visible_line(capsys, registry_copy, tmp_path):
    # A named input that is not a regular file: the error names it, escaped, on one line.
    fifo = tmp_path / "pipe\n\x1b[2Kerror: all good"
    os.mkfifo(fifo)
    code, out, err = _main(capsys, "--artifacts", str(registry_copy.root), "predict", str(fifo))
    assert code == exitcodes.EXIT_DATA
    assert len(err.strip().splitlines()) == 1 and "pipe\\n\\x1b[2Kerror: all good" in err and _hidden_chars(err) == []
    code, out, err = _main(capsys, "--artifacts", str(registry_copy.root), "models", "delete", "v9\n\x1b[2Kdeleted v0001-tiny")
    assert code == exitcodes.EXIT_MODEL
    assert len(err.strip().splitlines()) == 1 and _hidden_chars(err) == [] and out == ""


# --- registry files are input (issue 21) -------------------------------------------------------------
@pytest.mark.parametrize("old,new,field", [
    ('"threshold": ', '"threshold": NaN, "x": ', "not valid JSON"),
    ('"threshold": ', '"threshold": 1e308, "x": ', "threshold"),
    ('"threshold": ', '"threshold": "high", "x": ', "threshold"),
    ('"temperature": ', '"temperature": -', "temperature"),
])
def test_predict_with_a_tampered_operating_point_exits_5_naming_the_version(capsys, registry_copy, sample_root,
                                                                           old, new, field):
    """Before: every film NORMAL with exit 0 (NaN, 1e308), probabilities inverted (negative
    temperature), or an unexpected TypeError with exit 1 (a string)."""
    p = registry_copy.models_dir / "v0001-tiny" / "operating_point.json"
    p.write_text(p.read_text().replace(old, new, 1))
    f = sorted((sample_root / "test" / "PNEUMONIA").iterdir())[0]
    code, out, err = _main(capsys, "--artifacts", str(registry_copy.root), "predict", str(f))
    assert code == exitcodes.EXIT_MODEL == 5 and out == ""
    (line,) = [ln for ln in err.splitlines() if ln.startswith("error:")]
    assert "'v0001-tiny' could not be loaded: it is broken" in line and "operating_point.json" in line and field in line


def test_models_list_names_a_broken_version_and_exits_5(capsys, registry_copy):
    reg = registry_copy
    shutil.copytree(reg.models_dir / "v0001-tiny", reg.models_dir / "v0002-bad")
    (reg.models_dir / "v0002-bad" / "card.json").write_text('["a list", "not a card"]')
    code, out, err = _main(capsys, "--artifacts", str(reg.root), "models", "list")
    assert code == exitcodes.EXIT_MODEL == 5
    (good,) = [ln for ln in out.splitlines() if "v0001-tiny" in ln]
    (bad,) = [ln for ln in out.splitlines() if "v0002-bad" in ln]
    assert good.startswith("* v0001-tiny") and "32px" in good and "test_auc=" in good  # as before
    assert bad.startswith("  v0002-bad") and "BROKEN: card.json: card must be a JSON object. Received: card=[" in bad
    assert "error: model version v0002-bad is broken" in err
    assert _main(capsys, "--artifacts", str(reg.root), "models", "activate", "v0002-bad")[0] == 5
    assert _main(capsys, "--artifacts", str(reg.root), "models", "delete", "v0002-bad")[0] == 0
    assert _main(capsys, "--artifacts", str(reg.root), "models", "list")[0] == 0


def test_models_list_with_an_old_active_fifo_returns(capsys, caplog, registry_copy, tmp_path):
    """An ACTIVE pointer file (before the database) that is a named pipe made `models list` (and
    every page) hang; now it is the one-time import that must not read it."""
    from core.registry import Registry

    root = tmp_path / "old-root"  # a root from before the database: models + the ACTIVE file only
    shutil.copytree(registry_copy.models_dir, root / "models")
    os.mkfifo(root / "ACTIVE")
    code = run_with_timeout(lambda: cli.main(["--artifacts", str(root), "models", "list"]), 20,
                            "models list with a FIFO as ACTIVE")
    assert code == 0 and "Not importing the active-version pointer" in caplog.text and "named pipe" in caplog.text
    code, _, err = _main(capsys, "--artifacts", str(root), "models", "activate", "v0001-tiny")
    assert code == 0 and Registry(root).active_version() == "v0001-tiny"


def test_clean_staging_and_train_start_never_empty_a_symlinked_staging(capsys, registry_copy, tmp_path):
    reg = registry_copy
    outside = tmp_path / "outside"
    outside.mkdir()
    (outside / "canary.txt").write_text("precious")
    for args in (("models", "clean-staging"), ("train", "--weights", "none", "--data-root", str(tmp_path / "no-data"))):
        if reg.staging_dir.is_dir() and not reg.staging_dir.is_symlink():
            shutil.rmtree(reg.staging_dir)
        reg.staging_dir.symlink_to(outside, target_is_directory=True)
        code, out, err = _main(capsys, "--artifacts", str(reg.root), *args)
        assert code == (0 if args[0] == "models" else exitcodes.EXIT_DATA), err
        assert "removed 1 stale entry" in out + err
        assert (outside / "canary.txt").read_text() == "precious" and not reg.staging_dir.is_symlink()


# --- moved from test_cli_issue15.py: what a new user tripped on in ``python -m core`` --------------
def _colour_photo(path: Path) -> None:
    import numpy as np
    from PIL import Image

    h, w = 400, 360
    img = np.zeros((h, w, 3), np.uint8)
    img[..., 0] = np.linspace(0, 255, w, dtype=np.uint8)[None, :]
    img[..., 1] = 80
    img[..., 2] = np.linspace(255, 0, h, dtype=np.uint8)[:, None]
    Image.fromarray(img).save(path)


def test_models_without_action_lists(capsys, registry_copy):
    code, out, err = _main(capsys, "--artifacts", str(registry_copy.root), "models")
    assert code == 0, err
    assert out.startswith("* v0001-tiny")


def test_predict_prints_counts_per_outcome_and_csv_in_percent(capsys, registry_copy, sample_root, tmp_path):
    import re

    d = tmp_path / "inputs"
    d.mkdir()
    for g in sorted((sample_root / "test" / "PNEUMONIA").iterdir())[:2]:
        shutil.copy(g, d / g.name)
    (d / "zz_not_an_image.jpeg").write_text("hello")
    (d / "zz_empty.png").write_bytes(b"")
    _colour_photo(d / "zz_holiday.png")
    out_csv = tmp_path / "out.csv"
    code, _, err = _main(capsys, "--artifacts", str(registry_copy.root), "predict", str(d), "--csv", str(out_csv))
    assert code == exitcodes.EXIT_PARTIAL
    assert "predicted 5/5" not in err
    m = re.search(r"5 files: (\d+) predicted, (\d+) indeterminate, 1 rejected, 2 unreadable", err)
    assert m and int(m.group(1)) + int(m.group(2)) == 2, err
    rows = list(csv.DictReader(out_csv.open()))
    assert {"probability_pneumonia_pct", "threshold_pct", "indeterminate_band_pct"} <= set(rows[0])
    assert "probability_pneumonia" not in rows[0] and "threshold" not in rows[0]
    ok = [r for r in rows if r["ok"] == "True" and r["guard_status"] != "rejected"]
    assert len(ok) == 2 and all(0.0 <= float(r["probability_pneumonia_pct"]) <= 100.0 for r in ok)
    thr = json.loads((registry_copy.models_dir / "v0001-tiny" / "operating_point.json").read_text())["threshold"]
    assert float(ok[0]["threshold_pct"]) == pytest.approx(round(100 * thr, 1))


def test_predict_table_shows_percent(capsys, registry_copy, sample_root):
    import re

    f = sorted((sample_root / "test" / "NORMAL").iterdir())[0]
    code, out, err = _main(capsys, "--artifacts", str(registry_copy.root), "predict", str(f))
    assert code in (0, 4)
    assert re.search(r"\d+\.\d %", out), out
    assert "1 file:" in err


def test_predict_model_version_flag_has_help_and_version_alias(capsys, registry_copy, sample_root):
    parser = cli.build_parser()
    sub = next(a for a in parser._actions if a.dest == "command").choices["predict"]
    help_text = sub.format_help()
    assert "--model-version NAME, --version NAME" in help_text
    assert "registry version of the model" in help_text
    f = str(sorted((sample_root / "test" / "NORMAL").iterdir())[0])
    for flag in ("--model-version", "--version"):
        code, out, _ = _main(capsys, "--artifacts", str(registry_copy.root), "predict", f, flag, "v0001-tiny")
        assert code in (0, 4) and f in out
    code, _, err = _main(capsys, "--artifacts", str(registry_copy.root), "predict", f, "--model-version", "v9999-nope")
    assert code == exitcodes.EXIT_MODEL and "v9999-nope" in err


def test_evaluate_prints_a_readable_table_and_json_on_request(capsys, registry_copy, sample_root, tmp_path):
    import re

    art = str(registry_copy.root)
    code, out, _ = _main(capsys, "--artifacts", art, "evaluate", "--data-root", str(sample_root))
    assert code == 0
    assert not out.lstrip().startswith("{")
    assert re.search(r"^Accuracy\s+\d+\.\d %\s+\d+\.\d % – \d+\.\d %$", out, re.M), out
    assert re.search(r"^ROC-AUC\s+\d\.\d{3}", out, re.M) and "confusion matrix" in out
    assert not re.search(r"\d\.\d{6,}", out)  # no 16-digit numbers
    assert "threshold" in out and "%" in out.splitlines()[0]
    code, out, _ = _main(capsys, "--artifacts", art, "evaluate", "--data-root", str(sample_root), "--json")
    assert code == 0
    summary = json.loads(out)
    assert summary["version"] == "v0001-tiny" and summary["n"] == 8
    # percent, as promised (issue 22 item 10): rates and threshold under *_pct keys, scores stay in [0, 1]
    stored = registry_copy.load().metrics()["test"]
    for key in ("threshold", "accuracy", "sensitivity", "specificity", "precision"):
        assert key not in summary and summary[f"{key}_pct"] == round(100 * stored[key], 1)
        assert key not in summary["ci95"] or key == "threshold"
    lo, hi = summary["ci95"]["accuracy_pct"]
    assert 0 <= lo <= summary["accuracy_pct"] <= hi <= 100 and hi - lo > 1  # percent, not a fraction
    assert 0 <= summary["roc_auc"] <= 1 and all(0 <= x <= 1 for x in summary["ci95"]["roc_auc"])
    report = tmp_path / "full.json"
    code, out, err = _main(capsys, "--artifacts", art, "evaluate", "--data-root", str(sample_root), "--report", str(report))
    assert code == 0 and "confusion matrix" in out and str(report) in err
    full = json.loads(report.read_text())
    # paths relative to the data root: portable to another machine
    assert all(not os.path.isabs(p["path"]) and p["path"].startswith("test/") for p in full["predictions"])


# TensorFlow's start-up lines (absl, oneDNN, CUDA probes, glog-style "I0000 12:00:00" prefixes).
TF_NOISE = r"cuInit|cudart_stub|absl::InitializeLog|oneDNN custom operations|^[IWEF]\d{4} \d\d:\d\d:\d\d"


@pytest.mark.parametrize("verbose", [False, True])
@pytest.mark.slow
def test_cli_silences_tensorflow_start_up_noise_unless_verbose(registry_copy, sample_root, verbose):
    import re

    env = {k: v for k, v in os.environ.items() if not k.startswith(("TF_CPP", "GLOG", "GRPC"))}
    f = str(sorted((sample_root / "test" / "NORMAL").iterdir())[0])
    args = ["-v"] if verbose else []
    r = subprocess.run([sys.executable, "-m", "core", *args, "--artifacts", str(registry_copy.root), "predict", f],
                       cwd=REPO, env=env, capture_output=True, text=True, timeout=300)
    assert r.returncode in (0, 4), r.stderr
    if verbose:
        return  # whatever TensorFlow says is shown (machine-dependent); it must still work
    assert not re.search(TF_NOISE, r.stderr, re.M), r.stderr
    assert "1 file:" in r.stderr


@pytest.mark.slow
def test_cli_train_prints_progress_without_tensorflow_warnings(sample_root, tmp_path):
    """Issue 22 item 11: `train` without -v printed TensorFlow's retracing warnings; with -v each
    warning is printed once (one handler), not twice."""
    import re

    env = {k: v for k, v in os.environ.items() if not k.startswith(("TF_CPP", "GLOG", "GRPC"))}
    cfg = tmp_path / "micro.json"
    cfg.write_text(json.dumps({"backbone": "micro", "input_size": 32, "weights": "none", "head_units": 8,
                               "head_epochs": 2, "finetune_epochs": 1, "batch_size": 8, "val_fraction": 0.3,
                               "early_stopping_patience": 3, "seed": 0}))
    outs = {}
    for verbose in (False, True):
        art = tmp_path / f"art-{verbose}"
        r = subprocess.run([sys.executable, "-m", "core", *(["-v"] if verbose else []), "--artifacts", str(art), "train",
                            "--config", str(cfg), "--data-root", str(sample_root)],
                           cwd=REPO, env=env, capture_output=True, text=True, timeout=600)
        assert r.returncode == 0, r.stderr
        outs[verbose] = r.stderr
    quiet = [ln for ln in outs[False].splitlines() if not re.match(r"^\[\s*\d+\.\d+s\] ", ln)]
    assert quiet == [], quiet  # progress lines only: no retracing warning, no start-up noise
    warnings = [ln for ln in outs[True].splitlines() if "retracing" in ln]
    assert len(warnings) == len(set(warnings))  # -v: shown, each once


def test_verbose_is_accepted_before_or_after_the_command():
    parser = cli.build_parser()
    assert parser.parse_args(["-v", "models"]).verbose is True
    assert parser.parse_args(["models", "list", "--verbose"]).verbose is True
    assert parser.parse_args(["predict", "x.png", "-v"]).verbose is True
    assert parser.parse_args(["predict", "x.png"]).verbose is False


def test_folders_of_extension_less_dicom_exports_are_analysed_and_skips_counted_and_named(capsys, registry_copy, tmp_path,
                                                                                          sample_root):
    """Issue 23 item 7: the CLI's folder walk and the dataset index decide by content, with one rule
    (core.imageio.image_file_check): DICOMs exported without an extension are analysed, and a file
    that is not an image is counted and named in the summary of both."""
    root = tmp_path / "pacs-export"
    for split in ("train", "test"):
        for cls in ("NORMAL", "PNEUMONIA"):
            d = root / split / cls
            d.mkdir(parents=True)
            for i in range(2):
                (d / f"IMG{i:04d}").write_bytes(_film_dicom(sample_root, preamble=i == 0))
    notes = root / "train" / "NORMAL" / "notes.txt"
    notes.write_text("clinical notes, not an image")
    # The dataset index: every extension-less DICOM is a sample, the text file is skipped by name.
    code, out, err = _main(capsys, "data", "--data-root", str(root))
    assert code == 0, err
    assert "NORMAL=    2" in out and "PNEUMONIA=    2" in out, out
    assert "skipped 1 entry that is not an image file:" in err and f"{notes}: not an image (text)" in err
    # The CLI predict walk of the same folder: 8 films analysed, the text file counted and named.
    out_csv = tmp_path / "out.csv"
    code, _, err = _main(capsys, "--artifacts", str(registry_copy.root), "predict", str(root), "--csv", str(out_csv))
    assert code in (0, 4), err
    assert "skipped 1 entry that is not an image file:" in err and f"{notes}: not an image (text)" in err
    assert "9 files: " in err and "0 unreadable" in err and ", 1 skipped (not an image)" in err
    rows = list(csv.DictReader(out_csv.open()))
    analysed = [r for r in rows if r["result"] != "SKIPPED"]
    assert len(analysed) == 8 and all(r["ok"] == "True" and Path(r["file"]).name.startswith("IMG") for r in analysed)
    assert [Path(r["file"]).name for r in rows if r["result"] == "SKIPPED"] == ["notes.txt"]
