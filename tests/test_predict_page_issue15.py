"""Issue 15 on the Predict page: colour photo shown as uploaded, retrain notice, batch table
in one unit with messages that are not cut, CSV headers in percent."""

from __future__ import annotations

import io
import json

import numpy as np
import pandas as pd
import streamlit
from helpers import shown
from test_app_pages import SAMPLES, app_registry, env, open_page, texts  # noqa: F401 - fixtures


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


def test_rejected_colour_photo_is_shown_in_colour_under_uploaded_image(env, monkeypatch):
    shown: list[tuple[str, np.ndarray]] = []
    orig = streamlit.image

    def spy(image, *a, **k):
        if isinstance(image, np.ndarray):
            shown.append((k.get("caption") or "", np.asarray(image)))
        return orig(image, *a, **k)

    monkeypatch.setattr(streamlit, "image", spy)
    at = open_page()
    at.file_uploader[0].set_value(("holiday.png", _colour_photo(), "image/png")).run()
    assert not at.exception, [e.value for e in at.exception]
    assert any("rejected" in e.value.lower() for e in at.error), texts(at.error)
    uploaded = [arr for cap, arr in shown if cap == "Uploaded image"]
    assert uploaded, [c for c, _ in shown]
    arr = uploaded[-1]
    assert arr.ndim == 3 and arr.shape[2] == 3
    # In colour: the channels differ (the analysed copy is grayscale, R == G == B).
    assert np.abs(arr[..., 0].astype(int) - arr[..., 2].astype(int)).mean() > 20


def test_predict_page_says_when_a_retrain_is_running(env, monkeypatch):
    import os

    from core import jobs

    at = open_page()
    assert "retrain is running" not in texts(at.info)
    root = jobs.jobs_root(env["root"])
    job_dir = root / "job-test-running"
    job_dir.mkdir(parents=True)
    (job_dir / "state.json").write_text(json.dumps({"job_id": job_dir.name, "status": "running", "pid": os.getpid(),
                                                    "created": "2026-01-01T10:00:00+00:00",
                                                    "started": "2026-01-01T10:00:05+00:00"}))
    (root / "current").write_text(job_dir.name + "\n")
    try:
        at.run()
        notice = texts(at.info)
        assert "A model retrain is running on this machine" in notice and job_dir.name in notice
        assert "since 10:00 UTC" in notice
        # A job that died (pid gone) is not reported as running.
        state = json.loads((job_dir / "state.json").read_text())
        state["pid"] = 2**22 + 12345
        (job_dir / "state.json").write_text(json.dumps(state))
        at.run()
        assert "retrain is running" not in texts(at.info)
    finally:
        (root / "current").unlink()


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


def test_results_csv_carries_probabilities_in_percent():
    from core.formatting import percent_row
    from core.predict import Prediction

    p = Prediction(filename="a.png", ok=True, label="NORMAL", probability=0.1234, raw_probability=0.2,
                   threshold=0.19, band=(0.09, 0.29), model_version="v1")
    df = pd.DataFrame([percent_row(p.to_row())])
    assert {"probability_pneumonia_pct", "threshold_pct", "indeterminate_band_pct"} <= set(df.columns)
    assert "probability_pneumonia" not in df.columns and "threshold" not in df.columns
    assert df.loc[0, "probability_pneumonia_pct"] == 12.3 and df.loc[0, "threshold_pct"] == 19.0
    assert df.loc[0, "indeterminate_band_pct"] == "9.0-29.0"
