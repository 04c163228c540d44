"""Append-only audit trail, in the shared database (stream ``audit``).

Every prediction, retrain, promotion, rollback and deletion appends one event::

    {"time": "...Z", "action": "predict", "model_version": "...", "threshold": 0.42,
     "outcome": "PNEUMONIA", "image_sha256": "...", ...}

Never the image, never patient data: predictions carry a SHA-256 of the uploaded bytes.

Who writes what: the app and ``python -m core predict`` write one ``predict`` event per image
through :func:`prediction` (``source`` = ``upload``/``sample``/... or ``cli``); training writes
``retrain`` events (started, then the result) through :func:`training`, from the admin page's
jobs and from ``python -m core train`` (``source="cli"``); promote / rollback / delete go
through :mod:`core.admin` for the app, the CLI and Python callers alike. Python code that calls
``core.predict.Predictor`` directly audits by calling :func:`prediction` itself (benchmarks
do not: they measure the model, not a clinical use).
Fields are **allow-listed** (:data:`ALLOWED_FIELDS`): anything else a caller passes --
``PatientName``, ``patientname``, ``Patient Name``, ``image``... -- is dropped (and the drop is
logged), whatever its spelling, so no new caller can leak an identifier by accident.

Where: every function takes ``artifacts=`` -- an artifacts root (None: the default root,
``$PNEUMOSCOPE_ARTIFACTS`` or ./artifacts) or a ``core.db.Database`` -- and writes to that root's
database (``core.db``: ``$PNEUMOSCOPE_DATABASE_URL``, else ``<artifacts>/pneumoscope.db``), so
every app instance sharing the database writes one trail. Events are rows of the append-only
``event_log`` table (the database refuses UPDATE and DELETE on it); each append is one committed
transaction, so events from several processes or hosts never interleave or tear.

Before the database the trail was the JSON-lines file ``<artifacts>/audit/audit.jsonl``. It is
imported into the ``audit`` stream once, at the first use of an artifacts root (idempotent by
its relative path, across instances; a torn or damaged line is skipped and counted in a log
line), and left in place: **it is no longer written**. (``$PNEUMOSCOPE_AUDIT_LOG``, which named
another file, is gone: the database is the one trail.) With a ``Database`` given instead of a
root, no import is attempted (the database alone does not say which folder held the file).
"""

from __future__ import annotations

import logging
import os
from typing import TYPE_CHECKING, Any, Iterable

from core.formatting import utc_now_iso

if TYPE_CHECKING:
    from core.db import Database

log = logging.getLogger(__name__)

STREAM = "audit"
LEGACY_FILE = "audit/audit.jsonl"  # relative to the artifacts root (core.layout.Layout.audit_log)

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


def database(artifacts: "Database | str | os.PathLike | None" = None) -> "Database":
    """The database of ``artifacts`` (a root, None for the default root, or a ``Database``), after
    importing that root's old ``audit/audit.jsonl`` once. Raises ``core.db.DatabaseError``."""
    from core import db as dbm

    if isinstance(artifacts, dbm.Database):
        return artifacts
    from core.layout import Layout

    root = Layout.of(artifacts).root
    d = dbm.connect(root)
    dbm.import_jsonl_once(d, root, LEGACY_FILE, STREAM)
    return d


def append(action: str, *, artifacts: "Database | str | os.PathLike | None" = None, **fields: Any) -> dict:
    """Append one event to the trail of ``artifacts``. Returns the record. Never raises on I/O or
    a database failure (logs instead): an audit failure must not take a prediction away from a
    clinician."""
    if action not in ACTIONS:
        raise ValueError(f"action must be one of {ACTIONS}. Received: action={action!r}")
    record = {"time": utc_now_iso("milliseconds", zulu=True), "action": action}
    dropped = [k for k in fields if k not in ALLOWED_FIELDS]
    if dropped:  # the names only, never the values (they may be the identifiers themselves)
        log.warning("Audit %s: dropped fields that are not allow-listed: %s", action, ", ".join(map(repr, dropped)))
    record.update({k: v for k, v in fields.items() if k in ALLOWED_FIELDS})
    try:
        database(artifacts).append(STREAM, record)
    except Exception as e:  # noqa: BLE001 - DatabaseError, SQLAlchemy, OSError...: logged, never raised
        log.error("Could not write the %s audit event to the database: %s", action, e)
    return record


def read(artifacts: "Database | str | os.PathLike | None" = None, actions: Iterable[str] | None = None) -> list[dict]:
    """All events of the trail of ``artifacts`` (oldest first), optionally only some actions.
    Raises ``core.db.DatabaseError`` when the database cannot be read (the page shows it)."""
    wanted = set(actions) if actions else None
    return [rec for _, rec in database(artifacts).events(STREAM) if wanted is None or rec.get("action") in wanted]


def prediction(pred: Any, source: str, *, model_version: str | None = None, threshold: float | None = None,
               artifacts: "Database | str | os.PathLike | None" = None, **fields: Any) -> dict:
    """The one ``predict`` event for a ``core.predict.Prediction`` (app and CLI alike): SHA-256 of
    the bytes (never the image), model version, threshold, outcome (label, or the error code of
    an unreadable file), guard code and ``source``. ``model_version`` / ``threshold`` fill in
    what the prediction lacks (an unreadable file has no threshold)."""
    return append(
        "predict", artifacts=artifacts,
        model_version=getattr(pred, "model_version", None) or model_version,
        threshold=pred.threshold if getattr(pred, "threshold", None) is not None else threshold,
        outcome=pred.label if pred.ok else pred.error_code,
        image_sha256=pred.sha256,
        guard=pred.guard_code,
        source=source,
        **fields,  # allow-listed like every field (PACS: hashed study/series UIDs)
    )


def training(outcome: str, *, source: str, artifacts: "Database | str | os.PathLike | None" = None,
             config: Any = None, **fields: Any) -> dict:
    """One ``retrain`` event (admin-page jobs and ``python -m core train``): ``outcome`` is
    ``started`` (pass ``config`` for the recipe facts), then ``succeeded`` / ``failed`` /
    ``cancelled`` with ``version`` or ``error``."""
    if config is not None:
        fields = {"input_size": config.input_size, "weights_source": config.weights_source,
                  "head_epochs": config.head_epochs, "finetune_epochs": config.finetune_epochs, **fields}
    return append("retrain", artifacts=artifacts, outcome=outcome, source=source, **fields)
