"""What the clinician sees of a map: captions, flat maps, the report overlay, the serving path."""

from __future__ import annotations

import numpy as np
import pytest

from ui import explain_view as ev


def _pred(**kw):
    from core.predict import Prediction

    d = dict(filename="c.png", ok=True, label="PNEUMONIA", probability=0.9, raw_probability=0.95, threshold=0.19,
             band=(0.09, 0.29), model_version="v", image=np.full((40, 40, 3), 120, np.uint8),
             heatmap=np.outer(np.hanning(8), np.hanning(8)).astype(np.float32), heatmap_method="hirescam",
             heatmap_layer="block3_conv2")
    d.update(kw)
    return Prediction(**d)


def test_caption_names_the_method_and_the_class():
    c = ev.caption(_pred())
    assert c.startswith("HiResCAM (block3_conv2) for PNEUMONIA") and "red =" in c


def test_normal_verdict_caption_says_the_score_stayed_below_the_threshold():
    assert "stayed below the threshold" in ev.caption(_pred(label="NORMAL"))
    assert "indeterminate band" in ev.caption(_pred(label="INDETERMINATE"))


def test_a_flat_map_is_said_in_words_and_never_drawn():
    p = _pred(heatmap=np.zeros((8, 8), np.float32))
    assert "no region raised the pneumonia score" in ev.caption(p)
    assert ev.overlay_image(p, 0.9) is None and ev.report_overlay(p) is None


def test_report_overlay_is_visible_whatever_the_slider():
    p = _pred()
    ov = ev.report_overlay(p)
    assert ov is not None and ov.shape == p.image.shape
    diff = np.abs(ov.astype(int) - p.image.astype(int))
    assert diff.max() > 40 and diff.mean() > 5  # not the original again (low map values are left clear: issue 22)
    assert ev.REPORT_ALPHA >= 0.3


def test_reports_say_the_map_is_flat_in_both_formats(monkeypatch):
    from core.reports import build_pdf, build_png, map_sentence, overlay_caption
    from ui.report import map_words

    p = _pred(heatmap=np.zeros((8, 8), np.float32))
    words = map_words(p)
    assert overlay_caption(p, None, words) == "No heatmap (see below)"
    assert "no region raised" in map_sentence(p, words)
    assert build_pdf(p, None, words=words)[:4] == b"%PDF" and build_png(p, None, words=words)[:4] == b"\x89PNG"


def test_method_options_put_the_default_first_and_keep_gradcam():
    opts = ev.method_options("hirescam")
    assert opts[0] == "hirescam" and "gradcam" in opts and "occlusion" in opts and len(set(opts)) == len(opts)


@pytest.fixture(scope="module")
def predictor(trained_registry):
    from core.predict import Predictor

    return Predictor.from_registry(trained_registry)


def test_predictor_serves_the_stored_default_map_in_the_same_pass(predictor, sample_root):
    path = sorted((sample_root / "test" / "PNEUMONIA").iterdir())[0]
    plain = predictor.predict_paths([path])[0]
    with_map = predictor.predict_paths([path], with_map=True)[0]
    assert plain.heatmap is None and with_map.heatmap is not None
    assert with_map.heatmap.shape == (predictor.size, predictor.size)
    assert (with_map.heatmap_method, with_map.heatmap_layer) == (predictor.config.explain_method,
                                                                 predictor.config.explain_layer)
    assert with_map.raw_probability == pytest.approx(plain.raw_probability, abs=1e-6)
    ref = float(predictor.model(with_map.model_input[None].astype("float32")).numpy().ravel()[0])
    assert with_map.raw_probability == pytest.approx(ref, abs=1e-5)
    m, method, layer = predictor.explain(with_map.model_input, "gradcam")
    assert (method, layer) == ("gradcam", predictor.config.last_conv_layer) and m.shape == with_map.heatmap.shape


def test_predictor_warm_up_traces_before_the_first_request(predictor):
    fn = predictor.explainer._compiled(predictor.explain_method, predictor.explain_layer, 1)
    assert fn.experimental_get_tracing_count() >= 1
    before = fn.experimental_get_tracing_count()
    predictor.predict_arrays([np.zeros((50, 70, 3), np.uint8)] * 3, with_map=True)
    assert fn.experimental_get_tracing_count() == before  # no retrace for a new batch size


class _FakeStreamlit:
    """What ui.inference uses of Streamlit: the session state and a spinner."""

    def __init__(self):
        self.session_state = {}

    def spinner(self, text):
        import contextlib

        return contextlib.nullcontext()


def test_the_app_keeps_computed_maps_in_the_session_by_file_hash_method_and_layer(predictor, sample_root, monkeypatch):
    """Issue 23: the Prediction is frozen; the Predict page's maps live in the session, keyed by
    (SHA-256 of the file bytes, method, layer), and the core computes them."""
    import dataclasses

    from ui import inference

    fake = _FakeStreamlit()
    monkeypatch.setattr(inference, "st", fake)
    calls = []
    real = predictor.explain_prediction
    monkeypatch.setattr(predictor, "explain_prediction", lambda p, m=None, lyr=None: calls.append(m) or real(p, m, lyr))
    path = sorted((sample_root / "test" / "PNEUMONIA").iterdir())[0]
    pred = predictor.predict_bytes([(path.name, path.read_bytes())], with_map=True)[0]
    g = inference.with_method(predictor, pred, "gradcam")
    assert calls == ["gradcam"] and g.heatmap_method == "gradcam" and pred.heatmap_method == predictor.explain_method
    again = inference.with_method(predictor, pred, "gradcam")  # switching back: no recomputation
    back = inference.with_method(predictor, g, None)  # the default map came with the prediction
    assert calls == ["gradcam"]
    np.testing.assert_array_equal(again.heatmap, g.heatmap)
    np.testing.assert_array_equal(back.heatmap, pred.heatmap)
    keys = set(fake.session_state[inference._MAPS_KEY])
    assert inference.map_key(pred, "gradcam", predictor.config.last_conv_layer) in keys
    assert all(k[0] == pred.sha256 for k in keys)
    # the same bytes analysed inverted are another model input: their map is computed afresh
    inverted = dataclasses.replace(pred, info={**pred.info, "inverted_for_analysis": "requested"})
    inference.with_method(predictor, inverted, "gradcam")
    assert calls == ["gradcam", "gradcam"]
    # a refused method or a failing map leaves the prediction as it was
    assert inference.with_method(predictor, pred, "magic") is pred
    monkeypatch.setattr(predictor, "explain_prediction", lambda *a: 1 / 0)
    assert inference.with_method(predictor, pred, "layercam") is pred


def test_unknown_method_is_refused_with_the_allowed_list(predictor):
    with pytest.raises(ValueError, match="Received: method='magic'"):
        predictor.map_spec("magic")


def test_config_validates_the_explanation_default():
    from core.config import Config

    with pytest.raises(ValueError, match="Received: explain_method='x'"):
        Config(weights="none", explain_method="x")
    cfg = Config.from_dict({**Config(weights="none").to_dict(), "explain_method": "gradcam", "explain_layer": "block5_conv4"})
    assert (cfg.explain_method, cfg.explain_layer) == ("gradcam", "block5_conv4")


def test_cli_heatmap_method_changes_the_written_maps(registry_copy, sample_root, tmp_path, capsys):
    from core import cli

    src = sorted((sample_root / "test" / "PNEUMONIA").iterdir())[:2]
    outs = {}
    for name, extra in (("default", []), ("gradcam", ["--heatmap-method", "gradcam"])):
        d = tmp_path / name
        code = cli.main(["--artifacts", str(registry_copy.root), "predict", *map(str, src), "--heatmap-dir", str(d), *extra])
        err = capsys.readouterr().err
        assert code == 0
        written = sorted(d.iterdir()) if d.exists() else []
        # every input has either an overlay or a sentence saying its map is flat
        assert len(written) + err.count("flat") == len(src), err
        outs[name] = {p.name: p.read_bytes() for p in written}
    common = set(outs["default"]) & set(outs["gradcam"])
    assert not common or any(outs["default"][k] != outs["gradcam"][k] for k in common)
