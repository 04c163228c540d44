"""Tests on the full Kaggle dataset (../shared/data/chest_xray) and the shipped model.

All marked ``data``: skipped when the dataset is absent. The shipped-model tests also skip
when artifacts/models/v0003-shipped is not there (it is trained separately).
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from core import dataset as ds

pytestmark = pytest.mark.data

REPO = Path(__file__).resolve().parent.parent
SHIPPED = "v0003-shipped"


@pytest.fixture(scope="module")
def index(full_data_root):
    return ds.discover(full_data_root)


def test_full_dataset_counts(index):
    assert index.splits == ["train", "val", "test"]
    assert index.counts() == {
        "train": {"NORMAL": 1341, "PNEUMONIA": 3875},
        "val": {"NORMAL": 8, "PNEUMONIA": 8},
        "test": {"NORMAL": 234, "PNEUMONIA": 390},
    }
    assert sum(map(sum, (c.values() for c in index.counts().values()))) == 5216 + 16 + 624


def test_full_dataset_patient_ids(index):
    train = index.split("train")
    # every Kaggle file name carries a patient/study id (no fallback to the stem)
    assert all(s.group != s.path.stem for s in train)
    n_groups = len({s.group for s in train})
    assert 2000 < n_groups < len(train)  # several films per child for many children


@pytest.mark.parametrize("seed", [1337, 0])
def test_full_patient_split(index, seed):
    train = index.split("train")
    tr, va = ds.patient_split(train, 0.1, seed)
    assert {s.group for s in tr}.isdisjoint({s.group for s in va})
    assert len(tr) + len(va) == len(train) == 5216
    assert len({s.path for s in tr + va}) == 5216
    for label in (0, 1):
        n_all = sum(s.label == label for s in train)
        n_val = sum(s.label == label for s in va)
        assert 0.08 <= n_val / n_all <= 0.12, (label, n_val, n_all)  # fraction roughly respected
        assert sum(s.label == label for s in tr) > 0  # both classes on both sides
    assert 0.08 <= len(va) / len(train) <= 0.12


def test_class_weights_on_full_train(index):
    w = ds.class_weights([s.label for s in index.split("train")])
    assert w[0] == pytest.approx(5216 / (2 * 1341)) and w[1] == pytest.approx(5216 / (2 * 3875))


# --- the shipped model ------------------------------------------------------------------------
@pytest.fixture(scope="module")
def shipped():
    from core.registry import Registry

    reg = Registry(REPO / "artifacts")
    if not reg.is_complete(SHIPPED):
        pytest.skip(f"shipped model not found at {reg.models_dir / SHIPPED}")
    return reg.load(SHIPPED)


def test_shipped_model_predicts_the_sample_test_images(shipped, sample_root):
    from core.predict import Predictor

    files = sorted((sample_root / "test").glob("*/*.jpeg"))
    assert len(files) == 8
    pred = Predictor(shipped)
    results = pred.predict_paths(files)
    assert [r.filename for r in results] == [f.name for f in files]
    for r in results:
        assert r.ok, r.error
        assert r.label in ("NORMAL", "PNEUMONIA", "INDETERMINATE")
        assert 0.0 <= r.probability <= 1.0 and r.model_version == SHIPPED
        assert r.threshold == pytest.approx(shipped.operating_point.threshold)
    # serving agrees with the evaluation stored at training time for the same files
    stored = {Path(p["path"]).name: p["prob"] for p in shipped.metrics()["test"]["predictions"]}
    common = [(r.probability, stored[r.filename]) for r in results if r.filename in stored]
    assert len(common) == 8
    # (training calibrates and evaluates the float32 twin that is served, core.model.float32_twin,
    # even for a model trained under mixed_bfloat16: observed differences on v0003-shipped ~1e-7;
    # atol 1e-4 leaves room for other CPUs' float32 kernels)
    np.testing.assert_allclose([a for a, _ in common], [b for _, b in common], atol=1e-4)
    # screening operating point (sensitivity target): no pneumonia film is called NORMAL
    missed = [r for f, r in zip(files, results) if f.parent.name == "PNEUMONIA" and r.label == "NORMAL"]
    assert not missed, [(r.filename, r.probability) for r in missed]


def test_shipped_model_card_and_metrics(shipped):
    card = shipped.card
    assert card["version"] == SHIPPED and card["labels"] == ["NORMAL", "PNEUMONIA"]
    assert card["test"]["n"] == 624
    assert card["counts"]["train"]["NORMAL"] + card["counts"]["validation"]["NORMAL"] == 1341
    assert card["counts"]["train"]["PNEUMONIA"] + card["counts"]["validation"]["PNEUMONIA"] == 3875
    m = shipped.metrics()["test"]
    assert m["roc_auc"] == pytest.approx(card["test"]["roc_auc"])
    assert m["ci95"]["roc_auc"][0] <= m["roc_auc"] <= m["ci95"]["roc_auc"][1]
