"""Tests for core.dataset on the committed samples (and folders built from them in tmp_path)."""

from __future__ import annotations

import shutil
from pathlib import Path

import numpy as np
import pytest

from core import dataset as ds
from core.config import CLASS_NAMES
from core.dataset import DatasetError, Sample


def _copy_splits(src: Path, dst: Path, splits) -> Path:
    for s in splits:
        shutil.copytree(src / s, dst / s)
    return dst


# --- discover ---------------------------------------------------------------------------------
def test_discover_kaggle_layout(sample_root):
    index = ds.discover(sample_root)
    assert index.root == sample_root
    assert index.splits == ["train", "val", "test"]
    counts = index.counts()
    # what is committed under samples/chest_xray
    for split in ("train", "val", "test"):
        for cls in CLASS_NAMES:
            n = len([p for p in (sample_root / split / cls).iterdir() if p.suffix.lower() == ".jpeg"])
            assert counts[split][cls] == n > 0
    for s in index.split("train"):
        assert isinstance(s, Sample)
        assert s.path.is_file() and s.split == "train"
        assert s.path.parent.name == s.class_name == CLASS_NAMES[s.label]
        assert s.group == ds.patient_id(s.path.name)
    assert index.split("nope") == []


@pytest.mark.parametrize("missing", ["val", "test", ("val", "test")])
def test_discover_without_val_or_test(sample_root, tmp_path, missing):
    missing = {missing} if isinstance(missing, str) else set(missing)
    keep = [s for s in ("train", "val", "test") if s not in missing]
    root = _copy_splits(sample_root, tmp_path / "data", keep)
    index = ds.discover(root)
    assert index.splits == keep
    assert set(index.counts()) == set(keep)
    for m in missing:
        assert index.split(m) == []


def test_discover_ignores_hidden_and_non_image_files(sample_root, tmp_path):
    root = _copy_splits(sample_root, tmp_path / "data", ["train"])
    n_before = len(ds.discover(root).split("train"))
    (root / "train" / "NORMAL" / ".DS_Store").write_bytes(b"junk")
    (root / "train" / "NORMAL" / "._IM-0320-0001.jpeg").write_bytes(b"junk")  # macOS resource fork
    (root / "train" / "NORMAL" / "notes.txt").write_text("hello")
    (root / "train" / "NORMAL" / "subdir.jpeg").mkdir()
    index = ds.discover(root)
    assert len(index.split("train")) == n_before
    # notes.txt is named as skipped (python -m core data lists it); dot-files are not part of a dataset
    assert [(p.name, why) for p, why in index.skipped] == [("notes.txt", "not an image (text)")]


def test_discover_finds_images_by_content(sample_root, tmp_path):
    """Issue 22: a DICOM exported as IMG0001 is an image of the dataset like a .jpeg."""
    from test_imageio import make_dicom

    root = _copy_splits(sample_root, tmp_path / "data", ["train"])
    n_before = len(ds.discover(root).split("train"))
    (root / "train" / "PNEUMONIA" / "IMG0001").write_bytes(make_dicom(np.full((64, 64), 100, np.uint8)))
    index = ds.discover(root)
    found = [s for s in index.split("train") if s.path.name == "IMG0001"]
    assert len(index.split("train")) == n_before + 1 and found and found[0].class_name == "PNEUMONIA"
    assert index.skipped == []


def test_discover_default_root_names_every_folder_tried(monkeypatch):
    from core.config import DATA_ROOT_CANDIDATES, DEFAULT_DATA_ROOT

    monkeypatch.delenv("PNEUMOSCOPE_DATA_ROOT", raising=False)
    monkeypatch.chdir(Path(__file__).resolve().parent)  # no data/chest_xray here
    with pytest.raises(DatasetError) as ei:
        ds.discover(DEFAULT_DATA_ROOT)
    msg = str(ei.value)
    for folder in DATA_ROOT_CANDIDATES:  # all three, not only the fallback's name
        assert str(folder) in msg


def test_discover_missing_root_has_instructions(tmp_path):
    missing = tmp_path / "does-not-exist"
    with pytest.raises(DatasetError) as ei:
        ds.discover(missing)
    msg = str(ei.value)
    assert str(missing) in msg
    assert "not found" in msg
    assert "PNEUMOSCOPE_DATA_ROOT" in msg and "python -m core data download" in msg


def test_discover_root_is_a_file(tmp_path):
    f = tmp_path / "file.txt"
    f.write_text("x")
    with pytest.raises(DatasetError, match="not found"):
        ds.discover(f)


@pytest.mark.parametrize("layout", ["empty", "empty_class_dirs", "wrong_level"])
def test_discover_empty_root_explains_expected_layout(tmp_path, sample_root, layout):
    root = tmp_path / "root"
    root.mkdir()
    if layout == "empty_class_dirs":
        for s in ("train", "test"):
            for c in CLASS_NAMES:
                (root / s / c).mkdir(parents=True)
    elif layout == "wrong_level":  # user pointed one level too high
        _copy_splits(sample_root, root / "chest_xray", ["train"])
    with pytest.raises(DatasetError) as ei:
        ds.discover(root)
    msg = str(ei.value)
    assert "No images found" in msg and str(root) in msg
    assert "{NORMAL,PNEUMONIA}" in msg


def test_dataset_error_is_value_error():
    assert issubclass(DatasetError, ValueError)


# --- patient ids --------------------------------------------------------------------------------
@pytest.mark.parametrize(
    "name,expected",
    [
        ("person123_bacteria_4.jpeg", "person123"),
        ("person1000_virus_1681.jpeg", "person1000"),
        ("person447_virus_921_1.jpeg", "person447"),  # real name with an extra suffix
        ("PERSON5_bacteria_1.JPEG", "PERSON5"),
        ("IM-0115-0001.jpeg", "IM-0115"),
        ("IM-0531-0001-0001.jpeg", "IM-0531"),
        ("IM-0429-0001-0002.jpeg", "IM-0429"),
        ("NORMAL2-IM-1427-0001.jpeg", "NORMAL2-IM-1427"),
        ("NORMAL2-IM-0395-0001-0001.jpeg", "NORMAL2-IM-0395"),
        ("/some/dir/IM-0001-0001.jpeg", "IM-0001"),
        ("scan_0001.png", "scan_0001"),
        ("my xray.dcm", "my xray"),
        ("person_without_number.jpeg", "person_without_number"),
        ("IM.jpeg", "IM"),
    ],
)
def test_patient_id_naming_schemes(name, expected):
    assert ds.patient_id(name) == expected


def test_same_patient_images_share_a_group(sample_root):
    # The committed samples contain two films of one study and two of one child.
    train = ds.discover(sample_root).split("train")
    groups = {}
    for s in train:
        groups.setdefault(s.group, []).append(s.path.name)
    assert sorted(groups["IM-0531"]) == ["IM-0531-0001-0001.jpeg", "IM-0531-0001.jpeg"]
    assert len(groups["person1527"]) == 2


# --- patient-wise split --------------------------------------------------------------------------
@pytest.mark.parametrize("seed", [0, 1, 2, 3])
@pytest.mark.parametrize("fraction", [0.2, 0.3, 0.45])
def test_patient_split_no_patient_on_both_sides(sample_root, seed, fraction):
    train = ds.discover(sample_root).split("train")
    tr, va = ds.patient_split(train, fraction, seed)
    assert {s.group for s in tr}.isdisjoint({s.group for s in va})
    assert sorted(map(str, (s.path for s in tr + va))) == sorted(str(s.path) for s in train)
    assert len(set(s.path for s in tr + va)) == len(train)
    for side in (tr, va):
        assert {s.label for s in side} == {0, 1}


def test_patient_split_is_deterministic_per_seed(sample_root):
    train = ds.discover(sample_root).split("train")
    a = ds.patient_split(train, 0.3, 0)
    b = ds.patient_split(train, 0.3, 0)
    assert [s.path for s in a[1]] == [s.path for s in b[1]]
    vals = {tuple(sorted(str(s.path) for s in ds.patient_split(train, 0.3, seed)[1])) for seed in range(8)}
    assert len(vals) > 1  # the seed matters


def test_patient_split_moves_a_patient_with_both_labels(tmp_path):
    # Synthetic: one id carries both labels; the invariant must still hold.
    samples = [Sample(Path(f"p{i}.jpeg"), i % 2, "train", f"g{i // 2}") for i in range(40)]
    for seed in range(10):
        tr, va = ds.patient_split(samples, 0.25, seed)
        assert {s.group for s in tr}.isdisjoint({s.group for s in va})
        assert len(tr) + len(va) == 40


@pytest.mark.parametrize("bad", [0, 1, -0.1, 1.5])
def test_patient_split_rejects_bad_fraction(sample_root, bad):
    with pytest.raises(ValueError, match="Received: val_fraction="):
        ds.patient_split(ds.discover(sample_root).split("train"), bad, 0)


# --- class weights --------------------------------------------------------------------------------
def test_class_weights_balanced():
    assert ds.class_weights([0, 1, 0, 1]) == {0: 1.0, 1: 1.0}


def test_class_weights_one_to_three():
    w = ds.class_weights([0] * 100 + [1] * 300)
    # n / (k * n_c): 400 / (2 * 100) = 2, 400 / (2 * 300) = 2/3
    assert w[0] == pytest.approx(2.0)
    assert w[1] == pytest.approx(2.0 / 3.0)
    # weighted class totals are equal
    assert 100 * w[0] == pytest.approx(300 * w[1])


def test_class_weights_full_data_ratio():
    w = ds.class_weights([0] * 1341 + [1] * 3875)
    assert w[0] == pytest.approx(1.945, abs=1e-3) and w[1] == pytest.approx(0.673, abs=1e-3)


def test_class_weights_accepts_generators_and_arrays():
    assert ds.class_weights(x for x in [0, 1, 1, 1]) == ds.class_weights(np.array([0, 1, 1, 1]))


def test_class_weights_single_class_is_dataset_error():
    with pytest.raises(DatasetError, match="both classes.*PNEUMONIA"):
        ds.class_weights([1, 1, 1])


# --- load_arrays ------------------------------------------------------------------------------------
def test_load_arrays_shapes_and_labels(sample_root):
    samples = ds.discover(sample_root).split("test")
    calls = []
    arr = ds.load_arrays(samples, 32, progress=lambda i, n: calls.append((i, n)))
    assert arr.x.shape == (len(samples), 32, 32, 3) and arr.x.dtype == np.uint8
    assert arr.y.tolist() == [s.label for s in samples]
    assert arr.paths == [str(s.path) for s in samples]
    assert arr.errors == [] and len(arr) == len(samples)
    assert calls[-1] == (len(samples), len(samples))
    assert arr.x.std() > 0  # real pixels, not the zero fill


def test_load_arrays_skips_bad_files_and_reports_them(sample_root, tmp_path):
    good = ds.discover(sample_root).split("test")[:3]
    not_an_image = tmp_path / "text.jpeg"
    not_an_image.write_text("this is not a jpeg")
    truncated = tmp_path / "truncated.jpeg"
    truncated.write_bytes(good[0].path.read_bytes()[:200])
    missing = tmp_path / "missing.jpeg"
    samples = [
        good[0],
        Sample(not_an_image, 1, "test", "x"),
        good[1],
        Sample(truncated, 0, "test", "y"),
        Sample(missing, 0, "test", "z"),
        good[2],
    ]
    arr = ds.load_arrays(samples, 32)  # must not raise
    assert len(arr) == 3
    assert arr.paths == [str(s.path) for s in good]
    assert arr.y.tolist() == [s.label for s in good]
    bad_paths = [p for p, _ in arr.errors]
    assert str(not_an_image) in bad_paths and str(truncated) in bad_paths and str(missing) in bad_paths
    for _, msg in arr.errors:
        assert msg and "Traceback" not in msg
    # the kept images are the same as when loaded alone
    alone = ds.load_arrays(good, 32)
    np.testing.assert_array_equal(arr.x, alone.x)


def test_load_arrays_empty():
    arr = ds.load_arrays([], 32)
    assert arr.x.shape == (0, 32, 32, 3) and len(arr) == 0


def test_fingerprint_depends_on_content_not_order(sample_root):
    train = ds.discover(sample_root).split("train")
    assert ds.fingerprint(train) == ds.fingerprint(list(reversed(train)))
    assert ds.fingerprint(train) != ds.fingerprint(train[:-1])
    assert len(ds.fingerprint(train)) == 16
