"""Issue 16, one home per piece of logic: the version comparison (core.evaluation.compare_reports),
"shrink the longest side" (core.imageio.shrink_to), calibration's rates (core.evaluation)."""

from __future__ import annotations


from core.evaluation import compare_reports, report_split

CM = [[40, 10], [5, 45]]


def _m(split: str, **kw) -> dict:
    r = {"accuracy": 0.85, "sensitivity": 0.9, "specificity": 0.8, "precision": 0.818, "f1": 0.857,
         "roc_auc": 0.9312, "pr_auc": 0.94, "threshold": 0.19, "n": 100, "confusion_matrix": CM}
    r.update(kw)
    return {split: r}


def test_compare_reports_rows_units_and_differences():
    res = compare_reports(_m("test"), _m("test", accuracy=0.9, roc_auc=0.95, n=120), "v1", "v2",
                          {"created": "2026-01-01", "wall_time_s": 125}, {"created": "2026-02-01"})
    rows = {r["metric"]: r for r in res["rows"]}
    assert list(res["rows"][0]) == ["metric", "v1", "v2", "difference"]
    assert rows["Accuracy (test)"] == {"metric": "Accuracy (test)", "v1": "85.0 %", "v2": "90.0 %", "difference": "+5.0 pts"}
    assert rows["Threshold (test)"]["v1"] == "19.0 %" and rows["Threshold (test)"]["difference"] == "+0.0 pts"
    assert rows["ROC-AUC (test)"]["v1"] == "0.931" and rows["ROC-AUC (test)"]["difference"] == "+0.019"
    assert rows["Images (test)"]["v2"] == "120" and rows["Images (test)"]["difference"] == "+20"
    assert rows["Created"]["v2"] == "2026-02-01" and rows["Wall time"]["v1"] == "2 min 05 s"
    assert res["confusion"] == {"v1": CM, "v2": CM} and res["same_split"] and res["split"] == "test"


def test_compare_reports_without_cards_mixed_splits_and_same_name():
    res = compare_reports(_m("test"), _m("validation"), "v1", "v1")
    assert res["labels"] == ("v1", "v1 (2)") and not res["same_split"]
    assert res["split"] == "test / validation" and res["splits"] == ("test", "validation")
    assert [r["metric"] for r in res["rows"]][0] == "Accuracy (test / validation)"  # no card rows
    missing = compare_reports(_m("test"), {}, "v1", "v2")
    acc = missing["rows"][0]
    assert acc["v2"] == "n/a" and acc["difference"] == "" and missing["confusion"]["v2"] is None


def test_report_split_prefers_test_then_validation():
    assert report_split(_m("validation"))[1] == "validation"
    assert report_split({**_m("validation"), **_m("test")})[1] == "test"
    assert report_split({}) == (None, "") and report_split(None) == (None, "")


def test_admin_compare_is_the_core_comparison(registry_copy):
    import shutil

    from ui import admin_components as ac

    shutil.copytree(registry_copy.models_dir / "v0001-tiny", registry_copy.models_dir / "v0002-copy")
    got = ac.compare(registry_copy, "v0001-tiny", "v0002-copy")
    cards = {v.name: v.card for v in registry_copy.versions()}
    want = compare_reports(registry_copy.read_json("v0001-tiny", "metrics.json"),
                           registry_copy.read_json("v0002-copy", "metrics.json"), "v0001-tiny", "v0002-copy",
                           cards["v0001-tiny"], cards["v0002-copy"])
    assert got == want
