"""Tests for core.calibration: temperature scaling, threshold policies, band, decisions."""

from __future__ import annotations

import json

import numpy as np
import pytest
from sklearn.metrics import roc_curve

from core.calibration import (
    INDETERMINATE,
    OperatingPoint,
    apply_temperature,
    choose_threshold,
    fit_operating_point,
    fit_temperature,
    logit,
    scale_logits,
)


def _sigmoid(z):
    return 1.0 / (1.0 + np.exp(-z))


def _synthetic(true_t: float, n: int = 20000, seed: int = 0):
    """Labels drawn from sigmoid(z); the 'model' reports sigmoid(true_t * z) (mis-calibrated)."""
    rng = np.random.default_rng(seed)
    z = rng.normal(0.0, 1.5, n)
    y = (rng.uniform(size=n) < _sigmoid(z)).astype(int)
    return _sigmoid(true_t * z), y


@pytest.mark.parametrize("true_t", [0.5, 1.0, 2.0, 3.0])
def test_fit_temperature_recovers_known_temperature(true_t):
    probs, y = _synthetic(true_t)
    t = fit_temperature(logit(probs), y)
    assert t == pytest.approx(true_t, rel=0.08)
    # and calibration improves (or keeps) the NLL
    op = fit_operating_point(probs, y, "youden")
    assert op.temperature == pytest.approx(t)
    assert op.validation["nll_after"] <= op.validation["nll_before"] + 1e-9
    # the model's logits give the same operating point as its probabilities where nothing clips
    by_logit = fit_operating_point(None, y, "youden", val_logits=logit(probs))
    assert by_logit.temperature == pytest.approx(t)
    assert by_logit.threshold == pytest.approx(op.threshold)


def test_logits_are_used_as_they_are_beyond_the_probability_clip():
    """A float32 sigmoid is 1.0 above a logit of ~17, and the probabilities' logit is clipped at
    ~13.8: the model's own logit keeps confident films apart."""
    z = np.array([-40.0, -20.0, 0.0, 20.0, 40.0])
    p32 = (1.0 / (1.0 + np.exp(-z.astype(np.float32)))).astype(np.float32)
    assert p32[-1] == p32[-2] == 1.0  # saturated
    assert logit(p32)[-1] == logit(p32)[-2] == pytest.approx(13.8155, abs=1e-3)
    cal = OperatingPoint(temperature=4.0).calibrate_logits(z)
    np.testing.assert_allclose(cal, scale_logits(z, 4.0))
    assert cal[3] < cal[4] and cal[1] > cal[0] > 0.0  # still ordered, never clipped
    np.testing.assert_allclose(cal, 1.0 / (1.0 + np.exp(-z / 4.0)))
    with np.errstate(all="raise"):
        assert scale_logits([-1e6], 0.5)[0] == 0.0  # exp overflow is the limit 0, not a warning
    with pytest.raises(ValueError, match="Received: val_probs=None, val_logits=None"):
        fit_operating_point(None, [0, 1])


def test_apply_temperature():
    p = np.array([0.1, 0.5, 0.9])
    np.testing.assert_allclose(apply_temperature(p, 1.0), p)
    soft = apply_temperature(p, 2.0)
    assert soft[1] == pytest.approx(0.5)
    assert 0.1 < soft[0] < 0.5 < soft[2] < 0.9  # T > 1 pulls towards 0.5
    np.testing.assert_allclose(apply_temperature(apply_temperature(p, 0.5), 2.0), p, atol=1e-9)
    # saturated inputs stay finite
    out = apply_temperature(np.array([0.0, 1.0]), 3.0)
    assert np.all(np.isfinite(out)) and 0 < out[0] < 0.5 < out[1] < 1
    # monotone: calibration never reorders images (AUC unchanged)
    q = np.random.default_rng(0).uniform(size=100)
    assert (np.argsort(apply_temperature(q, 2.5)) == np.argsort(q)).all()


def _scores(seed=1, n_pos=300, n_neg=200):
    rng = np.random.default_rng(seed)
    y = np.r_[np.ones(n_pos, int), np.zeros(n_neg, int)]
    p = _sigmoid(np.r_[rng.normal(1.0, 1.2, n_pos), rng.normal(-1.0, 1.2, n_neg)])
    return p, y


def _sens_spec(p, y, thr):
    pred = p >= thr
    return (pred & (y == 1)).sum() / (y == 1).sum(), (~pred & (y == 0)).sum() / (y == 0).sum()


def test_youden_threshold_maximises_j():
    p, y = _scores()
    thr = choose_threshold(p, y, "youden")
    fpr, tpr, thrs = roc_curve(y, p)
    best_j = float(np.max(tpr - fpr))
    se, sp = _sens_spec(p, y, thr)
    assert se + sp - 1 == pytest.approx(best_j)
    # brute force over all cut points agrees
    brute = max(sum(_sens_spec(p, y, t)) - 1 for t in np.unique(p))
    assert se + sp - 1 == pytest.approx(brute)


@pytest.mark.parametrize("target", [0.8, 0.9, 0.95, 0.99])
def test_sensitivity_policy_meets_target_with_best_specificity(target):
    p, y = _scores()
    thr = choose_threshold(p, y, "sensitivity", target)
    se, sp = _sens_spec(p, y, thr)
    assert se >= target
    # no cut point meeting the target has a better specificity (brute force over all of them).
    # (roc_curve drops collinear points, so on a vertical ROC segment it may pick a lower
    # threshold than the highest one meeting the target: same specificity, more sensitivity.)
    best_sp = max(_sens_spec(p, y, t)[1] for t in np.unique(p) if _sens_spec(p, y, t)[0] >= target)
    assert sp == pytest.approx(best_sp)


def test_fit_operating_point_meets_sensitivity_target_on_validation():
    p, y = _scores(seed=3)
    op = fit_operating_point(p, y, "sensitivity", 0.95, margin=0.1)
    cal = op.calibrate(p)
    se, sp = _sens_spec(cal, y, op.threshold)
    assert se >= 0.95
    assert op.validation["sensitivity"] == pytest.approx(se)
    assert op.validation["specificity"] == pytest.approx(sp)
    assert op.validation["n"] == len(y)
    assert op.policy == "sensitivity" and op.target_sensitivity == 0.95 and op.fitted_on == "validation"
    # band = threshold +- margin, clipped to [0, 1]
    assert op.band_low == pytest.approx(max(0.0, op.threshold - 0.1))
    assert op.band_high == pytest.approx(min(1.0, op.threshold + 0.1))
    frac = np.mean((cal >= op.band_low) & (cal <= op.band_high))
    assert op.validation["indeterminate_fraction"] == pytest.approx(frac)


def test_band_is_clipped_to_unit_interval():
    # perfectly separated, extreme scores: the threshold sits near 1
    y = np.r_[np.ones(50, int), np.zeros(50, int)]
    p = np.r_[np.full(50, 0.999), np.full(50, 0.001)]
    op = fit_operating_point(p, y, "sensitivity", 0.95, margin=0.2)
    assert 0.0 <= op.band_low <= op.threshold <= op.band_high <= 1.0


def test_threshold_errors():
    with pytest.raises(ValueError, match="both classes"):
        choose_threshold([0.2, 0.8], [1, 1])
    with pytest.raises(ValueError, match="Received: policy='f1'"):
        choose_threshold([0.2, 0.8], [0, 1], "f1")


def test_decide():
    op = OperatingPoint(temperature=1.0, threshold=0.3, band_low=0.2, band_high=0.4)
    assert op.decide(0.0) == "NORMAL"
    assert op.decide(0.19) == "NORMAL"
    assert op.decide(0.2) == INDETERMINATE == "INDETERMINATE"  # band edges are inclusive
    assert op.decide(0.3) == INDETERMINATE
    assert op.decide(0.4) == INDETERMINATE
    assert op.decide(0.41) == "PNEUMONIA"
    assert op.decide(1.0) == "PNEUMONIA"
    no_band = OperatingPoint(threshold=0.5, band_low=0.5, band_high=0.5)
    assert no_band.decide(0.49) == "NORMAL" and no_band.decide(0.51) == "PNEUMONIA"
    assert no_band.decide(0.5) == INDETERMINATE


def test_operating_point_save_load(tmp_path):
    p, y = _scores(seed=4)
    op = fit_operating_point(p, y, "youden", 0.9, margin=0.05)
    path = tmp_path / "operating_point.json"
    op.save(path)
    d = json.loads(path.read_text())
    assert {"temperature", "threshold", "band_low", "band_high", "policy", "validation"} <= set(d)
    back = OperatingPoint.load(path)
    assert back == op
    np.testing.assert_allclose(back.calibrate(p), op.calibrate(p))
    # unknown keys from a newer version are ignored
    d["future"] = 1
    assert OperatingPoint.from_dict(d) == op


def test_defaults_are_identity_calibration():
    op = OperatingPoint()
    np.testing.assert_allclose(op.calibrate([0.25, 0.75]), [0.25, 0.75])


# --- operating_point.json is input (issue 21) --------------------------------------------------
_VALID = {"temperature": 0.7, "threshold": 0.2, "band_low": 0.1, "band_high": 0.3}


@pytest.mark.parametrize("field,value", [
    ("threshold", float("nan")), ("threshold", 1e308), ("threshold", -0.1), ("threshold", "0.2"),
    ("threshold", None), ("threshold", True), ("band_low", float("nan")), ("band_high", 1.5),
    ("band_high", [0.3]), ("temperature", -0.7), ("temperature", 0.0), ("temperature", float("inf")),
    ("temperature", "1"), ("target_sensitivity", 2.0), ("policy", 3), ("validation", [1, 2]),
])
def test_from_dict_refuses_tampered_values_with_field_and_received(field, value):
    """NaN threshold/band made every film NORMAL, 1e308 the same, a negative temperature inverted every
    probability, a string raised a TypeError at the first prediction: each is now a ValueError that
    names the field and the value received."""
    d = {**_VALID, field: value}
    with pytest.raises(ValueError, match=f"{field}.*Received: {field}=") as e:
        OperatingPoint.from_dict(d)
    assert "\n" not in str(e.value)
    assert OperatingPoint.from_dict(_VALID).threshold == 0.2  # the untampered file loads


def test_band_must_contain_the_threshold_and_the_file_must_be_an_object():
    with pytest.raises(ValueError, match=r"band_low <= threshold <= band_high\)\. Received: band_low=0.1, threshold=0.5"):
        OperatingPoint.from_dict({**_VALID, "threshold": 0.5})
    with pytest.raises(ValueError, match="must be a JSON object. Received: a JSON list"):
        OperatingPoint.from_dict([0.5])


def test_load_reads_a_bounded_regular_file_without_nan_literals(tmp_path):
    from core.fsutil import UnsafeFileError

    path = tmp_path / "operating_point.json"
    path.write_text('{"temperature": 1.0, "threshold": NaN, "band_low": NaN, "band_high": NaN}')
    with pytest.raises(UnsafeFileError, match="not valid JSON"):
        OperatingPoint.load(path)
    path.write_text('{"temperature": 1.0, "threshold": 1e999, "band_low": 0, "band_high": 1}')  # parses as inf
    with pytest.raises(ValueError, match="Received: threshold=inf"):
        OperatingPoint.load(path)
    good = tmp_path / "good.json"
    good.write_text(json.dumps(_VALID))
    link = tmp_path / "link.json"
    link.symlink_to(good)
    with pytest.raises(UnsafeFileError, match="symbolic link"):
        OperatingPoint.load(link)
    assert OperatingPoint.load(good).band_high == 0.3


# --- moved from test_issue16_helpers.py: calibration reuses evaluation's rates ---------------------
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
