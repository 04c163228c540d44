"""Where everything lives under the artifacts folder: the one owner of that layout (issue 23).

Every module asks a :class:`Layout` for a path under the artifacts folder instead of joining
strings itself, so the layout is written down once, here::

    <artifacts>/                  $PNEUMOSCOPE_ARTIFACTS, else ./artifacts (core.config)
      ACTIVE                      name of the active version (core.registry)
      PENDING_ACTIVATION          a publish --activate that has not finished (core.registry)
      models/<version>/           published versions, never edited in place (core.registry)
      .staging/                   versions being written (core.registry)
      jobs/                       training jobs and their locks (core.jobs)
      admin/active_history.json   activations, what "roll back" goes back to (core.admin)
      admin/auth_lockout.json     admin sign-in throttling state (core.auth)
      audit/audit.jsonl           the audit trail (core.audit; $PNEUMOSCOPE_AUDIT_LOG overrides)
      feedback/                   clinician feedback (core.feedback)
      reader_studies/             reader studies, one JSON file each (core.reader_study)
      pacs/watch_state.json       the PACS watcher's "already analysed" state (core.pacs)

The activation history and the sign-in state used to live under ``jobs/`` (next to training
jobs they have nothing to do with). :meth:`Layout.migrate` moves such a file from its old place
the first time its new place is asked for and does not exist yet, so nothing is lost: the move
is a hard link then an unlink (``os.link`` never replaces an existing file, so a file written
at the new place meanwhile is kept), and it is done once because the old file is gone after it.

Paths only: a :class:`Layout` creates nothing (except :meth:`Layout.migrate`'s move) and
reads nothing.
"""

from __future__ import annotations

import dataclasses
import errno
import logging
import os
from pathlib import Path

from core.config import default_artifacts_dir

log = logging.getLogger(__name__)

__all__ = ["LEGACY_LOCATIONS", "Layout"]

# new place (relative to the root) -> where releases before issue 23 kept the file
LEGACY_LOCATIONS = {
    "admin/active_history.json": "jobs/active_history.json",
    "admin/auth_lockout.json": "jobs/auth_lockout.json",
}


@dataclasses.dataclass(frozen=True)
class Layout:
    """The paths of one artifacts folder ``root``. ``Layout.of(None)`` is the default folder."""

    root: Path

    def __post_init__(self):
        object.__setattr__(self, "root", Path(self.root))

    @classmethod
    def of(cls, artifacts: str | os.PathLike | None = None) -> "Layout":
        """The layout of ``artifacts`` ($PNEUMOSCOPE_ARTIFACTS or ./artifacts when None)."""
        return cls(Path(artifacts) if artifacts is not None else default_artifacts_dir())

    # --- the model registry (core.registry) -------------------------------------------------
    @property
    def models(self) -> Path:
        return self.root / "models"

    @property
    def staging(self) -> Path:
        return self.root / ".staging"

    @property
    def active_pointer(self) -> Path:
        return self.root / "ACTIVE"

    @property
    def pending_pointer(self) -> Path:
        return self.root / "PENDING_ACTIVATION"

    def version(self, name: str) -> Path:
        """The folder of version ``name`` (the caller validates the name: core.registry)."""
        return self.models / name

    def version_file(self, name: str, filename: str) -> Path:
        return self.models / name / filename

    # --- state of the app and the CLI -------------------------------------------------------
    @property
    def jobs(self) -> Path:
        return self.root / "jobs"

    @property
    def admin(self) -> Path:
        return self.root / "admin"

    @property
    def active_history(self) -> Path:
        return self.admin / "active_history.json"

    @property
    def auth_lockout(self) -> Path:
        return self.admin / "auth_lockout.json"

    @property
    def audit_log(self) -> Path:
        return self.root / "audit" / "audit.jsonl"

    @property
    def feedback(self) -> Path:
        return self.root / "feedback"

    @property
    def studies(self) -> Path:
        return self.root / "reader_studies"

    @property
    def pacs_state(self) -> Path:
        return self.root / "pacs" / "watch_state.json"

    # --- files that moved ---------------------------------------------------------------------
    def legacy(self, path: str | os.PathLike) -> Path | None:
        """Where releases before issue 23 kept the file ``path`` of this layout, or None."""
        try:
            rel = Path(path).relative_to(self.root).as_posix()
        except ValueError:
            return None
        old = LEGACY_LOCATIONS.get(rel)
        return self.root / old if old is not None else None

    def migrate(self, path: str | os.PathLike) -> Path:
        """``path``, after moving the file from its old location (:data:`LEGACY_LOCATIONS`) when
        only the old one exists. The entry itself is moved, whatever it is (a symlink stays a
        symlink, which its reader then refuses, as it did at the old place); a folder or a move
        across filesystems is left where it is, with a warning. Never raises for the move."""
        path = Path(path)
        old = self.legacy(path)
        if old is None or os.path.lexists(path) or not os.path.lexists(old):
            return path
        try:
            path.parent.mkdir(parents=True, exist_ok=True)
            os.link(old, path, follow_symlinks=False)  # never replaces a file written meanwhile
        except FileExistsError:
            return path  # another process moved it first (and unlinks the old name)
        except OSError as e:
            if e.errno != errno.ENOENT:  # ENOENT: another process moved it first
                log.warning("Could not move %s to %s (%s); it stays where it is", old, path, e)
            return path
        try:
            os.unlink(old)
        except OSError:
            pass  # already gone: moved by another process
        else:
            log.info("Moved %s to %s (its place since issue 23)", old, path)
        return path
