"""Append-only audit trail (JSON lines) that is safe under concurrent writers.

Every prediction, retrain, promotion, rollback and deletion appends one line::

    {"time": "...Z", "action": "predict", "model_version": "...", "threshold": 0.42,
     "outcome": "PNEUMONIA", "image_sha256": "...", ...}

Never the image, never patient data: predictions carry a SHA-256 of the uploaded bytes.

Who writes what: the app and ``python -m core predict`` write one ``predict`` line per image
through :func:`prediction` (``source`` = ``upload``/``sample``/... or ``cli``); training writes
``retrain`` lines (started, then the result) through :func:`training`, from the admin page's
jobs and from ``python -m core train`` (``source="cli"``); promote / rollback / delete go
through :mod:`core.admin` for the app, the CLI and Python callers alike. Python code that calls
``core.predict.Predictor`` directly audits by calling :func:`prediction` itself (benchmarks
do not: they measure the model, not a clinical use).
Fields are **allow-listed** (:data:`ALLOWED_FIELDS`): anything else a caller passes --
``PatientName``, ``patientname``, ``Patient Name``, ``image``... -- is dropped (and the drop is
logged), whatever its spelling, so no new caller can leak an identifier by accident.
Each line is appended by ``core.jsonl.append`` (one ``os.write`` on an ``O_APPEND`` descriptor,
then ``fsync``; a line torn by a crash is never glued to the next one) while holding the file
lock ``<log>.lock`` (``core.locks.file_lock``), so lines from several processes never
interleave; :func:`read` skips a torn or damaged line (``core.jsonl.read``).
"""

from __future__ import annotations

import logging
import os
from pathlib import Path
from typing import Any, Iterable

from core import jsonl, locks
from core.formatting import utc_now_iso

log = logging.getLogger(__name__)

ACTIONS = ("predict", "retrain", "promote", "rollback", "delete", "login", "cancel", "feedback", "reader_study")
# The only fields an event may carry besides "time" and "action" (technical facts, no identifiers).
ALLOWED_FIELDS = frozenset({
    # predictions
    "model_version", "threshold", "outcome", "image_sha256", "guard", "source", "fix",
    # training jobs and registry administration
    "job_id", "requested_by", "version", "previous", "error", "input_size", "weights_source",
    "head_epochs", "finetune_epochs", "data_root", "wall_time_s",
    # admin login (client is a salted hash of the session / address, never the raw value)
    "page", "client", "delay_s",
    # reader studies (core.reader_study): ids and counts, never a film name or a reader's name
    "study_id", "n_cases", "seed",
    # clinician feedback (core.feedback): never the comment or the review reason (free text)
    "feedback_id", "agree", "believed_label", "pixels_stored", "reader_id", "feedback_images",
    # PACS (core.pacs): UIDs as SHA-256, like image bytes; never a patient identifier
    "study_uid_sha256", "series_uid_sha256",
})

# Fields holding a probability (a fraction here): exports and tables show them in percent.
PERCENT_FIELDS = ("threshold",)


def _norm(key: str) -> str:
    """``Patient Name`` / ``patient_name`` / ``PatientName`` -> ``patientname``."""
    return "".join(ch for ch in str(key).casefold() if ch.isalnum())


_ALLOWED_NORM = {_norm(k): k for k in ALLOWED_FIELDS}


def default_audit_path(artifacts: str | os.PathLike | None = None) -> Path:
    """``$PNEUMOSCOPE_AUDIT_LOG``, else ``<artifacts>/audit/audit.jsonl`` (default registry root:
    ``$PNEUMOSCOPE_ARTIFACTS`` or ./artifacts): each registry keeps its own trail."""
    from core.layout import Layout

    return Path(os.environ.get("PNEUMOSCOPE_AUDIT_LOG") or Layout.of(artifacts).audit_log)


def append(action: str, *, path: str | Path | None = None, **fields: Any) -> dict:
    """Append one event. Returns the record written. Never raises on I/O (logs instead):
    an audit failure must not take a prediction away from a clinician."""
    if action not in ACTIONS:
        raise ValueError(f"action must be one of {ACTIONS}. Received: action={action!r}")
    record = {"time": utc_now_iso("milliseconds", zulu=True), "action": action}
    dropped = [k for k in fields if k not in ALLOWED_FIELDS]
    if dropped:  # the names only, never the values (they may be the identifiers themselves)
        log.warning("Audit %s: dropped fields that are not allow-listed: %s", action, ", ".join(map(repr, dropped)))
    record.update({k: v for k, v in fields.items() if k in ALLOWED_FIELDS})
    p = Path(path) if path else default_audit_path()
    try:
        p.parent.mkdir(parents=True, exist_ok=True)
        with locks.file_lock(p.with_name(p.name + ".lock"), mode=0o640):
            jsonl.append(p, record, mode=0o640)
    except (OSError, ValueError) as e:  # ValueError: a record over jsonl.MAX_LINE_BYTES
        log.error("Could not write the audit log %s: %s", p, e)
    return record


def read(path: str | Path | None = None, actions: Iterable[str] | None = None) -> list[dict]:
    """All events (oldest first), optionally filtered by action. Skips damaged lines."""
    p = Path(path) if path else default_audit_path()
    wanted = set(actions) if actions else None
    # $PNEUMOSCOPE_AUDIT_LOG may name a symlink the operator set up: followed, as appends follow it.
    return [rec for rec in jsonl.read_all(p, follow_symlinks=True) if wanted is None or rec.get("action") in wanted]


def prediction(pred: Any, source: str, *, model_version: str | None = None, threshold: float | None = None,
               path: str | Path | None = None, **fields: Any) -> dict:
    """The one ``predict`` line for a ``core.predict.Prediction`` (app and CLI alike): SHA-256 of
    the bytes (never the image), model version, threshold, outcome (label, or the error code of
    an unreadable file), guard code and ``source``. ``model_version`` / ``threshold`` fill in
    what the prediction lacks (an unreadable file has no threshold)."""
    return append(
        "predict", path=path,
        model_version=getattr(pred, "model_version", None) or model_version,
        threshold=pred.threshold if getattr(pred, "threshold", None) is not None else threshold,
        outcome=pred.label if pred.ok else pred.error_code,
        image_sha256=pred.sha256,
        guard=pred.guard_code,
        source=source,
        **fields,  # allow-listed like every field (PACS: hashed study/series UIDs)
    )


def training(outcome: str, *, source: str, path: str | Path | None = None, config: Any = None,
             **fields: Any) -> dict:
    """One ``retrain`` line (admin-page jobs and ``python -m core train``): ``outcome`` is
    ``started`` (pass ``config`` for the recipe facts), then ``succeeded`` / ``failed`` /
    ``cancelled`` with ``version`` or ``error``."""
    if config is not None:
        fields = {"input_size": config.input_size, "weights_source": config.weights_source,
                  "head_epochs": config.head_epochs, "finetune_epochs": config.finetune_epochs, **fields}
    return append("retrain", path=path, outcome=outcome, source=source, **fields)
