"""Tests for core.export (TF SavedModel with a serving signature) and ``python -m core export``."""

from __future__ import annotations

import json

import numpy as np
import pytest

from core import cli
from core import dataset as ds
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
    assert meta == {"version": "v0001-tiny", "input_size": 32, "temperature": pytest.approx(op.temperature),
                    "threshold": pytest.approx(op.threshold), "labels": ["NORMAL", "PNEUMONIA"]}


def test_signature_matches_predictor(exported, trained_registry, sample_root):
    import tensorflow as tf

    loaded = trained_registry.load()
    images = ds.load_arrays(ds.discover(sample_root).split("test"), 32).x
    sm = tf.saved_model.load(str(exported))
    fn = sm.signatures["serving_default"]
    spec = fn.structured_input_signature[1]["image"]
    assert spec.dtype == tf.uint8 and spec.shape.as_list() == [None, 32, 32, 3]
    out = fn(image=tf.constant(images))
    assert set(out) == {"probability", "raw_probability", "label"}
    ref = Predictor(loaded).predict_arrays(list(images))
    np.testing.assert_allclose(out["raw_probability"].numpy(), [r["raw_probability"] for r in ref], atol=1e-5)
    np.testing.assert_allclose(out["probability"].numpy(), [r["probability"] for r in ref], atol=1e-5)
    thr = loaded.operating_point.threshold
    expected = (np.array([r["probability"] for r in ref]) >= thr).astype(np.int32)
    # the exported label is the thresholded calibrated probability (no indeterminate band)
    near = np.abs(np.array([r["probability"] for r in ref]) - thr) < 1e-5
    np.testing.assert_array_equal(out["label"].numpy()[~near], expected[~near])
    assert out["label"].dtype == tf.int32


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
