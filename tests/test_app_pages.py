"""Every page of the Streamlit app through ``streamlit.testing.v1.AppTest``.

The app runs against a copy of the tiny trained registry (``trained_registry``), with three
versions: the trained one (active), a copy with edited test metrics (to compare) and one
whose report only has a validation split. The data root is the bundled sample or a missing
folder. Model loading and Grad-CAM take seconds on this CPU, hence the long timeout.
"""

from __future__ import annotations

import hashlib
import io
import json
import os
import re
import shutil
import tomllib
from pathlib import Path

import pytest
from helpers import shown
from streamlit.testing.v1 import AppTest
from tests.helpers import copy_artifacts

REPO = Path(__file__).resolve().parent.parent
APP = str(REPO / "streamlit_app.py")
SAMPLES = REPO / "samples" / "chest_xray"
TIMEOUT = 240
VERDICT_TITLES = ("Pneumonia suspected", "No pneumonia detected", "Indeterminate — refer")


def sample_index(label: str) -> int:
    """Index, in the Predict page's sample picker (samples/test_draw, in its random draw order),
    of the first film whose reference label is ``label``."""
    from ui.loaders import sample_files

    return next(i for i, (lab, _) in enumerate(sample_files()) if lab == label)


def sample_path(i: int) -> Path:
    from ui.loaders import sample_files

    return sample_files()[i][1]


# --- fixtures ----------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def app_registry(trained_registry, tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("app") / "artifacts"
    copy_artifacts(trained_registry.root, root)
    src = root / "models" / "v0001-tiny"
    # v0002-copy: same model, edited test accuracy, so the comparison shows two different numbers.
    dst = root / "models" / "v0002-copy"
    shutil.copytree(src, dst)
    m = json.loads((dst / "metrics.json").read_text())
    m["test"]["accuracy"] = 0.999
    (dst / "metrics.json").write_text(json.dumps(m))
    card = json.loads((dst / "card.json").read_text())
    card.update(version="v0002-copy", created="2099-01-01T00:00:00+00:00")
    (dst / "card.json").write_text(json.dumps(card))
    # v0003-val: no test report, and a misclassified image that is not on this machine.
    dst = root / "models" / "v0003-val"
    shutil.copytree(src, dst)
    m = json.loads((dst / "metrics.json").read_text())
    val = m["validation"]
    val["misclassified"] = [{"path": "/nowhere/chest_xray/test/NORMAL/ghost-image.jpeg", "label": "NORMAL", "prob": 0.9}]
    (dst / "metrics.json").write_text(json.dumps({"validation": val}))
    card = json.loads((dst / "card.json").read_text())
    card.update(version="v0003-val", created="2099-01-02T00:00:00+00:00")
    (dst / "card.json").write_text(json.dumps(card))
    return root


@pytest.fixture()
def env(app_registry, monkeypatch, tmp_path):
    monkeypatch.setenv("PNEUMOSCOPE_ARTIFACTS", str(app_registry))
    monkeypatch.setenv("PNEUMOSCOPE_DATA_ROOT", str(SAMPLES))
    # the audit trail is the root's database, shared by this module's tests: each test sees its own lines
    return {"root": app_registry, "audit": (app_registry, len(audit_lines(app_registry))), "tmp": tmp_path}


@pytest.fixture()
def empty_env(monkeypatch, tmp_path):
    root = tmp_path / "empty-artifacts"
    root.mkdir()
    monkeypatch.setenv("PNEUMOSCOPE_ARTIFACTS", str(root))
    monkeypatch.setenv("PNEUMOSCOPE_DATA_ROOT", str(tmp_path / "no-data-here"))
    return root


def open_page(page: str | None = None) -> AppTest:
    at = AppTest.from_file(APP, default_timeout=TIMEOUT)
    at.run()
    if page:
        at.switch_page(page).run()
    assert not at.exception, [e.value for e in at.exception]
    return at


def texts(elements) -> str:
    """The text of these elements as a reader sees it (names are escaped Markdown: helpers.shown)."""
    return "\n".join(shown(e.value) for e in elements)


def audit_lines(where) -> list[dict]:
    """The audit trail of an artifacts root (its database); ``(root, n)``: the lines after the first n."""
    from core import audit

    root, start = where if isinstance(where, tuple) else (where, 0)
    return audit.read(artifacts=root)[start:]


# --- shell: config, sidebar, routing ----------------------------------------------------------
def test_config_toml_sets_upload_limit_usage_stats_and_theme():
    cfg = tomllib.loads((REPO / ".streamlit" / "config.toml").read_text())
    assert cfg["server"]["maxUploadSize"] == 50
    assert cfg["browser"]["gatherUsageStats"] is False
    assert cfg["theme"]["primaryColor"].startswith("#")
    assert cfg["client"]["showErrorDetails"] == "none"


def test_sidebar_shows_active_model_card_and_disclaimer(env):
    at = open_page()
    side = texts(at.sidebar.markdown)
    assert "v0001-tiny" in side and "32 × 32 px" in side and "Test ROC-AUC" in side
    card = json.loads((env["root"] / "models" / "v0001-tiny" / "card.json").read_text())
    assert f"{card['test']['roc_auc']:.3f}" in side
    assert "none (random initialisation)" in side
    assert "Research demo — not a medical device" in texts(at.sidebar.warning)


def test_newly_activated_version_is_picked_up_without_restart(env):
    from core.registry import Registry

    reg = Registry(env["root"])
    at = open_page()
    assert "v0001-tiny" in texts(at.sidebar.markdown)
    try:
        reg.set_active("v0002-copy")
        at.run()
        assert "v0002-copy" in texts(at.sidebar.markdown)
    finally:
        reg.set_active("v0001-tiny")


# --- predict ------------------------------------------------------------------------------------
def test_predict_page_idle_state(env):
    at = open_page()
    assert at.title[0].value == "Pneumonia check"
    assert "Upload an image or pick a sample" in texts(at.info)
    uploader = at.file_uploader[0]
    assert uploader.accept_multiple_files
    # No browser-side type filter: the content decides (a DICOM named "scan-0001" must get through).
    assert list(uploader.allowed_type) == []
    assert "Kermany" in texts(at.caption) and "CC BY 4.0" in texts(at.caption)


def test_a_file_that_is_not_an_image_gets_a_clear_message_whatever_its_name(env):
    at = open_page()
    at.file_uploader[0].set_value(("notes", b"just some text, no image here", "application/octet-stream")).run()
    assert not at.exception, [e.value for e in at.exception]
    errors = texts(at.error)
    assert "notes" in errors and "could not be analysed" in errors
    assert "Upload an image or pick a sample" not in texts(at.info)


def test_sample_prediction_shows_label_probability_and_heatmap(env):
    at = open_page()
    at.selectbox(key="sample_pick").set_value(sample_index("PNEUMONIA"))  # first PNEUMONIA sample
    at.button(key="sample_go").click().run()
    assert not at.exception, [e.value for e in at.exception]
    verdicts = [m.value for m in at.markdown if m.value.startswith("### ")]
    assert any(t in v for v in verdicts for t in VERDICT_TITLES), verdicts
    metrics = {m.label: m.value for m in at.metric}
    assert metrics["Probability"].endswith("%") and 0 <= float(metrics["Probability"].split()[0]) <= 100
    thr = json.loads((env["root"] / "models" / "v0001-tiny" / "operating_point.json").read_text())["threshold"]
    assert metrics["Threshold"] == f"{100 * thr:.1f} %"  # one unit for probabilities (issue 15)
    captions = [c for img in at.image for c in img.captions]
    assert "Original" in captions
    # The model's default heatmap, named, with what red means (or, if flat, said in words).
    said = [shown(c.value) for c in at.caption] + [shown(i.value) for i in at.info]
    assert any(t.startswith("HiResCAM (block3_conv2)") for t in said), said
    assert at.selectbox(key=f"map-method-{1}").value == "hirescam"
    at.selectbox(key="map-method-1").set_value("gradcam").run()
    said = [shown(c.value) for c in at.caption] + [shown(i.value) for i in at.info]
    assert any(t.startswith("Grad-CAM (block5_conv4)") for t in said), said
    assert {"Case report (PDF)", "Report image (PNG)"} <= {b.label for b in at.download_button}
    # One audit line per prediction, with the image hash, model version and threshold.
    sample = sample_path(sample_index("PNEUMONIA"))
    lines = audit_lines(env["audit"])
    assert len(lines) == 1
    rec = lines[0]
    assert rec["action"] == "predict" and rec["model_version"] == "v0001-tiny"
    assert rec["image_sha256"] == hashlib.sha256(sample.read_bytes()).hexdigest()
    assert rec["outcome"] in ("NORMAL", "PNEUMONIA", "INDETERMINATE", "REJECTED")
    assert rec["threshold"] == pytest.approx(thr) and "guard" in rec
    # Moving the opacity slider or picking another sample re-renders without re-predicting.
    at.slider[0].set_value(0.9).run()
    at.selectbox(key="sample_pick").set_value(sample_index("NORMAL")).run()
    assert not at.exception
    assert len(audit_lines(env["audit"])) == 1
    assert f"Sample **{sample.name}**" in texts(at.caption)
    at.button(key="sample_go").click().run()  # analysing it is a new prediction
    assert len(audit_lines(env["audit"])) == 2
    assert audit_lines(env["audit"])[1]["image_sha256"] != rec["image_sha256"]


def test_upload_batch_with_a_bad_file_reports_it_and_analyses_the_rest(env):
    good = [(p.name, p.read_bytes(), "image/jpeg") for p in sorted((SAMPLES / "test" / "NORMAL").iterdir())[:2]]
    at = open_page()
    at.file_uploader[0].set_value([good[0], ("broken.png", b"definitely not a PNG", "image/png"), good[1]]).run()
    assert not at.exception, [e.value for e in at.exception]
    errors = [shown(e.value) for e in at.error]
    assert len(errors) == 1 and "broken.png" in errors[0] and "not" in errors[0].lower()
    assert any("Results (2 of 3 analysed)" in s.value for s in at.subheader)
    table = at.dataframe[0].value
    assert list(table["File"]) == [good[0][0], "broken.png", good[1][0]]
    assert table.loc[1, "Result"] == "Not analysed"
    assert "Download results (CSV)" in {b.label for b in at.download_button}
    # Details of the first analysed image, with a heatmap computed on demand.
    said = [shown(c.value) for c in at.caption] + [shown(i.value) for i in at.info]
    assert any(t.startswith("HiResCAM (block3_conv2)") for t in said), said
    # Pick the third image for the detail view.
    pick = next(sb for sb in at.selectbox if sb.key and sb.key.startswith("detail-"))
    pick.set_value(2).run()
    assert not at.exception
    assert any(good[1][0] == shown(s.value) for s in at.subheader)
    recs = audit_lines(env["audit"])
    assert len(recs) == 3 and all(len(r["image_sha256"]) == 64 for r in recs)
    assert recs[1]["outcome"] == "not_an_image" and recs[1]["guard"] == "not_an_image"  # the error code
    assert recs[1]["image_sha256"] == hashlib.sha256(b"definitely not a PNG").hexdigest()
    assert all(r["outcome"] in ("NORMAL", "PNEUMONIA", "INDETERMINATE", "REJECTED") for r in (recs[0], recs[2]))


def test_dicom_without_extension_shows_only_non_identifying_tags(env):
    from pydicom.data import get_testdata_file

    data = Path(get_testdata_file("CT_small.dcm")).read_bytes()
    at = open_page()
    assert not [t for t in at.toggle if "extension" in (t.label or "")]  # no such toggle: the content (DICM at byte 128) decides, not the name
    at.file_uploader[0].set_value(("scan-0001", data, "application/octet-stream")).run()
    assert not at.exception, [e.value for e in at.exception]
    (facts,) = [e for e in at.expander if e.label == "Image facts"]
    tables = [d.value for d in facts.table]
    props = dict(zip(tables[0]["Property"], tables[0]["Value"]))
    assert props["Format"] == "DICOM" and props["Size"] == "128 × 128 px" and props["Bits per sample"] == "16"
    tags = next(t for t in tables if "DICOM tag" in t.columns)
    assert dict(zip(tags["DICOM tag"], tags["Value"]))["Modality"] == "CT"
    rendered = " ".join(str(t.to_dict()) for t in tables) + texts(at.markdown) + texts(at.caption)
    assert "CompressedSamples" not in rendered and "PatientName" not in rendered  # the file's patient name
    # a CT slice is not a chest X-ray: the input check says so, or at least a verdict is shown
    assert texts(at.error) or any(m.value.startswith("### ") for m in at.markdown)


def test_large_upload_is_kept_downscaled_in_the_session(env):
    import numpy as np
    from PIL import Image

    src = np.asarray(Image.open(sorted((SAMPLES / "test" / "NORMAL").iterdir())[0]).convert("L"))
    big = Image.fromarray(src).resize((2400, 2000))
    buf = io.BytesIO()
    big.save(buf, format="PNG")
    at = open_page()
    at.file_uploader[0].set_value(("big.png", buf.getvalue(), "image/png")).run()
    assert not at.exception, [e.value for e in at.exception]
    state = at.session_state["predict_batch"]
    (pred,) = state["preds"]
    assert pred.ok and max(pred.image.shape[:2]) == 1024 and pred.info["width"] == 2400  # core.predict.DISPLAY_MAX_SIDE
    assert state["preds"][0].model_input.shape == (32, 32, 3)
    (facts,) = [e for e in at.expander if e.label == "Image facts"]
    assert dict(zip(facts.table[0].value["Property"], facts.table[0].value["Value"]))["Size"] == "2400 × 2000 px"


def test_damaged_active_model_gives_an_error_message_not_a_traceback(registry_copy, monkeypatch, tmp_path):
    (registry_copy.models_dir / "v0001-tiny" / "model.keras").write_bytes(b"not a keras archive")
    monkeypatch.setenv("PNEUMOSCOPE_ARTIFACTS", str(registry_copy.root))
    at = open_page()
    at.button(key="sample_go").click().run()
    assert not at.exception
    assert "could not be loaded" in texts(at.error)
    assert audit_lines(registry_copy.root) == []  # nothing was predicted


def _render_fake_case(status: str, message: str) -> AppTest:
    def script(status, message):
        import numpy as np

        from core.predict import Prediction
        from ui import components

        img = np.tile(np.linspace(0, 255, 64, dtype=np.uint8)[None, :, None], (64, 1, 3))
        pred = Prediction(
            filename="case.png", ok=True, label="REJECTED" if status == "rejected" else "PNEUMONIA",
            probability=0.91, raw_probability=0.87, threshold=0.5, band=(0.4, 0.6), model_version="vX",
            sha256="0" * 64, guard_status=status, guard_code="test", guard_message=message,
            info={"format": "PNG", "width": 64, "height": 64, "mode": "L"}, image=img,
            heatmap=np.random.default_rng(0).random((32, 32)).astype("float32"),
        )
        components.render_case(pred, key="fake")

    at = AppTest.from_function(script, args=(status, message), default_timeout=60)
    at.run()
    assert not at.exception, [e.value for e in at.exception]
    return at


def test_rejected_image_gets_no_verdict_and_unreliable_output_only_in_expander(env):
    at = _render_fake_case("rejected", "This looks like a photograph, not a radiograph.")
    assert any("This looks like a photograph" in e.value for e in at.error)
    heading = [m.value for m in at.markdown if m.value.startswith("### ")]
    assert heading and "No verdict" in heading[0]
    assert not any(t in heading[0] for t in VERDICT_TITLES)
    (exp,) = [e for e in at.expander if "nreliable" in e.label]
    assert any(m.label.startswith("Raw model output") for m in exp.metric)
    assert not any(m.label == "Probability" for m in at.metric)
    assert any("unreliable" in c for img in exp.image for c in img.captions)


def test_warning_image_shows_guard_message_and_keeps_the_verdict(env):
    at = _render_fake_case("warning", "Low contrast: check the exposure.")
    assert any("Low contrast: check the exposure." in shown(w.value) for w in at.warning)
    assert any("Pneumonia suspected" in m.value for m in at.markdown)
    assert {m.label: m.value for m in at.metric}["Probability"] == "91.0 %"


# --- dataset -------------------------------------------------------------------------------------
def test_dataset_page_counts_chart_grid_and_inspection(env):
    at = open_page("app_pages/dataset.py")
    metrics = {m.label: m.value for m in at.metric}
    n = sum(1 for p in SAMPLES.rglob("*.jpeg"))
    assert metrics["Images"] == str(n)
    assert metrics["NORMAL"] == "15" and metrics["PNEUMONIA"] == "15"
    assert len(at.get("plotly_chart")) >= 2  # counts + histogram (+ sizes)
    grid_captions = [c for img in at.image for c in img.captions if " · " in c]
    assert len(grid_captions) == 12  # first page of 12
    assert metrics["Size"].count("×") == 1
    # Filter to PNEUMONIA in the test split: only those images remain.
    at.selectbox(key="ds_split").set_value("test")
    at.segmented_control(key="ds_class").set_value("PNEUMONIA").run()
    assert not at.exception
    grid_captions = [c for img in at.image for c in img.captions if " · " in c]
    assert len(grid_captions) == 4 and all(c.endswith("PNEUMONIA") for c in grid_captions)


def test_dataset_page_pagination(env):
    at = open_page("app_pages/dataset.py")
    first = [c for img in at.image for c in img.captions if " · " in c]
    at.pagination[0].set_value(3).run()
    assert not at.exception
    third = [c for img in at.image for c in img.captions if " · " in c]
    assert len(third) == 30 - 24 and not set(first) & set(third)


def test_dataset_page_without_configured_data_falls_back_to_samples(env, monkeypatch, tmp_path):
    monkeypatch.setenv("PNEUMOSCOPE_DATA_ROOT", str(tmp_path / "missing"))
    at = open_page("app_pages/dataset.py")
    notice = texts(at.warning)
    assert "No dataset found" in notice and "python -m core data download" in notice and "PNEUMOSCOPE_DATA_ROOT" in notice
    assert {m.label: m.value for m in at.metric}["Images"] == "30"


def test_dataset_page_without_any_data_root_names_every_folder_tried(env, monkeypatch, tmp_path):
    """Issue 22: the no-data notice names the three folders tried, not one."""
    from core import config

    tried = (tmp_path / "cwd-data", tmp_path / "repo-data", tmp_path / "shared-data")
    monkeypatch.delenv("PNEUMOSCOPE_DATA_ROOT", raising=False)
    monkeypatch.setattr(config, "DATA_ROOT_CANDIDATES", tried)
    at = open_page("app_pages/dataset.py")
    notice = texts(at.warning)
    assert "No dataset found" in notice and "Tried, in order" in notice
    assert all(str(folder) in notice for folder in tried), notice


def test_dataset_page_with_no_data_at_all_explains_what_to_do(env, monkeypatch, tmp_path):
    from ui import loaders

    monkeypatch.setenv("PNEUMOSCOPE_DATA_ROOT", str(tmp_path / "missing"))
    monkeypatch.setattr(loaders, "SAMPLES_ROOT", tmp_path / "no-samples")
    at = open_page("app_pages/dataset.py")
    assert "No dataset is available" in texts(at.error)
    assert "python -m core data download" in texts(at.markdown)
    assert not at.image


def test_safe_path_never_escapes_the_data_root(tmp_path):
    from ui.loaders import safe_path

    root = tmp_path / "data"
    (root / "train" / "NORMAL").mkdir(parents=True)
    ok = root / "train" / "NORMAL" / "a.jpeg"
    ok.write_bytes(b"x")
    assert safe_path(root, ok) == ok.resolve()
    assert safe_path(root, "train/NORMAL/a.jpeg") == ok.resolve()
    (tmp_path / "secret.txt").write_text("s")
    for bad in ("../secret.txt", str(tmp_path / "secret.txt"), "train/../../secret.txt"):
        with pytest.raises(ValueError, match="outside the data folder"):
            safe_path(root, bad)
    os.symlink(tmp_path / "secret.txt", root / "train" / "NORMAL" / "link.jpeg")
    with pytest.raises(ValueError):
        safe_path(root, root / "train" / "NORMAL" / "link.jpeg")


# --- evaluation ----------------------------------------------------------------------------------
def test_evaluation_page_metric_cards_with_ci_and_charts(env):
    at = open_page("app_pages/evaluation.py")
    test = json.loads((env["root"] / "models" / "v0001-tiny" / "metrics.json").read_text())["test"]
    # The overview cards come first; the threshold explorer further down repeats "Accuracy"
    # and "Specificity" at the slider's threshold: keep the first card of each label.
    metrics: dict[str, str] = {}
    for m in at.metric:
        metrics.setdefault(m.label, m.value)
    assert metrics["Accuracy"] == f"{100 * test['accuracy']:.1f} %"
    assert metrics["Sensitivity (recall)"] == f"{100 * test['sensitivity']:.1f} %"
    assert metrics["Specificity"] == f"{100 * test['specificity']:.1f} %"
    assert metrics["ROC-AUC"] == f"{test['roc_auc']:.3f}"
    assert metrics["F1 score"] == f"{test['f1']:.3f}"
    lo, hi = test["ci95"]["accuracy"]
    assert f"95 % CI {100 * lo:.1f} % – {100 * hi:.1f} %" in texts(at.caption)
    per_class = at.table[0].value  # a wrapping HTML table (a grid was cut at 1024 px)
    assert list(per_class["Class"]) == ["NORMAL", "PNEUMONIA"]
    assert per_class["Support"].astype(int).sum() == test["n"]
    # confusion matrix, ROC, PR, history, threshold CM, compare CMs
    assert len(at.get("plotly_chart")) >= 6
    assert "VALIDATION" not in texts(at.warning)


@pytest.mark.slow  # an AppTest flow of 1.4-2.3 s: CI's slow set keeps the default run under 3 min
def test_threshold_slider_recomputes_metrics_live(env):
    at = open_page("app_pages/evaluation.py")
    before = {m.label: m.value for m in at.metric}["Sensitivity"]
    at.slider(key="ev_thr").set_value(0.0).run()
    assert not at.exception
    after = {m.label: m.value for m in at.metric}
    assert after["Sensitivity"] == "100.0 %" and after["Specificity"] == "0.0 %"
    assert any("pts vs stored" in (m.delta or "") for m in at.metric if m.label == "Specificity")
    assert before != after["Sensitivity"] or before == "100.0 %"
    assert "would be missed" in texts(at.markdown)


def test_threshold_explorer_starts_at_the_stored_threshold(env):
    # It used to start at the stored threshold rounded to 0.01, so its first figures could
    # differ from the cards above whenever a probability fell in between.
    at = open_page("app_pages/evaluation.py")
    test = json.loads((env["root"] / "models" / "v0001-tiny" / "metrics.json").read_text())["test"]
    assert at.slider(key="ev_thr").value == pytest.approx(100 * test["threshold"])  # percent, like every probability
    for label in ("Accuracy", "Specificity"):
        values = [m.value for m in at.metric if m.label == label]
        assert len(values) == 2 and values[0] == values[1], (label, values)
    explorer = [m for m in at.metric if m.label in ("Sensitivity", "Precision")]
    assert explorer and not any(m.delta for m in explorer)  # no "pts vs stored" at start


@pytest.mark.slow  # an AppTest flow of 1.4-2.3 s: CI's slow set keeps the default run under 3 min
def test_compare_versions_side_by_side(env):
    at = open_page("app_pages/evaluation.py")
    at.selectbox(key="ev_other").set_value("v0002-copy").run()
    assert not at.exception
    # The admin page's table (core.evaluation.compare_reports drawn by ui.compare_view): an st.table,
    # which wraps long cells where a data grid cut them (issue 22); its cells are escaped Markdown.
    from helpers import shown

    table = next(t.value for t in at.table if "metric" in t.value.columns).map(shown)
    table.columns = [shown(c) for c in table.columns]
    assert list(table.columns) == ["metric", "v0001-tiny", "v0002-copy", "difference"]
    assert not at.error  # the same test images: no "not comparable" notice
    acc = table[table["metric"] == "Accuracy (test)"].iloc[0]
    assert acc["v0002-copy"] == "99.9 %" and acc["v0001-tiny"] != "99.9 %" and acc["difference"].endswith(" pts")
    assert len(at.get("plotly_chart")) >= 2  # both confusion matrices


@pytest.mark.slow  # an AppTest flow of ~2 s: CI's slow set keeps the default run well under 3 min
def test_validation_fallback_is_labelled_and_missing_images_are_reported(env):
    at = open_page("app_pages/evaluation.py")
    at.selectbox(key="ev_version").set_value("v0003-val").run()
    assert not at.exception
    assert "VALIDATION" in texts(at.warning)
    assert "No false negatives" in texts(at.success)  # the gallery opens on false negatives
    at.radio(key="ev_mis_kind").set_value("False positives").run()
    assert "not on this machine" in texts(at.info)


def test_misclassified_gallery_computes_gradcam_on_demand(env):
    at = open_page("app_pages/evaluation.py")
    test = json.loads((env["root"] / "models" / "v0001-tiny" / "metrics.json").read_text())["test"]
    fn = sum(m["label"] == "PNEUMONIA" for m in test["misclassified"])
    n_mis = min(8, fn or len(test["misclassified"]))
    assert n_mis > 0
    if not fn:  # the gallery opens on false negatives; this tiny model only has false positives
        at.radio(key="ev_mis_kind").set_value("False positives").run()
    at.toggle(key="ev_cam").set_value(True).run()
    assert not at.exception, [e.value for e in at.exception]
    gallery_captions = [m.value for m in at.caption if "P(pneumonia)" in m.value]
    assert len(gallery_captions) == n_mis


# --- no model ------------------------------------------------------------------------------------
@pytest.mark.parametrize("page", [None, "app_pages/dataset.py", "app_pages/evaluation.py"])
def test_every_page_renders_with_an_empty_registry_and_no_dataset(empty_env, page):
    at = open_page(page)
    assert "No model is active" in texts(at.sidebar.info)
    assert "python -m core train" in texts(at.sidebar.info)
    assert "Research demo — not a medical device" in texts(at.sidebar.warning)
    if page != "app_pages/dataset.py":
        assert "No model is available yet" in texts(at.info)
    else:  # falls back to the bundled sample with a notice
        assert "No dataset found" in texts(at.warning)


# --- reports -------------------------------------------------------------------------------------
def test_case_report_pdf_and_png_are_valid_and_latin1_safe():
    import numpy as np
    from PIL import Image

    from core.predict import Prediction
    from core.reports import build_pdf, build_png, latin1, verdict

    img = np.full((80, 64, 3), 120, np.uint8)
    pred = Prediction(
        filename="Zoë — 日本 ≥ chest.png", ok=True, label="INDETERMINATE", probability=0.5, raw_probability=0.5,
        threshold=0.47, band=(0.37, 0.57), model_version="v0001-tiny", sha256="ab" * 32,
        guard_status="warning", guard_message="Low contrast — check “exposure”.",
        info={"format": "PNG", "width": 64, "height": 80, "mode": "L"}, image=img,
    )
    assert verdict(pred).title == "Indeterminate — refer"
    pdf = build_pdf(pred, overlay_rgb=img)
    assert pdf.startswith(b"%PDF") and len(pdf) > 1000
    png = build_png(pred, overlay_rgb=img)
    assert Image.open(io.BytesIO(png)).size[0] >= 2 * 64
    assert latin1("a — b ≥ c “d”") == 'a - b >= c "d"'
    latin1("日本").encode("latin-1")  # unknown characters replaced, never raising


def test_upside_down_upload_is_rejected_with_a_one_click_fix(env):
    import numpy as np
    from PIL import Image

    src = np.asarray(Image.open(sorted((SAMPLES / "test" / "NORMAL").iterdir())[0]).convert("L"))
    buf = io.BytesIO()
    Image.fromarray(np.ascontiguousarray(src[::-1, ::-1])).save(buf, format="PNG")
    data = buf.getvalue()
    at = open_page()
    at.file_uploader[0].set_value([("turned.png", data, "image/png")]).run()
    assert not at.exception, [e.value for e in at.exception]
    assert any("upside down" in e.value for e in at.error), [e.value for e in at.error]
    fix = [b for b in at.button if b.label == "Turn by 180° and analyse again"]
    assert len(fix) == 1
    fix[0].click().run()
    assert not at.exception, [e.value for e in at.exception]
    assert not any("upside down" in e.value for e in at.error)
    assert not [b for b in at.button if b.label == "Turn by 180° and analyse again"]
    assert any("turned by 180°" in i.value for i in at.info)
    recs = audit_lines(env["audit"])
    assert [r["source"] for r in recs] == ["upload", "upload+rotate180"]
    assert recs[0]["guard"] == "upside_down" and recs[1]["guard"] != "upside_down"
    assert recs[0]["image_sha256"] == recs[1]["image_sha256"] == hashlib.sha256(data).hexdigest()


@pytest.mark.parametrize("code,label", [("inverted", "Invert (negative to positive) and analyse again"),
                                        ("upside_down", "Turn by 180° and analyse again"), ("color", None)])
def test_fix_is_offered_only_for_correctable_rejections(code, label):
    def script(code):
        import streamlit as st

        from core.predict import Prediction
        from ui import components

        pred = Prediction(filename="x.png", ok=True, label="REJECTED", guard_status="rejected", guard_code=code,
                          guard_message="m")
        st.session_state["fix"] = components.fix_offer_ui(pred, key="k")

    at = AppTest.from_function(script, args=(code,), default_timeout=60)
    at.run()
    assert not at.exception, [e.value for e in at.exception]
    assert [b.label for b in at.button] == ([label] if label else [])
    assert at.session_state["fix"] is None
    if label:
        at.button[0].click().run()
        assert at.session_state["fix"] == components_fix(code)


def components_fix(code: str) -> str:
    from ui.components import FIXES

    return FIXES[code][0]


# --- issue 14: upload limits, no one-click fix when another check fails --------------------------
@pytest.mark.slow  # an AppTest flow of 1.4-2.3 s: CI's slow set keeps the default run under 3 min
def test_upload_batch_over_the_limits_is_refused_with_a_clear_message(env, monkeypatch):
    from core import imageio

    at = open_page()
    assert "50 files and 200 MB in total" in (at.file_uploader[0].help or "")
    good = sorted((SAMPLES / "test" / "NORMAL").iterdir())[:3]
    # The server's upload store refuses files past the limits (ui/upload_guard.py,
    # tests/test_upload_guard.py); the page checks again what the session holds.
    monkeypatch.setattr(imageio, "MAX_UPLOAD_FILES", 2)
    with pytest.raises(Exception, match="413|at most 2 files"):
        at.file_uploader[0].set_value([(p.name, p.read_bytes(), "image/jpeg") for p in good]).run()
    from ui import upload_guard

    monkeypatch.setattr(upload_guard, "check", lambda *a, **k: None)  # whatever the store let through
    at = open_page()
    at.file_uploader[0].set_value([(p.name, p.read_bytes(), "image/jpeg") for p in good]).run()
    assert not at.exception, [e.value for e in at.exception]
    assert any("Too many files: 3 were selected, at most 2" in e.value for e in at.error), texts(at.error)
    assert audit_lines(env["audit"]) == []  # nothing was analysed
    monkeypatch.setattr(imageio, "MAX_UPLOAD_FILES", 50)
    monkeypatch.setattr(imageio, "MAX_UPLOAD_TOTAL_BYTES", sum(p.stat().st_size for p in good) - 1)
    at.run()
    assert any("too large together" in e.value for e in at.error), texts(at.error)
    assert audit_lines(env["audit"]) == []


def test_turned_ct_dicom_is_not_a_radiograph_and_gets_no_turn_button(env):
    import numpy as np
    import pydicom
    from PIL import Image

    from tests.test_guard import make_dicom

    src = np.asarray(Image.open(sorted((SAMPLES / "test" / "NORMAL").iterdir())[0]).convert("L"))
    ds = pydicom.dcmread(io.BytesIO(make_dicom(np.ascontiguousarray(src[::-1, ::-1]).astype(np.uint16) * 16,
                                               "MONOCHROME2")))
    ds.Modality = "CT"
    buf = io.BytesIO()
    ds.save_as(buf, enforce_file_format=True)
    at = open_page()
    at.file_uploader[0].set_value([("slice.dcm", buf.getvalue(), "application/dicom")]).run()
    assert not at.exception, [e.value for e in at.exception]
    page = texts(at.error) + texts(at.warning) + texts(at.markdown)
    assert "not a radiograph (Modality CT" in page
    assert not [b for b in at.button if "180" in b.label or "Invert" in b.label]


@pytest.mark.parametrize("other", [None, ("ood", "ood"), ("modality", "not_a_radiograph")])
def test_turn_fix_is_not_offered_when_another_check_also_fails(other):
    def script(other):
        import streamlit as st

        from core import guard
        from core.predict import Prediction
        from ui import components

        checks = [guard.CheckResult("layout", "fail", "upside_down", None, None, "turned")]
        if other:
            checks.append(guard.CheckResult(other[0], "fail", other[1], None, None, "also"))
        g = guard.combine(checks)
        pred = Prediction(filename="x.png", ok=True, label="REJECTED", guard_status=g.status, guard_code=g.code,
                          guard_message=g.message, info={"guard": g.to_dict()})
        st.session_state["fix"] = components.fix_offer_ui(pred, key="k")

    at = AppTest.from_function(script, args=(other,), default_timeout=60)
    at.run()
    assert not at.exception, [e.value for e in at.exception]
    assert [b.label for b in at.button] == ([] if other else ["Turn by 180° and analyse again"])


# --- names are text (issue 21) -------------------------------------------------------------------
HOSTILE_UPLOAD_NAMES = (
    "![x](https://example.invalid/beacon).jpeg",  # an image: every browser showing it would fetch the URL
    "[link](http://x).jpeg",
    "# heading.jpeg",
    ":red[x] :material/home: :smile: <b>x</b> www.example.invalid.jpeg",
    "$x^2$.jpeg",
    "abc\u202egpj.exe.jpeg",  # a right-to-left override
)
# Streamlit 1.67's text transforms that run after parsing (on the text with escapes resolved):
# GFM autolink literals, emoji shortcodes, the logo, Material icons (patterns copied from its bundle).
AFTER_PARSE_PATTERNS = (r"(https?://|www(?=\.))", r":\+1:|:-1:|:[\w-]+:", r":streamlit:", r":material_(\w+):")


def _markdown_sources(at) -> list[str]:
    """Every string of the page that Streamlit renders as Markdown: text elements, alert boxes,
    headings, captions, widget labels and radio options, expander labels, image captions and every
    cell (and header) of st.table."""
    out = [str(e.value) for kind in ("markdown", "caption", "error", "warning", "info", "success", "subheader",
                                     "title", "header") for e in getattr(at, kind)]
    out += [str(e.label) for kind in ("button", "selectbox", "radio", "checkbox", "toggle", "text_input",
                                      "text_area", "slider", "expander", "metric", "download_button")
            for e in at.get(kind) if getattr(e, "label", None)]
    out += [str(o) for r in at.radio for o in r.options]
    out += [str(c) for img in at.image for c in img.captions]
    for t in at.table:
        df = t.value
        out += [str(c) for c in df.columns] + [str(v) for v in df.to_numpy().ravel()]
    return out


def _assert_names_are_text(sources: list[str], names) -> None:
    from markdown_it import MarkdownIt

    render = MarkdownIt("commonmark").enable(["table", "strikethrough"]).render
    for src in sources:
        assert "\u202e" not in src and "\x1b" not in src, src  # controls and bidi overrides are made visible
        html = render(src)
        # Code spans (ui.text.md_code) show their content literally: what is outside them must be escaped.
        src = re.sub(r"(?<![`\\])(`+)(?!`)(.+?)(?<!`)\1(?!`)", " ", src)
        for name in names:
            assert name not in src, (name, src)  # each name contains syntax that must be escaped
        assert "<img" not in html and "<a " not in html and "<h1" not in html, (src, html)
        # directives (:red[...]) and math ($...$) are not CommonMark: no unescaped ":red[" or "$" anywhere
        assert not re.search(r"(?<!\\):red\[|(?<!\\)\$", src), src
        resolved = re.sub(r"\\([!-/:-@\[-`{-~])", r"\1", src)  # the text node the post-parse transforms see
        for pattern in AFTER_PARSE_PATTERNS:
            assert not re.search(pattern, resolved, re.IGNORECASE), (pattern, src)


def _jpeg_bytes() -> bytes:
    return sorted((SAMPLES / "test" / "NORMAL").iterdir())[0].read_bytes()


@pytest.mark.slow  # an AppTest flow of 2+ s: CI's slow set keeps the default run under 3 min
def test_uploaded_file_names_are_shown_as_text_never_as_markdown(env):
    """A file named ![x](https://host/beacon).jpeg, [link](...), # heading, :red[x], $x^2$ or with a
    right-to-left override: no image, link, heading, colour, formula, icon or reversed sentence on any
    element of the page; the reader sees the name (controls made visible) where it is named."""
    from core.formatting import printable

    data = _jpeg_bytes()
    broken = "[bad](http://x)<img src=x>.png"
    files = [(n, data, "image/jpeg") for n in HOSTILE_UPLOAD_NAMES] + [(broken, b"not an image", "image/png")]
    at = open_page()
    at.file_uploader[0].set_value(files).run()
    assert not at.exception, [e.value for e in at.exception]
    names = [*HOSTILE_UPLOAD_NAMES, broken]
    _assert_names_are_text(_markdown_sources(at), names)
    # The unreadable file is named in its error box and in the messages table, as text.
    assert any(printable(broken) in shown(e.value) for e in at.error), texts(at.error)
    (msgs,) = [t.value for t in at.table if "Message" in t.value.columns]
    assert [shown(f) for f in msgs["File"]] == [printable(broken)]
    # The detail view names each image in a subheader: the reader sees the name, escaped where needed.
    pick = next(sb for sb in at.selectbox if sb.key and sb.key.startswith("detail-"))
    assert all("\u202e" not in str(o) for o in pick.options)  # plain-text options: controls visible too
    assert any("abc\\u202egpj.exe.jpeg" in str(o) for o in pick.options)
    for i, name in enumerate(HOSTILE_UPLOAD_NAMES):
        pick = next(sb for sb in at.selectbox if sb.key and sb.key.startswith("detail-"))
        pick.set_value(i).run()
        assert not at.exception, [e.value for e in at.exception]
        (sub,) = [s.value for s in at.subheader if not s.value.startswith("Results")]
        assert shown(sub) == printable(name)
        _assert_names_are_text(_markdown_sources(at), names)


def test_a_single_upload_with_a_hostile_name_is_text_in_every_message(env):
    """One file, unreadable: the error names it as text (bold stays bold, the name does not render)."""
    name = "![x](https://example.invalid/beacon) **b** _i_ `c` ~~s~~ | t |.png"
    at = open_page()
    at.file_uploader[0].set_value((name, b"not an image at all", "image/png")).run()
    assert not at.exception, [e.value for e in at.exception]
    (err,) = [e.value for e in at.error]
    assert err.startswith("**") and shown(err).startswith(f"**{name}** could not be analysed")
    _assert_names_are_text(_markdown_sources(at), [name])


def test_dicom_text_is_shown_as_text_in_the_tags_table_and_the_guard_message(env):
    import numpy as np
    import pydicom
    from PIL import Image

    from tests.test_guard import make_dicom

    src = np.asarray(Image.open(sorted((SAMPLES / "test" / "NORMAL").iterdir())[0]).convert("L"))
    ds = pydicom.dcmread(io.BytesIO(make_dicom(src.astype(np.uint16) * 16, "MONOCHROME2")))
    manufacturer = "![m](https://example.invalid/m) :red[ACME] $x$"
    modality = "[CT](HTTP://X)"
    ds.Manufacturer = manufacturer
    ds.Modality = modality
    buf = io.BytesIO()
    ds.save_as(buf, enforce_file_format=True)
    at = open_page()
    at.file_uploader[0].set_value([("scan.dcm", buf.getvalue(), "application/dicom")]).run()
    assert not at.exception, [e.value for e in at.exception]
    (facts,) = [e for e in at.expander if e.label == "Image facts"]
    tags = next(t.value for t in facts.table if "DICOM tag" in t.value.columns)
    shown_tags = {shown(k): shown(v) for k, v in zip(tags["DICOM tag"], tags["Value"])}
    assert shown_tags["Manufacturer"] == manufacturer and shown_tags["Modality"] == modality
    assert "Modality [CT](HTTP://X)" in texts(at.error)  # the guard message names it, as text
    _assert_names_are_text(_markdown_sources(at), [manufacturer, modality])


@pytest.mark.slow  # an AppTest flow of ~2 s: CI's slow set keeps the default run well under 3 min
def test_names_read_from_the_registry_are_text_on_the_evaluation_page(env, monkeypatch, tmp_path):
    """File names in a report's misclassified list and a card's text are shown as text."""
    root = tmp_path / "artifacts"
    copy_artifacts(env["root"], root)
    vdir = root / "models" / "v0003-val"
    names = ["![x](https:example.invalid).jpeg", "[l](x) :red[y] $z$ # h.jpeg"]
    m = json.loads((vdir / "metrics.json").read_text())
    m["validation"]["misclassified"] = [{"path": f"/nowhere/chest_xray/test/NORMAL/{n}", "label": "NORMAL", "prob": 0.9}
                                        for n in names]
    (vdir / "metrics.json").write_text(json.dumps(m))
    card = json.loads((vdir / "card.json").read_text())
    card["weights_source"] = "[w](http://example.invalid) :blue[w]"
    (vdir / "card.json").write_text(json.dumps(card))
    monkeypatch.setenv("PNEUMOSCOPE_ARTIFACTS", str(root))
    at = open_page("app_pages/evaluation.py")
    at.selectbox(key="ev_version").set_value("v0003-val").run()
    at.radio(key="ev_mis_kind").set_value("False positives").run()
    assert not at.exception, [e.value for e in at.exception]
    assert all(f"`{n}` is not on this machine" in texts(at.info) for n in names), texts(at.info)  # code spans
    assert f"weights {card['weights_source']}" in texts(at.caption)
    _assert_names_are_text(_markdown_sources(at), [*names, card["weights_source"]])
