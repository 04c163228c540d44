"""The heatmap overlay: how an explanation map is coloured and blended over the film.

The explanation methods themselves (Grad-CAM, HiResCAM, Grad-CAM++, LayerCAM, occlusion)
live in ``core.explain`` as pure functions (model + batch in, maps in [0, 1] out);
colouring is kept apart from them, here.
"""

from __future__ import annotations

import numpy as np


# Map values under this share of the map's maximum are drawn transparent everywhere a map is shown
# (app, PDF/PNG reports, CLI overlays, the PACS Secondary Capture): weak evidence does not tint the film.
CLEAR_BELOW = 0.2


def overlay(image: np.ndarray, heatmap: np.ndarray, alpha: float = 0.4, colormap: int | None = None,
            clear_below: float | None = None) -> np.ndarray:
    """Blend a [0, 1] heatmap (any size) over an RGB uint8 image. Returns RGB uint8 (H, W, 3).

    ``clear_below`` (in [0, 1)): map values at or under it are transparent (those pixels are the
    image, unchanged) and the opacity rises from 0 there to ``alpha`` at 1, so weak evidence does
    not tint the whole film (jet's blue end); None blends every pixel at ``alpha``.
    """
    import cv2

    if not 0.0 <= alpha <= 1.0:
        raise ValueError(f"alpha must be in [0, 1]. Received: alpha={alpha!r}")
    if clear_below is not None and not 0.0 <= clear_below < 1.0:
        raise ValueError(f"clear_below must be in [0, 1). Received: clear_below={clear_below!r}")
    img = np.asarray(image)
    if img.ndim == 2:
        img = np.repeat(img[..., None], 3, axis=-1)
    img = img[..., :3].astype(np.uint8)
    hm = np.clip(np.nan_to_num(np.asarray(heatmap, dtype=np.float32)), 0, 1)
    hm = cv2.resize(hm, (img.shape[1], img.shape[0]), interpolation=cv2.INTER_LINEAR)
    colored = cv2.applyColorMap(np.uint8(255 * np.clip(hm, 0, 1)), cv2.COLORMAP_JET if colormap is None else colormap)
    colored = cv2.cvtColor(colored, cv2.COLOR_BGR2RGB)
    if clear_below is None:
        return cv2.addWeighted(colored, float(alpha), img, 1.0 - float(alpha), 0.0)
    weight = float(alpha) * np.sqrt(np.clip((hm - clear_below) / (1.0 - clear_below), 0.0, 1.0))[..., None]
    out = img.astype(np.float32) * (1.0 - weight) + colored.astype(np.float32) * weight
    return np.clip(np.rint(out), 0, 255).astype(np.uint8)


def map_overlay(image: np.ndarray | None, heatmap: np.ndarray | None, alpha: float) -> np.ndarray | None:
    """How every view draws a map (app, reports, CLI files, the PACS Secondary Capture): ``image``
    with ``heatmap`` blended at ``alpha``, values under ``CLEAR_BELOW`` transparent; None when there
    is no image or the map is flat (``core.explain.is_flat``): a flat map is never drawn."""
    from core.explain import is_flat

    if image is None or is_flat(heatmap):
        return None
    return overlay(image, heatmap, alpha, clear_below=CLEAR_BELOW)
