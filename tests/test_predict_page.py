"""app_pages/predict.py: a colour photo shown as uploaded, the retrain notice, the batch table in
one unit with messages that are not cut, one session key for the clicked row, and read-first
mode keeping the sample's reference label blind until the read is recorded."""

from __future__ import annotations

import io
import json

import numpy as np
import pytest
import streamlit
from helpers import shown
from test_app_pages import SAMPLES, app_registry, env, open_page, sample_index, texts  # noqa: F401 - fixtures

LABEL_WORDS = ("labelled NORMAL", "labelled PNEUMONIA", "reference label in the dataset")


def _colour_photo() -> bytes:
    from PIL import Image

    rng = np.random.default_rng(0)
    h, w = 480, 400
    img = np.zeros((h, w, 3), np.uint8)
    img[..., 0] = np.linspace(0, 255, w, dtype=np.uint8)[None, :]  # red ramp
    img[..., 1] = 60
    img[..., 2] = np.linspace(255, 0, h, dtype=np.uint8)[:, None]  # blue ramp
    img = np.clip(img.astype(int) + rng.integers(-10, 10, img.shape), 0, 255).astype(np.uint8)
    buf = io.BytesIO()
    Image.fromarray(img).save(buf, format="PNG")
    return buf.getvalue()


@pytest.mark.slow  # an AppTest flow of ~2 s: CI's slow set keeps the default run well under 3 min
def test_rejected_colour_photo_is_shown_in_colour_under_uploaded_image(env, monkeypatch):
    shown_images: list[tuple[str, np.ndarray]] = []
    orig = streamlit.image

    def spy(image, *a, **k):
        if isinstance(image, np.ndarray):
            shown_images.append((k.get("caption") or "", np.asarray(image)))
        return orig(image, *a, **k)

    monkeypatch.setattr(streamlit, "image", spy)
    at = open_page()
    at.file_uploader[0].set_value(("holiday.png", _colour_photo(), "image/png")).run()
    assert not at.exception, [e.value for e in at.exception]
    assert any("rejected" in e.value.lower() for e in at.error), texts(at.error)
    uploaded = [arr for cap, arr in shown_images if cap == "Uploaded image"]
    assert uploaded, [c for c, _ in shown_images]
    arr = uploaded[-1]
    assert arr.ndim == 3 and arr.shape[2] == 3
    # In colour: the channels differ (the analysed copy is grayscale, R == G == B).
    assert np.abs(arr[..., 0].astype(int) - arr[..., 2].astype(int)).mean() > 20


@pytest.mark.slow  # an AppTest flow of 1.4-2.3 s: CI's slow set keeps the default run under 3 min
def test_predict_page_says_when_a_retrain_is_running(env, monkeypatch):
    import os

    from core import jobs

    at = open_page()
    assert "retrain is running" not in texts(at.info)
    db = jobs.database(env["root"])
    job_id = "job-test-running"
    state = {"job_id": job_id, "status": "running", "pid": os.getpid(), "host": jobs.HOST,
             "created": "2026-01-01T10:00:00+00:00", "started": "2026-01-01T10:00:05+00:00"}
    db.put(jobs.JOB_KIND, job_id, {"state": state, "request": {}})
    db.put(jobs.POINTER_KIND, jobs.POINTER_KEY, {"job_id": job_id})
    try:
        at.run()
        notice = texts(at.info)
        assert "A model retrain is running on this machine" in notice and job_id in notice
        assert "since 10:00 UTC" in notice
        # A job that died (pid gone) is not reported as running.
        db.put(jobs.JOB_KIND, job_id, {"state": {**state, "pid": 2**22 + 12345}, "request": {}})
        at.run()
        assert "retrain is running" not in texts(at.info)
    finally:
        db.delete(jobs.POINTER_KIND, jobs.POINTER_KEY)
        db.delete(jobs.JOB_KIND, job_id)


@pytest.mark.slow  # an AppTest flow of 1.4-2.3 s: CI's slow set keeps the default run under 3 min
def test_batch_table_uses_percent_and_shows_messages_in_full(env):
    good = [(p.name, p.read_bytes(), "image/jpeg") for p in sorted((SAMPLES / "test" / "NORMAL").iterdir())[:1]]
    at = open_page()
    at.file_uploader[0].set_value([good[0], ("broken.png", b"definitely not a PNG", "image/png")]).run()
    assert not at.exception, [e.value for e in at.exception]
    grid = at.dataframe[0].value
    assert "Message" not in grid.columns  # sentences go to the wrapping table below, not a cut grid column
    thr = json.loads((env["root"] / "models" / "v0001-tiny" / "operating_point.json").read_text())["threshold"]
    assert "Threshold" not in grid.columns  # the same for every row: one caption, in percent
    assert f"Decision threshold {100 * thr:.1f} % (calibrated probability) for every image." in texts(at.caption)
    assert 0 <= grid.loc[0, "P(pneumonia)"] <= 100
    (msgs,) = [t.value for t in at.table if "Message" in t.value.columns]
    # st.table renders its cells as Markdown: the names in it are escaped (issue 21), the reader sees the name.
    assert [shown(f) for f in msgs["File"]] == ["broken.png"] and len(shown(msgs.loc[0, "Message"])) > 20


def _files(cls: str, n: int):
    return [(p.name, p.read_bytes(), "image/jpeg") for p in sorted((SAMPLES / "test" / cls).iterdir())[:n]]


@pytest.mark.slow  # an AppTest flow of 2+ s: CI's slow set keeps the default run under 3 min
def test_batches_leave_one_row_key_in_the_session(env):
    at = open_page()
    for files in (_files("NORMAL", 2), _files("PNEUMONIA", 2), _files("NORMAL", 3)):
        at.file_uploader[0].set_value(files).run()
        assert not at.exception, [e.value for e in at.exception]
        assert len(at.dataframe[0].value) == len(files)
    keys = [str(k) for k in at.session_state]
    assert not [k for k in keys if k.startswith("last-row-")], keys
    batch_id, row = at.session_state["predict_last_row"]
    assert row is None and isinstance(batch_id, int)


# --- read-first: the reference label stays blind --------------------------------------------------
def _options(at) -> list[str]:
    return list(at.selectbox(key="sample_pick").options)


@pytest.mark.slow
def test_read_first_sample_picker_and_caption_hide_the_reference_label_until_the_read(env):
    at = open_page()
    assert any("(labelled NORMAL)" in o for o in _options(at))  # off: the picker names the label
    at.toggle(key="read_first").set_value(True).run()
    opts = _options(at)
    assert opts and not any("labelled" in o for o in opts), opts
    at.selectbox(key="sample_pick").set_value(sample_index("NORMAL"))  # a NORMAL film
    at.button(key="sample_go").click().run()
    assert not at.exception, [e.value for e in at.exception]
    on_page = texts(at.caption) + texts(at.markdown)
    assert not any(w in on_page for w in LABEL_WORDS), on_page
    assert "reference label shown after your read" in texts(at.caption)
    [r for r in at.radio if r.label == "Your read"][0].set_value("PNEUMONIA")
    [b for b in at.button if b.label.startswith("Record my read")][0].click().run()
    assert not at.exception, [e.value for e in at.exception]
    assert "reference label in the dataset: **NORMAL**" in texts(at.caption)


def test_without_read_first_the_sample_caption_names_the_reference_label(env):
    at = open_page()
    at.selectbox(key="sample_pick").set_value(sample_index("NORMAL"))
    at.button(key="sample_go").click().run()
    assert not at.exception, [e.value for e in at.exception]
    assert "reference label in the dataset: **NORMAL**" in texts(at.caption)
