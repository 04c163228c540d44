"""Issue 15: misclassified gallery (FN first, FN/FP choice, paging through all of them) and
evaluation image paths that do not depend on the machine that trained the model."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
from helpers import shown
from streamlit.testing.v1 import AppTest

REPO = Path(__file__).resolve().parent.parent
APP = str(REPO / "streamlit_app.py")
SAMPLES = REPO / "samples" / "chest_xray"
N_FN, N_FP = 14, 20


@pytest.fixture()
def gallery_env(trained_registry, tmp_path, monkeypatch):
    """A registry whose test report lists 20 false positives first, then 14 false negatives
    (like the shipped metrics.json), and a data root elsewhere than the samples."""
    root = tmp_path / "artifacts"
    shutil.copytree(trained_registry.root, root)
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
    monkeypatch.setenv("PNEUMOSCOPE_AUDIT_LOG", str(tmp_path / "audit.jsonl"))
    return {"data": data}


def _gallery_captions(at) -> list[str]:
    """The gallery captions as a reader sees them (file names are escaped Markdown: helpers.shown)."""
    return [shown(c.value) for c in at.caption if "P(pneumonia)" in c.value]


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


def test_resolve_eval_path_uses_the_configured_data_root(tmp_path, monkeypatch):
    from ui import loaders

    data = tmp_path / "data"
    (data / "test" / "NORMAL").mkdir(parents=True)
    f = data / "test" / "NORMAL" / "only-here.jpeg"
    f.write_bytes(b"x")
    monkeypatch.setenv("PNEUMOSCOPE_DATA_ROOT", str(data))
    assert loaders.resolve_eval_path("test/NORMAL/only-here.jpeg") == f
    # Old reports: absolute path of the training machine -> trailing split/CLASS/file under the root.
    assert loaders.resolve_eval_path("/somewhere/else/chest_xray/test/NORMAL/only-here.jpeg") == f
    assert loaders.resolve_eval_path("../shared/data/chest_xray/test/NORMAL/only-here.jpeg") == f
    assert loaders.resolve_eval_path("test/NORMAL/missing.jpeg") is None
    # A relative path never escapes the data root.
    outside = tmp_path / "secret.jpeg"
    outside.write_bytes(b"x")
    assert loaders.resolve_eval_path("../secret.jpeg") is None


def test_evaluate_records_paths_relative_to_the_data_root(tmp_path):
    from core.evaluation import evaluate

    root = tmp_path / "chest_xray"
    paths = [str(root / "test" / "NORMAL" / "a.jpeg"), str(root / "test" / "PNEUMONIA" / "b.jpeg"), "/elsewhere/c.jpeg"]
    rep = evaluate([0, 1, 1], [0.9, 0.1, 0.8], 0.5, paths, n_boot=10, data_root=root)
    assert [p["path"] for p in rep["predictions"]] == ["test/NORMAL/a.jpeg", "test/PNEUMONIA/b.jpeg", "/elsewhere/c.jpeg"]
    assert {m["path"] for m in rep["misclassified"]} == {"test/NORMAL/a.jpeg", "test/PNEUMONIA/b.jpeg"}
    # Without a data root, paths are kept as given (backward compatible).
    rep = evaluate([0, 1], [0.9, 0.1], 0.5, paths[:2], n_boot=10)
    assert rep["predictions"][0]["path"] == paths[0]


def test_training_writes_portable_paths(trained_registry):
    m = json.loads((trained_registry.root / "models" / "v0001-tiny" / "metrics.json").read_text())
    for split in ("validation", "test"):
        for p in m[split]["predictions"]:
            assert not os.path.isabs(p["path"]) and p["path"].split("/")[0] in ("train", "val", "test"), p


def test_shipped_metrics_store_paths_relative_to_the_data_root(tmp_path, monkeypatch):
    """Issue 22 item 12: the shipped report records split/CLASS/file (as README says), and the
    evaluation page finds those images under whatever data root this machine configures, or in
    the bundled samples without one."""
    from ui import loaders

    m = json.loads((REPO / "artifacts" / "models" / "v0003-shipped" / "metrics.json").read_text())
    entries = [e for split in ("validation", "test") for key in ("predictions", "misclassified") for e in m[split][key]]
    assert len(entries) == 524 + 624 + len(m["validation"]["misclassified"]) + len(m["test"]["misclassified"])
    for e in entries:
        parts = e["path"].split("/")
        assert len(parts) == 3 and parts[0] in ("train", "test") and parts[1] in ("NORMAL", "PNEUMONIA"), e["path"]
    assert {e["path"].split("/")[0] for e in m["validation"]["predictions"]} == {"train"}  # carved out of train
    # The misclassified films are found under a data root configured elsewhere ...
    data = tmp_path / "elsewhere" / "chest_xray"
    wanted = m["test"]["misclassified"][:3]
    for e in wanted:
        (data / e["path"]).parent.mkdir(parents=True, exist_ok=True)
        shutil.copy(next(SAMPLES.rglob("*.jpeg")), data / e["path"])
    monkeypatch.setenv("PNEUMOSCOPE_DATA_ROOT", str(data))
    assert [loaders.resolve_eval_path(e["path"]) for e in wanted] == [data / e["path"] for e in wanted]
    # ... and, with no dataset, the ones that are bundled samples are found there.
    monkeypatch.setenv("PNEUMOSCOPE_DATA_ROOT", str(tmp_path / "none"))
    bundled = {p.relative_to(SAMPLES).as_posix() for p in SAMPLES.rglob("*.jpeg")}
    in_samples = [e["path"] for e in m["test"]["misclassified"] if e["path"] in bundled]
    assert in_samples and all(loaders.resolve_eval_path(p) == SAMPLES / p for p in in_samples)


def test_full_data_tests_honour_pneumoscope_data_root(tmp_path):
    missing = tmp_path / "no-dataset-here"
    env = dict(os.environ, PNEUMOSCOPE_DATA_ROOT=str(missing))
    r = subprocess.run(
        [sys.executable, "-m", "pytest", "-q", "-rs", "-m", "data", "-p", "no:cacheprovider", "tests/test_full_data.py"],
        cwd=REPO, env=env, capture_output=True, text=True, timeout=600,
    )
    assert f"full dataset not found at {missing}" in r.stdout, r.stdout[-2000:]
