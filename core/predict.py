"""Serving: bytes/paths/arrays in, calibrated predictions (+ optional Grad-CAM) out.

One code path for the app, the CLI batch predict and tests. Bad inputs become a
``Prediction`` with ``ok=False`` and a human message; the other inputs still run.
"""

from __future__ import annotations

import dataclasses
import hashlib
import logging
from pathlib import Path
from typing import Iterable, Sequence

import numpy as np

from core.decode_pool import decode_untrusted, default_pool
from core.imageio import DecodedImage, ImageError, read_file, resize_for_model, shrink_to

log = logging.getLogger(__name__)

# Memory bounds (issue 14): a Prediction keeps a display copy of the image whose longer side is
# at most this (the full-resolution array is dropped) plus the exact model input; a batch
# decodes at most about this many bytes of full-resolution arrays before it runs the model on
# them and drops them.
DISPLAY_MAX_SIDE = 1024
BATCH_DECODED_BYTES = 64 * 2**20


@dataclasses.dataclass
class Prediction:
    filename: str
    ok: bool
    label: str | None = None  # "NORMAL" | "PNEUMONIA" | "INDETERMINATE"
    probability: float | None = None  # calibrated P(PNEUMONIA)
    raw_probability: float | None = None  # model output before temperature scaling
    threshold: float | None = None
    band: tuple[float, float] | None = None
    model_version: str | None = None
    error_code: str | None = None
    error: str | None = None
    sha256: str | None = None
    ood_score: float | None = None
    ood_threshold: float | None = None  # warning threshold
    ood_reject_threshold: float | None = None  # no verdict above it
    # Input guard (core.guard): "accepted" | "warning" | "rejected", a machine code and a
    # human message. A rejected image gets no verdict (label "REJECTED"); its raw
    # probability and heatmap may still be shown, marked unreliable.
    guard_status: str | None = None
    guard_code: str | None = None
    guard_message: str | None = None
    info: dict = dataclasses.field(default_factory=dict)
    # Canonical RGB uint8, reduced so that its longer side is at most DISPLAY_MAX_SIDE (display,
    # overlays, reports); ``model_input`` is the exact (s, s, 3) array the model saw.
    image: np.ndarray | None = dataclasses.field(default=None, repr=False)
    model_input: np.ndarray | None = dataclasses.field(default=None, repr=False)
    heatmap: np.ndarray | None = dataclasses.field(default=None, repr=False)  # (s, s) in [0, 1]
    # Which explanation ``heatmap`` is (core.explain.METHODS) and at which layer (None for
    # occlusion); the map is for the PNEUMONIA class whatever the verdict.
    heatmap_method: str | None = None
    heatmap_layer: str | None = None
    # Maps already computed for this image, {(method, layer): map}: switching the method in
    # the app does not recompute them (occlusion takes seconds).
    maps: dict = dataclasses.field(default_factory=dict, repr=False)

    @property
    def rejected(self) -> bool:
        return self.guard_status == "rejected"

    def to_row(self) -> dict:
        """Flat dict for tables / CSV (no arrays).

        A rejected image (or an unreadable file) has no verdict and no probability here: the
        model's output on an image the guard refused is not a result, so no export carries it.
        """
        verdict = self.ok and not self.rejected
        return {
            "file": self.filename,
            "ok": self.ok,
            "result": self.label if self.ok else "ERROR",
            "probability_pneumonia": round(self.probability, 4) if verdict and self.probability is not None else None,
            "raw_probability": round(self.raw_probability, 4) if verdict and self.raw_probability is not None else None,
            "threshold": None if self.threshold is None else round(self.threshold, 4),
            "indeterminate_band": None if self.band is None else f"{self.band[0]:.3f}-{self.band[1]:.3f}",
            "ood_score": None if self.ood_score is None else round(self.ood_score, 2),
            "ood_threshold": None if self.ood_threshold is None else round(self.ood_threshold, 2),
            "ood_reject_threshold": None if self.ood_reject_threshold is None else round(self.ood_reject_threshold, 2),
            "guard_status": self.guard_status,
            "guard_code": self.guard_code,
            "guard_message": self.guard_message,
            "model_version": self.model_version,
            "error_code": self.error_code,
            "message": self.error or "",
            "sha256": self.sha256,
        }


class Predictor:
    """Wraps a registry ``LoadedModel``; build once, reuse (the app caches it).

    Every image of ``predict_bytes``/``predict_paths`` goes through the input guard
    (``core.guard``) first: a rejected image gets ``label = "REJECTED"`` and no verdict.
    ``auto_invert=True`` analyses an image the guard finds inverted (a negative whose
    inverse is in distribution) after inverting it, with a warning, instead of rejecting it.
    """

    def __init__(self, loaded, auto_invert: bool = False, guard_settings=None, warm_up: bool = True):
        from core.explain import explainer_for
        from core.ood import OODStats

        self.loaded = loaded
        self.model = loaded.model
        self.config = loaded.config
        self.op = loaded.operating_point
        self.version = loaded.name
        self.size = self.config.input_size
        # One compiled pass per request (core.explain.Explainer): raw probability, pooled base
        # features for the OOD score and, when asked for, the explanation map. No eager
        # per-layer loop on the request path.
        self.explainer = explainer_for(self.model)
        self.explain_method = self.config.explain_method
        self.explain_layer = self.config.explain_layer
        if self.explain_method != "occlusion" and self.explain_layer not in self.explainer.names:
            log.warning("Model %s: explain_layer %r is not a layer of the model; using %r",
                        self.version, self.explain_layer, self.config.last_conv_layer)
            self.explain_layer = self.config.last_conv_layer
        self.ood = OODStats.load(loaded.path)
        self.auto_invert = bool(auto_invert)
        self.guard_settings = guard_settings
        default_pool().prestart()  # the decode worker starts while the model warms up
        if warm_up:
            self.warm_up()

    def warm_up(self) -> None:
        """Trace the compiled passes once (plain and with the default map), so the first
        clinician's click does not pay for tracing (~1-2 s per graph)."""
        x = np.zeros((1, self.size, self.size, 3), np.float32)
        self.explainer.forward(x)
        if self.explain_method != "occlusion":
            self.explainer.run(x, self.explain_method, self.explain_layer, 1)

    def map_spec(self, method: str | None = None, layer: str | None = None) -> tuple[str, str | None]:
        """(method, layer) to use: the model's stored default unless given. Grad-CAM's default
        layer is the backbone's last conv; occlusion has no layer."""
        from core.explain import _check_method

        method = method or self.explain_method
        _check_method(method)
        if method == "occlusion":
            return method, None
        if layer is None:
            layer = self.config.last_conv_layer if method == "gradcam" and self.explain_method != "gradcam" else self.explain_layer
        return method, layer

    @classmethod
    def from_registry(cls, registry=None, version: str | None = None, **kwargs) -> "Predictor":
        from core.registry import Registry

        return cls((registry or Registry()).load(version), **kwargs)

    # --- arrays ------------------------------------------------------------------------------
    def _forward(self, batch: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """(N, s, s, 3) uint8 -> (raw probs (N,), pooled features (N, 512)). One compiled pass."""
        out = self.explainer.forward(batch)
        return out["prob"], out["pooled"]

    def predict_arrays(self, images: Sequence[np.ndarray], with_gradcam: bool = False, batch_size: int = 32,
                       with_map: bool | None = None, method: str | None = None, layer: str | None = None) -> list[dict]:
        """Canonical RGB arrays (any size) -> dicts with raw/calibrated prob, label, OOD score,
        the model input and, with ``with_map``, the explanation map.

        The map is the model's stored default (``config.explain_method``/``explain_layer``)
        unless ``method``/``layer`` say otherwise; it comes out of the same compiled pass as
        the probability. ``with_gradcam`` is the older name of ``with_map``.
        """
        want_map = bool(with_gradcam if with_map is None else with_map)
        m, lyr = self.map_spec(method, layer) if want_map else (None, None)
        out: list[dict] = []
        for start in range(0, len(images), batch_size):
            chunk = images[start : start + batch_size]
            batch = np.stack([resize_for_model(np.asarray(im), self.size) for im in chunk])
            if want_map:
                r = self.explainer.run(batch, m, lyr)
                raw, pooled, heat = r["prob"], r["pooled"], r["map"]
            else:
                raw, pooled = self._forward(batch)
                heat = [None] * len(chunk)
            cal = self.op.calibrate(raw)
            scores = self.ood.score(pooled) if self.ood is not None else [None] * len(chunk)
            for r_, c, s, h, x in zip(raw, cal, scores, heat, batch):
                out.append(
                    {
                        "raw_probability": float(r_),
                        "probability": float(c),
                        "label": self.op.decide(float(c)),
                        "ood_score": None if s is None else float(s),
                        "heatmap": h,
                        "heatmap_method": m if h is not None else None,
                        "heatmap_layer": lyr if h is not None else None,
                        "model_input": x,
                    }
                )
        return out

    def explain(self, model_input: np.ndarray, method: str | None = None, layer: str | None = None,
                target_class: int = 1) -> tuple[np.ndarray, str, str | None]:
        """The map of one (s, s, 3) model input -> (map (s, s) in [0, 1], method, layer)."""
        m, lyr = self.map_spec(method, layer)
        x = np.asarray(model_input)[None]
        return self.explainer.explain(x, m, lyr, target_class)[0], m, lyr

    # --- input guard -------------------------------------------------------------------------
    def _assess(self, decoded: DecodedImage, res: dict, inverted_score: float | None = None):
        from core import guard

        kw = {"settings": self.guard_settings} if self.guard_settings is not None else {}
        return guard.assess(
            decoded.array, decoded.original_rgb, ood_score=res["ood_score"],
            ood_threshold=None if self.ood is None else self.ood.threshold,
            ood_percentile=None if self.ood is None else self.ood.percentile,
            ood_reject_threshold=None if self.ood is None else self.ood.reject_threshold,
            inverted_ood_score=inverted_score, min_side=self.size, **kw,
        )

    def _guarded(self, decoded: list[DecodedImage], with_gradcam: bool,
                 method: str | None = None) -> list[tuple[DecodedImage, dict, object]]:
        """Model pass + guard for each decoded image -> (decoded as analysed, result, GuardResult).

        Suspected negatives get one extra forward pass on their inverse: its OOD score
        confirms the suspicion (and, with ``auto_invert``, the inverse is what is analysed).
        """
        from core import guard

        preds = self.predict_arrays([d.array for d in decoded], with_gradcam=with_gradcam, method=method)
        out = []
        for d, res in zip(decoded, preds):
            g = self._assess(d, res)
            out.append((d, res, g))
        suspects = [i for i, (_, _, g) in enumerate(out) if g.code == "inverted"]
        if not suspects or self.ood is None:
            return out
        flipped = [_inverted(out[i][0], "auto") for i in suspects]
        inv_preds = self.predict_arrays([d.array for d in flipped], with_gradcam=with_gradcam and self.auto_invert, method=method)
        for i, d_inv, r_inv in zip(suspects, flipped, inv_preds):
            d, res, _ = out[i]
            g = self._assess(d, res, inverted_score=r_inv["ood_score"])
            out[i] = (d, res, g)
            if self.auto_invert and g.code == "inverted":
                g_inv = self._assess(d_inv, r_inv)
                if g_inv.status != "rejected":
                    msg = (
                        "The image looked inverted (a negative) and was inverted back before analysis; "
                        "check that this is right. " + ("" if g_inv.status == "accepted" else g_inv.message)
                    ).strip()
                    g_inv = guard.GuardResult("warning", "inverted_corrected", msg, g_inv.checks,
                                              measurements=g_inv.measurements)
                    out[i] = (d_inv, r_inv, g_inv)
        return out

    # --- decoded images ----------------------------------------------------------------------
    def _finish(self, name: str, decoded: DecodedImage, res: dict, digest: str, g=None) -> Prediction:
        if g is not None:  # facts of the file: DICOM Modality, NaN/inf pixels (core.guard)
            from core import guard

            g = guard.with_input_checks(g, decoded.info, self.guard_settings or guard.DEFAULT_SETTINGS)
        rejected = g is not None and g.status == "rejected"
        info = dict(decoded.info)
        if g is not None:
            info["guard"] = g.to_dict()
        return Prediction(
            filename=name,
            ok=True,
            label="REJECTED" if rejected else res["label"],
            probability=res["probability"],
            raw_probability=res["raw_probability"],
            threshold=self.op.threshold,
            band=(self.op.band_low, self.op.band_high),
            model_version=self.version,
            sha256=digest,
            ood_score=res["ood_score"],
            ood_threshold=None if self.ood is None else self.ood.threshold,
            ood_reject_threshold=None if self.ood is None else self.ood.reject_threshold,
            guard_status=None if g is None else g.status,
            guard_code=None if g is None else g.code,
            guard_message=None if g is None else g.message,
            info=info,
            image=display_copy(decoded.array),
            model_input=res["model_input"],
            heatmap=res["heatmap"],
            heatmap_method=res["heatmap_method"],
            heatmap_layer=res["heatmap_layer"],
        )

    def predict_bytes(self, items: Iterable[tuple[str, bytes]], with_gradcam: bool = False, invert: bool = False,
                      rotate180: bool = False, method: str | None = None) -> list[Prediction]:
        """(filename, bytes) pairs -> one Prediction each, in order; errors don't stop the rest.

        ``invert=True`` inverts every image (255 - x) before the guard and the model: the
        fix the guard suggests for a negative (``guard_code == "inverted"``). ``rotate180=True``
        turns every image by 180 degrees first: the fix for ``guard_code == "upside_down"``.
        ``method``: the map's method with ``with_gradcam`` (default: the model's stored one),
        computed in the same compiled pass as the probability.
        """
        results: list[Prediction | None] = []
        good: list[tuple[int, str, DecodedImage, str]] = []
        held = 0  # bytes of full-resolution arrays waiting for the model pass

        def flush() -> None:  # model + guard on what is decoded, then drop the full arrays
            if good:
                guarded = self._guarded([g[2] for g in good], with_gradcam=with_gradcam, method=method)
                for (i, name, _, digest), (decoded, res, g) in zip(good, guarded):
                    results[i] = self._finish(name, decoded, res, digest, g)
                good.clear()

        for name, data in items:
            digest = hashlib.sha256(data or b"").hexdigest()
            try:
                # every file is untrusted: decoded in a resource-limited worker process
                # (core.decode_pool), which returns a working copy of at most WORK_MAX_SIDE px
                decoded = decode_untrusted(data, filename=name)
            except ImageError as e:
                results.append(self._error(name, e, digest))
                continue
            if invert:
                decoded = _inverted(decoded, "requested")
            if rotate180:
                decoded = _rotated180(decoded)
            good.append((len(results), name, decoded, digest))
            results.append(None)
            held += decoded.array.nbytes
            if held >= BATCH_DECODED_BYTES:
                flush()
                held = 0
            decoded = data = None  # don't keep the last full array alive while the next one decodes
        flush()
        return [r for r in results if r is not None]

    def predict_paths(self, paths: Iterable[str | Path], with_gradcam: bool = False, invert: bool = False,
                      rotate180: bool = False, method: str | None = None) -> list[Prediction]:
        """Files -> one Prediction each, in order. Regular files only, each read with a bound
        (``core.imageio.read_file``): a device, a named pipe or a folder is refused without being
        read (``not_a_file``). Files are read one at a time as the batch goes (bounded memory)."""
        paths = [Path(p) for p in paths]
        errors: dict[int, Prediction] = {}
        read_ok: list[int] = []

        def items():
            for i, p in enumerate(paths):
                try:
                    data = read_file(p)
                except ImageError as e:
                    code = "unreadable" if e.code == "not_found" else e.code  # the code predict_paths always used
                    msg = e.message if code != "unreadable" else f"Cannot read the file: {e.message}"
                    errors[i] = self._error(p.name, ImageError(code, msg), None)
                    continue
                read_ok.append(i)
                yield p.name, data

        preds = self.predict_bytes(items(), with_gradcam=with_gradcam, invert=invert, rotate180=rotate180, method=method)
        by_index = {**errors, **dict(zip(read_ok, preds))}
        return [by_index[i] for i in range(len(paths))]

    def _error(self, name: str, e: ImageError, digest: str | None) -> Prediction:
        return _rejected_error(Prediction(filename=name, ok=False, error_code=e.code, error=e.message, sha256=digest, model_version=self.version))


def display_copy(array: np.ndarray, max_side: int = DISPLAY_MAX_SIDE) -> np.ndarray:
    """``array`` area-reduced so that its longer side is at most ``max_side`` (small ones as they are)."""
    return shrink_to(array, max_side)


def _rejected_error(p: Prediction) -> Prediction:
    """A file that could not be read/decoded is rejected by the guard with the same code."""
    p.guard_status, p.guard_code, p.guard_message = "rejected", p.error_code, p.error
    return p


def _inverted(decoded: DecodedImage, how: str) -> DecodedImage:
    """The photometric inverse of a decoded image (info records that it was inverted)."""
    from core.guard import invert

    info = {**decoded.info, "inverted_for_analysis": how}
    rgb = None if decoded.original_rgb is None else invert(decoded.original_rgb)
    return DecodedImage(array=invert(decoded.array), info=info, original_rgb=rgb)


def _rotated180(decoded: DecodedImage) -> DecodedImage:
    """The decoded image turned by 180 degrees (info records it)."""
    info = {**decoded.info, "rotated_for_analysis": "180 degrees (requested)"}
    rgb = None if decoded.original_rgb is None else np.ascontiguousarray(np.rot90(decoded.original_rgb, 2))
    return DecodedImage(array=np.ascontiguousarray(np.rot90(decoded.array, 2)), info=info, original_rgb=rgb)
