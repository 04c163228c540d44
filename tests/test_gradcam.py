"""Grad-CAM (core.explain.grad_cam) on the tiny trained model (saved + loaded through the registry) and the overlay (core.gradcam)."""

from __future__ import annotations

import numpy as np
import pytest

from core import dataset as ds
from core.explain import grad_cam
from core.gradcam import overlay


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


# --- what the overlay does to the pixels (core.gradcam.overlay / map_overlay / CLEAR_BELOW) ---------
JET_HOT = np.array([128, 0, 0], np.float32)  # RGB of COLORMAP_JET at a map value of 1 (dark red)


def _film(h: int = 40, w: int = 60) -> np.ndarray:
    rng = np.random.default_rng(7)
    return np.repeat(rng.integers(0, 256, (h, w, 1), dtype=np.uint8), 3, axis=2)


def _blend_at_one(img: np.ndarray, alpha: float) -> np.ndarray:
    """img * (1 - alpha) + jet(1) * alpha, rounded: the colour of a pixel whose map value is 1."""
    return np.clip(np.rint(img.astype(np.float32) * (1 - alpha) + JET_HOT * alpha), 0, 255).astype(np.uint8)


def test_map_overlay_leaves_pixels_at_or_under_clear_below_unchanged():
    from core.gradcam import CLEAR_BELOW, map_overlay

    img = _film()
    heat = np.zeros((40, 60), np.float32)
    heat[:, :20] = CLEAR_BELOW * 0.5
    heat[:, 20:40] = CLEAR_BELOW  # "at or under": still transparent
    heat[:, 40:] = 1.0
    out = map_overlay(img, heat, 0.6)
    np.testing.assert_array_equal(out[:, :40], img[:, :40])
    np.testing.assert_array_equal(out[:, 40:], _blend_at_one(img[:, 40:], 0.6))  # full alpha at 1
    # Just above the threshold the opacity starts small, under alpha: the pixel moves, but little.
    heat[:, :20] = CLEAR_BELOW + 0.01
    part = map_overlay(img, heat, 0.6)[:, :20].astype(int)
    moved = np.abs(part - img[:, :20].astype(int)).max()
    assert 0 < moved < np.abs(_blend_at_one(img[:, :20], 0.6).astype(int) - img[:, :20].astype(int)).max()


@pytest.mark.parametrize("alpha", [0.0, 0.4, 1.0])
def test_overlay_blends_the_hot_colour_at_alpha_where_the_map_is_one(alpha):
    img = _film()
    ones = np.ones((40, 60), np.float32)
    np.testing.assert_array_equal(overlay(img, ones, alpha), _blend_at_one(img, alpha))  # every pixel blended
    np.testing.assert_array_equal(overlay(img, ones, alpha, clear_below=0.2), _blend_at_one(img, alpha))


def test_overlay_resizes_the_map_to_the_image():
    """A 2x2 map over a 40x60 film: the hot quadrant (top right) is blended, the cold ones are the film."""
    img = _film()
    heat = np.array([[0.0, 1.0], [0.0, 0.0]], np.float32)
    out = overlay(img, heat, 0.5, clear_below=0.2)
    assert out.shape == (40, 60, 3)
    np.testing.assert_array_equal(out[:10, -14:], _blend_at_one(img[:10, -14:], 0.5))  # top-right corner: value 1
    np.testing.assert_array_equal(out[30:, :], img[30:, :])  # bottom quarter: value 0
    np.testing.assert_array_equal(out[:, :15], img[:, :15])  # left quarter: value 0


def test_map_overlay_draws_nothing_for_a_flat_map_or_no_image():
    from core.gradcam import map_overlay

    img = _film()
    assert map_overlay(img, np.zeros((7, 7)), 0.5) is None
    assert map_overlay(img, np.full((7, 7), 0.6), 0.5) is None
    assert map_overlay(img, None, 0.5) is None and map_overlay(None, np.eye(7), 0.5) is None


@pytest.mark.parametrize("kwargs,name", [({"alpha": 2.0}, "alpha"), ({"alpha": -0.5}, "alpha"),
                                         ({"alpha": 0.4, "clear_below": 1.0}, "clear_below"),
                                         ({"alpha": 0.4, "clear_below": -0.1}, "clear_below")])
def test_overlay_bad_alpha_or_threshold_names_the_value(kwargs, name):
    with pytest.raises(ValueError, match=f"Received: {name}="):
        overlay(_film(), np.eye(8), **kwargs)


def test_map_overlay_bad_alpha_names_the_value():
    from core.gradcam import map_overlay

    with pytest.raises(ValueError, match="Received: alpha=1.5"):
        map_overlay(_film(), np.eye(8), 1.5)
