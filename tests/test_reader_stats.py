"""core.reader_stats: the reader study's statistics against scikit-learn and the published
Wilson interval; the three arms, the change analysis and a paused study's results."""

from __future__ import annotations

import math

import numpy as np
import pytest
from sklearn import metrics as skm

from core import reader_stats as stats
from core import reader_study as rs
from test_reader_study import _complete, _pool, _study  # the study builders the state tests use


def test_metrics_match_scikit_learn_for_all_three_arms():
    rng = np.random.default_rng(0)
    n = 40
    truth = ["PNEUMONIA" if t else "NORMAL" for t in rng.integers(0, 2, n)]
    first = ["PNEUMONIA" if t else "NORMAL" for t in rng.integers(0, 2, n)]
    ai = list(rng.choice(["NORMAL", "PNEUMONIA", "INDETERMINATE", "REJECTED"], n))
    revised = [None if rng.random() < 0.5 else ("PNEUMONIA" if rng.random() < 0.5 else "NORMAL") for _ in range(n)]
    probs = list(rng.random(n))
    s = _complete(_study([rs.Film(f"f{i}", t) for i, t in enumerate(truth)]), first, ai, revised, probs)
    res = stats.results(s)
    y = np.array([t == "PNEUMONIA" for t in truth], int)
    calls = {
        "reader": np.array([f == "PNEUMONIA" for f in first], int),
        "model": np.array([a != "NORMAL" for a in ai], int),  # INDETERMINATE / REJECTED = refer = positive
        "reader_ai": np.array([(r or f) == "PNEUMONIA" for f, r in zip(first, revised)], int),
    }
    for arm, pred in calls.items():
        r = res["arms"][arm]
        assert r["confusion_matrix"] == skm.confusion_matrix(y, pred, labels=[0, 1]).tolist(), arm
        assert r["sensitivity"] == pytest.approx(skm.recall_score(y, pred, pos_label=1))
        assert r["specificity"] == pytest.approx(skm.recall_score(y, pred, pos_label=0))
        assert r["accuracy"] == pytest.approx(skm.accuracy_score(y, pred))
        lo, hi = r["sensitivity_ci95"]
        assert lo <= r["sensitivity"] <= hi
        assert res["operating_points"][arm] == pytest.approx((1 - r["specificity"], r["sensitivity"]))
    fpr, tpr, _ = skm.roc_curve(y, probs)
    assert res["roc"]["fpr"] == pytest.approx(fpr.tolist()) and res["roc"]["tpr"] == pytest.approx(tpr.tolist())
    assert res["roc"]["auc"] == pytest.approx(skm.roc_auc_score(y, probs))
    assert "INDETERMINATE" in res["model_rule"] and "positive" in res["model_rule"]


def test_wilson_interval_known_values():
    # Wilson (1927) / Newcombe (1998) worked example: 81 of 263 -> 0.2553 to 0.3662
    lo, hi = stats.wilson_ci(81, 263)
    assert lo == pytest.approx(0.2553, abs=5e-4) and hi == pytest.approx(0.3662, abs=5e-4)
    assert stats.wilson_ci(0, 10)[0] == 0.0 and stats.wilson_ci(10, 10)[1] == pytest.approx(1.0)
    lo, hi = stats.wilson_ci(0, 10)
    assert hi == pytest.approx(0.2775, abs=5e-4)  # never a zero-width interval at 0 %
    assert stats.wilson_ci(0, 0) is None


def _wilson_closed_form(k: int, n: int, z: float = 1.959963984540054) -> tuple[float, float]:
    """The published Wilson score interval (Wilson 1927; Newcombe 1998, method 3), written out."""
    p = k / n
    denom = 1 + z * z / n
    centre = (p + z * z / (2 * n)) / denom
    half = z * math.sqrt(p * (1 - p) / n + z * z / (4 * n * n)) / denom
    return centre - half, centre + half


@pytest.mark.parametrize("k, n", [(8, 10), (1, 2), (5, 7), (81, 263), (3, 40), (39, 40), (1, 1), (0, 1)])
def test_scipy_wilson_interval_equals_the_closed_form(k, n):
    lo, hi = stats.wilson_ci(k, n)
    want_lo, want_hi = _wilson_closed_form(k, n)
    assert lo == pytest.approx(max(0.0, want_lo), abs=1e-12) and hi == pytest.approx(min(1.0, want_hi), abs=1e-12)
    assert 0.0 <= lo <= k / n <= hi <= 1.0


def test_wilson_interval_by_hand_for_8_of_10():
    # z = 1.96: centre (0.8 + 0.19208) / 1.38416 = 0.71677; half 0.22661 -> 0.4902 to 0.9433
    lo, hi = stats.wilson_ci(8, 10)
    assert lo == pytest.approx(0.4902, abs=5e-5) and hi == pytest.approx(0.9433, abs=5e-5)


def test_wilson_interval_edges_are_unchanged():
    """n = 0: no interval; k = 0 starts at exactly 0, k = n ends at 1; both have width."""
    assert stats.wilson_ci(0, 0) is None and stats.wilson_ci(3, 0) is None
    for n in (1, 2, 10, 263):
        lo, hi = stats.wilson_ci(0, n)
        assert lo == 0.0 and hi == pytest.approx(_wilson_closed_form(0, n)[1], abs=1e-12) and hi > 0
        lo, hi = stats.wilson_ci(n, n)
        assert hi == pytest.approx(1.0, abs=1e-12) and hi <= 1.0
        assert lo == pytest.approx(_wilson_closed_form(n, n)[0], abs=1e-12) and lo < 1
    assert isinstance(stats.wilson_ci(4, 9)[0], float)


def test_confusion_is_scikit_learns_layout_and_empty_is_all_zeros():
    assert stats.confusion([0, 0, 1, 1, 1], [0, 1, 1, 1, 0]) == [[1, 1], [1, 2]]
    assert stats.confusion([1, 1], [1, 1]) == [[0, 0], [0, 2]]  # both labels always present
    assert stats.confusion([], []) == [[0, 0], [0, 0]]
    cm = stats.confusion([0, 1], [1, 0])
    assert all(type(v) is int for row in cm for v in row)  # plain JSON, not numpy ints


def test_rates_with_a_class_absent_or_no_cases():
    r = stats.rates([1, 1, 1], [1, 0, 1])
    assert r["sensitivity"] == pytest.approx(2 / 3) and r["specificity"] is None and r["specificity_ci95"] is None
    assert r["sensitivity_ci95"] == pytest.approx(_wilson_closed_form(2, 3), abs=1e-12)
    assert r["n"] == 3 and r["accuracy"] == pytest.approx(2 / 3)
    r = stats.rates([], [])
    assert r == {"n": 0, "confusion_matrix": [[0, 0], [0, 0]], "sensitivity": None, "sensitivity_ci95": None,
                 "specificity": None, "specificity_ci95": None, "accuracy": None}


def test_rates_agree_with_core_evaluation():
    """Sensitivity and specificity have one definition: core.evaluation.rates."""
    from core.evaluation import rates as evaluation_rates

    y, pred = [0, 0, 0, 1, 1, 1, 1], [0, 1, 0, 1, 1, 0, 1]
    r, e = stats.rates(y, pred), evaluation_rates(y, pred)
    assert (r["sensitivity"], r["specificity"]) == (e["sensitivity"], e["specificity"])


def test_change_analysis_counts_helpful_and_harmful_changes():
    films = [rs.Film("a", "PNEUMONIA"), rs.Film("b", "NORMAL"), rs.Film("c", "NORMAL"), rs.Film("d", "PNEUMONIA")]
    first = ["NORMAL", "NORMAL", "NORMAL", "PNEUMONIA"]
    ai = ["PNEUMONIA", "INDETERMINATE", "NORMAL", "PNEUMONIA"]
    revised = ["PNEUMONIA",  # wrong -> right, toward the AI
               "PNEUMONIA",  # right -> wrong, toward the AI (indeterminate = refer)
               None, "PNEUMONIA"]  # unchanged; same label again is not a change
    res = stats.results(_complete(_study(films), first, ai, revised))
    ch = res["changes"]
    assert (ch["n_changed"], ch["n_right"], ch["n_wrong"], ch["n_toward_ai"]) == (2, 1, 1, 2)
    assert ch["rate"] == 0.5 and [c["case"] for c in ch["cases"]] == [1, 2]
    assert ch["n_first_disagreed_with_ai"] == 2
    assert res["arms"]["reader"]["sensitivity"] == 0.5 and res["arms"]["reader_ai"]["sensitivity"] == 1.0
    assert res["arms"]["reader_ai"]["specificity"] == 0.5


def test_results_of_a_paused_study_cover_closed_cases_only():
    s = _study(_pool(2, 2))
    s.record_first_read(0, s.cases[0].truth, 5, 1)
    s.reveal_ai(0, "NORMAL", 0.1, 0.5)
    s.finish_case(0, 2)
    s.record_first_read(1, "NORMAL", 5, 1)  # open case: not counted
    res = stats.results(s)
    assert res["n_cases"] == 1 and res["n_planned"] == 4 and res["roc"] is None
