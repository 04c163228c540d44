"""Serving: bytes/paths/arrays in, calibrated predictions (+ optional explanation map) out.

One code path for the app, the CLI batch predict, PACS and tests; every entry point returns
frozen ``Prediction``s (a different map is a new Prediction: ``Predictor.explain_prediction``).
Bad inputs become a ``Prediction`` with ``ok=False`` and a human message; the other inputs
still run. Probabilities are calibrated from the model's logit (``core.model.logit_view``).
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


@dataclasses.dataclass(frozen=True)
class Prediction:
    """One image's result; frozen (``dataclasses.replace`` makes a changed copy)."""

    filename: str
    ok: bool
    label: str | None = None  # "NORMAL" | "PNEUMONIA" | "INDETERMINATE" | "REJECTED"
    probability: float | None = None  # calibrated P(PNEUMONIA) = sigmoid(logit / T)
    raw_probability: float | None = None  # model output before temperature scaling
    logit: float | None = None  # the model's score before its sigmoid
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
        # One compiled pass per request (core.explain.Explainer): logit, raw probability, pooled
        # base features for the OOD score and, when asked for, the explanation map. No eager
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

    def map_grid(self, method: str | None = None, layer: str | None = None) -> int | None:
        """Cells per side of ``method``'s map at ``layer`` (defaults as :meth:`map_spec`): how
        coarse it is. None for occlusion, which masks patches (1/8 of the side) instead."""
        method, layer = self.map_spec(method, layer)
        return None if method == "occlusion" else self.explainer.grid(layer)

    @classmethod
    def from_registry(cls, registry=None, version: str | None = None, **kwargs) -> "Predictor":
        from core.registry import Registry

        return cls((registry or Registry()).load(version), **kwargs)

    # --- arrays ------------------------------------------------------------------------------
    def predict_arrays(self, images: Sequence[np.ndarray], with_map: bool = False, method: str | None = None,
                       layer: str | None = None, batch_size: int = 32,
                       names: Sequence[str] | None = None) -> list[Prediction]:
        """Canonical RGB arrays (any size) -> one Prediction each (no input guard: that needs the
        decoded file, see :meth:`predict_bytes`), named ``names[i]`` (default "").

        With ``with_map`` the map is the model's stored default (``config.explain_method`` /
        ``explain_layer``) unless ``method``/``layer`` say otherwise; it comes out of the same
        compiled pass as the probability.
        """
        m, lyr = self.map_spec(method, layer) if with_map else (None, None)
        out: list[Prediction] = []
        for start in range(0, len(images), batch_size):
            chunk = [np.asarray(im) for im in images[start : start + batch_size]]
            batch = np.stack([resize_for_model(im, self.size) for im in chunk])  # (n, s, s, 3) uint8
            r = self.explainer.run(batch, m, lyr) if with_map else self.explainer.forward(batch)
            cal = self.op.calibrate_logits(r["logit"])
            scores = self.ood.score(r["pooled"]) if self.ood is not None else [None] * len(chunk)
            heat = r["map"] if with_map else [None] * len(chunk)
            for i, im in enumerate(chunk):
                out.append(Prediction(
                    filename="" if names is None else names[start + i], ok=True,
                    label=self.op.decide(float(cal[i])), probability=float(cal[i]),
                    raw_probability=float(r["prob"][i]), logit=float(r["logit"][i]),
                    threshold=self.op.threshold, band=(self.op.band_low, self.op.band_high),
                    model_version=self.version,
                    ood_score=None if scores[i] is None else float(scores[i]),
                    ood_threshold=None if self.ood is None else self.ood.threshold,
                    ood_reject_threshold=None if self.ood is None else self.ood.reject_threshold,
                    image=display_copy(im), model_input=batch[i], heatmap=heat[i],
                    heatmap_method=m if with_map else None, heatmap_layer=lyr if with_map else None,
                ))
        return out

    def explain(self, model_input: np.ndarray, method: str | None = None, layer: str | None = None,
                target_class: int = 1) -> tuple[np.ndarray, str, str | None]:
        """The map of one (s, s, 3) model input -> (map (s, s) in [0, 1], method, layer)."""
        m, lyr = self.map_spec(method, layer)
        x = np.asarray(model_input)[None]
        return self.explainer.explain(x, m, lyr, target_class)[0], m, lyr

    def explain_prediction(self, pred: Prediction, method: str | None = None, layer: str | None = None) -> Prediction:
        """``pred`` with the map of ``method`` at ``layer`` (default: the model's stored one) of the
        exact image the model saw (``pred.model_input``; else ``pred.image`` resized to it).

        ``pred`` itself when it already holds that map, or has no image (an unreadable file).
        ValueError for an unknown method or layer (allowed values in the message).
        """
        m, lyr = self.map_spec(method, layer)
        if (pred.heatmap is not None and (pred.heatmap_method, pred.heatmap_layer) == (m, lyr)) or (
                pred.model_input is None and pred.image is None):
            return pred
        x = pred.model_input if pred.model_input is not None else resize_for_model(np.asarray(pred.image), self.size)
        heat, m, lyr = self.explain(x, m, lyr)
        return dataclasses.replace(pred, model_input=x, heatmap=heat, heatmap_method=m, heatmap_layer=lyr)

    # --- input guard -------------------------------------------------------------------------
    def _assess(self, decoded: DecodedImage, res: Prediction, inverted_score: float | None = None):
        from core import guard

        kw = {"settings": self.guard_settings} if self.guard_settings is not None else {}
        return guard.assess(
            decoded.array, decoded.original_rgb, ood_score=res.ood_score,
            ood_threshold=None if self.ood is None else self.ood.threshold,
            ood_percentile=None if self.ood is None else self.ood.percentile,
            ood_reject_threshold=None if self.ood is None else self.ood.reject_threshold,
            inverted_ood_score=inverted_score, min_side=self.size, **kw,
        )

    def _guarded(self, decoded: list[DecodedImage], with_map: bool,
                 method: str | None = None) -> list[tuple[DecodedImage, Prediction, object]]:
        """Model pass + guard for each decoded image -> (decoded as analysed, result, GuardResult).

        Suspected negatives get one extra forward pass on their inverse: its OOD score
        confirms the suspicion (and, with ``auto_invert``, the inverse is what is analysed).
        """
        from core import guard

        preds = self.predict_arrays([d.array for d in decoded], with_map=with_map, method=method)
        out = [(d, res, self._assess(d, res)) for d, res in zip(decoded, preds)]
        suspects = [i for i, (_, _, g) in enumerate(out) if g.code == "inverted"]
        if not suspects or self.ood is None:
            return out
        flipped = [_inverted(out[i][0], "auto") for i in suspects]
        inv_preds = self.predict_arrays([d.array for d in flipped], with_map=with_map and self.auto_invert, method=method)
        for i, d_inv, r_inv in zip(suspects, flipped, inv_preds):
            d, res, _ = out[i]
            g = self._assess(d, res, inverted_score=r_inv.ood_score)
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
    def _finish(self, name: str, decoded: DecodedImage, res: Prediction, digest: str, g) -> Prediction:
        """The model's result for ``decoded`` (``res``, from :meth:`predict_arrays`) with the file's
        name, hash and facts and the guard's verdict on it."""
        from core import guard

        # facts of the file: DICOM Modality, NaN/inf pixels (core.guard)
        g = guard.with_input_checks(g, decoded.info, self.guard_settings or guard.DEFAULT_SETTINGS)
        return dataclasses.replace(
            res, filename=name, sha256=digest, label="REJECTED" if g.status == "rejected" else res.label,
            guard_status=g.status, guard_code=g.code, guard_message=g.message,
            info={**decoded.info, "guard": g.to_dict()},
        )

    def predict_bytes(self, items: Iterable[tuple[str, bytes]], with_map: bool = False, invert: bool = False,
                      rotate180: bool = False, method: str | None = None) -> list[Prediction]:
        """(filename, bytes) pairs -> one Prediction each, in order; errors don't stop the rest.

        ``invert=True`` inverts every image (255 - x) before the guard and the model: the
        fix the guard suggests for a negative (``guard_code == "inverted"``). ``rotate180=True``
        turns every image by 180 degrees first: the fix for ``guard_code == "upside_down"``.
        ``with_map``: each Prediction carries the map of ``method`` (default: the model's stored
        one), computed in the same compiled pass as the probability.
        """
        results: list[Prediction | None] = []
        good: list[tuple[int, str, DecodedImage, str]] = []
        held = 0  # bytes of full-resolution arrays waiting for the model pass

        def flush() -> None:  # model + guard on what is decoded, then drop the full arrays
            if good:
                guarded = self._guarded([g[2] for g in good], with_map=with_map, method=method)
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

    def predict_paths(self, paths: Iterable[str | Path], with_map: bool = False, invert: bool = False,
                      rotate180: bool = False, method: str | None = None) -> list[Prediction]:
        """Files -> one Prediction each, in order. Regular files only, each read with a bound
        (``core.imageio.read_file``): a device, a named pipe or a folder is refused without being
        read (``not_a_file``), a missing file is ``not_found``. Files are read one at a time as
        the batch goes (bounded memory)."""
        paths = [Path(p) for p in paths]
        errors: dict[int, Prediction] = {}
        read_ok: list[int] = []

        def items():
            for i, p in enumerate(paths):
                try:
                    data = read_file(p)
                except ImageError as e:
                    errors[i] = self._error(p.name, e, None)
                    continue
                read_ok.append(i)
                yield p.name, data

        preds = self.predict_bytes(items(), with_map=with_map, invert=invert, rotate180=rotate180, method=method)
        by_index = {**errors, **dict(zip(read_ok, preds))}
        return [by_index[i] for i in range(len(paths))]

    def _error(self, name: str, e: ImageError, digest: str | None) -> Prediction:
        """An unreadable/undecodable file: no result, rejected by the guard with the same code."""
        return Prediction(filename=name, ok=False, error_code=e.code, error=e.message, sha256=digest,
                          model_version=self.version, guard_status="rejected", guard_code=e.code,
                          guard_message=e.message)


def display_copy(array: np.ndarray, max_side: int = DISPLAY_MAX_SIDE) -> np.ndarray:
    """``array`` area-reduced so that its longer side is at most ``max_side`` (small ones as they are)."""
    return shrink_to(array, max_side)


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
