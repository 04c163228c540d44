"""core.feedback (issue 17 A): the append-only store (the shared database's "feedback" stream,
issue 25), the consent rule, reviews, pixel deletion, the CLI, and the split rule (feedback reaches
training only)."""

from __future__ import annotations

import csv
import hashlib
import io
import json
import os
import threading

import numpy as np
import pytest

from core import audit
from core import db as dbm
from core.feedback import MAX_COMMENT, FeedbackError, FeedbackStore, grey_pixels, new_reader_id
from tests.dbfixtures import fresh_database, pg_url  # noqa: F401 - fixtures


def _sha(i) -> str:
    return hashlib.sha256(str(i).encode()).hexdigest()


@pytest.fixture(autouse=True)
def _own_database(monkeypatch):
    """Each artifacts root has its own SQLite file (no $PNEUMOSCOPE_DATABASE_URL of the caller)."""
    monkeypatch.delenv(dbm.DATABASE_URL_ENV, raising=False)
    yield
    dbm.dispose_all()


@pytest.fixture()
def store(tmp_path):
    return FeedbackStore(tmp_path / "artifacts" / "feedback")


def _fb_audit(store) -> list[dict]:
    """The ``feedback`` audit events of the store's artifacts root."""
    return audit.read(store.artifacts, actions=["feedback"])


def _rec(store, i=0, *, agree=False, label="PNEUMONIA", consent=False, pixels=None, version="v1", comment=""):
    return store.record(image_sha256=_sha(i), model_version=version, probability=0.3, threshold=0.19,
                        guard_status="accepted", guard_code="ok", reader_id=new_reader_id(), agree=agree,
                        believed_label=label, comment=comment, consent=consent, pixels=pixels)


def _img(h=40, w=30, colour=False):
    rng = np.random.default_rng(0)
    g = rng.integers(0, 256, (h, w), dtype=np.uint8)
    rgb = np.stack([g, g, g], -1)
    if colour:
        rgb[..., 0] = 255 - g
    return rgb


# --- store ----------------------------------------------------------------------------------------
def test_record_fields_status_and_audit(store, tmp_path):
    r = _rec(store, 1, comment="=cmd|' /C calc'!A0")
    items = store.items()
    assert [i["id"] for i in items] == [r["id"]]
    it = items[0]
    for key in ("image_sha256", "model_version", "probability", "threshold", "guard_status", "guard_code", "time",
                "reader_id", "agree", "believed_label", "comment"):
        assert key in it
    assert it["status"] == "pending" and it["reader_id"].startswith("r-") and it["agree"] is False
    ev = _fb_audit(store)
    assert ev[-1]["outcome"] == "recorded" and ev[-1]["feedback_id"] == r["id"] and ev[-1]["image_sha256"] == _sha(1)
    assert "comment" not in ev[-1]  # free text never goes to the audit log


def test_reader_ids_are_random_and_bad_input_is_refused(store):
    assert new_reader_id() != new_reader_id()
    with pytest.raises(FeedbackError):
        _rec(store, label="maybe")
    with pytest.raises(FeedbackError):
        store.record(image_sha256="../../etc/passwd", model_version="v1", probability=0.1, threshold=0.2,
                     guard_status="accepted", guard_code="ok", reader_id=new_reader_id(), agree=True,
                     believed_label="NORMAL")
    with pytest.raises(FeedbackError):  # a name is not an anonymous id
        store.record(image_sha256=_sha(1), model_version="v1", probability=0.1, threshold=0.2,
                     guard_status="accepted", guard_code="ok", reader_id="Dr Smith", agree=True,
                     believed_label="NORMAL")
    assert store.items() == []


def test_the_old_feedback_file_is_imported_once_torn_and_damaged_lines_skipped(tmp_path, caplog):
    """feedback.jsonl of before the database: imported at first use (a torn last line and a damaged
    line skipped and counted), never twice (another process, another instance), never written again."""
    import logging

    root = tmp_path / "artifacts" / "feedback"
    root.mkdir(parents=True)
    old = {"type": "feedback", "id": "a" * 12, "time": "2025-01-01T00:00:00.000Z", "image_sha256": _sha(1),
           "model_version": "v1", "agree": False, "believed_label": "NORMAL", "pixels_stored": False}
    review = {"type": "review", "id": "b" * 12, "feedback_id": "a" * 12, "time": "2025-01-02T00:00:00.000Z",
              "decision": "accepted", "reason": "ok"}
    body = (json.dumps(old) + "\n" + json.dumps(review) + "\n").encode() + b"\x00\xff garbage\n" + \
        b'{"type":"feedback","id":"torn","image_sha2'  # a crash in the middle of a write
    (root / "feedback.jsonl").write_bytes(body)
    store = FeedbackStore(root)
    with caplog.at_level(logging.INFO, logger="core.db"):
        assert [(i["id"], i["status"]) for i in store.items()] == [("a" * 12, "accepted")]
    assert any("Imported 2 record(s)" in r.getMessage() and "skipped 2" in r.getMessage() for r in caplog.records)
    b = _rec(store, 2)
    dbm.dispose_all()
    dbm._JSONL_CHECKED.clear()  # as a fresh process would
    again = FeedbackStore(root)
    assert [i["id"] for i in again.items()] == [b["id"], "a" * 12]
    assert (root / "feedback.jsonl").read_bytes() == body  # left in place, not written


def test_concurrent_appends_from_threads_lose_and_mangle_nothing(store):
    n_threads, per = 8, 15
    errors = []

    def work(t):
        try:
            for k in range(per):
                _rec(store, t * 1000 + k, comment="x" * 3000)  # long lines
        except Exception as e:  # noqa: BLE001
            errors.append(e)

    threads = [threading.Thread(target=work, args=(t,)) for t in range(n_threads)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert not errors
    recs = store.records()
    assert len(recs) == n_threads * per
    assert all(r["type"] == "feedback" and r["comment"] == "x" * MAX_COMMENT for r in recs)
    assert len({i["image_sha256"] for i in store.items()}) == n_threads * per


@pytest.mark.parametrize("backend", ["sqlite", "postgresql"])
def test_two_instances_write_into_one_review_queue(tmp_path, request, backend):
    """Two app instances (two Database objects, each its own connections and its own local folder)
    sharing one database: feedback written through either appears in one queue, reviews too."""
    if backend == "sqlite":
        url = f"sqlite:///{tmp_path / 'shared.db'}"
    else:  # the pg_url fixture skips with the reason where PostgreSQL cannot be installed
        url = fresh_database(request.getfixturevalue("pg_url"))
    d1 = dbm.connect(url=url)
    d2 = dbm.Database(dbm._make_engine(url), url)  # a second instance: its own engine and pool
    one = FeedbackStore(tmp_path / "one" / "feedback", db=d1)
    two = FeedbackStore(tmp_path / "two" / "feedback", db=d2)
    a, b = _rec(one, 1), _rec(two, 2, agree=True, label="NORMAL")
    for s in (one, two):
        assert {i["id"] for i in s.items()} == {a["id"], b["id"]}
    two.accept(a["id"], "confirmed")  # reviewed on the other instance
    assert {i["id"]: i["status"] for i in one.items()} == {a["id"]: "accepted", b["id"]: "pending"}
    assert [e["outcome"] for e in audit.read(d1, actions=["feedback"])] == ["recorded", "recorded", "accepted"]
    d2.engine.dispose()


_QUEUE_WRITER = r"""
import hashlib, sys
from core.feedback import FeedbackStore, new_reader_id
store = FeedbackStore(sys.argv[1])
for i in range(int(sys.argv[3])):
    store.record(image_sha256=hashlib.sha256(f"{sys.argv[2]}-{i}".encode()).hexdigest(), model_version="v1",
                 probability=0.5, threshold=0.2, guard_status="accepted", guard_code="ok", reader_id=new_reader_id(),
                 agree=False, believed_label="NORMAL")
"""


def test_two_processes_write_feedback_concurrently_into_one_queue(tmp_path):
    import subprocess
    import sys
    from pathlib import Path

    repo = Path(__file__).resolve().parent.parent
    root = tmp_path / "art" / "feedback"
    FeedbackStore(root).items()  # the schema exists before the writers race (as after any app start)
    env = {k: v for k, v in os.environ.items() if k != dbm.DATABASE_URL_ENV}
    procs = [subprocess.Popen([sys.executable, "-c", _QUEUE_WRITER, str(root), w, "25"], cwd=repo, text=True,
                              env={**env, "PYTHONPATH": str(repo)}, stderr=subprocess.PIPE) for w in ("a", "b")]
    errs = [p.communicate(timeout=120)[1] for p in procs]
    assert all(p.returncode == 0 for p in procs), [e[-500:] for e in errs]
    items = FeedbackStore(root).items()
    assert len(items) == 50 and len({i["id"] for i in items}) == 50
    assert len(_fb_audit(FeedbackStore(root))) == 50


# --- consent --------------------------------------------------------------------------------------
def test_no_pixels_without_consent(store):
    r = _rec(store, 1, consent=False, pixels=_img())
    assert r["pixels_stored"] is False
    assert not store.images_dir.exists() or not any(store.images_dir.iterdir())
    assert store.stored_pixels() == []
    r2 = _rec(store, 2, consent=True, pixels=None)  # consent but nothing to keep
    assert r2["pixels_stored"] is False and store.stored_pixels() == []


def test_consented_pixels_are_a_grey_png_without_metadata(store, tmp_path):
    from PIL import Image

    img = _img()
    r = _rec(store, 1, consent=True, pixels=img)
    assert r["pixels_stored"] is True
    p = store.pixel_path(_sha(1))
    with Image.open(p) as im:
        assert im.mode == "L" and im.size == (30, 40) and not im.info.get("exif") and not getattr(im, "text", {})
        assert np.array_equal(np.asarray(im), img[..., 0])
    rows = store.stored_pixels()
    assert [row["image_sha256"] for row in rows] == [_sha(1)] and rows[0]["feedback_ids"] == r["id"]
    assert grey_pixels(_img(colour=True)).ndim == 2


def test_record_prediction_uses_the_decoded_copy_only_with_consent(store):
    from core.predict import Prediction

    pred = Prediction("PatientName.dcm", True, label="NORMAL", probability=0.1, threshold=0.2, model_version="v9",
                      sha256=_sha(5), guard_status="accepted", guard_code="ok", image=_img())
    store.record_prediction(pred, reader_id=new_reader_id(), agree=True, believed_label="NORMAL", consent=False)
    assert store.stored_pixels() == []
    store.record_prediction(pred, reader_id=new_reader_id(), agree=True, believed_label="NORMAL", consent=True)
    assert [r["image_sha256"] for r in store.stored_pixels()] == [_sha(5)]
    assert "PatientName" not in json.dumps(store.records())  # the file name is never stored


def test_delete_pixels_is_audited_and_removes_the_image_from_training(store, tmp_path):
    r = _rec(store, 1, consent=True, pixels=_img(), label="NORMAL")
    store.accept(r["id"], "confirmed by a second reader")
    assert len(store.training_items()) == 1
    assert store.delete_pixels(_sha(1)) is True
    assert store.stored_pixels() == [] and store.training_items() == []
    assert store.items()[0]["pixels_available"] is False
    ev = _fb_audit(store)
    assert ev[-1]["outcome"] == "pixels_deleted" and ev[-1]["image_sha256"] == _sha(1)


# --- review ---------------------------------------------------------------------------------------
def test_review_filters_and_training_items(store, tmp_path):
    a = _rec(store, 1, agree=False, label="PNEUMONIA", consent=True, pixels=_img(), version="v1")
    b = _rec(store, 2, agree=True, label="NORMAL", consent=True, pixels=_img(), version="v2")
    c = _rec(store, 3, agree=False, label="NORMAL", consent=False, version="v2")
    u = _rec(store, 4, agree=False, label="unsure", version="v2")
    assert {i["id"] for i in store.items(disagreement=True)} == {a["id"], c["id"], u["id"]}
    assert {i["id"] for i in store.items(model_version="v2")} == {b["id"], c["id"], u["id"]}
    assert {i["id"] for i in store.items(disagreement=True, model_version="v2")} == {c["id"], u["id"]}
    with pytest.raises(FeedbackError):
        store.accept(a["id"], "  ")  # a reason is required
    with pytest.raises(FeedbackError):
        store.accept(u["id"], "no label to accept")
    with pytest.raises(FeedbackError):
        store.accept("nope", "x")
    store.accept(a["id"], "radiologist agrees")
    store.accept(c["id"], "ok")  # accepted, but no consented pixels: not usable for training
    store.reject(b["id"], "film quality")
    st = {i["id"]: (i["status"], i["reason"]) for i in store.items()}
    assert st[a["id"]] == ("accepted", "radiologist agrees") and st[b["id"]] == ("rejected", "film quality")
    assert st[u["id"]] == ("pending", "")
    assert [(t["image_sha256"], t["label"]) for t in store.training_items()] == [(_sha(1), "PNEUMONIA")]
    store.reject(a["id"], "changed my mind")  # the latest review wins, nothing is rewritten
    assert store.training_items() == []
    outcomes = [e["outcome"] for e in _fb_audit(store)]
    assert outcomes.count("accepted") == 2 and outcomes.count("rejected") == 2


def test_export_csv_is_neutralised(store):
    _rec(store, 1, comment="=HYPERLINK(\"http://x\")")
    text = store.export_csv().decode()
    rows = list(csv.DictReader(io.StringIO(text)))
    assert rows[0]["comment"].startswith("'=") and rows[0]["status"] == "pending"


def test_export_csv_carries_percent(store):
    """Issue 22 item 10: probability and threshold in percent, in columns that say so."""
    _rec(store, 1)  # probability 0.3, threshold 0.19
    rows = list(csv.DictReader(io.StringIO(store.export_csv().decode())))
    assert rows[0]["probability_pct"] == "30.0" and rows[0]["threshold_pct"] == "19.0"
    assert "probability" not in rows[0] and "threshold" not in rows[0]
    assert store.items()[0]["probability"] == 0.3  # the store itself keeps the fraction


# --- CLI ------------------------------------------------------------------------------------------
def test_cli_list_export_accept_reject(tmp_path, capsys, monkeypatch):
    from core import cli
    from core.feedback import default_feedback_dir

    art = tmp_path / "art"
    store = FeedbackStore(default_feedback_dir(art))
    a = _rec(store, 1, agree=False, label="PNEUMONIA", consent=True, pixels=_img())
    b = _rec(store, 2, agree=True, label="NORMAL", version="v2")

    assert cli.main(["--artifacts", str(art), "feedback", "list"]) == 0
    out = capsys.readouterr().out
    assert a["id"] in out and b["id"] in out and "2 record(s)" in out
    assert cli.main(["--artifacts", str(art), "feedback", "list", "--disagree"]) == 0
    out = capsys.readouterr().out
    assert a["id"] in out and b["id"] not in out

    assert cli.main(["--artifacts", str(art), "feedback", "accept", a["id"]]) == 2  # no reason
    capsys.readouterr()
    assert cli.main(["--artifacts", str(art), "feedback", "accept", a["id"], "--reason", "confirmed"]) == 0
    assert cli.main(["--artifacts", str(art), "feedback", "reject", b["id"], "--reason", "blurred"]) == 0
    assert cli.main(["--artifacts", str(art), "feedback", "reject", "unknown", "--reason", "x"]) == 3
    capsys.readouterr()
    st = {i["id"]: i["status"] for i in store.items()}
    assert st == {a["id"]: "accepted", b["id"]: "rejected"}

    out_csv = tmp_path / "fb.csv"
    assert cli.main(["--artifacts", str(art), "feedback", "export", "--out", str(out_csv), "--status", "accepted"]) == 0
    rows = list(csv.DictReader(out_csv.open()))
    assert [r["id"] for r in rows] == [a["id"]] and rows[0]["reason"] == "confirmed"
    assert cli.main(["--artifacts", str(art), "feedback", "export"]) == 0
    assert len(list(csv.DictReader(io.StringIO(capsys.readouterr().out)))) == 2
    ev = audit.read(art, actions=["feedback"])
    assert [e["source"] for e in ev if e["outcome"] in ("accepted", "rejected")] == ["cli", "cli"]


def test_cli_list_prints_one_visible_line_per_record_whatever_the_log_holds(tmp_path, capsys, monkeypatch):
    """A version name (or any field) with a newline or ANSI codes cannot forge or erase a line (issue 21)."""
    import unicodedata

    from core import cli
    from core.feedback import default_feedback_dir

    art = tmp_path / "art"
    store = FeedbackStore(default_feedback_dir(art))
    rec = _rec(store, 1, version="v1\n\x1b[2Kfb-forged  accepted", comment="line one\nline two")
    assert cli.main(["--artifacts", str(art), "feedback", "list"]) == 0
    lines = capsys.readouterr().out.splitlines()
    assert len(lines) == 3 and lines[1].startswith(rec["id"]) and lines[2] == "1 record(s)", lines
    assert "v1\\n\\x1b[2Kfb-forg" in lines[1]
    assert not [c for c in "".join(lines) if unicodedata.category(c) in ("Cc", "Cf")]


# --- split rule: feedback reaches training only ---------------------------------------------------
def _accepted(store, sha, pixels, label="PNEUMONIA", consent=True, accept=True):
    r = store.record(image_sha256=sha, model_version="v1", probability=0.3, threshold=0.19, guard_status="accepted",
                     guard_code="ok", reader_id=new_reader_id(), agree=False, believed_label=label, consent=consent,
                     pixels=pixels)
    if accept:
        store.accept(r["id"], "checked")
    return r


def test_feedback_reaches_the_training_part_only(tmp_path, sample_root, tiny_config):
    from core.imageio import load_image
    from core.training import _file_sha256, assemble_data

    base = assemble_data(tiny_config, sample_root)
    store = FeedbackStore(tmp_path / "feedback")
    new_sha = _sha("new film")
    _accepted(store, new_sha, _img(80, 80), label="NORMAL")
    for s in (base.val_samples[0], base.test_samples[0]):  # held-out files uploaded and relabelled
        _accepted(store, _file_sha256(s.path), load_image(s.path).array)
    _accepted(store, _sha("pending"), _img(), accept=False)  # not reviewed
    _accepted(store, _sha("no consent"), _img(), consent=False)  # accepted, no pixels

    data = assemble_data(tiny_config.replace(include_feedback=True), sample_root, feedback_dir=store.root)
    assert data.feedback_hashes == [new_sha] and data.feedback_excluded == 2
    assert len(data.tr) == len(base.tr) + 1
    assert data.tr.paths[-1] == f"feedback/{new_sha}.png" and data.tr.y[-1] == 0
    assert np.array_equal(data.tr.x[:-1], base.tr.x)
    # validation and test are exactly what they are without feedback
    assert [s.path for s in data.val_samples] == [s.path for s in base.val_samples]
    assert np.array_equal(data.va.x, base.va.x) and np.array_equal(data.te.x, base.te.x)
    assert not any("feedback" in p for p in data.va.paths + data.te.paths)
    # off by default: the same store changes nothing
    off = assemble_data(tiny_config, sample_root, feedback_dir=store.root)
    assert off.feedback_hashes == [] and len(off.tr) == len(base.tr)


def test_include_feedback_round_trips_in_config_json(tmp_path, tiny_config):
    from core.config import Config

    cfg = tiny_config.replace(include_feedback=True)
    cfg.save(tmp_path / "config.json")
    assert Config.load(tmp_path / "config.json").include_feedback is True
    assert Config().include_feedback is False
    with pytest.raises(ValueError):
        Config(include_feedback="yes")


@pytest.mark.slow
def test_training_with_feedback_records_count_and_hashes(tmp_path, sample_root, tiny_config):
    from core.registry import Registry
    from core.publish import publish
    from core.training import train

    store = FeedbackStore(tmp_path / "feedback")
    sha = _sha("film")
    _accepted(store, sha, _img(64, 64))
    result = train(tiny_config.replace(include_feedback=True, finetune_epochs=0), sample_root, n_bootstrap=20,
                   feedback_dir=store.root)
    reg = Registry(tmp_path / "art")
    version = publish(result, reg, "v0001-fb")
    card = reg.read_json(version, "card.json")
    prov = reg.read_json(version, "provenance.json")
    assert card["feedback_images"] == 1 and card["counts"]["feedback"] == 1
    assert prov["feedback"]["images"] == 1 and prov["feedback"]["sha256"] == [sha]
    assert reg.read_json(version, "config.json")["include_feedback"] is True


@pytest.mark.slow
def test_cli_train_include_feedback_reads_the_registry_feedback_folder(tmp_path, sample_root, tiny_config, monkeypatch):
    from core import cli
    from core.feedback import default_feedback_dir
    from core.registry import Registry

    art = tmp_path / "art"
    store = FeedbackStore(default_feedback_dir(art))
    sha = _sha("cli film")
    _accepted(store, sha, _img(64, 64), label="NORMAL")
    cfg_path = tmp_path / "tiny.json"
    tiny_config.replace(finetune_epochs=0).save(cfg_path)
    code = cli.main(["--artifacts", str(art), "train", "--config", str(cfg_path), "--data-root", str(sample_root),
                     "--include-feedback", "--version", "v0001-fb"])
    assert code == 0
    prov = Registry(art).read_json("v0001-fb", "provenance.json")
    assert prov["feedback"]["sha256"] == [sha]
    assert Registry(art).read_json("v0001-fb", "config.json")["include_feedback"] is True


# --- issue 21: no orphan pixels, leftovers of interrupted writes are listed and cleaned ----------
def _names(store) -> set[str]:
    return {p.name for p in store.images_dir.iterdir()} if store.images_dir.is_dir() else set()


def _age(path, seconds: float) -> None:
    import os
    import time

    t = time.time() - seconds
    os.utime(path, (t, t), follow_symlinks=False)


def test_pixels_go_to_a_temporary_file_then_the_record_then_into_place(store, tmp_path, monkeypatch):
    """A crash after the record but before the rename (simulated: the rename fails) leaves only an
    'unfinished' temporary file, which the clean-up moves into place: the consented pixels are kept."""
    import core.feedback as fb

    def no_rename(src, dst):
        raise OSError("simulated crash before the rename")

    monkeypatch.setattr(fb.os, "replace", no_rename)
    rec = _rec(store, 1, consent=True, pixels=_img())
    monkeypatch.undo()
    assert rec["pixels_stored"] is True
    (name,) = _names(store)
    assert name == f".{_sha(1)}.{rec['id']}.png.tmp"
    assert store.items()[0]["pixels_available"] is False  # not in place yet, so not offered for training
    (row,) = store.debris()
    assert row["kind"] == "unfinished" and row["image_sha256"] == _sha(1) and "finish" in row["action"]
    assert store.clean_debris() == {"finished": 0, "removed": 0, "too_young": 1, "left": 0}  # maybe in flight
    assert store.clean_debris(min_age_s=0)["finished"] == 1
    assert _names(store) == {f"{_sha(1)}.png"} and store.debris() == []
    assert store.items()[0]["pixels_available"] is True
    ev = _fb_audit(store)
    assert ev[-1]["outcome"] == "pixels_completed" and ev[-1]["image_sha256"] == _sha(1)


def test_a_record_that_cannot_be_written_leaves_no_pixels(store, monkeypatch):
    def full_disk(record):
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(store, "_append", full_disk)
    with pytest.raises(OSError, match="No space"):
        _rec(store, 2, consent=True, pixels=_img())
    assert _names(store) == set()


def test_leftovers_are_listed_by_kind_and_old_ones_cleaned(store, tmp_path):
    import os

    from core.feedback import DEBRIS_KINDS

    kept = _rec(store, 1, consent=True, pixels=_img())  # a normal stored image: not debris
    d = store.images_dir
    (d / f"{_sha(9)}.png").write_bytes(store._png(_img()))  # orphan: written by an older version, no record
    (d / f".{_sha(8)}.{'a' * 12}.png.tmp").write_bytes(b"\x89PNG half")  # killed before its record
    (d / f".{_sha(7)}.png.0123abcd.tmp").write_bytes(b"x")  # an old-style atomic-write leftover
    os.symlink("/etc/hostname", d / f"{_sha(6)}.png")  # never followed, never opened
    (d / "notes.txt").write_text("someone's file")
    young = d / f".{_sha(5)}.{'b' * 12}.png.tmp"
    young.write_bytes(b"y")
    for p in d.iterdir():
        if p != young:
            _age(p, 3600)
    rows = {r["name"]: r for r in store.debris()}
    assert {r["kind"] for r in rows.values()} == set(DEBRIS_KINDS) - {"unfinished"}
    assert f"{_sha(1)}.png" not in rows  # the stored image is not listed
    assert rows[f"{_sha(9)}.png"]["kind"] == "orphan" and rows[f"{_sha(6)}.png"]["kind"] == "link"
    assert rows["notes.txt"]["kind"] == "unknown"
    assert [r["kind"] for r in store.stored_pixels() if r["image_sha256"] == _sha(6)] == []  # the link is not "stored"
    assert _names(store) == set(rows) | {f"{_sha(1)}.png"}  # nothing unlisted
    counts = store.clean_debris(source="test")
    assert counts == {"finished": 0, "removed": 4, "too_young": 1, "left": 1}
    assert _names(store) == {f"{_sha(1)}.png", "notes.txt", young.name}
    assert os.path.exists("/etc/hostname")  # removing the link did not touch its target
    assert store.items()[0]["id"] == kept["id"] and store.items()[0]["pixels_available"]
    removed = [e for e in _fb_audit(store) if e["outcome"] == "debris_removed"]
    assert len(removed) == 4 and all(e["source"] == "test" for e in removed)


def test_cleanup_never_brings_back_pixels_the_admin_deleted(store, monkeypatch):
    import core.feedback as fb

    monkeypatch.setattr(fb.os, "replace", lambda s, d: (_ for _ in ()).throw(OSError("crash")))
    _rec(store, 3, consent=True, pixels=_img())
    monkeypatch.undo()
    store.delete_pixels(_sha(3))  # the admin withdraws the pixels before the clean-up ran
    (row,) = store.debris()
    assert row["kind"] == "temporary"
    store.clean_debris(min_age_s=0)
    assert _names(store) == set()


def test_an_orphan_image_is_never_offered_for_training(store):
    r = _rec(store, 4, label="NORMAL", consent=False)  # no consent: no pixels kept by any record
    store.accept(r["id"], "ok")
    store.images_dir.mkdir(parents=True, exist_ok=True)
    (store.images_dir / f"{_sha(4)}.png").write_bytes(store._png(_img()))
    assert store.items()[0]["pixels_available"] is False and store.training_items() == []
    assert [row["kind"] for row in store.debris()] == ["orphan"]


_WRITER = r"""
import hashlib, sys
import numpy as np
sys.path.insert(0, sys.argv[3])
from core.feedback import FeedbackStore, new_reader_id
store = FeedbackStore(sys.argv[1])
rng = np.random.default_rng(int(sys.argv[4]))
for i in range(10**6):
    sha = hashlib.sha256(f"{sys.argv[4]}-{i}".encode()).hexdigest()
    rec = store.record(image_sha256=sha, model_version="v1", probability=0.5, threshold=0.2, guard_status="accepted",
                       guard_code="ok", reader_id=new_reader_id(), agree=False, believed_label="NORMAL", consent=True,
                       pixels=rng.integers(0, 256, (384, 384), dtype=np.uint8))
    print(rec["id"], flush=True)
"""


@pytest.mark.slow
def test_kill_9_during_feedback_writes_leaves_no_unlisted_debris_and_loses_no_confirmed_pixels(tmp_path):
    """Real SIGKILLs at random moments of a process writing consented feedback: afterwards every
    file in images/ is a stored image with its record or is listed by debris(); the clean-up
    leaves no leftovers, and every record the writer was told about has its pixels."""
    import os
    import random
    import signal
    import subprocess
    import sys
    import time
    from pathlib import Path

    repo = str(Path(__file__).resolve().parent.parent)
    root, log = tmp_path / "feedback", tmp_path / "audit.jsonl"
    confirmed: list[str] = []
    rnd = random.Random(21)
    for round_ in range(6):
        proc = subprocess.Popen([sys.executable, "-c", _WRITER, str(root), str(log), repo, str(round_)],
                                stdout=subprocess.PIPE, text=True)
        confirmed.append(proc.stdout.readline().strip())  # it is writing now
        time.sleep(rnd.uniform(0.0, 0.4))
        os.kill(proc.pid, signal.SIGKILL)
        out, _ = proc.communicate(timeout=30)
        confirmed += [line for line in out.split("\n") if line.strip()]
        store = FeedbackStore(root)
        listed = {r["name"] for r in store.debris()}
        stored = {f"{r['image_sha256']}.png" for r in store.items() if r["pixels_available"]}
        assert _names(store) == listed | stored, "a file is neither a stored image nor listed as a leftover"
    store = FeedbackStore(root)
    assert all(r["kind"] in ("unfinished", "temporary") for r in store.debris())  # never an orphan image
    store.clean_debris(min_age_s=0)
    assert store.debris() == [] and not [n for n in _names(store) if n.endswith(".tmp")]
    items = {r["id"]: r for r in store.items()}
    assert confirmed and all(items[i]["pixels_available"] for i in confirmed)
    assert _names(store) == {f"{r['image_sha256']}.png" for r in items.values() if r["pixels_available"]}


def test_cli_feedback_clean_lists_and_cleans_old_leftovers(tmp_path, capsys, monkeypatch):
    from core import cli
    from core.feedback import default_feedback_dir

    art = tmp_path / "art"
    store = FeedbackStore(default_feedback_dir(art))
    store.images_dir.mkdir(parents=True)
    old = store.images_dir / f".{_sha(1)}.{'c' * 12}.png.tmp"
    old.write_bytes(b"half")
    _age(old, 3600)
    (store.images_dir / f".{_sha(2)}.{'d' * 12}.png.tmp").write_bytes(b"in flight?")
    assert cli.main(["--artifacts", str(art), "feedback", "clean"]) == 0
    out = capsys.readouterr().out
    assert "2 leftover(s): 0 finished, 1 removed, 1 younger than 60 s kept, 0 left for a person" in out
    assert "temporary" in out and not old.exists()
