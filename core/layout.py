"""Where everything lives under the artifacts folder: the one owner of that layout (issue 23).

Every module asks a :class:`Layout` for a path under the artifacts folder instead of joining
strings itself, so the layout is written down once, here::

    <artifacts>/                  $PNEUMOSCOPE_ARTIFACTS, else ./artifacts (core.config)
      pneumoscope.db              the shared database when $PNEUMOSCOPE_DATABASE_URL is unset (core.db)
      PENDING_ACTIVATION          a publish --activate that has not finished (core.registry)
      models/<version>/           published versions, never edited in place (core.registry)
      .staging/                   versions being written (core.registry)
      jobs/                       training jobs and their locks (core.jobs)
      audit/audit.jsonl           the audit trail before the database: imported once by core.audit, no longer written
      feedback/                   clinician feedback (core.feedback)
      reader_studies/             reader studies, one JSON file each (core.reader_study)
      pacs/watch_state.json       the PACS watcher's state before the database (imported once by core.pacs)

Files of earlier releases whose contents now live in the shared database (issue 25), imported
once (``core.db.Database.import_once``, idempotent by the path relative to the root) and then
left in place untouched -- they are no longer read or written::

      ACTIVE                      the active-version pointer (core.registry)
      admin/active_history.json   activations (core.admin); before issue 23: jobs/active_history.json
      admin/auth_lockout.json     admin sign-in throttling (core.auth); before issue 23: jobs/auth_lockout.json

Paths only: a :class:`Layout` creates nothing and reads nothing.
"""

from __future__ import annotations

import dataclasses
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
        """The pointer file of releases before issue 25 (imported once; the pointer is in the database)."""
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
        """Activation history of releases before issue 25 (imported once into the "activation" stream)."""
        return self.admin / "active_history.json"

    @property
    def auth_lockout(self) -> Path:
        """Sign-in state of releases before issue 25 (imported once into the database)."""
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

    # --- files of earlier releases ------------------------------------------------------------
    def legacy(self, path: str | os.PathLike) -> Path | None:
        """Where releases before issue 23 kept the file ``path`` of this layout, or None."""
        try:
            rel = Path(path).relative_to(self.root).as_posix()
        except ValueError:
            return None
        old = LEGACY_LOCATIONS.get(rel)
        return self.root / old if old is not None else None

    def imported(self, path: str | os.PathLike) -> list[Path]:
        """Where the old file ``path`` of this layout may be, oldest place first (its place before
        issue 23, then ``path``): what a one-time import into the database reads."""
        old = self.legacy(path)
        return ([old] if old is not None else []) + [Path(path)]

    def relative(self, path: str | os.PathLike) -> str:
        """``path`` relative to the root, with '/' (the key of a one-time import)."""
        return Path(path).relative_to(self.root).as_posix()
