"""Append-only audit trail (JSON lines) that is safe under concurrent writers.

Every prediction, retrain, promotion, rollback and deletion appends one line::

    {"time": "...Z", "action": "predict", "model_version": "...", "threshold": 0.42,
     "outcome": "PNEUMONIA", "image_sha256": "...", ...}

Never the image, never patient data: predictions carry a SHA-256 of the uploaded bytes.
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
# Keys that must never be written, whatever a caller passes.
_FORBIDDEN = {"image", "pixels", "patient_name", "patient_id", "PatientName", "PatientID", "PatientBirthDate"}


def default_audit_path() -> Path:
    return Path(os.environ.get("PNEUMOSCOPE_AUDIT_LOG") or default_artifacts_dir() / "audit" / "audit.jsonl")


def append(action: str, *, path: str | Path | None = None, **fields: Any) -> dict:
    """Append one event. Returns the record written. Never raises on I/O (logs instead):
    an audit failure must not take a prediction away from a clinician."""
    if action not in ACTIONS:
        raise ValueError(f"action must be one of {ACTIONS}. Received: action={action!r}")
    record = {"time": _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="milliseconds").replace("+00:00", "Z"), "action": action}
    record.update({k: v for k, v in fields.items() if k not in _FORBIDDEN})
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
