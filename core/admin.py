"""Registry administration: promote (activate), roll back, delete, and the activation history.

This is the one path for changing which version is active or removing one, whoever asks:
the admin page (``source="app"``), ``python -m core models activate|delete`` and
``train --activate`` (``source="cli"``), and Python code (``source`` passed in, default
``"api"``). Each call

* changes the registry (:class:`core.registry.Registry`),
* records every activation in ``<artifacts>/jobs/active_history.json`` (oldest first; what
  "roll back" goes back to, so a CLI activation can be rolled back from the app and the other
  way round), and
* appends one audit line (:mod:`core.audit`), failed attempts included.

The history file and the registry change are updated under one lock
(``active_history.json.lock``), so two administrators acting at once cannot record a wrong
"previous" version. ``Registry.set_active`` / ``Registry.delete`` stay the low-level
primitives; do not call them directly for an administrative action.
"""

from __future__ import annotations

import contextlib
import logging
import os
from pathlib import Path
from typing import Iterator

from core import audit, locks
from core.formatting import utc_now_iso
from core.fsutil import read_json_file, write_json_atomic
from core.registry import Registry, RegistryError

log = logging.getLogger(__name__)

HISTORY_KEEP = 200  # activations kept in the history file
LOCK_TIMEOUT_S = 30.0

__all__ = ["complete_pending_activation", "delete_version", "history_path", "promote", "read_active_history",
           "record_activation", "rollback", "rollback_target"]


def history_path(registry: Registry) -> Path:
    return registry.root / "jobs" / "active_history.json"


def _audit_path(registry: Registry, audit_path: str | os.PathLike | None) -> Path:
    return Path(audit_path) if audit_path is not None else audit.default_audit_path(registry.root)


@contextlib.contextmanager
def _locked(registry: Registry) -> Iterator[None]:
    p = history_path(registry)
    try:
        with locks.file_lock(p.with_name(p.name + ".lock"), timeout=LOCK_TIMEOUT_S):
            yield
    except locks.Timeout:
        raise RegistryError("Another registry change is in progress; try again in a moment.") from None


def read_active_history(registry: Registry) -> list[dict]:
    """Every activation recorded (promote / rollback / train --activate / completed interrupted
    activation), oldest first: ``{"time", "action", "version", "previous", "source"}``."""
    p = history_path(registry)
    try:  # a bounded regular file: a FIFO there does not hang, a link to /dev/zero is not followed
        h = read_json_file(p, expect=list)
    except FileNotFoundError:
        return []
    except (OSError, ValueError) as e:  # UnsafeFileError is an OSError
        log.warning("Ignoring the activation history %s: %s", p, e)
        return []
    return [e for e in h if isinstance(e, dict)]


def _append_history(registry: Registry, action: str, version: str, previous: str | None, source: str) -> None:
    hist = read_active_history(registry)
    hist.append({"time": utc_now_iso(), "action": action,
                 "version": version, "previous": previous, "source": source})
    write_json_atomic(history_path(registry), hist[-HISTORY_KEEP:])


def rollback_target(registry: Registry) -> str | None:
    """The version that was active before the current one (per the activation history),
    if it still exists; None when there is nothing to go back to."""
    current = registry.active_version()
    if current is None:
        return None
    for entry in reversed(read_active_history(registry)):
        if entry.get("version") == current:
            prev = entry.get("previous")
            if not isinstance(prev, str) or prev == current:
                return None
            try:
                usable = registry.is_complete(prev) and not registry.check_version(prev)
            except ValueError:  # not a version name at all
                return None
            return prev if usable else None
    return None


def _activate(registry: Registry, action: str, choose, *, source: str, audit_path, failed_version: str | None = None):
    """Under the registry lock: ``choose(current)`` names the target (or raises), ACTIVE moves to
    it and the history records it; one audit line either way. Returns (target, previous)."""
    log_path = _audit_path(registry, audit_path)
    current = None
    try:
        with _locked(registry):
            current = registry.active_version()
            target = choose(current)
            registry.set_active(target)
            _append_history(registry, action, target, current, source)
    except (RegistryError, ValueError) as e:
        audit.append(action, path=log_path, outcome="failed", model_version=failed_version or current,
                     error=str(e), source=source)
        raise
    audit.append(action, path=log_path, outcome="ok", model_version=target, previous=current, source=source)
    return target, current


def promote(registry: Registry, name: str, *, source: str = "api",
            audit_path: str | os.PathLike | None = None) -> str | None:
    """Make ``name`` the active version; returns the previously active one (or None).
    Raises RegistryError / ValueError (audited as ``outcome="failed"``)."""
    def choose(current):
        if name == current:
            raise RegistryError(f"{name!r} is already the active version.")
        return name

    return _activate(registry, "promote", choose, source=source, audit_path=audit_path, failed_version=name)[1]


def rollback(registry: Registry, *, source: str = "api", audit_path: str | os.PathLike | None = None) -> str:
    """Re-activate the previously active version; returns its name."""
    def choose(current):
        target = rollback_target(registry)
        if target is None:
            raise RegistryError("Nothing to roll back to: there is no earlier active version recorded "
                                "(or it has been deleted). Promote a version instead.")
        return target

    return _activate(registry, "rollback", choose, source=source, audit_path=audit_path)[0]


def delete_version(registry: Registry, name: str, *, source: str = "api",
                   audit_path: str | os.PathLike | None = None) -> None:
    """Delete a non-active version (the registry refuses the active one)."""
    log_path = _audit_path(registry, audit_path)
    try:
        with _locked(registry):  # not while a promote/rollback is choosing it
            registry.delete(name)
    except (RegistryError, ValueError, OSError) as e:
        audit.append("delete", path=log_path, outcome="failed", model_version=name, error=str(e), source=source)
        raise
    audit.append("delete", path=log_path, outcome="ok", model_version=name, source=source)


def record_activation(registry: Registry, version: str, previous: str | None, *, source: str,
                      audit_path: str | os.PathLike | None = None) -> None:
    """Record an activation the registry did itself (``publish(..., activate=True)``): history
    entry + ``promote`` audit line, so it can be rolled back like any other."""
    if version == previous:
        return
    with _locked(registry):
        _append_history(registry, "promote", version, previous, source)
    audit.append("promote", path=_audit_path(registry, audit_path), outcome="ok", model_version=version,
                 previous=previous, source=source)


def complete_pending_activation(registry: Registry, *, source: str,
                                audit_path: str | os.PathLike | None = None) -> str | None:
    """:meth:`Registry.complete_pending_activation`, recorded like any activation. Returns the
    version activated, or None. Call it while holding the training lock."""
    previous = registry.active_version()
    done = registry.complete_pending_activation()
    if done:
        record_activation(registry, done, previous, source=source, audit_path=audit_path)
    return done


def recover(registry: Registry, *, source: str, audit_path: str | os.PathLike | None = None) -> tuple[int, str | None]:
    """Leftovers of a killed training or ``train --activate``: remove stale ``.staging`` entries and
    finish an interrupted activation (recorded like any other). Returns (entries removed, version
    activated or None). Call it while holding the training lock."""
    removed = registry.clean_staging()
    return removed, complete_pending_activation(registry, source=source, audit_path=audit_path)

