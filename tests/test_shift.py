"""Tests for core.shift: fixed acquisition perturbations used for shift-aware validation."""

from __future__ import annotations

import numpy as np
import pytest

from core import shift


@pytest.fixture(scope="module")
def batch():
    rng = np.random.default_rng(0)
    g = rng.integers(30, 220, (9, 32, 32, 1), dtype=np.uint8)
    return np.repeat(g, 3, axis=-1)  # grey films stored as RGB


@pytest.mark.parametrize("name", list(shift.PERTURBATIONS))
def test_each_perturbation_keeps_shape_dtype_and_changes_pixels(batch, name):
    out = shift.PERTURBATIONS[name](batch)
    assert out.shape == batch.shape and out.dtype == np.uint8
    assert not np.array_equal(out, batch)
    assert np.array_equal(out, shift.PERTURBATIONS[name](batch))  # deterministic


def test_specific_effects(batch):
    assert shift.gamma(batch, 0.6).mean() > batch.mean() > shift.gamma(batch, 1.6).mean()
    assert shift.low_contrast(batch).std() < batch.std()
    b = shift.border(batch, 0.12)
    assert b[:, 0].max() == 0 and b[:, :, 0].max() == 0  # black frame
    assert shift.blur(batch).std() < batch.std()


def test_round_robin_applies_one_perturbation_per_image(batch):
    out = shift.perturb_round_robin(batch)
    names = list(shift.PERTURBATIONS)
    for i in range(len(batch)):
        expected = shift.PERTURBATIONS[names[i % len(names)]](batch[i : i + 1])
        assert np.array_equal(out[i], expected[0])
