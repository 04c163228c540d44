"""What a new user sees first (AppTest and unit tests; the layout items are in the
browser tests of tests/test_browser_e2e.py): sample films drawn at random from the test split,
the picker's labels, what a heatmap is worth (Grad-CAM coarse and often flat, maps coarse,
methods may disagree, low values transparent), the input checks in plain words with the numbers
behind a toggle, the upside-down rejection naming its one-click button and no method selector
for a rejected image, Disagree never leaving the believed label on the model's verdict, the
gallery's feedback dialog naming and showing its film, and the Dataset page reading the image
sizes only when their tab is open."""

from __future__ import annotations

import dataclasses

import hashlib
import io
import json
import re
from pathlib import Path

import numpy as np
import pytest
from streamlit.testing.v1 import AppTest

from helpers import shown
from test_app_pages import SAMPLES, app_registry, env, open_page, sample_index, texts  # noqa: F401 - fixtures
from tests.helpers import copy_artifacts

REPO = Path(__file__).resolve().parent.parent
DRAW = REPO / "samples" / "test_draw"


def _by_label(elements, label):
    found = [e for e in elements if e.label == label]
    assert found, f"no widget {label!r}; have {[e.label for e in elements]}"
    return found[0]


def _ok(at):
    assert not at.exception, [e.value for e in at.exception]
    return at


# --- the bundled sample films ----------------------------------------------------------------------
def test_sample_draw_is_24_test_split_films_recorded_with_seed_procedure_and_hashes():
    manifest = json.loads((DRAW / "draw.json").read_text())
    films = manifest["films"]
    assert manifest["seed"] == 22 and manifest["split"] == "test" and "random.Random(seed)" in manifest["procedure"]
    assert len(films) == 24 and sum(f["label"] == "NORMAL" for f in films) == 12
    for f in films:
        path = DRAW / f["file"]
        assert f["file"].startswith(f["label"] + "/") and f["source"] == f"test/{f['file']}"
        assert hashlib.sha256(path.read_bytes()).hexdigest() == f["sha256"]
    files = sorted(p.relative_to(DRAW).as_posix() for p in DRAW.rglob("*.jpeg"))
    assert files == sorted(f["file"] for f in films)  # nothing else in the folder
    assert sum(p.stat().st_size for p in DRAW.rglob("*")) < 1_000_000  # the repository stays small
    readme = (REPO / "samples" / "README.md").read_text()
    assert "random.Random(22)" in readme and "CC BY 4.0" in readme and "Kermany" in readme


def test_the_draw_procedure_is_seeded_and_blind_to_the_model(tmp_path):
    from tools.draw_samples import draw

    for cls, n in (("NORMAL", 30), ("PNEUMONIA", 50)):
        (tmp_path / "test" / cls).mkdir(parents=True)
        for i in range(n):
            (tmp_path / "test" / cls / f"{cls[0]}{i:03d}.jpeg").write_bytes(b"x")
    a, b = draw(tmp_path, seed=22, per_class=12), draw(tmp_path, seed=22, per_class=12)
    assert a == b and len(a) == 24 and {f["label"] for f in a[:24]} == {"NORMAL", "PNEUMONIA"}
    assert sum(f["label"] == "NORMAL" for f in a) == 12
    assert draw(tmp_path, seed=23, per_class=12) != a
    # The order is the generator's shuffle, not class by class.
    assert [f["label"] for f in a] != sorted(f["label"] for f in a)


@pytest.mark.data
def test_the_bundled_draw_is_what_the_procedure_draws_from_the_dataset(full_data_root):
    from tools.draw_samples import main

    assert main(["--data-root", str(full_data_root), "--check"]) == 0


def test_picker_lists_the_draw_in_its_order_with_labels_outside_read_first(env):
    at = open_page()
    manifest = json.loads((DRAW / "draw.json").read_text())["films"]
    pick = at.selectbox(key="sample_pick")
    opts = list(pick.options)
    assert len(opts) == 24 and pick.index == 0  # the default: the draw's first film, not chosen by outcome
    assert opts == [f"{Path(f['file']).name} (labelled {f['label']})" for f in manifest]
    assert "24 real X-rays drawn at random" in texts(at.caption)
    at.toggle(key="read_first").set_value(True).run()
    assert list(at.selectbox(key="sample_pick").options) == [Path(f["file"]).name for f in manifest]


def test_sample_files_leaves_out_entries_outside_the_folder(tmp_path):
    from ui.loaders import sample_files

    (tmp_path / "NORMAL").mkdir()
    (tmp_path / "NORMAL" / "a.jpeg").write_bytes(b"x")
    (tmp_path / "secret.jpeg").write_bytes(b"x")
    films = [{"file": "NORMAL/a.jpeg", "label": "NORMAL"}, {"file": "NORMAL/../secret.jpeg", "label": "NORMAL"},
             {"file": "NORMAL/a.jpeg", "label": "PNEUMONIA"}, {"file": "NORMAL/missing.jpeg", "label": "NORMAL"}]
    (tmp_path / "draw.json").write_text(json.dumps({"films": films}))
    assert sample_files(tmp_path) == [("NORMAL", tmp_path / "NORMAL" / "a.jpeg")]
    (tmp_path / "draw.json").write_text("not json")
    assert sample_files(tmp_path) == [("NORMAL", tmp_path / "NORMAL" / "a.jpeg")]  # the folders, listed


# --- heatmaps: what they are worth, low values transparent -------------------------------------------
def _said(at) -> list[str]:
    return [shown(c.value) for c in at.caption] + [shown(i.value) for i in at.info]


@pytest.mark.slow
def test_method_selector_and_caption_say_how_coarse_and_how_reliable_the_maps_are(env):
    at = open_page()
    at.selectbox(key="sample_pick").set_value(sample_index("PNEUMONIA"))
    _ok(at.button(key="sample_go").click().run())
    method = at.selectbox(key="map-method-1")
    labels = list(method.options)  # as the reader sees them
    assert "Grad-CAM — coarse, often flat on this model" in labels
    assert "Occlusion sensitivity — slow, several seconds" in labels
    assert not any("~2 s" in v for v in labels)
    assert "27 %" in method.help and "may disagree" in method.help
    cap = next(t for t in _said(at) if t.startswith("HiResCAM"))
    # The tiny test model: HiResCAM at its layer is a grid of cells over its 32 px input.
    assert re.search(r"The map is coarse: \d+ x \d+ cells over the 32 px copy the model sees", cap), cap
    assert "methods may disagree" in cap and "left clear" in cap


def test_a_flat_grad_cam_map_says_the_method_is_coarse_and_often_flat():
    from core.predict import Prediction
    from ui.explain_view import caption

    pred = Prediction(filename="x.png", ok=True, label="PNEUMONIA", probability=0.9, heatmap=np.zeros((8, 8), np.float32),
                      heatmap_method="gradcam", heatmap_layer="block5_conv4")
    text = caption(pred)
    assert "no region raised the pneumonia score" in text and "coarse" in text and "often flat" in text and "27 %" in text
    assert "often flat" not in caption(dataclasses.replace(pred, heatmap_method="hirescam"))


def test_overlay_leaves_low_map_values_transparent():
    from ui.explain_view import CLEAR_BELOW, DEFAULT_ALPHA, overlay_arrays

    img = np.tile(np.linspace(40, 200, 64, dtype=np.uint8)[None, :, None], (64, 1, 3))
    heat = np.full((64, 64), 0.05, np.float32)  # weak everywhere...
    heat[20:40, 20:40] = 1.0  # ...strong in one square
    out = overlay_arrays(img, heat, DEFAULT_ALPHA)
    assert out is not None and out.shape == img.shape
    # Outside the square the film is unchanged (jet used to tint it all blue); inside it is coloured.
    np.testing.assert_array_equal(out[:10], img[:10])
    assert np.abs(out[25:35, 25:35].astype(int) - img[25:35, 25:35]).max() > 40
    ramp = np.tile(np.linspace(0, 1, 64, dtype=np.float32)[None, :], (64, 1))
    out = overlay_arrays(img, ramp, DEFAULT_ALPHA)
    clear = ramp[0] <= CLEAR_BELOW
    np.testing.assert_array_equal(out[:, clear], img[:, clear])
    assert (out[:, ~clear] != img[:, ~clear]).any()


# --- input checks in plain words -------------------------------------------------------------------
JARGON = ("layout corr", "layout_corr", "rot90", "entropy bits", "entropy_bits", "gray std", "mode fraction", "upright_score")


def _render_checked_case():
    def script():
        import numpy as np

        from core import guard
        from core.predict import Prediction
        from ui import components

        checks = [
            guard.CheckResult("size", "pass", "ok", 224, 64, "Size 224 x 224."),
            guard.CheckResult("constant", "pass", "ok", {"gray_std": 51.2, "entropy_bits": 7.1, "mode_fraction": 0.02},
                              {"gray_std": 4.0, "entropy_bits": 3.0, "mode_fraction": 0.5}, "Enough contrast."),
            guard.CheckResult("layout", "pass", "ok", {"layout_corr": 0.81, "layout_corr_rot90": 0.12, "upright_score": 3.4}, 0.3,
                              "Layout similarity 0.81, upright score 3.4."),
            guard.CheckResult("ood", "pass", "ok", 12.3, 42.5, "Out-of-distribution score 12.3."),
        ]
        g = guard.combine(checks)
        img = np.full((64, 64, 3), 120, np.uint8)
        pred = Prediction(filename="case.png", ok=True, label="NORMAL", probability=0.1, raw_probability=0.1, threshold=0.5,
                          band=(0.4, 0.6), model_version="vX", sha256="0" * 64, guard_status="accepted", guard_code="ok",
                          guard_message="Looks like a chest X-ray.", info={"format": "PNG", "width": 64, "height": 64, "guard": g.to_dict()},
                          image=img, heatmap=np.zeros((8, 8), np.float32), heatmap_method="hirescam")
        components.render_case(pred, key="c")

    return _ok(AppTest.from_function(script, default_timeout=60).run())


def _tables(at) -> str:
    return "\n".join(shown(v) for t in at.table for col in t.value.columns for v in [col, *map(str, t.value[col])])


def test_input_checks_are_in_plain_words_with_the_numbers_behind_a_toggle():
    at = _render_checked_case()
    (facts,) = [e for e in at.expander if e.label == "Image facts"]
    summary = [t.value for t in facts.table if "What it checks" in t.value.columns]
    assert summary, "no plain-words table of the input checks"
    rows = dict(zip(map(shown, summary[0]["Check"]), map(shown, summary[0]["Result"])))
    assert rows == {"Image size": "passed", "Contrast": "passed", "Chest layout": "passed", "Like the training films": "passed"}
    shown_now = _tables(at)
    assert not any(j in shown_now for j in JARGON), shown_now
    assert "Measured" not in shown_now  # no numbers up front
    toggle = at.toggle(key="c-guard-numbers")
    assert toggle.value is False
    toggle.set_value(True).run()
    numbers = _tables(at)
    assert "Measured" in numbers and "similarity to an average chest X-ray 0.81" in numbers
    assert "shades of grey used (bits) 7.1" in numbers and not any(j in numbers for j in JARGON), numbers


# --- the upside-down rejection ---------------------------------------------------------------------
def _turned_upload() -> bytes:
    from PIL import Image

    src = np.asarray(Image.open(sorted((SAMPLES / "test" / "NORMAL").iterdir())[0]).convert("L"))
    buf = io.BytesIO()
    Image.fromarray(np.ascontiguousarray(src[::-1, ::-1])).save(buf, format="PNG")
    return buf.getvalue()


@pytest.mark.slow
def test_upside_down_rejection_names_the_button_and_offers_no_heatmap_method(env):
    at = open_page()
    _ok(at.file_uploader[0].set_value([("turned.png", _turned_upload(), "image/png")]).run())
    errors = texts(at.error)
    assert "upside down" in errors and [b.label for b in at.button if "180" in b.label] == ["Turn by 180° and analyse again"]
    assert "upload it again" not in errors and "upload again" not in errors
    assert "Press **Turn by 180° and analyse again** above" in errors and "the uploaded file is not changed" in errors
    assert not [s for s in at.selectbox if s.label == "Heatmap method"]  # no verdict, no choice of explanation
    # Turned: an accepted film gets its verdict and the method selector again.
    _ok(_by_label(at.button, "Turn by 180° and analyse again").click().run())
    assert [s for s in at.selectbox if s.label == "Heatmap method"]


def test_rejection_text_without_the_button_keeps_the_guards_advice():
    from core.predict import Prediction
    from ui.components import rejection_text

    msg = "The image looks like a chest X-ray turned upside down. Please turn it by 180 degrees and upload it again."
    pred = Prediction(filename="x.png", ok=True, label="REJECTED", guard_status="rejected", guard_code="upside_down", guard_message=msg)
    assert "upload it again" in shown(rejection_text(pred, with_button=False))
    text = shown(rejection_text(pred, with_button=True))
    assert "upload it again" not in text and "Turn by 180° and analyse again" in text


# --- feedback: Disagree never leaves the believed label on the verdict ------------------------------
def test_believed_default_follows_agree_and_disagree():
    from ui.feedback_view import believed_default

    assert believed_default(True, "PNEUMONIA") == "PNEUMONIA" and believed_default(False, "PNEUMONIA") == "NORMAL"
    assert believed_default(True, "NORMAL") == "NORMAL" and believed_default(False, "NORMAL") == "PNEUMONIA"
    assert believed_default(True, None) == "unsure" and believed_default(False, None) is None


@pytest.mark.slow
def test_choosing_disagree_moves_the_believed_label_off_the_verdict(env, monkeypatch, tmp_path):
    from core.feedback import FeedbackStore, default_feedback_dir

    art = tmp_path / "art"
    import shutil

    copy_artifacts(env["root"], art)
    shutil.rmtree(art / "feedback", ignore_errors=True)
    monkeypatch.setenv("PNEUMOSCOPE_ARTIFACTS", str(art))
    at = open_page()
    seen = set()
    for i in range(len(at.selectbox(key="sample_pick").options)):  # until both kinds of verdict were tried
        at.selectbox(key="sample_pick").set_value(i)
        _ok(at.button(key="sample_go").click().run())
        pred = at.session_state["predict_batch"]["preds"][0]
        verdict = pred.label if pred.label in ("NORMAL", "PNEUMONIA") else None
        if (verdict is None) in seen or pred.rejected:
            continue
        seen.add(verdict is None)
        believed = _by_label(at.radio, "The label you believe")
        assert believed.value == (verdict or "unsure")  # agreeing: the model's own label
        _ok(_by_label(at.radio, "Do you agree with the verdict?").set_value("Disagree").run())
        believed = _by_label(at.radio, "The label you believe")
        # Disagreeing: the other label, or none after an indeterminate verdict; never the verdict.
        assert believed.value == {"NORMAL": "PNEUMONIA", "PNEUMONIA": "NORMAL"}.get(verdict)
        _ok(_by_label(at.radio, "Do you agree with the verdict?").set_value("Agree").run())
        assert _by_label(at.radio, "The label you believe").value == (verdict or "unsure")
        if verdict is not None:  # sending Disagree with the verdict's own label is refused, nothing recorded
            store = FeedbackStore(default_feedback_dir(art))
            _ok(_by_label(at.radio, "Do you agree with the verdict?").set_value("Disagree").run())
            _by_label(at.radio, "The label you believe").set_value(verdict)
            _ok(_by_label(at.button, "Send feedback").click().run())
            assert "cannot be" in texts(at.error) and store.items() == []
            _by_label(at.radio, "The label you believe").set_value("unsure")
            _ok(_by_label(at.button, "Send feedback").click().run())
            (item,) = store.items()
            assert item["agree"] is False and item["believed_label"] == "unsure"
        if len(seen) == 2:
            break
    assert seen  # the tiny test model calls every sample indeterminate: the binary verdicts are below


@pytest.mark.slow
@pytest.mark.parametrize("verdict", ["NORMAL", "PNEUMONIA"])
def test_disagreeing_with_a_binary_verdict_preselects_the_other_label_and_refuses_the_same(verdict, tmp_path, monkeypatch):
    from core.feedback import FeedbackStore, default_feedback_dir

    monkeypatch.setenv("PNEUMOSCOPE_ARTIFACTS", str(tmp_path / "art"))

    def script(verdict):
        import numpy as np

        from core.predict import Prediction
        from ui import feedback_view

        pred = Prediction(filename="x.png", ok=True, label=verdict, probability=0.7, threshold=0.5, model_version="vX",
                          sha256="ab" * 32, guard_status="accepted", guard_code="ok", image=np.zeros((8, 8, 3), np.uint8))
        feedback_view.case_feedback(pred, key="k")

    at = _ok(AppTest.from_function(script, args=(verdict,), default_timeout=60).run())
    other = {"NORMAL": "PNEUMONIA", "PNEUMONIA": "NORMAL"}[verdict]
    assert _by_label(at.radio, "The label you believe").value == verdict
    _ok(_by_label(at.radio, "Do you agree with the verdict?").set_value("Disagree").run())
    assert _by_label(at.radio, "The label you believe").value == other
    _by_label(at.radio, "The label you believe").set_value(verdict)
    _ok(_by_label(at.button, "Send feedback").click().run())
    store = FeedbackStore(default_feedback_dir(tmp_path / "art"))
    assert f"cannot be {verdict}" in texts(at.error) and store.items() == []
    _by_label(at.radio, "The label you believe").set_value(other)
    _ok(_by_label(at.button, "Send feedback").click().run())
    (item,) = store.items()
    assert item["agree"] is False and item["believed_label"] == other


# --- Dataset page: the sizes only when their tab is open --------------------------------------------
@pytest.mark.slow
def test_dataset_page_reads_image_sizes_only_when_their_tab_is_open(env, monkeypatch):
    from ui import loaders

    calls = []
    real = loaders.image_sizes
    monkeypatch.setattr(loaders, "image_sizes", lambda *a, **k: calls.append(1) or real(*a, **k))
    at = open_page("app_pages/dataset.py")
    assert calls == [] and not any(m.label == "Median width" for m in at.metric)
    at.session_state["ds_tab"] = "Image sizes"
    _ok(at.run())
    assert calls and any(m.label == "Median width" for m in at.metric)
