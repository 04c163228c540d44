"""Publishing a training result into the model registry: the model card and the version folder.

:func:`publish` writes every file of a version through ``Registry.publish`` (staging folder +
atomic rename, ``core.registry``), so a crash or a cancelled job never leaves a half-written
version. Callers (``core.runner``, benchmarks, tests) import it from here; ``core.training`` does not
import this module (training produces a ``TrainResult``, publishing is the runner's step).
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import TYPE_CHECKING

from core.formatting import utc_now_iso

if TYPE_CHECKING:
    from core.training import TrainResult

__all__ = ["make_card", "publish"]


def make_card(result: TrainResult, version: str, created: str) -> dict:
    test = result.metrics.get("test", {})
    op = result.operating_point
    return {
        "version": version,
        "created": created,
        "labels": list(result.config.class_names),
        "input_size": result.config.input_size,
        "backbone": result.config.backbone,
        "weights_source": result.config.weights_source,
        # the heatmap shown by default (docs/explanations.md); travels with the weights
        "explanation": {"method": result.config.explain_method, "layer": result.config.explain_layer},
        "threshold": op.threshold,
        "indeterminate_band": [op.band_low, op.band_high],
        "temperature": op.temperature,
        "val_roc_auc": result.metrics.get("validation", {}).get("roc_auc"),
        "test": {k: test.get(k) for k in ("accuracy", "roc_auc", "pr_auc", "sensitivity", "specificity", "n")} if test else {},
        "counts": result.provenance.get("counts", {}),
        "wall_time_s": result.provenance.get("wall_time_s"),
        "feedback_images": (result.provenance.get("feedback") or {}).get("images", 0),
    }


def publish(result: TrainResult, registry, name: str | None = None, activate: bool = False, *,
            source: str = "api") -> str:
    """Write a TrainResult into the registry atomically; returns the version name. ``activate``:
    then make it active, recorded in the activation history with ``source`` (cli, job, ...)."""
    from core.model import save_model

    created = utc_now_iso()
    version = name or registry.new_version_name()
    result.provenance["version"] = version
    result.provenance["created"] = created

    def writer(d: Path) -> None:
        save_model(result.model, d / "model.keras", result.config)
        result.config.save(d / "config.json")
        result.operating_point.save(d / "operating_point.json")
        (d / "history.json").write_text(json.dumps(result.history, indent=2))
        (d / "metrics.json").write_text(json.dumps(result.metrics, indent=1))
        (d / "provenance.json").write_text(json.dumps(result.provenance, indent=2))
        (d / "card.json").write_text(json.dumps(make_card(result, version, created), indent=2))
        if result.ood is not None:
            result.ood.save(d)

    return registry.publish(writer, version, activate=activate, source=source)
