"""core.predict: regular files only with a bounded read, no probability in the export of a rejected
image, bounded memory per image and per batch, file facts in the guard (issue 14); one frozen
result type from every entry point, and the shipped model's served outputs unchanged by the
logit output (issue 23; reference: tests/fixtures/v0003_outputs.npz)."""

from __future__ import annotations

import dataclasses
import io
import os
from pathlib import Path

import cv2
import numpy as np
import pytest
from PIL import Image

from core import predict as predict_mod
from helpers import run_with_timeout
from core.imageio import load_image, resize_for_model

REPO = Path(__file__).resolve().parent.parent
SAMPLE = sorted((REPO / "samples" / "chest_xray" / "test").rglob("*.jpeg"))[0]


@pytest.fixture(scope="module")
def predictor(trained_registry):
    return predict_mod.Predictor.from_registry(trained_registry)


def png(a: np.ndarray) -> bytes:
    return cv2.imencode(".png", a)[1].tobytes()


@pytest.mark.skipif(not os.path.exists("/dev/null"), reason="no /dev/null")
def test_device_file_is_refused_without_reading_it(predictor):
    """/dev/null (harmless to read) stands for /dev/zero, which grew memory without bound."""
    p = run_with_timeout(what="predict_paths", fn=lambda: predictor.predict_paths(["/dev/null"])[0])
    assert (p.ok, p.error_code, p.guard_status) == (False, "not_a_file", "rejected")
    assert "character device" in p.error and "not a regular file" in p.error


def test_named_pipe_is_refused_and_does_not_hang(predictor, tmp_path):
    fifo = tmp_path / "pipe.png"
    os.mkfifo(fifo)
    good = tmp_path / "x.jpeg"
    good.write_bytes(SAMPLE.read_bytes())
    res = run_with_timeout(what="predict_paths", fn=lambda: predictor.predict_paths([fifo, good]))
    assert (res[0].ok, res[0].error_code) == (False, "not_a_file")
    assert "named pipe" in res[0].error
    assert res[1].ok and res[1].filename == "x.jpeg"


def test_read_is_bounded_even_when_the_size_check_passes(predictor, tmp_path, monkeypatch):
    from core import imageio

    f = tmp_path / "big.png"
    f.write_bytes(b"\x89PNG\r\n\x1a\n" + b"\0" * 5000)
    monkeypatch.setattr(imageio, "MAX_BYTES", 1000)
    p = predictor.predict_paths([f])[0]
    assert (p.ok, p.error_code) == (False, "too_large")


def test_missing_file_and_folder_keep_their_codes(predictor, tmp_path):
    missing, folder = predictor.predict_paths([tmp_path / "nope.png", tmp_path])
    assert (missing.ok, missing.error_code, missing.guard_status, missing.guard_code) == (
        False, "not_found", "rejected", "not_found")
    assert "was not found" in missing.error
    assert (folder.ok, folder.error_code) == (False, "not_a_file") and "is a folder" in folder.error


def test_rejected_image_has_no_probability_in_the_row(predictor):
    grey = np.full((300, 300), 128, np.uint8)  # the case: 0.97 for a constant grey image
    p = predictor.predict_bytes([("=grey.png", png(grey))])[0]
    assert p.guard_status == "rejected" and p.label == "REJECTED"
    row = p.to_row()
    assert row["result"] == "REJECTED"
    assert row["probability_pneumonia"] is None and row["raw_probability"] is None
    assert not any("prob" in k and v is not None for k, v in row.items())
    ok = predictor.predict_paths([SAMPLE])[0]  # a real film: not rejected, so its row carries the probability
    assert ok.guard_status != "rejected", ok.guard_message
    assert ok.probability is not None and ok.to_row()["probability_pneumonia"] == pytest.approx(ok.probability, abs=1e-4)


def test_prediction_keeps_a_display_copy_and_the_exact_model_input(predictor, tmp_path):
    big = cv2.resize(load_image(SAMPLE).array[..., 0], (2400, 1800), interpolation=cv2.INTER_LINEAR)
    f = tmp_path / "big.png"
    f.write_bytes(png(big))
    p = predictor.predict_paths([f])[0]
    assert p.ok and max(p.image.shape[:2]) == predict_mod.DISPLAY_MAX_SIDE
    assert p.image.shape[:2] == (768, 1024)  # aspect kept
    full = load_image(f).array
    assert np.array_equal(p.model_input, resize_for_model(full, predictor.size))
    small = predictor.predict_paths([SAMPLE])[0]
    assert small.image.shape == load_image(SAMPLE).array.shape  # small images unchanged


def test_batch_runs_the_model_in_bounded_chunks_with_the_same_results(predictor, monkeypatch):
    items = [(f"{i}.png", png(cv2.resize(load_image(SAMPLE).array[..., 0], (300 + 10 * i, 300)))) for i in range(5)]
    whole = predictor.predict_bytes(items)
    calls = []
    real = predictor._guarded

    def spy(decoded, with_map, **kw):
        calls.append(len(decoded))
        return real(decoded, with_map, **kw)

    monkeypatch.setattr(predictor, "_guarded", spy)
    monkeypatch.setattr(predict_mod, "BATCH_DECODED_BYTES", 500_000)  # under two 300 x 300 x 3 arrays
    chunked = predictor.predict_bytes(items)
    assert calls == [2, 2, 1]
    assert [p.filename for p in chunked] == [p.filename for p in whole]
    for a, b in zip(whole, chunked):
        assert a.label == b.label and a.probability == pytest.approx(b.probability, abs=1e-5)


def test_nan_pixels_and_ct_modality_reach_the_guard_through_the_predictor(predictor):
    import pydicom

    a = load_image(SAMPLE).array[..., 0].astype(np.float32) / 255.0
    a[: int(0.3 * a.shape[0])] = np.nan  # the case: accepted at 0.31 before
    buf = io.BytesIO()
    Image.fromarray(a, mode="F").save(buf, format="TIFF")
    p = predictor.predict_bytes([("nan.tif", buf.getvalue())])[0]
    assert (p.guard_status, p.guard_code, p.label) == ("rejected", "nonfinite", "REJECTED")
    assert p.to_row()["probability_pneumonia"] is None

    from tests.test_guard import make_dicom

    ds = pydicom.dcmread(io.BytesIO(make_dicom((load_image(SAMPLE).array[..., 0] * 16).astype(np.uint16), "MONOCHROME2")))
    ds.Modality = "CT"
    out = io.BytesIO()
    ds.save_as(out, enforce_file_format=True)
    p = predictor.predict_bytes([("ct.dcm", out.getvalue())])[0]
    assert (p.guard_status, p.guard_code) == ("rejected", "not_a_radiograph")
    assert "Modality CT" in p.guard_message
    assert p.info["guard"]["suggested_fix"] is None


# --- one frozen result type (issue 23) ------------------------------------------------------------
def test_every_entry_point_returns_frozen_predictions(predictor, tmp_path):
    film = load_image(SAMPLE).array
    from_arrays = predictor.predict_arrays([film], names=["a.jpeg"])[0]
    from_bytes = predictor.predict_bytes([("b.jpeg", SAMPLE.read_bytes())])[0]
    from_paths = predictor.predict_paths([SAMPLE])[0]
    for p in (from_arrays, from_bytes, from_paths):
        assert isinstance(p, predict_mod.Prediction) and p.ok
        with pytest.raises(dataclasses.FrozenInstanceError):
            p.label = "NORMAL"
        assert p.logit is not None and p.raw_probability == pytest.approx(1 / (1 + np.exp(-p.logit)), abs=1e-6)
    assert from_arrays.filename == "a.jpeg" and from_arrays.guard_status is None  # no file, no guard
    assert from_arrays.probability == pytest.approx(from_bytes.probability, abs=1e-6)
    assert np.array_equal(from_arrays.model_input, from_bytes.model_input)
    assert not hasattr(from_bytes, "maps")  # the app keeps maps in its session, not in the result
    with pytest.raises(TypeError):
        predictor.predict_bytes([("b.jpeg", SAMPLE.read_bytes())], with_gradcam=True)


def test_explain_prediction_returns_a_new_prediction_with_the_map(predictor):
    p = predictor.predict_paths([SAMPLE], with_map=True)[0]
    assert (p.heatmap_method, p.heatmap_layer) == predictor.map_spec()
    assert predictor.explain_prediction(p) is p  # already holds the default map
    g = predictor.explain_prediction(p, "gradcam")
    assert g is not p and (g.heatmap_method, g.heatmap_layer) == ("gradcam", predictor.config.last_conv_layer)
    assert (p.heatmap_method, g.probability, g.sha256) == (predictor.explain_method, p.probability, p.sha256)
    direct, _, _ = predictor.explain(p.model_input, "gradcam")
    np.testing.assert_allclose(g.heatmap, direct, atol=1e-6)
    # without the model input (a result built elsewhere), the image is resized to it in the core
    bare = dataclasses.replace(p, model_input=None, heatmap=None, heatmap_method=None, heatmap_layer=None)
    np.testing.assert_allclose(predictor.explain_prediction(bare).heatmap, p.heatmap, atol=1e-6)
    with pytest.raises(ValueError, match="Received: method='magic'"):
        predictor.explain_prediction(p, "magic")
    unreadable = predictor.predict_bytes([("x.png", b"")])[0]
    assert predictor.explain_prediction(unreadable) is unreadable
    assert predictor.map_grid("occlusion") is None and predictor.map_grid("gradcam") >= 1


# --- the shipped model's outputs are those recorded before the logit output (issue 23) ------------
SHIPPED = "v0003-shipped"
FIXTURE = Path(__file__).with_name("fixtures") / "v0003_outputs.npz"


@pytest.fixture(scope="module")
def shipped_predictor():
    from core.registry import Registry

    reg = Registry(REPO / "artifacts")
    if not reg.is_complete(SHIPPED):
        pytest.skip(f"shipped model not found at {reg.models_dir / SHIPPED}")
    return predict_mod.Predictor(reg.load(SHIPPED))


def test_shipped_model_serves_what_it_served_before_the_logit_output(shipped_predictor):
    """The committed sample films: probabilities, labels, threshold and default maps as recorded
    (tests/fixtures/make_v0003_outputs.py, run on the pre-change code); the raw probability also
    equals the plain ``model.predict`` sigmoid path now."""
    ref = np.load(FIXTURE)
    files = [REPO / f for f in ref["files"]]
    preds = shipped_predictor.predict_bytes([(f.name, f.read_bytes()) for f in files], with_map=True)
    assert [p.filename for p in preds] == [f.name for f in files] and all(p.ok for p in preds)
    assert np.array_equal(np.stack([p.model_input for p in preds]), ref["model_inputs"])
    raw = np.array([p.raw_probability for p in preds])
    p_old = shipped_predictor.model.predict(ref["model_inputs"].astype(np.float32), verbose=0).reshape(-1)
    assert np.abs(raw - p_old).max() < 1e-6
    assert np.abs(raw - ref["p_plain"]).max() < 1e-6
    assert np.abs(np.array([p.probability for p in preds]) - ref["cal"]).max() < 1e-6
    assert [p.label for p in preds] == list(ref["labels"])
    assert {p.threshold for p in preds} == {float(ref["threshold"])}
    assert all(p.band == tuple(ref["band"]) for p in preds)
    assert {(p.heatmap_method, p.heatmap_layer) for p in preds} == {(str(ref["method"]), str(ref["layer"]))}
    np.testing.assert_allclose(np.stack([p.heatmap for p in preds]), ref["maps"], atol=1e-5)


@pytest.mark.data
def test_shipped_model_probabilities_unchanged_on_the_whole_test_split(shipped_predictor, full_data_root):
    """All 624 test films: the served raw probability equals the plain ``model.predict`` sigmoid
    path, and the calibrated one (now sigmoid(logit / T)) the probability path it replaced."""
    files = sorted((full_data_root / "test").glob("*/*.jpeg"))
    if not files:
        pytest.skip(f"no test split under {full_data_root}")
    preds = shipped_predictor.predict_paths(files)
    assert all(p.ok for p in preds), [p.error for p in preds if not p.ok][:3]
    x = np.stack([p.model_input for p in preds]).astype(np.float32)
    p_old = shipped_predictor.model.predict(x, batch_size=64, verbose=0).reshape(-1).astype(np.float64)
    assert np.abs(np.array([p.raw_probability for p in preds]) - p_old).max() < 1e-6
    op = shipped_predictor.op
    cal_old = op.calibrate(p_old)
    assert np.abs(np.array([p.probability for p in preds]) - cal_old).max() < 1e-6
    assert [p.label for p in preds if p.label != "REJECTED"] == [
        op.decide(float(c)) for c, p in zip(cal_old, preds) if p.label != "REJECTED"]
