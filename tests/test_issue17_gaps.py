"""Issue 17 gaps: read-first mode keeps the sample's reference label blind until the read is
recorded (picker and caption); a training job's "retrain" audit line says how many feedback
images it used; the retrain form's tiny-training test hook is off by default."""

from __future__ import annotations

import numpy as np
import pytest

from core import audit
from test_app_pages import app_registry, env, open_page, sample_index, texts  # noqa: F401 - fixtures

LABEL_WORDS = ("labelled NORMAL", "labelled PNEUMONIA", "reference label in the dataset")


def _options(at) -> list[str]:
    return list(at.selectbox(key="sample_pick").options)


# --- read-first: the reference label stays blind --------------------------------------------------
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
    shown = texts(at.caption) + texts(at.markdown)
    assert not any(w in shown for w in LABEL_WORDS), shown
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


# --- retrain audit line carries feedback_images ----------------------------------------------------
@pytest.mark.slow
def test_job_retrain_audit_line_carries_the_number_of_feedback_images(tmp_path, monkeypatch, tiny_config, sample_root):
    from core import jobs
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
    assert done.status == "succeeded", (done.state, jobs.log_tail(done))
    lines = [r for r in audit.read(log, actions=["retrain"]) if r["outcome"] == "succeeded"]
    assert len(lines) == 1 and lines[0]["version"] == done.version
    assert lines[0]["feedback_images"] == 1


# --- the retrain form's test hook -------------------------------------------------------------------
def _form_config():
    from ui import admin_components as ac

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
