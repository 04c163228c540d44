"""Tests for core.ood: Mahalanobis OOD statistics on synthetic feature clouds."""

from __future__ import annotations

import json

import numpy as np
import pytest

from core import ood
from core.ood import OODStats


def _clouds(d=32, n=800, shift=2.0, seed=0):
    """Cloud A (train + validation) and cloud B, same covariance, mean shifted by `shift` per axis."""
    rng = np.random.default_rng(seed)
    cov = np.diag(rng.uniform(0.5, 2.0, d))
    a_train = rng.multivariate_normal(np.zeros(d), cov, n)
    a_val = rng.multivariate_normal(np.zeros(d), cov, n // 2)
    b = rng.multivariate_normal(np.full(d, shift), cov, n // 2)
    return a_train, a_val, b


@pytest.fixture(scope="module")
def fitted():
    a_train, a_val, b = _clouds()
    return ood.fit(a_train, a_val, percentile=99.0), a_train, a_val, b


def test_fit_separates_two_gaussian_clouds(fitted):
    stats, a_train, a_val, b = fitted
    s_in, s_out = stats.score(a_val), stats.score(b)
    assert s_in.shape == (len(a_val),) and np.all(np.isfinite(s_in)) and np.all(s_in >= 0)
    # ~1 % of in-distribution validation images exceed the threshold (by construction)
    assert np.mean(s_in > stats.threshold) == pytest.approx(0.01, abs=0.011)
    # the other cloud is flagged almost entirely
    assert np.mean(s_out > stats.threshold) > 0.95
    assert np.median(s_out) > 2 * np.median(s_in)
    from sklearn.metrics import roc_auc_score

    assert roc_auc_score(np.r_[np.zeros(len(s_in)), np.ones(len(s_out))], np.r_[s_in, s_out]) > 0.99


def test_mean_and_score_of_the_mean(fitted):
    stats, a_train, _, _ = fitted
    np.testing.assert_allclose(stats.mean, a_train.mean(axis=0), atol=1e-9)
    assert stats.score(stats.mean[None, :])[0] == pytest.approx(0.0, abs=1e-9)
    assert stats.percentile == 99.0


def test_score_is_mahalanobis_for_identity_precision():
    s = OODStats(np.zeros(3), np.eye(3), 1.0, 99.0)
    np.testing.assert_allclose(s.score(np.array([[3.0, 4.0, 0.0], [0.0, 0.0, 0.0]])), [5.0, 0.0])


def test_save_load_round_trip(fitted, tmp_path):
    stats, _, a_val, b = fitted
    stats.save(tmp_path)
    meta = json.loads((tmp_path / "ood.json").read_text())
    assert meta["threshold"] == pytest.approx(stats.threshold) and meta["dim"] == 32
    assert set(meta["val_score_quantiles"]) == {"50", "90", "95", "99", "100"}
    back = OODStats.load(tmp_path)
    assert back.threshold == stats.threshold and back.percentile == stats.percentile
    np.testing.assert_allclose(back.score(b), stats.score(b))
    np.testing.assert_allclose(back.score(a_val), stats.score(a_val))


def test_load_missing_returns_none_and_half_a_pair_is_refused(tmp_path):
    assert OODStats.load(tmp_path) is None  # a model saved before OOD statistics existed
    # One file of the pair alone is a damaged (or tampered) version, not an old one: refused by
    # name instead of silently switching OOD rejection off (issue 21).
    (tmp_path / "ood.json").write_text("{}")
    with pytest.raises(ValueError, match="ood.npz is missing but ood.json is there"):
        OODStats.load(tmp_path)


def test_saved_file_loads_without_pickle(fitted, tmp_path):
    stats = fitted[0]
    stats.save(tmp_path)
    with np.load(tmp_path / "ood.npz", allow_pickle=False) as z:
        assert set(z.files) == {"mean", "precision"}


def test_pool():
    f = np.arange(2 * 3 * 3 * 4, dtype=np.float32).reshape(2, 3, 3, 4)
    p = ood.pool(f)
    assert p.shape == (2, 4) and p.dtype == np.float64
    np.testing.assert_allclose(p, f.mean(axis=(1, 2)))
    flat = np.ones((5, 4))
    assert ood.pool(flat) is not None and ood.pool(flat).shape == (5, 4)


def test_fit_with_few_samples_is_finite():
    """Ledoit-Wolf shrinkage: 512-d features from a handful of images still give a usable inverse."""
    rng = np.random.default_rng(1)
    stats = ood.fit(rng.normal(size=(10, 512)), rng.normal(size=(6, 512)))
    assert np.isfinite(stats.threshold) and np.all(np.isfinite(stats.precision))


def test_trained_model_has_ood_stats(trained_registry):
    stats = OODStats.load(trained_registry.path())
    channels = int(trained_registry.load().model.get_layer("base").output.shape[-1])  # 16 (micro), 512 (VGG-19)
    assert stats is not None and stats.mean.shape == (channels,) and np.isfinite(stats.threshold)


def test_reject_threshold_from_shifted_validation_round_trips(tmp_path):
    a_train, a_val, b = _clouds()
    shifted = a_val * 1.3  # "acquisition-perturbed" copies spread wider than plain validation
    stats = ood.fit(a_train, a_val, 99.0, shifted_val_pooled=shifted)
    assert stats.reject_threshold == pytest.approx(np.percentile(stats.score(shifted), 99.0))
    assert stats.reject_threshold > stats.threshold
    stats.save(tmp_path)
    meta = json.loads((tmp_path / "ood.json").read_text())
    assert meta["reject_threshold"] == pytest.approx(stats.reject_threshold)
    assert set(meta["shifted_val_score_quantiles"]) == {"50", "90", "95", "99", "100"}
    back = OODStats.load(tmp_path)
    assert back.reject_threshold == pytest.approx(stats.reject_threshold) and back.threshold == pytest.approx(stats.threshold)
    # Never below the warning threshold; a file without it rejects at the warning threshold.
    tight = ood.fit(a_train, a_val, 99.0, shifted_val_pooled=a_val[:50] * 0.1)
    assert tight.reject_threshold == tight.threshold
    del meta["reject_threshold"]
    (tmp_path / "ood.json").write_text(json.dumps(meta))
    assert OODStats.load(tmp_path).reject_threshold == pytest.approx(stats.threshold)


def test_trained_model_stores_a_reject_threshold(trained_registry):
    meta = json.loads((trained_registry.path() / "ood.json").read_text())
    assert meta["reject_threshold"] >= meta["threshold"]
    assert "shifted_val_score_quantiles" in meta


# --- ood.json / ood.npz are input (issue 21) -----------------------------------------------------
def _saved(tmp_path, fitted):
    fitted[0].save(tmp_path)
    return json.loads((tmp_path / "ood.json").read_text())


@pytest.mark.parametrize("field,value,match", [
    ("threshold", -1.0, "threshold must be a finite number >= 0"),
    ("threshold", "33.9", "Received: threshold='33.9'"),
    ("threshold", None, "Received: threshold=None"),
    ("reject_threshold", [1], "Received: reject_threshold=[1]"),
    ("percentile", 0, "percentile must be a finite number in (0, 100]"),
    ("percentile", 150.0, "Received: percentile=150.0"),
    ("dim", 31, "dim must equal the length of the mean"),
])
def test_tampered_ood_json_is_refused_naming_the_field(tmp_path, fitted, field, value, match):
    meta = _saved(tmp_path, fitted)
    meta[field] = value
    (tmp_path / "ood.json").write_text(json.dumps(meta))
    with pytest.raises(ValueError, match=match.replace("(", r"\(").replace("[", r"\[")) as e:
        OODStats.load(tmp_path)
    assert str(e.value).startswith("ood.json: ")


def test_nan_or_infinite_threshold_never_switches_ood_off(tmp_path, fitted):
    """A NaN threshold made every score 'not above it': OOD rejection silently off. Refused."""
    from core.fsutil import UnsafeFileError

    meta = _saved(tmp_path, fitted)
    text = json.dumps(meta).replace(json.dumps(meta["threshold"]), "NaN", 1)
    (tmp_path / "ood.json").write_text(text)
    with pytest.raises(UnsafeFileError, match="not valid JSON"):
        OODStats.load(tmp_path)
    (tmp_path / "ood.json").write_text(json.dumps({**meta, "reject_threshold": 0.123456789}).replace("0.123456789", "1e999"))
    with pytest.raises(ValueError, match="Received: reject_threshold=inf"):
        OODStats.load(tmp_path)


def test_tampered_arrays_are_refused(tmp_path, fitted):
    stats = fitted[0]
    _saved(tmp_path, fitted)
    mean = stats.mean.copy()
    mean[3] = np.nan
    np.savez_compressed(tmp_path / "ood.npz", mean=mean, precision=stats.precision)
    with pytest.raises(ValueError, match="mean must hold finite numbers only. Received: 1 values"):
        OODStats.load(tmp_path)
    np.savez_compressed(tmp_path / "ood.npz", mean=stats.mean, precision=stats.precision[:5])
    with pytest.raises(ValueError, match=r"precision must be a square matrix as wide as mean \(32\)"):
        OODStats.load(tmp_path)
    np.savez_compressed(tmp_path / "ood.npz", mean=stats.mean.astype(np.int64), precision=stats.precision)
    with pytest.raises(ValueError, match="mean must be a float array"):
        OODStats.load(tmp_path)
    np.savez_compressed(tmp_path / "ood.npz", mean=stats.mean)
    with pytest.raises(ValueError, match="must hold the arrays 'mean' and 'precision'"):
        OODStats.load(tmp_path)
    (tmp_path / "ood.npz").write_bytes(b"not a zip")
    with pytest.raises(ValueError, match="not a readable NumPy archive"):
        OODStats.load(tmp_path)


def test_an_array_header_declaring_gigabytes_is_refused_before_inflating(tmp_path, fitted):
    """A few bytes of .npy header can declare a 100000 x 100000 float64 array (80 GB): the shape is
    checked from the header, before any data is read."""
    import io
    import zipfile

    _saved(tmp_path, fitted)
    header = io.BytesIO()
    np.lib.format.write_array_header_1_0(header, {"descr": "<f8", "fortran_order": False, "shape": (100000, 100000)})
    buf = io.BytesIO()
    np.save(buf, fitted[0].mean)
    with zipfile.ZipFile(tmp_path / "ood.npz", "w") as zf:
        zf.writestr("mean.npy", buf.getvalue())
        zf.writestr("precision.npy", np.lib.format.MAGIC_PREFIX + b"\x01\x00" + header.getvalue()[8:] + b"\0" * 64)
    with pytest.raises(ValueError, match=r"precision must be a float array of 2 dimension\(s\) of at most 2048"):
        OODStats.load(tmp_path)


def test_a_symlinked_ood_file_is_not_followed(tmp_path, fitted):
    from core.fsutil import UnsafeFileError

    real = tmp_path / "elsewhere"
    real.mkdir()
    fitted[0].save(real)
    version = tmp_path / "version"
    version.mkdir()
    (version / "ood.npz").symlink_to(real / "ood.npz")
    (version / "ood.json").write_text((real / "ood.json").read_text())
    with pytest.raises(UnsafeFileError, match="symbolic link"):
        OODStats.load(version)
