"""Model registry under ``artifacts/``: the registry is data.

Layout::

    artifacts/
      ACTIVE                      name of the active version (one line), replaced atomically
      models/<version>/
        model.keras               float32, no optimizer state
        config.json               core.config.Config (input size, class names, recipe...)
        operating_point.json      temperature, threshold, indeterminate band (from validation)
        history.json              per-epoch metrics of both phases
        metrics.json              test-split evaluation (core.evaluation.evaluate)
        provenance.json           data root + counts + fingerprint, weights source, seeds,
                                  package versions, wall time, timings
        card.json                 one-screen summary for tables (labels, input size, AUC...)
      .staging/                   versions being written; never read by loaders

Publishing writes a complete folder under ``.staging`` and then ``os.rename``s it into
``models/`` (atomic on one filesystem), so a crash or a cancelled training can leave debris
in ``.staging`` but never a half-written version or a changed ACTIVE pointer.

Leftovers of a killed process are handled at the next start (issue 14):

* ``.staging`` debris is removed by :meth:`Registry.clean_staging`, which callers run only
  while they hold the training lock (``core.jobs``; the CLI's ``train`` and
  ``models clean-staging``), so it never removes a publish in progress.
* ``publish(..., activate=True)`` first writes ``PENDING_ACTIVATION`` (the version name), then
  renames, then updates ``ACTIVE`` and removes the marker. A kill in between leaves a
  complete version that is not active: :meth:`Registry.pending_activation` reports it
  (``models list`` prints it) and :meth:`Registry.complete_pending_activation` finishes it
  (run at the next training start and by ``models clean-staging``).
"""

from __future__ import annotations

import dataclasses
import datetime as _dt
import json
import logging
import os
import re
import shutil
import uuid
from pathlib import Path
from typing import Callable

from core.config import Config, default_artifacts_dir
from core.fsutil import atomic_write_text, fsync_dir

log = logging.getLogger(__name__)

REQUIRED_FILES = ("model.keras", "config.json", "operating_point.json")
_VERSION_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,63}\Z")  # \Z: "$" would accept a trailing newline


class RegistryError(RuntimeError):
    """A registry problem with a message meant for a person."""


@dataclasses.dataclass
class VersionInfo:
    name: str
    path: Path
    card: dict
    active: bool = False

    @property
    def created(self) -> str:
        return self.card.get("created", "")


def validate_version_name(name: str) -> str:
    if not isinstance(name, str) or not _VERSION_RE.match(name) or name.startswith("."):
        raise ValueError(
            "version must be 1-64 characters of letters, digits, '.', '_' or '-', not starting with '.'. "
            f"Received: version={name!r}"
        )
    return name


class Registry:
    def __init__(self, root: str | os.PathLike | None = None):
        self.root = Path(root) if root is not None else default_artifacts_dir()
        self.models_dir = self.root / "models"
        self.staging_dir = self.root / ".staging"
        self.active_file = self.root / "ACTIVE"
        self.pending_file = self.root / "PENDING_ACTIVATION"

    # --- reading -----------------------------------------------------------------------
    def is_complete(self, name: str) -> bool:
        d = self.models_dir / name
        return d.is_dir() and all((d / f).is_file() for f in REQUIRED_FILES)

    def versions(self) -> list[VersionInfo]:
        if not self.models_dir.is_dir():
            return []
        active = self.active_version()
        out = []
        for d in sorted(self.models_dir.iterdir()):
            if not d.is_dir() or d.name.startswith(".") or not self.is_complete(d.name):
                continue
            try:
                card = json.loads((d / "card.json").read_text()) if (d / "card.json").is_file() else {}
            except (OSError, json.JSONDecodeError):
                card = {}
            out.append(VersionInfo(d.name, d, card, d.name == active))
        out.sort(key=lambda v: (v.created, v.name))
        return out

    def active_version(self) -> str | None:
        """The active version's name, or None when unset or pointing at nothing usable."""
        try:
            name = self.active_file.read_text().strip()
        except OSError:
            return None
        if not name:
            return None
        try:
            validate_version_name(name)  # never follow '../x' out of models/
        except ValueError:
            log.warning("ACTIVE holds an invalid version name %r; ignoring it", name)
            return None
        if not self.is_complete(name):
            log.warning("ACTIVE points at %r, which is not a complete version", name)
            return None
        return name

    def path(self, name: str | None = None) -> Path:
        name = name or self.active_version()
        if name is None:
            raise RegistryError(
                f"No active model in {self.root}. Train one with `python -m core train --activate` "
                "or activate an existing version with `python -m core models activate NAME`."
            )
        validate_version_name(name)
        if not self.is_complete(name):
            raise RegistryError(f"Model version {name!r} does not exist in {self.models_dir}.")
        return self.models_dir / name

    def read_json(self, name: str | None, filename: str) -> dict:
        p = self.path(name) / filename
        if not p.is_file():
            return {}
        return json.loads(p.read_text())

    def load(self, name: str | None = None) -> "LoadedModel":
        """Load a version (default: active) with Keras safe mode."""
        from core.calibration import OperatingPoint
        from core.model import load_model

        d = self.path(name)
        try:
            config = Config.load(d / "config.json")
            return LoadedModel(
                name=d.name,
                path=d,
                model=load_model(d / "model.keras"),
                config=config,
                operating_point=OperatingPoint.load(d / "operating_point.json"),
                card=json.loads((d / "card.json").read_text()) if (d / "card.json").is_file() else {},
            )
        except (KeyboardInterrupt, SystemExit, MemoryError):
            raise
        except Exception as e:  # noqa: BLE001 - a damaged or hostile file: one readable line
            log.info("Loading model version %s failed", d.name, exc_info=True)
            raise RegistryError(load_error_message(d.name, e)) from None

    # --- writing -----------------------------------------------------------------------
    def new_version_name(self, prefix: str = "v") -> str:
        existing = [v.name for v in self.versions()] if self.models_dir.is_dir() else []
        nums = [int(m.group(1)) for n in existing if (m := re.match(r"^v(\d+)", n))]
        stamp = _dt.datetime.now().strftime("%Y%m%d-%H%M%S")
        return f"{prefix}{(max(nums) + 1) if nums else 1:04d}-{stamp}"

    def publish(self, writer: Callable[[Path], None], name: str | None = None, activate: bool = False) -> str:
        """Write a version with ``writer(staging_dir)`` then move it into place atomically."""
        name = validate_version_name(name or self.new_version_name())
        final = self.models_dir / name
        if final.exists():
            raise RegistryError(f"Model version {name!r} already exists.")
        self.staging_dir.mkdir(parents=True, exist_ok=True)
        self.models_dir.mkdir(parents=True, exist_ok=True)
        stage = self.staging_dir / f"{name}.{uuid.uuid4().hex[:8]}"
        stage.mkdir()
        try:
            writer(stage)
            if activate:  # intent first: a kill after the rename is then visible and completable
                self._write_pending(name)
            missing = [f for f in REQUIRED_FILES if not (stage / f).is_file()]
            if missing:
                raise RegistryError(f"Refusing to publish {name!r}: missing {missing}.")
            for f in stage.iterdir():
                if f.is_file():
                    with open(f, "rb") as fh:
                        os.fsync(fh.fileno())
            fsync_dir(stage)
            os.rename(stage, final)  # atomic: the version appears complete or not at all
            fsync_dir(self.models_dir)
        except BaseException:
            shutil.rmtree(stage, ignore_errors=True)
            if activate and not final.exists():
                self.pending_file.unlink(missing_ok=True)
            raise
        log.info("Published model version %s", name)
        if activate:
            self.set_active(name)  # also drops the PENDING_ACTIVATION marker
        return name

    # --- interrupted publishes -------------------------------------------------------------
    def _write_pending(self, name: str) -> None:
        atomic_write_text(self.pending_file, name + "\n", sync_dir=True)

    def pending_activation(self) -> str | None:
        """The version a publish with ``activate=True`` was asked to activate but did not (yet):
        complete and not active. None when there is nothing pending."""
        try:
            name = self.pending_file.read_text().strip()
            validate_version_name(name)
        except (OSError, ValueError):
            return None
        if not self.is_complete(name) or self.active_version() == name:
            return None
        return name

    def pending_activation_message(self) -> str | None:
        name = self.pending_activation()
        if name is None:
            return None
        return (f"Version {name!r} was published with --activate but the process stopped before it was "
                f"activated; {self.active_version() or 'no version'} is active. It is activated at the next "
                f"training start or `python -m core models clean-staging`, or now with "
                f"`python -m core models activate {name}`.")

    def complete_pending_activation(self) -> str | None:
        """Finish an interrupted ``publish(activate=True)``: activate the version if it was published
        completely, and drop the marker either way. Returns the version activated, or None.
        Call it while holding the training lock (no publish in progress)."""
        name = self.pending_activation()
        if name is not None:
            self.set_active(name)
            log.warning("Completed the interrupted activation of %s", name)
        self.pending_file.unlink(missing_ok=True)
        return name

    def set_active(self, name: str) -> None:
        validate_version_name(name)
        if not self.is_complete(name):
            raise RegistryError(f"Cannot activate {name!r}: no complete version with that name.")
        atomic_write_text(self.active_file, name + "\n", sync_dir=True)
        self.pending_file.unlink(missing_ok=True)  # any activation supersedes an interrupted one
        log.info("Active model is now %s", name)

    def delete(self, name: str) -> None:
        validate_version_name(name)
        if name == self.active_version():
            raise RegistryError(f"Refusing to delete the active version {name!r}; activate another one first.")
        d = self.models_dir / name
        if not d.is_dir():
            raise RegistryError(f"Model version {name!r} does not exist.")
        # Move out of models/ first (atomic), then remove: a crash mid-delete leaves debris
        # in .staging, never a half-deleted version that still looks complete.
        self.staging_dir.mkdir(parents=True, exist_ok=True)
        trash = self.staging_dir / f"deleted-{name}.{uuid.uuid4().hex[:8]}"
        os.rename(d, trash)
        shutil.rmtree(trash, ignore_errors=True)

    def clean_staging(self) -> int:
        """Remove leftovers of crashed publishes. Returns how many entries were removed.

        Everything under ``.staging`` is debris unless a publish is running right now, so call it
        only while holding the training lock (``core.jobs.acquire_training_lock``), as the job
        runner, ``python -m core train`` and ``python -m core models clean-staging`` do.
        """
        if not self.staging_dir.is_dir():
            return 0
        n = 0
        for p in self.staging_dir.iterdir():
            if p.is_dir() and not p.is_symlink():
                shutil.rmtree(p, ignore_errors=True)
            else:
                p.unlink(missing_ok=True)
            n += 1
        if n:
            log.info("Removed %d stale entries from %s", n, self.staging_dir)
        return n


def load_error_message(name: str, e: BaseException) -> str:
    """One readable line for a model that cannot be loaded (no multi-line config dump)."""
    first = next((ln.strip() for ln in str(e).splitlines() if ln.strip()), "")
    if len(first) > 160:
        first = first[:157] + "..."
    hint = "refused by Keras safe mode" if "safe_mode" in str(e) or "Lambda" in str(e) else "damaged or incompatible"
    return (f"Model version {name!r} could not be loaded: its files are {hint} ({type(e).__name__}"
            f"{': ' + first if first else ''}). Activate another version or retrain.")


@dataclasses.dataclass
class LoadedModel:
    name: str
    path: Path
    model: object  # keras.Model
    config: Config
    operating_point: object  # core.calibration.OperatingPoint
    card: dict

    def metrics(self) -> dict:
        p = self.path / "metrics.json"
        return json.loads(p.read_text()) if p.is_file() else {}
