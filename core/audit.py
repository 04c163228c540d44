"""Append-only audit trail (JSON lines) that is safe under concurrent writers.

Every prediction, retrain, promotion, rollback and deletion appends one line::

    {"time": "...Z", "action": "predict", "model_version": "...", "threshold": 0.42,
     "outcome": "PNEUMONIA", "image_sha256": "...", ...}

Never the image, never patient data: predictions carry a SHA-256 of the uploaded bytes.
Fields are **allow-listed** (:data:`ALLOWED_FIELDS`): anything else a caller passes --
``PatientName``, ``patientname``, ``Patient Name``, ``image``... -- is dropped (and the drop is
logged), whatever its spelling, so no new caller can leak an identifier by accident.
Each line is written with a single ``os.write`` on an ``O_APPEND`` descriptor under an
exclusive ``flock``, so lines from several processes never interleave.
"""

from __future__ import annotations

import datetime as _dt
import fcntl
import json
import logging
import os
from pathlib import Path
from typing import Any, Iterable

from core.config import default_artifacts_dir

log = logging.getLogger(__name__)

ACTIONS = ("predict", "retrain", "promote", "rollback", "delete", "login", "cancel")
# The only fields an event may carry besides "time" and "action" (technical facts, no identifiers).
ALLOWED_FIELDS = frozenset({
    # predictions
    "model_version", "threshold", "outcome", "image_sha256", "guard", "source", "fix",
    # training jobs and registry administration
    "job_id", "requested_by", "version", "previous", "error", "input_size", "weights_source",
    "head_epochs", "finetune_epochs", "data_root", "wall_time_s",
    # admin login (client is a salted hash of the session / address, never the raw value)
    "page", "client", "delay_s",
})


def _norm(key: str) -> str:
    """``Patient Name`` / ``patient_name`` / ``PatientName`` -> ``patientname``."""
    return "".join(ch for ch in str(key).casefold() if ch.isalnum())


_ALLOWED_NORM = {_norm(k): k for k in ALLOWED_FIELDS}


def default_audit_path() -> Path:
    return Path(os.environ.get("PNEUMOSCOPE_AUDIT_LOG") or default_artifacts_dir() / "audit" / "audit.jsonl")


def append(action: str, *, path: str | Path | None = None, **fields: Any) -> dict:
    """Append one event. Returns the record written. Never raises on I/O (logs instead):
    an audit failure must not take a prediction away from a clinician."""
    if action not in ACTIONS:
        raise ValueError(f"action must be one of {ACTIONS}. Received: action={action!r}")
    record = {"time": _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="milliseconds").replace("+00:00", "Z"), "action": action}
    dropped = [k for k in fields if k not in ALLOWED_FIELDS]
    if dropped:  # the names only, never the values (they may be the identifiers themselves)
        log.warning("Audit %s: dropped fields that are not allow-listed: %s", action, ", ".join(map(repr, dropped)))
    record.update({k: v for k, v in fields.items() if k in ALLOWED_FIELDS})
    line = (json.dumps(record, default=str, separators=(",", ":")) + "\n").encode()
    p = Path(path) if path else default_audit_path()
    try:
        p.parent.mkdir(parents=True, exist_ok=True)
        fd = os.open(str(p), os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o640)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX)
            try:
                os.write(fd, line)
            finally:
                fcntl.flock(fd, fcntl.LOCK_UN)
        finally:
            os.close(fd)
    except OSError as e:
        log.error("Could not write the audit log %s: %s", p, e)
    return record


def read(path: str | Path | None = None, actions: Iterable[str] | None = None) -> list[dict]:
    """All events (oldest first), optionally filtered by action. Skips damaged lines."""
    p = Path(path) if path else default_audit_path()
    if not p.is_file():
        return []
    wanted = set(actions) if actions else None
    out = []
    with open(p, "rb") as fh:
        for raw in fh:
            try:
                rec = json.loads(raw)
            except (json.JSONDecodeError, UnicodeDecodeError):
                continue
            if wanted is None or rec.get("action") in wanted:
                out.append(rec)
    return out
