"""Tests for core.evaluation: values equal scikit-learn's on a fixed example."""

from __future__ import annotations

import json

import numpy as np
import pytest
from sklearn import metrics as skm

from core.evaluation import bootstrap_ci, evaluate, threshold_metrics

# A fixed, hand-checkable example: 6 NORMAL, 6 PNEUMONIA.
Y = np.array([0, 0, 0, 0, 0, 0, 1, 1, 1, 1, 1, 1])
P = np.array([0.05, 0.10, 0.30, 0.45, 0.62, 0.80, 0.20, 0.55, 0.60, 0.70, 0.90, 0.95])
PATHS = [f"img{i:02d}.jpeg" for i in range(len(Y))]
THR = 0.5


@pytest.fixture(scope="module")
def report():
    return evaluate(Y, P, THR, PATHS, n_boot=150, seed=0, split="test")


def test_point_metrics_equal_sklearn(report):
    pred = (P >= THR).astype(int)
    tn, fp, fn, tp = skm.confusion_matrix(Y, pred).ravel()
    # by hand: NORMAL 0.62, 0.80 are false positives; PNEUMONIA 0.20 is a false negative
    assert (tn, fp, fn, tp) == (4, 2, 1, 5)
    assert report["accuracy"] == pytest.approx(skm.accuracy_score(Y, pred)) == pytest.approx(9 / 12)
    assert report["sensitivity"] == pytest.approx(skm.recall_score(Y, pred)) == pytest.approx(5 / 6)
    assert report["specificity"] == pytest.approx(skm.recall_score(Y, pred, pos_label=0)) == pytest.approx(4 / 6)
    assert report["precision"] == pytest.approx(skm.precision_score(Y, pred)) == pytest.approx(5 / 7)
    assert report["f1"] == pytest.approx(skm.f1_score(Y, pred))
    assert report["roc_auc"] == pytest.approx(skm.roc_auc_score(Y, P))
    assert report["pr_auc"] == pytest.approx(skm.average_precision_score(Y, P))
    assert report["confusion_matrix"] == [[4, 2], [1, 5]]
    assert report["confusion_matrix_labels"] == ["NORMAL", "PNEUMONIA"]
    assert report["n"] == 12 and report["threshold"] == THR and report["split"] == "test"


def test_per_class_equals_classification_report(report):
    ref = skm.classification_report(Y, (P >= THR).astype(int), output_dict=True)
    for name, key in (("NORMAL", "0"), ("PNEUMONIA", "1")):
        for m in ("precision", "recall", "f1-score", "support"):
            assert report["per_class"][name][m] == pytest.approx(ref[key][m])


def test_curves_match_sklearn(report):
    fpr, tpr, _ = skm.roc_curve(Y, P)
    assert report["roc_curve"]["fpr"] == pytest.approx(fpr.tolist())
    assert report["roc_curve"]["tpr"] == pytest.approx(tpr.tolist())
    assert all(0 <= t <= 1 for t in report["roc_curve"]["thresholds"])  # +inf clipped for JSON
    prec, rec, _ = skm.precision_recall_curve(Y, P)
    assert report["pr_curve"]["precision"] == pytest.approx(prec.tolist())
    assert report["pr_curve"]["recall"] == pytest.approx(rec.tolist())
    assert len(report["pr_curve"]["thresholds"]) == len(prec)


def test_confidence_intervals_contain_point_estimates(report):
    ci = report["ci95"]
    assert set(ci) == {"accuracy", "sensitivity", "specificity", "precision", "f1", "roc_auc", "pr_auc"}
    for k, (lo, hi) in ci.items():
        assert 0.0 <= lo <= report[k] <= hi <= 1.0, k
        assert lo < hi, k  # 12 samples: real uncertainty
    assert report["n_bootstrap"] == 150


def test_bootstrap_is_seeded_and_narrows_with_n():
    rng = np.random.default_rng(0)
    y = rng.integers(0, 2, 1000)
    p = np.clip(y * 0.3 + rng.uniform(0, 0.7, 1000), 0, 1)
    a = bootstrap_ci(y, p, 0.5, n_boot=50, seed=1)
    assert a == bootstrap_ci(y, p, 0.5, n_boot=50, seed=1)
    small = bootstrap_ci(y[:50], p[:50], 0.5, n_boot=50, seed=1)
    assert (a["roc_auc"][1] - a["roc_auc"][0]) < (small["roc_auc"][1] - small["roc_auc"][0])


def test_predictions_and_misclassified_lists(report):
    assert [d["path"] for d in report["predictions"]] == PATHS
    assert [d["label"] for d in report["predictions"]] == Y.tolist()
    assert [d["prob"] for d in report["predictions"]] == pytest.approx(P.tolist())
    mis = report["misclassified"]
    assert [(d["path"], d["label"]) for d in mis] == [
        ("img04.jpeg", "NORMAL"), ("img05.jpeg", "NORMAL"), ("img06.jpeg", "PNEUMONIA")
    ]
    assert [d["prob"] for d in mis] == pytest.approx([0.62, 0.80, 0.20])


def test_report_is_plain_json(report):
    back = json.loads(json.dumps(report))
    assert back["roc_auc"] == report["roc_auc"]


def test_without_paths_has_no_file_lists():
    r = evaluate(Y, P, THR, None, n_boot=10)
    assert "predictions" not in r and "misclassified" not in r


def test_threshold_boundary_is_inclusive():
    r = evaluate(Y, P, 0.55, PATHS, n_boot=10)
    assert "img07.jpeg" not in [d["path"] for d in r["misclassified"]]  # p == threshold -> PNEUMONIA


def test_curves_are_downsampled_for_large_splits():
    rng = np.random.default_rng(0)
    y = rng.integers(0, 2, 5000)
    p = rng.uniform(size=5000)
    r = evaluate(y, p, 0.5, n_boot=5)
    assert len(r["roc_curve"]["fpr"]) <= 400 and len(r["pr_curve"]["precision"]) <= 400
    assert r["roc_curve"]["fpr"][0] == 0.0 and r["roc_curve"]["fpr"][-1] == 1.0


@pytest.mark.parametrize("y", [[1, 1, 1], [0, 0]])
def test_single_class_is_value_error(y):
    with pytest.raises(ValueError, match="both classes"):
        evaluate(y, [0.5] * len(y), 0.5)


def test_empty_is_value_error():
    with pytest.raises(ValueError, match="empty"):
        evaluate([], [], 0.5)


@pytest.mark.parametrize("thr", [0.0, 0.3, 0.5, 0.61, 0.85, 1.0])
def test_threshold_metrics_equal_sklearn(thr):
    pred = (P >= thr).astype(int)
    m = threshold_metrics(Y, P, thr)
    assert m["threshold"] == thr
    assert m["accuracy"] == pytest.approx(skm.accuracy_score(Y, pred))
    assert m["precision"] == pytest.approx(skm.precision_score(Y, pred, zero_division=0))
    assert m["recall"] == pytest.approx(skm.recall_score(Y, pred, zero_division=0))
    assert m["sensitivity"] == pytest.approx(m["recall"])
    assert m["specificity"] == pytest.approx(skm.recall_score(Y, pred, pos_label=0, zero_division=0))
    assert m["f1"] == pytest.approx(skm.f1_score(Y, pred, zero_division=0))
    assert m["confusion_matrix"] == skm.confusion_matrix(Y, pred, labels=[0, 1]).tolist()
    json.dumps(m)


def test_threshold_metrics_agree_with_evaluate(report):
    m = threshold_metrics(Y, P, THR)
    for k in ("accuracy", "precision", "f1", "sensitivity", "specificity", "confusion_matrix"):
        assert m[k] == report[k]


@pytest.mark.parametrize("seed", range(6))
@pytest.mark.parametrize("thr", [0.0, 0.3, 0.5, 1.0])
def test_fast_point_metrics_equal_sklearn(seed, thr):
    # The bootstrap's numpy metrics must match the scikit-learn ones, ties included
    # (scores rounded to 1 decimal: many tied values, as with a calibrated model's plateaus).
    from core.evaluation import _fast_point_metrics, _point_metrics

    rng = np.random.default_rng(seed)
    n = int(rng.integers(5, 300))
    y = rng.integers(0, 2, n)
    y[:2] = [0, 1]
    p = np.round(np.clip(rng.normal(0.35 + 0.3 * y, 0.25), 0, 1), 1 if seed % 2 else 6)
    fast, ref = _fast_point_metrics(y, p, thr), _point_metrics(y, p, thr)
    assert fast.keys() == ref.keys()
    for k in ref:
        assert fast[k] == pytest.approx(ref[k], abs=1e-12), k


# --- were two versions evaluated on the same images? (issue 22) -----------------------------------------
def _report(files: list[str], auc: float = 0.9, root: str = "/data/chest_xray", split: str = "test", listed=True) -> dict:
    r = {"split": split, "n": len(files), "roc_auc": auc, "accuracy": 0.8, "sensitivity": 0.9, "specificity": 0.7,
         "threshold": 0.5,
         "confusion_matrix": [[1, len(files) // 2 - 1], [0, len(files) - len(files) // 2]]}
    if listed:
        r["predictions"] = [{"path": f"{root}/{split}/{f}", "label": 0, "prob": 0.5} for f in files]
    return r


FILES = [f"{'NORMAL' if i % 2 else 'PNEUMONIA'}/im{i:03d}.jpeg" for i in range(40)]


def test_eval_set_relation_names_the_relation_with_both_sizes():
    from core.evaluation import eval_set_relation

    # The same images under two data roots (relative and absolute paths) are the same test set.
    same = eval_set_relation(_report(FILES), _report(FILES, root="../shared/data/chest_xray"), "v1", "v2")
    assert same["comparable"] and same["relation"] == "same" and same["text"] == "Both were evaluated on the same 40 test images."
    sub = eval_set_relation(_report(FILES), _report(FILES[:8]), "v1", "v2")
    assert not sub["comparable"] and sub["relation"] == "subset" and sub["n"] == (40, 8) and sub["shared"] == 8
    assert sub["text"].startswith("v2 was evaluated on 8 test images, only a part of the 40 that v1")
    assert eval_set_relation(_report(FILES[:8]), _report(FILES), "v1", "v2")["relation"] == "superset"
    over = eval_set_relation(_report(FILES[:30]), _report(FILES[10:]), "v1", "v2")
    assert over["relation"] == "overlap" and over["shared"] == 20 and "(20 shared)" in over["text"]
    disjoint = eval_set_relation(_report(FILES[:20]), _report(FILES[20:]), "v1", "v2")
    assert disjoint["relation"] == "disjoint" and not disjoint["comparable"]
    split = eval_set_relation(_report(FILES), _report(FILES, split="validation"), "v1", "v2", "test", "validation")
    assert split["relation"] == "different_split" and "40 validation images" in split["text"]
    # Reports without their image list: equal size and class counts are taken as the same (and said so).
    unlisted = eval_set_relation(_report(FILES, listed=False), _report(FILES, listed=False))
    assert unlisted["comparable"] and unlisted["relation"] == "same_size" and "assumed, not checked" in unlisted["text"]
    smaller = eval_set_relation(_report(FILES, listed=False), _report(FILES[:8], listed=False))
    assert smaller["relation"] == "different_size" and not smaller["comparable"]
    assert eval_set_relation(_report(FILES), None, "v1", "v2")["relation"] == "missing"


def test_compare_reports_shows_no_difference_between_different_test_sets():
    """Issue 22: "-20.1 pts" between a 624-image test split and an 80-image subset, no warning."""
    from core.evaluation import NOT_COMPARABLE, compare_reports

    res = compare_reports({"test": _report(FILES, auc=0.95)}, {"test": _report(FILES[:8], auc=0.75)}, "v1", "v2")
    rows = {r["metric"]: r for r in res["rows"]}
    assert not res["comparable"] and res["test_set"]["relation"] == "subset"
    for metric in ("ROC-AUC (test)", "Accuracy (test)", "Sensitivity (test)", "Specificity (test)"):
        assert rows[metric]["difference"] == NOT_COMPARABLE, metric
    assert rows["ROC-AUC (test)"]["v1"] == "0.950" and rows["ROC-AUC (test)"]["v2"] == "0.750"
    assert rows["Images (test)"]["difference"] == "-32"  # the sizes say why
    assert rows["Threshold (test)"]["difference"] == "+0.0 pts"  # fitted on validation, not on these images
    same = compare_reports({"test": _report(FILES, auc=0.95)}, {"test": _report(FILES, auc=0.75)}, "v1", "v2")
    assert same["comparable"] and {r["metric"]: r for r in same["rows"]}["ROC-AUC (test)"]["difference"] == "-0.200"


# --- moved from test_issue16_helpers.py / test_evaluation_page_issue15.py: the version comparison
# (core.evaluation.compare_reports), report_split, paths relative to the data root ---------------
COMPARE_CM = [[40, 10], [5, 45]]


def _m(split: str, **kw) -> dict:
    r = {"accuracy": 0.85, "sensitivity": 0.9, "specificity": 0.8, "precision": 0.818, "f1": 0.857,
         "roc_auc": 0.9312, "pr_auc": 0.94, "threshold": 0.19, "n": 100, "confusion_matrix": COMPARE_CM}
    r.update(kw)
    return {split: r}


def test_compare_reports_rows_units_and_differences():
    from core.evaluation import compare_reports

    # The same test set size and class counts (no image lists): comparable (issue 22 refuses others).
    res = compare_reports(_m("test"), _m("test", accuracy=0.9, roc_auc=0.95, n=100), "v1", "v2",
                          {"created": "2026-01-01", "wall_time_s": 125}, {"created": "2026-02-01"})
    rows = {r["metric"]: r for r in res["rows"]}
    assert list(res["rows"][0]) == ["metric", "v1", "v2", "difference"]
    assert rows["Accuracy (test)"] == {"metric": "Accuracy (test)", "v1": "85.0 %", "v2": "90.0 %", "difference": "+5.0 pts"}
    assert rows["Threshold (test)"]["v1"] == "19.0 %" and rows["Threshold (test)"]["difference"] == "+0.0 pts"
    assert rows["ROC-AUC (test)"]["v1"] == "0.931" and rows["ROC-AUC (test)"]["difference"] == "+0.019"
    assert rows["Images (test)"]["v2"] == "100" and rows["Images (test)"]["difference"] == "+0"
    assert res["comparable"] and res["test_set"]["relation"] == "same_size"
    assert rows["Created"]["v2"] == "2026-02-01" and rows["Wall time"]["v1"] == "2 min 05 s"
    assert res["confusion"] == {"v1": COMPARE_CM, "v2": COMPARE_CM} and res["same_split"] and res["split"] == "test"


def test_compare_reports_without_cards_mixed_splits_and_same_name():
    from core.evaluation import compare_reports

    res = compare_reports(_m("test"), _m("validation"), "v1", "v1")
    assert res["labels"] == ("v1", "v1 (2)") and not res["same_split"]
    assert res["split"] == "test / validation" and res["splits"] == ("test", "validation")
    assert [r["metric"] for r in res["rows"]][0] == "Accuracy (test / validation)"  # no card rows
    missing = compare_reports(_m("test"), {}, "v1", "v2")
    acc = missing["rows"][0]
    assert acc["v2"] == "n/a" and acc["difference"] == "" and missing["confusion"]["v2"] is None


def test_report_split_prefers_test_then_validation():
    from core.evaluation import report_split

    assert report_split(_m("validation"))[1] == "validation"
    assert report_split({**_m("validation"), **_m("test")})[1] == "test"
    assert report_split({}) == (None, "") and report_split(None) == (None, "")


def test_evaluate_records_paths_relative_to_the_data_root(tmp_path):
    root = tmp_path / "chest_xray"
    paths = [str(root / "test" / "NORMAL" / "a.jpeg"), str(root / "test" / "PNEUMONIA" / "b.jpeg"), "/elsewhere/c.jpeg"]
    rep = evaluate([0, 1, 1], [0.9, 0.1, 0.8], 0.5, paths, n_boot=10, data_root=root)
    assert [p["path"] for p in rep["predictions"]] == ["test/NORMAL/a.jpeg", "test/PNEUMONIA/b.jpeg", "/elsewhere/c.jpeg"]
    assert {m["path"] for m in rep["misclassified"]} == {"test/NORMAL/a.jpeg", "test/PNEUMONIA/b.jpeg"}
    # Without a data root, paths are kept as given (backward compatible).
    rep = evaluate([0, 1], [0.9, 0.1], 0.5, paths[:2], n_boot=10)
    assert rep["predictions"][0]["path"] == paths[0]
