"""core.feedback (issue 17 A): the append-only store, the consent rule, reviews, pixel deletion,
the CLI, and the split rule (feedback reaches training only)."""

from __future__ import annotations

import csv
import hashlib
import io
import json
import threading

import numpy as np
import pytest

from core import audit
from core.feedback import FeedbackError, FeedbackStore, grey_pixels, new_reader_id


def _sha(i) -> str:
    return hashlib.sha256(str(i).encode()).hexdigest()


@pytest.fixture()
def store(tmp_path):
    return FeedbackStore(tmp_path / "artifacts" / "feedback", audit_path=tmp_path / "audit.jsonl")


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
    ev = audit.read(tmp_path / "audit.jsonl", actions=["feedback"])
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


def test_torn_last_line_is_ignored_and_the_next_write_starts_a_fresh_line(store):
    a = _rec(store, 1)
    with open(store.log_path, "ab") as fh:  # a crash in the middle of a write
        fh.write(b'{"type":"feedback","id":"torn","image_sha2')
    assert [i["id"] for i in store.items()] == [a["id"]]
    b = _rec(store, 2)
    assert {i["id"] for i in store.items()} == {a["id"], b["id"]}
    lines = store.log_path.read_bytes().split(b"\n")
    assert lines[1].startswith(b'{"type":"feedback","id":"torn"') and json.loads(lines[2])["id"] == b["id"]
    # a damaged line in the middle is skipped too
    with open(store.log_path, "ab") as fh:
        fh.write(b"\x00\xff garbage\n")
    c = _rec(store, 3)
    assert {i["id"] for i in store.items()} == {a["id"], b["id"], c["id"]}


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
    raw = store.log_path.read_bytes().splitlines()
    assert len(raw) == n_threads * per
    assert all(json.loads(x)["type"] == "feedback" for x in raw)
    assert len({i["image_sha256"] for i in store.items()}) == n_threads * per


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
    assert "PatientName" not in store.log_path.read_text()  # the file name is never stored


def test_delete_pixels_is_audited_and_removes_the_image_from_training(store, tmp_path):
    r = _rec(store, 1, consent=True, pixels=_img(), label="NORMAL")
    store.accept(r["id"], "confirmed by a second reader")
    assert len(store.training_items()) == 1
    assert store.delete_pixels(_sha(1)) is True
    assert store.stored_pixels() == [] and store.training_items() == []
    assert store.items()[0]["pixels_available"] is False
    ev = audit.read(tmp_path / "audit.jsonl", actions=["feedback"])
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
    outcomes = [e["outcome"] for e in audit.read(tmp_path / "audit.jsonl", actions=["feedback"])]
    assert outcomes.count("accepted") == 2 and outcomes.count("rejected") == 2


def test_export_csv_is_neutralised(store):
    _rec(store, 1, comment="=HYPERLINK(\"http://x\")")
    text = store.export_csv().decode()
    rows = list(csv.DictReader(io.StringIO(text)))
    assert rows[0]["comment"].startswith("'=") and rows[0]["status"] == "pending"


# --- CLI ------------------------------------------------------------------------------------------
def test_cli_list_export_accept_reject(tmp_path, capsys, monkeypatch):
    from core import cli
    from core.feedback import default_feedback_dir

    monkeypatch.delenv("PNEUMOSCOPE_AUDIT_LOG", raising=False)
    art = tmp_path / "art"
    store = FeedbackStore(default_feedback_dir(art), audit_path=art / "audit" / "audit.jsonl")
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
    ev = audit.read(art / "audit" / "audit.jsonl", actions=["feedback"])
    assert [e["source"] for e in ev if e["outcome"] in ("accepted", "rejected")] == ["cli", "cli"]


def test_cli_list_prints_one_visible_line_per_record_whatever_the_log_holds(tmp_path, capsys, monkeypatch):
    """A version name (or any field) with a newline or ANSI codes cannot forge or erase a line (issue 21)."""
    import unicodedata

    from core import cli
    from core.feedback import default_feedback_dir

    monkeypatch.delenv("PNEUMOSCOPE_AUDIT_LOG", raising=False)
    art = tmp_path / "art"
    store = FeedbackStore(default_feedback_dir(art), audit_path=art / "audit" / "audit.jsonl")
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
    store = FeedbackStore(tmp_path / "feedback", audit_path=tmp_path / "audit.jsonl")
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


def test_training_with_feedback_records_count_and_hashes(tmp_path, sample_root, tiny_config):
    from core.registry import Registry
    from core.training import publish, train

    store = FeedbackStore(tmp_path / "feedback", audit_path=tmp_path / "audit.jsonl")
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


def test_cli_train_include_feedback_reads_the_registry_feedback_folder(tmp_path, sample_root, tiny_config, monkeypatch):
    from core import cli
    from core.feedback import default_feedback_dir
    from core.registry import Registry

    monkeypatch.delenv("PNEUMOSCOPE_AUDIT_LOG", raising=False)
    art = tmp_path / "art"
    store = FeedbackStore(default_feedback_dir(art), audit_path=art / "audit" / "audit.jsonl")
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
