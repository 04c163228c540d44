"""Issue 16, one home per piece of logic: the version comparison (core.evaluation.compare_reports),
"shrink the longest side" (core.imageio.shrink_to), calibration's rates (core.evaluation)."""

from __future__ import annotations

import ast
from pathlib import Path

import numpy as np
import pytest


from core.evaluation import compare_reports, report_split

CM = [[40, 10], [5, 45]]


def _m(split: str, **kw) -> dict:
    r = {"accuracy": 0.85, "sensitivity": 0.9, "specificity": 0.8, "precision": 0.818, "f1": 0.857,
         "roc_auc": 0.9312, "pr_auc": 0.94, "threshold": 0.19, "n": 100, "confusion_matrix": CM}
    r.update(kw)
    return {split: r}


def test_compare_reports_rows_units_and_differences():
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


# --- shrink the longest side: core.imageio.shrink_to --------------------------------------------
REPO = Path(__file__).resolve().parent.parent


@pytest.mark.parametrize("shape,side,want", [
    ((1000, 400, 3), 256, (256, 102, 3)), ((400, 1000), 100, (40, 100)), ((3000, 1, 3), 300, (300, 1, 3)),
])
def test_shrink_to_keeps_the_aspect_ratio(shape, side, want):
    from core.imageio import shrink_to

    a = np.random.default_rng(0).integers(0, 255, shape, dtype=np.uint8)
    out = shrink_to(a, side)
    assert out.shape == want and out.dtype == np.uint8
    # INTER_AREA averages: the mean grey is kept (no aliasing, no new range).
    assert abs(float(out.mean()) - float(a.mean())) < 4


def test_shrink_to_returns_small_images_as_they_are_and_checks_the_side():
    from core.imageio import shrink_to

    a = np.zeros((200, 100, 3), np.uint8)
    assert shrink_to(a, 200) is a and shrink_to(a, 999) is a
    for bad in (0, -5, True, "256"):
        with pytest.raises(ValueError):
            shrink_to(a, bad)


def test_thumbnail_and_guard_use_shrink_to(tmp_path, monkeypatch):
    """The thumbnail loader and the guard's statistics go through the one helper (no copies)."""
    import core.imageio as io_mod
    from ui import loaders

    calls = []
    real = io_mod.shrink_to
    monkeypatch.setattr(io_mod, "shrink_to", lambda a, s: calls.append(s) or real(a, s))
    from PIL import Image

    Image.fromarray(np.full((600, 300), 90, np.uint8)).save(tmp_path / "x.png")
    thumb = loaders.thumbnail.__wrapped__(str(tmp_path / "x.png"), 128)
    assert thumb.shape[:2] == (128, 64) and calls == [128]


def test_no_other_hand_written_longest_side_shrink():
    """``side / max(h, w)`` followed by a resize lives only in core.imageio.shrink_to; ui/report.py's
    PNG tiles scale *to* a fixed side (up as well as down), a different operation."""
    allowed = {"core/imageio.py", "ui/report.py"}
    found = []
    for d in ("core", "ui", "app_pages"):
        for p in (REPO / d).glob("*.py"):
            rel = p.relative_to(REPO).as_posix()
            if rel in allowed:
                continue
            text = p.read_text(encoding="utf-8")
            if "/ max(h, w)" in text or "/ max(w, h)" in text:
                found.append(rel)
    assert found == [], found


def test_guard_statistics_use_shrink_to():
    tree = ast.parse((REPO / "core" / "guard.py").read_text(encoding="utf-8"))
    names = {n.id for n in ast.walk(tree) if isinstance(n, ast.Name)}
    assert "shrink_to" in names and "_small" not in names


# --- calibration reuses evaluation's rates -------------------------------------------------------
def test_operating_point_validation_rates_are_evaluations():
    from core.calibration import apply_temperature, fit_operating_point
    from core.evaluation import rates

    rng = np.random.default_rng(3)
    y = rng.integers(0, 2, 300)
    raw = np.clip(0.3 * y + rng.uniform(0, 0.7, 300), 0.001, 0.999)
    op = fit_operating_point(raw, y, target_sensitivity=0.9)
    cal = apply_temperature(raw, op.temperature)
    pred = (cal >= op.threshold).astype(int)
    want = rates(y, pred)
    assert op.validation["sensitivity"] == want["sensitivity"] >= 0.9
    assert op.validation["specificity"] == want["specificity"]
    tp, tn = int(((pred == 1) & (y == 1)).sum()), int(((pred == 0) & (y == 0)).sum())
    assert want["sensitivity"] == pytest.approx(tp / (y == 1).sum()) and want["specificity"] == pytest.approx(tn / (y == 0).sum())
    assert np.isnan(rates([1, 1], [1, 0])["specificity"])


# --- guard messages quote the settings' statistics, not numbers written into the text -----------
def _layout(c: float, u: float) -> dict:
    return {"layout_corr": c, "layout_corr_rot90": 0.0, "upright_score": u}


def test_guard_layout_messages_read_the_statistics_from_the_settings():
    from core import guard

    d = guard.DEFAULT_SETTINGS
    r = guard._check_layout(_layout(0.9, -5.0), d)
    assert r.code == "upside_down" and f"median {d.upright_median:g}" in r.message and "median 11.5" in r.message
    other = guard.GuardSettings(upright_median=7.25, upright_warn_share=97.5, layout_warn_share=98.0,
                                upside_down_warn=0.5, layout_warn=0.4)
    assert "median 7.25" in guard._check_layout(_layout(0.9, -5.0), other).message
    warn = guard._check_layout(_layout(0.9, 0.2), other)
    assert warn.code == "orientation_uncertain" and "97.5 % of training X-rays score above 0.5" in warn.message
    unusual = guard._check_layout(_layout(0.3, 5.0), other)
    assert unusual.code == "layout_unusual" and "98 % of training X-rays score at least 0.4" in unusual.message
    src = (REPO / "core" / "guard.py").read_text(encoding="utf-8")
    assert "median 11.5)" not in src and "99.8 % of training" not in src and "; 99.9 %" not in src


def test_guard_ood_warning_quotes_the_stored_percentile_or_none():
    from core import guard

    assert "only 2.5 % of validation X-rays exceed" in guard.check_ood(5.0, 4.0, 97.5, 9.0).message
    msg = guard.check_ood(5.0, 4.0, None, 9.0).message
    assert "validation X-rays exceed" not in msg and "below the rejection threshold 9.0" in msg


def test_reader_study_formats_with_core_formatting():
    from core import formatting as F
    from core import reader_study as rs

    assert rs._pct is F.pct
    assert rs._ci((0.712, 0.95)) == "71.2-95.0 %" and rs._ci(None) == "n/a"
    arm = next(iter(rs.ARM_LABELS))
    (row,) = rs.metrics_table({"arms": {arm: {"sensitivity": 0.75, "sensitivity_ci95": (0.3, 0.954),
                                               "specificity": None, "specificity_ci95": None, "n": 8}}})
    assert row["Sensitivity"] == "75.0 %" and row["Sensitivity 95 % CI"] == "30.0-95.4 %"
    assert row["Specificity"] == "n/a" and row["Specificity 95 % CI"] == "n/a"
