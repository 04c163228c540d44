"""AppTest of the feedback loop (issue 17 A): record feedback under the Predict page's sample
verdict (with and without consent), review it on the admin page's Feedback tab (accept with a
reason, export, delete pixels), the retrain form's "include accepted feedback images" option,
and the feedback form of the evaluation page's misclassified gallery."""

from __future__ import annotations

import json
import re
import shutil
from pathlib import Path

import pytest
from streamlit.testing.v1 import AppTest

from core import audit
from core.feedback import FeedbackStore, default_feedback_dir
from tests.helpers import copy_artifacts

REPO = Path(__file__).resolve().parent.parent
APP = str(REPO / "streamlit_app.py")
ADMIN = str(REPO / "app_pages" / "admin.py")
PASSWORD = "correct horse battery staple"
TIMEOUT = 240


@pytest.fixture()
def env(trained_registry, monkeypatch, tmp_path, sample_root):
    root = tmp_path / "artifacts"
    copy_artifacts(trained_registry.root, root)
    shutil.rmtree(root / "feedback", ignore_errors=True)
    monkeypatch.setenv("PNEUMOSCOPE_ARTIFACTS", str(root))
    monkeypatch.setenv("PNEUMOSCOPE_DATA_ROOT", str(sample_root))
    monkeypatch.delenv("PNEUMOSCOPE_DATABASE_URL", raising=False)  # the root's own SQLite database
    monkeypatch.setenv("PNEUMOSCOPE_ADMIN_PASSWORD", PASSWORD)
    store = FeedbackStore(default_feedback_dir(root))
    return {"root": root, "audit": root, "store": store}  # audit: the root whose trail audit.read reads


def _ok(at):
    assert not at.exception, [e.value for e in at.exception]
    return at


def _by_label(elements, label):
    found = [e for e in elements if e.label == label]
    assert found, f"no widget {label!r}; have {[e.label for e in elements]}"
    return found[0]


def _predict_sample(label: str = "PNEUMONIA") -> AppTest:
    from test_app_pages import sample_index

    at = _ok(AppTest.from_file(APP, default_timeout=TIMEOUT).run())
    at.selectbox(key="sample_pick").set_value(sample_index(label))
    return _ok(at.button(key="sample_go").click().run())


def _admin() -> AppTest:
    at = AppTest.from_file(ADMIN, default_timeout=TIMEOUT)
    at.secrets = {"unrelated": "x"}
    at.run()
    at.text_input(key="admin_password_input").input(PASSWORD)
    return _ok(_by_label(at.button, "Sign in").click().run())


@pytest.mark.slow
def test_feedback_on_the_predict_page_then_accepted_on_the_admin_page(env):
    store = env["store"]
    at = _predict_sample()
    # The form is there, consent off by default.
    consent = _by_label(at.checkbox, "Keep the de-identified pixels for retraining")
    assert consent.value is False
    _ok(_by_label(at.radio, "Do you agree with the verdict?").set_value("Disagree").run())  # reruns at once, as in a browser
    _by_label(at.radio, "The label you believe").set_value("NORMAL")
    _by_label(at.text_area, "Comment (optional — no patient names or identifiers)").input("looks clear to me")
    _ok(_by_label(at.button, "Send feedback").click().run())
    items = store.items()
    assert len(items) == 1
    it = items[0]
    assert it["agree"] is False and it["believed_label"] == "NORMAL" and it["comment"] == "looks clear to me"
    assert it["model_version"] == "v0001-tiny" and it["pixels_stored"] is False
    assert re.fullmatch(r"r-[0-9a-f]{12}", it["reader_id"])  # core.readerid, the reader studies' id too
    assert len(it["image_sha256"]) == 64 and it["status"] == "pending"
    assert store.stored_pixels() == []  # no consent, no pixels
    assert any("Feedback recorded" in s.value for s in at.success)

    # Second feedback, with consent: the pixels are kept.
    _by_label(at.checkbox, "Keep the de-identified pixels for retraining").check()
    _ok(_by_label(at.button, "Send feedback").click().run())
    assert len(store.items()) == 2 and [r["image_sha256"] for r in store.stored_pixels()] == [it["image_sha256"]]
    first_reader = it["reader_id"]
    assert store.items()[0]["reader_id"] == first_reader  # one anonymous id per browser session

    # Admin: the queue lists both; accept the consented one with a reason.
    adm = _admin()
    assert "Feedback" in [t.label for t in adm.tabs]
    target = store.items()[0]["id"]
    adm.selectbox(key="fbq_sel").set_value(target)
    _ok(adm.button(key="fbq_accept").click().run())
    assert any("reason is required" in e.value for e in adm.error)  # no reason, no decision
    assert {i["status"] for i in store.items()} == {"pending"}
    adm.selectbox(key="fbq_sel").set_value(target)
    adm.text_input(key="fbq_reason").input("second reader agrees")
    _ok(adm.button(key="fbq_accept").click().run())
    st = {i["id"]: (i["status"], i["reason"]) for i in store.items()}
    assert st[target] == ("accepted", "second reader agrees")
    assert len(store.training_items()) == 1
    outcomes = [e["outcome"] for e in audit.read(env["audit"], actions=["feedback"])]
    assert outcomes.count("recorded") == 2 and outcomes.count("accepted") == 1
    # The retrain form offers the accepted image.
    assert any(c.label == "Include accepted feedback images (1 available)" for c in adm.checkbox)


@pytest.mark.slow
def test_admin_filters_export_and_pixel_deletion(env):
    import hashlib

    import numpy as np

    store = env["store"]
    img = np.full((50, 40, 3), 100, np.uint8)
    kw = dict(probability=0.4, threshold=0.2, guard_status="accepted", guard_code="ok", comment="=1+1")
    a = store.record(image_sha256=hashlib.sha256(b"a").hexdigest(), model_version="v0001-tiny", reader_id="r-1",
                     agree=False, believed_label="PNEUMONIA", consent=True, pixels=img, **kw)
    b = store.record(image_sha256=hashlib.sha256(b"b").hexdigest(), model_version="v9", reader_id="r-2", agree=True,
                     believed_label="NORMAL", **kw)
    adm = _admin()
    queue = [d.value for d in adm.dataframe if "clinician" in getattr(d.value, "columns", [])][0]
    assert set(queue["id"]) == {a["id"], b["id"]}
    adm.checkbox(key="fbq_disagree").check()
    adm = _ok(adm.run())
    queue = [d.value for d in adm.dataframe if "clinician" in getattr(d.value, "columns", [])][0]
    assert list(queue["id"]) == [a["id"]]
    adm.checkbox(key="fbq_disagree").uncheck()
    adm.selectbox(key="fbq_version").set_value("v9")
    adm = _ok(adm.run())
    queue = [d.value for d in adm.dataframe if "clinician" in getattr(d.value, "columns", [])][0]
    assert list(queue["id"]) == [b["id"]]
    # Stored pixels are listed and can be deleted (audited).
    assert adm.selectbox(key="fbp_sel").value == a["image_sha256"]
    _ok(adm.button(key="fbp_delete").click().run())
    assert store.stored_pixels() == []
    assert audit.read(env["audit"], actions=["feedback"])[-1]["outcome"] == "pixels_deleted"
    assert "No pixels are stored." in [c.value for c in adm.caption]


@pytest.mark.slow  # an AppTest flow of 2+ s: CI's slow set keeps the default run under 3 min
def test_review_panel_shows_the_image_and_the_whole_comment_of_the_selected_record(env):
    """Issue 22: the review panel showed neither the image nor the comment of the selected record,
    and the queue's comment column was cut (13 columns at 1024 px)."""
    import hashlib

    import numpy as np
    from helpers import shown

    from ui.feedback_admin import COMMENT_PREVIEW, QUEUE_COLUMNS

    store = env["store"]
    comment = "Right lower lobe looks clear on the lateral view; " * 6 + "*not* [a link](https://x.invalid)"
    img = np.full((60, 50, 3), 90, np.uint8)
    kw = dict(probability=0.616, threshold=0.19, guard_status="accepted", guard_code="ok")
    a = store.record(image_sha256=hashlib.sha256(b"a").hexdigest(), model_version="v0001-tiny", reader_id="r-1",
                     agree=False, believed_label="NORMAL", consent=True, pixels=img, comment=comment, **kw)
    b = store.record(image_sha256=hashlib.sha256(b"b").hexdigest(), model_version="v0001-tiny", reader_id="r-2",
                     agree=True, believed_label="PNEUMONIA", comment="fine", **kw)
    adm = _admin()
    queue = [d.value for d in adm.dataframe if "clinician" in getattr(d.value, "columns", [])][0]
    assert list(queue.columns) == list(QUEUE_COLUMNS) and len(QUEUE_COLUMNS) <= 5  # fits at 1024 px
    row = queue.set_index("id").loc[a["id"]]
    assert row["clinician"] == "disagree: NORMAL" and row["pixels"] == "yes"
    assert len(row["comment"]) == COMMENT_PREVIEW and row["comment"].endswith("…")  # said to be shortened

    def panel(at):
        facts = next(t.value for t in at.table if shown(t.value.columns[0]) == "field")
        return {shown(k): shown(v) for k, v in facts.to_numpy()}

    adm.selectbox(key="fbq_sel").set_value(a["id"])
    adm = _ok(adm.run())
    facts = panel(adm)
    assert facts["Comment"] == comment  # all of it, and as text (no link, no emphasis)
    assert facts["Clinician"] == "disagree: NORMAL" and facts["Model output (P pneumonia)"] == "61.6 % (threshold 19.0 %)"
    assert facts["Pixels"] == "stored (consented)" and facts["Model version"] == "v0001-tiny"
    images = [i for i in adm.image if any("the film the feedback is about" in c for c in i.captions)]
    assert len(images) == 1
    adm.selectbox(key="fbq_sel").set_value(b["id"])
    adm = _ok(adm.run())
    assert panel(adm)["Comment"] == "fine" and panel(adm)["Pixels"] == "not stored"
    assert not [i for i in adm.image if any("the film the feedback is about" in c for c in i.captions)]
    assert any("did not consent" in i.value for i in adm.info)


@pytest.mark.slow  # an AppTest flow of 1.4-2.3 s: CI's slow set keeps the default run under 3 min
def test_retrain_form_passes_include_feedback_to_the_job(env, monkeypatch):
    from core import jobs

    seen = {}

    def fake_start_job(cfg, data_root, **kw):
        seen["cfg"] = cfg
        raise jobs.JobBusy("busy (test)")

    monkeypatch.setattr(jobs, "start_job", fake_start_job)
    adm = _admin()
    adm.checkbox(key="retrain_include_feedback").check()
    _ok(_by_label(adm.button, "Start training").click().run())
    assert seen["cfg"].include_feedback is True


@pytest.mark.slow  # an AppTest flow of 1.4-2.3 s: CI's slow set keeps the default run under 3 min
def test_validation_side_by_side_shows_feedback_count(env):
    from core.registry import Registry
    from ui.feedback_admin import validation_side_by_side

    reg = Registry(env["root"])
    dst = reg.models_dir / "v0002-fb"
    shutil.copytree(reg.models_dir / "v0001-tiny", dst)
    card = json.loads((dst / "card.json").read_text())
    card.update(version="v0002-fb", feedback_images=3)
    (dst / "card.json").write_text(json.dumps(card))
    rows = {r["metric"]: r for r in validation_side_by_side(reg, "v0002-fb", "v0001-tiny")}
    assert rows["Feedback images in training"]["v0002-fb"] == "3"
    assert rows["Feedback images in training"]["v0001-tiny"] == "0"
    assert rows["ROC-AUC (validation)"]["v0002-fb"] == rows["ROC-AUC (validation)"]["v0001-tiny"] != ""
    adm = _admin()
    assert any("metric" in getattr(d.value, "columns", []) and "v0002-fb" in d.value.columns for d in adm.dataframe)


@pytest.mark.slow  # an AppTest flow of ~2 s: CI's slow set keeps the default run well under 3 min
def test_feedback_from_the_misclassified_gallery(env):
    store = env["store"]
    at = _ok(AppTest.from_file(APP, default_timeout=TIMEOUT).run())
    _ok(at.switch_page("app_pages/evaluation.py").run())
    test = json.loads((env["root"] / "models" / "v0001-tiny" / "metrics.json").read_text())["test"]
    assert test["misclassified"]
    if not any(m["label"] == "PNEUMONIA" for m in test["misclassified"]):  # opens on false negatives
        _ok(at.radio(key="ev_mis_kind").set_value("False positives").run())
    shown = [c.value for c in at.caption if "P(pneumonia)" in c.value]
    opens = [b for b in at.button if b.label == "Feedback"]  # one button per gallery image
    assert shown and len(opens) == len(shown)
    assert not [b for b in at.button if b.label == "Send feedback"]  # no form until asked
    _ok(opens[0].click().run())
    # One form, in a dialog that names the film and shows it (issue 22: the popover covered it, unnamed).
    sends = [b for b in at.button if b.label == "Send feedback"]
    assert len(sends) == 1
    from helpers import shown as seen

    name = seen(shown[0]).split(" ")[0]
    assert any(seen(m.value).startswith(f"**{name}** — False ") for m in at.markdown), [m.value for m in at.markdown]
    assert len(at.image) == len(shown) + 1  # the film, shown again in the dialog
    consents = [c for c in at.checkbox if c.label == "Keep the de-identified pixels for retraining"]
    consents[0].check()
    _ok(sends[0].click().run())
    items = store.items()
    assert len(items) == 1 and items[0]["source"] == "evaluation" and items[0]["guard_code"] == "not_checked"
    assert items[0]["pixels_stored"] is True and len(store.stored_pixels()) == 1


@pytest.mark.slow  # an AppTest flow of 2+ s: CI's slow set keeps the default run under 3 min
def test_admin_lists_leftovers_of_interrupted_writes_and_cleans_them(env):
    """Issue 21: after a kill -9, consented pixels without a record and .tmp files were nowhere
    on the admin page. They are listed (kind, age, what the clean-up does) and cleaned on request."""
    import hashlib
    import os
    import time

    import numpy as np

    store = env["store"]
    kept = store.record(image_sha256=hashlib.sha256(b"kept").hexdigest(), model_version="v0001-tiny",
                        probability=0.4, threshold=0.2, guard_status="accepted", guard_code="ok", reader_id="r-1",
                        agree=False, believed_label="PNEUMONIA", consent=True, pixels=np.full((20, 20), 90, np.uint8))
    orphan = store.images_dir / f"{hashlib.sha256(b'orphan').hexdigest()}.png"
    orphan.write_bytes(store._png(np.zeros((8, 8), np.uint8)))
    tmp = store.images_dir / f".{hashlib.sha256(b'tmp').hexdigest()}.{'e' * 12}.png.tmp"
    tmp.write_bytes(b"half a png")
    old = time.time() - 3600
    for p in (orphan, tmp):
        os.utime(p, (old, old))
    adm = _admin()
    _by_label(adm.tabs, "Feedback")
    frames = [d.value for d in adm.dataframe if "kind" in getattr(d.value, "columns", [])]
    assert len(frames) == 1 and set(frames[0]["name"]) == {orphan.name, tmp.name}
    assert set(frames[0]["kind"]) == {"orphan", "temporary"}
    _ok(adm.button(key="fbd_clean").click().run())
    assert not orphan.exists() and not tmp.exists() and store.pixel_path(kept["image_sha256"]).exists()
    assert not [d for d in adm.dataframe if "kind" in getattr(d.value, "columns", [])]  # nothing left to list
    assert "2 removed" in " ".join(str(s.value) for s in adm.success)
    outcomes = [e["outcome"] for e in audit.read(env["audit"], actions=["feedback"])]
    assert outcomes.count("debris_removed") == 2
