"""core.predict hardening (issue 14): regular files only with a bounded read, no probability in
the export of a rejected image, bounded memory per image and per batch, file facts in the guard."""

from __future__ import annotations

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


def test_missing_file_keeps_its_code(predictor, tmp_path):
    p = predictor.predict_paths([tmp_path / "nope.png"])[0]
    assert (p.ok, p.error_code, p.guard_status) == (False, "unreadable", "rejected")


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

    def spy(decoded, with_gradcam, **kw):
        calls.append(len(decoded))
        return real(decoded, with_gradcam, **kw)

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
