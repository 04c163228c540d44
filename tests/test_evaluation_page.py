"""app_pages/evaluation.py: the misclassified gallery (false negatives first, FN/FP choice,
paging through all of them) with images found under this machine's data root."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest
from helpers import shown
from streamlit.testing.v1 import AppTest
from tests.helpers import copy_artifacts

REPO = Path(__file__).resolve().parent.parent
APP = str(REPO / "streamlit_app.py")
SAMPLES = REPO / "samples" / "chest_xray"
N_FN, N_FP = 14, 20


@pytest.fixture()
def gallery_env(trained_registry, tmp_path, monkeypatch):
    """A registry whose test report lists 20 false positives first, then 14 false negatives
    (like the shipped metrics.json), and a data root elsewhere than the samples."""
    root = tmp_path / "artifacts"
    copy_artifacts(trained_registry.root, root)
    data = tmp_path / "my-data"
    for cls in ("NORMAL", "PNEUMONIA"):
        (data / "test" / cls).mkdir(parents=True)
    src_n = sorted((SAMPLES / "test" / "NORMAL").iterdir())[0]
    src_p = sorted((SAMPLES / "test" / "PNEUMONIA").iterdir())[0]
    mis = []
    for i in range(N_FP):
        shutil.copy(src_n, data / "test" / "NORMAL" / f"fp-{i:02d}.jpeg")
        path = f"test/NORMAL/fp-{i:02d}.jpeg" if i % 2 else f"/old/training/box/chest_xray/test/NORMAL/fp-{i:02d}.jpeg"
        mis.append({"path": path, "label": "NORMAL", "prob": 0.5 + i / 100})
    for i in range(N_FN):
        shutil.copy(src_p, data / "test" / "PNEUMONIA" / f"fn-{i:02d}.jpeg")
        mis.append({"path": f"test/PNEUMONIA/fn-{i:02d}.jpeg", "label": "PNEUMONIA", "prob": 0.01 * (i + 1)})
    mfile = root / "models" / "v0001-tiny" / "metrics.json"
    m = json.loads(mfile.read_text())
    m["test"]["misclassified"] = mis
    mfile.write_text(json.dumps(m))
    monkeypatch.setenv("PNEUMOSCOPE_ARTIFACTS", str(root))
    monkeypatch.setenv("PNEUMOSCOPE_DATA_ROOT", str(data))
    return {"data": data}


def _gallery_captions(at) -> list[str]:
    """The gallery captions as a reader sees them (file names are escaped Markdown: helpers.shown)."""
    return [shown(c.value) for c in at.caption if "P(pneumonia)" in c.value]


@pytest.mark.slow  # an AppTest flow of ~2 s: CI's slow set keeps the default run well under 3 min
def test_gallery_shows_false_negatives_first_and_pages_through_all(gallery_env):
    at = AppTest.from_file(APP, default_timeout=240)
    at.run()
    at.switch_page("app_pages/evaluation.py").run()
    assert not at.exception, [e.value for e in at.exception]
    radio = at.radio(key="ev_mis_kind")
    assert radio.value == "False negatives" and list(radio.options) == ["False negatives", "False positives"]
    assert f"{N_FN} false negatives, {N_FP} false positives" in radio.label
    caps = _gallery_captions(at)
    assert len(caps) == 8 and all(c.startswith("fn-") for c in caps)
    # Most confident miss first: the lowest probability of pneumonia.
    assert caps[0].startswith("fn-00") and "1.0 %" in caps[0]
    seen = set(caps)
    assert "not on this machine" not in " ".join(str(i.value) for i in at.info)
    # Page 2 of 2 shows the other 6 false negatives.
    (pager,) = [w for w in at.get("pagination")] if at.get("pagination") else [None]
    assert pager is not None
    at.session_state["ev_mis_page-v0001-tiny-fn"] = 2
    at.run()
    caps2 = _gallery_captions(at)
    assert len(caps2) == N_FN - 8 and not (set(caps2) & seen)
    assert {c.split(" ")[0] for c in seen | set(caps2)} == {f"fn-{i:02d}.jpeg" for i in range(N_FN)}
    # False positives on request: 20, highest probability first, every image found (relative
    # paths and absolute ones from another machine alike) under the configured data root.
    at.radio(key="ev_mis_kind").set_value("False positives").run()
    assert not at.exception
    caps = _gallery_captions(at)
    assert len(caps) == 8 and caps[0].startswith("fp-19")
    assert "not on this machine" not in " ".join(str(i.value) for i in at.info)
    assert "false negatives matter most clinically" in " ".join(c.value for c in at.caption)
