"""Tests for core.export (TF SavedModel with a serving signature) and ``python -m core export``."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from core import cli
from core.export import export_saved_model
from core.predict import Predictor


@pytest.fixture(scope="module")
def exported(trained_registry, tmp_path_factory):
    out = tmp_path_factory.mktemp("export") / "saved"
    code = cli.main(["--artifacts", str(trained_registry.root), "export", "--out", str(out)])
    assert code == 0
    return out


def test_export_writes_savedmodel_and_metadata(exported, trained_registry):
    assert (exported / "saved_model.pb").is_file()
    meta = json.loads((exported / "pneumoscope.json").read_text())
    op = trained_registry.load().operating_point
    image = meta.pop("image")
    assert meta == {"version": "v0001-tiny", "input_size": 32, "temperature": pytest.approx(op.temperature),
                    "threshold": pytest.approx(op.threshold), "labels": ["NORMAL", "PNEUMONIA"]}
    assert image["dtype"] == "uint8" and image["min_side"] == 64 and "2048" in image["resize"]


def _films(sample_root) -> list[np.ndarray]:
    """Sample films as the app decodes them, at sizes other than the model's 32 px: the 224 px
    originals, resampled to odd sizes, and one above core.imageio.WORK_MAX_SIDE (2048 px)."""
    import cv2

    from core.imageio import load_image

    films = [load_image(p).array for p in sorted((sample_root / "test").rglob("*.jpeg"))]
    odd = [cv2.resize(films[i], wh, interpolation=cv2.INTER_CUBIC) for i, wh in ((1, (1000, 837)), (6, (613, 401)),
                                                                                   (2, (64, 90)))]
    return films + odd + [cv2.resize(films[5], (2600, 2100), interpolation=cv2.INTER_CUBIC)]


@pytest.fixture(scope="module")
def serving(exported):
    import tensorflow as tf

    return tf.saved_model.load(str(exported)).signatures["serving_default"]


def test_signature_takes_any_size_and_matches_the_app(serving, trained_registry, sample_root):
    """Issue 22 item 4: films of any size give the app's probability (core.predict.Predictor,
    the same decoding and resize), not the answer of a film fed at the wrong size."""
    import tensorflow as tf

    loaded = trained_registry.load()
    spec = serving.structured_input_signature[1]["image"]
    assert spec.dtype == tf.uint8 and spec.shape.rank is None  # any rank-3/4 shape
    predictor = Predictor(loaded)
    films = _films(sample_root)
    assert {f.shape[:2] for f in films} >= {(224, 224), (837, 1000), (2100, 2600)}
    probs, raws = [], []
    for film in films:  # one image at a time: [H, W, 3]
        out = serving(image=tf.constant(film))
        assert set(out) == {"probability", "raw_probability", "label"} and out["probability"].shape == (1,)
        probs.append(float(out["probability"][0]))
        raws.append(float(out["raw_probability"][0]))
    ref = predictor.predict_arrays(films)
    # Identical pixels up to 2048 px; above, TF's and OpenCV's area sums round a few pixels apart
    # by one grey level (0.02 percentage points here): both far inside the 1 point asked for.
    np.testing.assert_allclose(raws[:-1], [r.raw_probability for r in ref[:-1]], atol=1e-5)
    np.testing.assert_allclose(probs[:-1], [r.probability for r in ref[:-1]], atol=1e-5)
    assert abs(probs[-1] - ref[-1].probability) < 1e-3
    # ... and what the app computes from the file itself (decode worker, working copy, guard pass)
    import cv2

    png = cv2.imencode(".png", films[-1][..., 0])[1].tobytes()
    (app,) = predictor.predict_bytes([("big.png", png)])
    assert abs(app.probability - ref[-1].probability) < 1e-6 and abs(app.probability - probs[-1]) < 1e-3
    # A batch of same-size films gives the same numbers as one at a time.
    batch = serving(image=tf.constant(np.stack(films[:8])))
    np.testing.assert_allclose(batch["probability"].numpy(), probs[:8], atol=1e-5)
    thr = loaded.operating_point.threshold
    expected = (np.array(probs[:8]) >= thr).astype(np.int32)
    near = np.abs(np.array(probs[:8]) - thr) < 1e-5  # the label is the thresholded probability (no band)
    np.testing.assert_array_equal(batch["label"].numpy()[~near], expected[~near])
    assert batch["label"].dtype == tf.int32
    # A grey image [H, W, 1] is the same film; colour is reduced to grey as the app does.
    grey = serving(image=tf.constant(films[0][..., :1]))
    assert abs(float(grey["probability"][0]) - probs[0]) < 1e-6
    from core.imageio import to_grayscale_rgb

    rng = np.random.default_rng(0)
    colour = np.clip(films[0].astype(int) + rng.integers(-40, 40, films[0].shape), 0, 255).astype(np.uint8)
    ref_colour = predictor.predict_arrays([to_grayscale_rgb(colour)])[0].probability
    assert abs(float(serving(image=tf.constant(colour))["probability"][0]) - ref_colour) < 1e-5


def test_signature_refuses_too_small_or_malformed_images_with_a_clear_error(serving):
    import tensorflow as tf

    small = np.full((40, 50, 3), 100, np.uint8)  # the app's input check rejects it: no silent answer
    with pytest.raises(tf.errors.InvalidArgumentError, match=r"at least 64 px(.|\n)*Received: image.shape="):
        serving(image=tf.constant(small))
    with pytest.raises(tf.errors.InvalidArgumentError, match="3 channels"):
        serving(image=tf.constant(np.zeros((1, 100, 100, 2), np.uint8)))
    with pytest.raises(tf.errors.InvalidArgumentError, match=r"\[N, H, W, C\] or \[H, W, C\]"):
        serving(image=tf.constant(np.zeros((100, 100), np.uint8)))


def test_cli_export_says_what_the_signature_takes(trained_registry, tmp_path, capsys):
    code = cli.main(["--artifacts", str(trained_registry.root), "export", "--out", str(tmp_path / "o")])
    out = capsys.readouterr().out
    assert code == 0
    assert "any size with sides of at least 64 px" in out and "then to 32x32" in out and "smaller images are refused" in out


def test_export_refuses_non_empty_folder(trained_registry, tmp_path):
    (tmp_path / "something").write_text("x")
    with pytest.raises(ValueError, match="Received: out="):
        export_saved_model(trained_registry.load(), tmp_path)


def test_cli_export_non_empty_out_exits_2(trained_registry, tmp_path, capsys):
    (tmp_path / "x").write_text("x")
    code = cli.main(["--artifacts", str(trained_registry.root), "export", "--out", str(tmp_path)])
    assert code == 2
    assert "Received: out=" in capsys.readouterr().err


def test_cli_export_without_model_exits_5(tmp_path, capsys):
    code = cli.main(["--artifacts", str(tmp_path / "none"), "export", "--out", str(tmp_path / "o")])
    assert code == 5
    assert "No active model" in capsys.readouterr().err


@pytest.mark.slow
def test_shipped_model_export_gives_the_apps_probability_on_full_size_films(tmp_path, sample_root):
    """The issue's case on the shipped model: 224 x 224 films through the exported signature give
    the app's probability (measured: the same to 1e-5 percentage points)."""
    import tensorflow as tf

    from core.imageio import load_image
    from core.registry import Registry

    loaded = Registry(Path(__file__).resolve().parent.parent / "artifacts").load("v0003-shipped")
    fn = tf.saved_model.load(str(export_saved_model(loaded, tmp_path / "sm"))).signatures["serving_default"]
    predictor = Predictor(loaded)
    for path in sorted((sample_root / "test").rglob("*.jpeg")):
        film = load_image(path).array
        app = predictor.predict_paths([path])[0].probability
        assert abs(float(fn(image=tf.constant(film))["probability"][0]) - app) < 1e-3, path.name
