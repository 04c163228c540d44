"""ui.loaders: evaluation image paths that do not depend on the machine that trained the model,
and the thumbnail loader (the core.imageio.shrink_to copy of the file)."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
from PIL import Image

from ui import loaders

REPO = Path(__file__).resolve().parent.parent
SAMPLES = REPO / "samples" / "chest_xray"


def test_resolve_eval_path_uses_the_configured_data_root(tmp_path, monkeypatch):
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


def test_shipped_metrics_store_paths_relative_to_the_data_root(tmp_path, monkeypatch):
    """Issue 22 item 12: the shipped report records split/CLASS/file (as README says), and the
    evaluation page finds those images under whatever data root this machine configures, or in
    the bundled samples without one."""
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


def test_thumbnail_is_the_shrink_to_copy_of_the_file(tmp_path):
    """The thumbnail loader shrinks with core.imageio.shrink_to (area-averaged, aspect kept):
    pixel for pixel the same array, not a hand-written resize of its own."""
    from core.imageio import load_image, shrink_to

    rng = np.random.default_rng(0)
    # Fine structure (a checkerboard plus noise): another interpolation or rounding gives other pixels.
    board = (np.indices((600, 300)).sum(axis=0) % 2 * 160 + rng.integers(0, 60, (600, 300))).astype(np.uint8)
    Image.fromarray(board).save(tmp_path / "x.png")
    thumb = loaders.thumbnail.__wrapped__(str(tmp_path / "x.png"), 128)
    assert thumb.shape[:2] == (128, 64)
    np.testing.assert_array_equal(thumb, shrink_to(load_image(str(tmp_path / "x.png")).array, 128))
    small = loaders.thumbnail.__wrapped__(str(tmp_path / "x.png"), 999)  # already fits: as decoded
    assert small.shape[:2] == (600, 300)


def test_sample_files_decide_by_content_not_by_name(tmp_path):
    """The "Try a sample" list follows the rule of every folder walk (core.imageio.image_file_check):
    an extension-less film is listed, a text file named like nothing is not."""
    films = sorted((SAMPLES / "test" / "NORMAL").iterdir())
    (tmp_path / "NORMAL").mkdir()
    (tmp_path / "PNEUMONIA").mkdir()
    shutil.copy(films[0], tmp_path / "NORMAL" / "export-0001")  # a JPEG without its extension
    (tmp_path / "NORMAL" / "README").write_text("not a film")
    shutil.copy(films[1], tmp_path / "PNEUMONIA" / "b.jpeg")
    got = [(label, p.name) for label, p in loaders.sample_files(tmp_path)]
    assert got == [("NORMAL", "export-0001"), ("PNEUMONIA", "b.jpeg")]
