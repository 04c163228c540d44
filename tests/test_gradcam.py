"""Tests for core.gradcam on the tiny trained model (saved + loaded through the registry)."""

from __future__ import annotations

import numpy as np
import pytest

from core import dataset as ds
from core.gradcam import grad_cam, overlay


@pytest.fixture(scope="module")
def loaded(trained_registry):
    return trained_registry.load()


@pytest.fixture(scope="module")
def images(sample_root, loaded):
    return ds.load_arrays(ds.discover(sample_root).split("test"), loaded.config.input_size).x


def _check(h, n, size):
    assert h.shape == (n, size, size)
    assert h.dtype == np.float32
    assert np.all(np.isfinite(h))
    assert h.min() >= 0.0 and h.max() <= 1.0


def test_gradcam_on_saved_and_loaded_model(loaded, images):
    h = grad_cam(loaded.model, images, loaded.config.last_conv_layer)
    _check(h, len(images), loaded.config.input_size)


def test_gradcam_accepts_uint8_and_float_alike(loaded, images):
    a = grad_cam(loaded.model, images[:2])
    b = grad_cam(loaded.model, images[:2].astype(np.float32))
    np.testing.assert_allclose(a, b, atol=1e-6)


def test_gradcam_single_image_and_other_layers(loaded, images):
    _check(grad_cam(loaded.model, images[:1]), 1, 32)
    _check(grad_cam(loaded.model, images[:2], "block4_conv4"), 2, 32)


def test_gradcam_normal_class_is_a_different_map(loaded, images):
    pos = grad_cam(loaded.model, images[:4], target_class=1)
    neg = grad_cam(loaded.model, images[:4], target_class=0)
    _check(neg, 4, 32)
    # the map for the other class is not the same map (the gradient sign flips)
    assert not np.allclose(pos, neg)


def test_gradcam_on_64px_fresh_model():
    from core.config import Config
    from core.model import build_model

    model = build_model(Config(input_size=64, weights="none", head_units=8))
    x = np.random.default_rng(0).integers(0, 256, (3, 64, 64, 3)).astype(np.uint8)
    _check(grad_cam(model, x), 3, 64)


def test_gradcam_bad_arguments(loaded, images):
    with pytest.raises(ValueError, match="Received: layer='nope'"):
        grad_cam(loaded.model, images[:1], "nope")
    with pytest.raises(ValueError, match="Received: shape="):
        grad_cam(loaded.model, images[0])


def test_overlay_shape_dtype_and_blend():
    rng = np.random.default_rng(1)
    img = rng.integers(0, 256, (100, 80, 3), dtype=np.uint8)
    heat = rng.uniform(size=(32, 32)).astype(np.float32)
    out = overlay(img, heat, 0.4)
    assert out.shape == (100, 80, 3) and out.dtype == np.uint8
    np.testing.assert_array_equal(overlay(img, heat, 0.0), img)  # alpha 0 = the image
    full = overlay(img, heat, 1.0)
    assert not np.array_equal(full, img)
    # a zero heatmap colours everything with the colormap's 'cold' end (JET: blue)
    cold = overlay(np.zeros((10, 10, 3), np.uint8), np.zeros((4, 4)), 1.0)
    assert (cold[..., 2] > cold[..., 0]).all()


def test_overlay_grayscale_rgba_and_bad_heatmap_values():
    gray = np.full((20, 30), 128, np.uint8)
    assert overlay(gray, np.ones((5, 5)), 0.5).shape == (20, 30, 3)
    rgba = np.zeros((20, 30, 4), np.uint8)
    assert overlay(rgba, np.ones((5, 5)), 0.5).shape == (20, 30, 3)
    weird = np.array([[np.nan, np.inf], [-1.0, 2.0]], dtype=np.float32)
    out = overlay(gray, weird, 0.5)
    assert out.dtype == np.uint8 and out.shape == (20, 30, 3)


@pytest.mark.parametrize("alpha", [-0.1, 1.5, float("nan")])
def test_overlay_alpha_validation(alpha):
    with pytest.raises(ValueError, match="Received: alpha="):
        overlay(np.zeros((8, 8, 3), np.uint8), np.zeros((8, 8)), alpha)
