"""Model registry: immutable version folders on the shared artifacts path, the active-version
pointer and its history in the shared database (``core.db``; issue 25).

Its paths come from :class:`core.layout.Layout` (the one owner of the artifacts folder's
layout); the part the registry owns::

    artifacts/
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
      PENDING_ACTIVATION          a publish --activate between its rename and its activation

    database (core.db.connect(artifacts)):
      document ("pointer", "active")  {"version", "time", "source"}: what every instance serves
      stream "activation"             one row per pointer change: {"time", "action", "version",
                                      "previous", "source"} (what "roll back" goes back to, core.admin)

The pointer and its history row change in **one database transaction**
(:meth:`Registry.set_active`), so they never disagree, and the write is a compare-and-swap on
the pointer document's revision: two instances activating at once cannot interleave -- the
loser gets "changed by someone else ... reload" (a :class:`RegistryError`) and nothing is
written. Every instance reads the pointer from the database on every :meth:`active_version`
call (one indexed read), so a promote or roll back on one instance is what all of them serve
at their next rerun. The ``ACTIVE`` file and ``admin/active_history.json`` of earlier releases
are imported once per database (only when it has no pointer yet; idempotent, the files are left
in place and no longer read).

Publishing writes a complete folder under ``.staging`` and then ``os.rename``s it into
``models/`` (atomic on one filesystem), so a crash or a cancelled training can leave debris
in ``.staging`` but never a half-written version or a changed pointer. A published
version is never edited in place: a changed model, operating point or report is a new version
(e.g. ``benchmarks/recalibrate_version.py``).

Reading a version's JSON files, two ways over one implementation:

* :func:`read_version_json` (and :meth:`Registry.read_json`, :meth:`LoadedModel.metrics`):
  bounded regular file, validated; raises for a refused file. For code that must not go on.
* :func:`version_json` (and :meth:`Registry.version_json`): the tolerant reader, ``(data,
  problem)``, never raising for a bad file. Pages and the admin review use it; the app only
  caches it (``ui.loaders.version_json``).

Leftovers of a killed process are handled at the next start (issue 14):

* ``.staging`` debris is removed by :meth:`Registry.clean_staging`, which callers run only
  while they hold the training lock (``core.jobs``; the CLI's ``train`` and
  ``models clean-staging``), so it never removes a publish in progress.
* ``publish(..., activate=True)`` first writes ``PENDING_ACTIVATION`` (the version name), then
  renames the folder, then sets the pointer (one transaction) and removes the marker. The
  database makes the pointer change itself atomic, but the rename is a filesystem step that
  no transaction covers: a kill between the rename and the pointer's commit leaves a complete
  version that is not active, and the marker (a file next to the folders it is about) is what
  says it was meant to be. :meth:`Registry.pending_activation` reports it (``models list``
  prints it) and :meth:`Registry.complete_pending_activation` finishes it (run at the next
  training start and by ``models clean-staging``).
"""

from __future__ import annotations

import dataclasses
import datetime as _dt
import logging
import math
import os
import re
import shutil
import stat
import uuid
from pathlib import Path
from typing import Any, Callable

from core import db as dbm
from core.config import Config, check_number
from core.formatting import utc_now_iso
from core.fsutil import UnsafeFileError, atomic_write_text, fsync_dir, is_within, read_json_file, read_regular_text
from core.layout import Layout

log = logging.getLogger(__name__)

REQUIRED_FILES = ("model.keras", "config.json", "operating_point.json")
_VERSION_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,63}\Z")  # \Z: "$" would accept a trailing newline


class RegistryError(RuntimeError):
    """A registry problem with a message meant for a person."""


class BrokenVersionError(RegistryError):
    """A version whose files fail validation (:meth:`Registry.check_version`): refused by name.
    ``problems``: one sentence per problem, each naming the file (and the field)."""

    def __init__(self, name: str, problems: list[str], action: str = "could not be loaded"):
        self.version, self.problems = name, list(problems)
        more = f" (and {len(problems) - 1} more problem{'s' if len(problems) > 2 else ''})" if len(problems) > 1 else ""
        first = problems[0].rstrip(".")
        super().__init__(f"Model version {name!r} {action}: it is broken ({first}{more}). Activate another version "
                         "(admin page, or `python -m core models activate NAME`) and delete this one, or retrain.")


@dataclasses.dataclass
class VersionInfo:
    name: str
    path: Path
    card: dict
    active: bool = False
    problems: list = dataclasses.field(default_factory=list)  # why the version is broken ([] = usable)

    @property
    def created(self) -> str:
        return self.card.get("created", "")

    @property
    def broken(self) -> bool:
        return bool(self.problems)


def validate_version_name(name: str) -> str:
    if not isinstance(name, str) or not _VERSION_RE.match(name) or name.startswith("."):
        raise ValueError(
            "version must be 1-64 characters of letters, digits, '.', '_' or '-', not starting with '.'. "
            f"Received: version={name!r}"
        )
    return name


# --- the files of a version are input too (issue 21) ----------------------------------------------
# Each JSON file of a version is read as a bounded regular file (core.fsutil.read_json_file: no
# symlink, no FIFO or device, a byte limit) and checked by its validator below: types, finite
# numbers, ranges. A validator raises ValueError keras-hub style ("<field> must be ... Received:
# <field>=..."); Registry.check_version prefixes the file name.

POINTER_LIMIT = 4096  # ACTIVE (legacy) / PENDING_ACTIVATION hold one version name
POINTER_KIND, POINTER_KEY = "pointer", "active"  # the database document of the active version
ACTIVATION_STREAM = "activation"  # the history: one row per pointer change, same transaction
_CAS_RETRIES = 5  # set_active(expect=-1): re-read and retry when another instance wrote in between
JSON_LIMITS = {"metrics.json": 64 * 2**20}  # per-image test results; every other file: 4 MB
RATE_KEYS = ("accuracy", "sensitivity", "specificity", "precision", "recall", "f1", "roc_auc", "pr_auc",
             "raw_roc_auc_uncalibrated")


def _short(value: Any) -> str:
    r = repr(value)
    return r if len(r) <= 80 else r[:77] + "..."


def _need(where: str, value: Any, kind: type | tuple, what: str, *, allow_none: bool = False) -> Any:
    """``value`` when it is a ``kind`` (never a bool: JSON true is not a number), else ValueError."""
    if (value is None and allow_none) or (isinstance(value, kind) and not isinstance(value, bool)):
        return value
    raise ValueError(f"{where} must be {what}{' or null' if allow_none else ''}. Received: {where}={_short(value)}")


def _rate(where: str, value: Any) -> None:
    """A report metric: a number in [0, 1], null, or NaN (a metric undefined on that split)."""
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return
    check_number(where, value, 0, 1)


def _number_or_nan(where: str, value: Any) -> None:
    if value is None or (isinstance(value, float) and not math.isfinite(value)):
        return
    _need(where, value, (int, float), "a number")


def _summary(where: str, d: Any) -> None:
    """The scalar metrics of one split (card["test"], metrics.json["test"])."""
    _need(where, d, dict, "a JSON object")
    for k in RATE_KEYS:
        if k in d:
            _rate(f"{where}.{k}", d[k])
    if "threshold" in d:
        check_number(f"{where}.threshold", d["threshold"], 0, 1)
    if "n" in d:
        check_number(f"{where}.n", d["n"], 0, integer=True, allow_none=True)


def _pair(where: str, value: Any, check: Callable[[str, Any], None], what: str = "[low, high]") -> None:
    """A list of exactly two values, each passing ``check(where, x)``."""
    if not (isinstance(value, list) and len(value) == 2):
        raise ValueError(f"{where} must be {what}. Received: {where}={_short(value)}")
    for x in value:
        check(where, x)


def _optional(d: dict, checks: dict[str, Callable[[str, Any], None]], prefix: str = "") -> None:
    """Run ``checks[key](prefix + key, d[key])`` for every key that ``d`` has (absent keys are allowed)."""
    for k, check in checks.items():
        if k in d:
            check(prefix + k, d[k])


def _string(where: str, value: Any) -> None:
    _need(where, value, str, "a string")


def _object(where: str, value: Any) -> None:
    _need(where, value, dict, "a JSON object")


def _labels(where: str, value: Any) -> None:
    if not (isinstance(value, list) and all(isinstance(x, str) for x in value)):
        raise ValueError(f"{where} must be a list of class names. Received: {where}={_short(value)}")


def _unit(where: str, value: Any) -> None:
    check_number(where, value, 0, 1)


# card.json: field -> check (every field is optional; a card of an older release lacks some)
_CARD_CHECKS: dict[str, Callable[[str, Any], None]] = {
    **dict.fromkeys(("version", "created", "backbone", "weights_source"), _string),
    "labels": _labels,
    "input_size": lambda k, v: check_number(k, v, 1, 4096, integer=True),
    "threshold": _unit,
    "temperature": lambda k, v: check_number(k, v, 0, lo_open=True),
    "indeterminate_band": lambda k, v: _pair(k, v, _unit, "a list [low, high]"),
    "val_roc_auc": _rate,
    "test": _summary,
    "counts": _object,
    "explanation": _object,
    "wall_time_s": lambda k, v: check_number(k, v, 0, allow_none=True),
    "feedback_images": lambda k, v: check_number(k, v, 0, integer=True, allow_none=True),
}


def check_card(d: Any) -> dict:
    """``card.json``: the one-screen summary every page and ``models list`` show."""
    _need("card", d, dict, "a JSON object")
    _optional(d, _CARD_CHECKS)
    return d


def _confusion(where: str, cm: Any) -> None:
    if not (isinstance(cm, list) and len(cm) == 2 and all(isinstance(row, list) and len(row) == 2 for row in cm)
            and all(isinstance(x, int) and not isinstance(x, bool) and x >= 0 for row in cm for x in row)):
        raise ValueError(f"{where} must be 2 x 2 counts. Received: {where}={_short(cm)}")


def _number_list(where: str, v: Any) -> None:
    """A list of numbers (NaN allowed: a curve point undefined on that split)."""
    if not isinstance(v, list):
        raise ValueError(f"{where} must be a list of numbers. Received: {where}={_short(v)}")
    for x in v:
        _number_or_nan(where, x)


def _rows(where: str, rows: Any) -> None:
    """The per-image rows of a report (predictions, misclassified): path, prob, label."""
    for row in _need(where, rows, list, "a list"):
        _need(f"{where}[]", row, dict, "a JSON object")
        _need(f"{where}[].path", row.get("path"), str, "a string")
        _rate(f"{where}[].prob", row.get("prob"))
        _need(f"{where}[].label", row.get("label"), (int, str), "a class index or name", allow_none=True)


# one split of metrics.json: field -> check (all optional)
_REPORT_CHECKS: dict[str, Callable[[str, Any], None]] = {
    "split": _string, "confusion_matrix": _confusion,
    **dict.fromkeys(("ci95", "per_class", "roc_curve", "pr_curve"), _object),
    "predictions": _rows, "misclassified": _rows,
}


def _report(split: str, r: Any) -> None:
    """One split of metrics.json (core.evaluation.evaluate)."""
    _summary(split, r)
    _optional(r, _REPORT_CHECKS, prefix=f"{split}.")
    for k, v in (r.get("ci95") or {}).items():
        if v is not None:  # null: a metric undefined on that split
            _pair(f"{split}.ci95.{k}", v, _number_or_nan)
    for curve in ("roc_curve", "pr_curve"):
        for k, v in (r.get(curve) or {}).items():
            _number_list(f"{split}.{curve}.{k}", v)


def check_metrics(d: Any) -> dict:
    """``metrics.json``: per split (validation, test) the evaluation report the Evaluation page draws."""
    _need("metrics", d, dict, "a JSON object")
    for split, r in d.items():
        _report(split, r)
    return d


def check_history(d: Any) -> dict:
    """``history.json``: per phase, per metric, one number per epoch (NaN allowed: a diverged loss)."""
    _need("history", d, dict, "a JSON object")
    for phase in ("head", "finetune"):
        if phase not in d:
            continue
        _need(phase, d[phase], dict, "a JSON object of metric -> list of numbers")
        for k, v in d[phase].items():
            if not isinstance(v, list):
                raise ValueError(f"{phase}.{k} must be a list of numbers. Received: {phase}.{k}={_short(v)}")
            for x in v:
                _number_or_nan(f"{phase}.{k}", x)
    for k in ("head_best_epoch", "finetune_best_epoch", "phase_boundary_epoch"):
        if k in d:
            check_number(k, d[k], 0, integer=True, allow_none=True)
    return d


def check_provenance(d: Any) -> dict:
    """``provenance.json``: where the data came from (the Evaluation page finds test images under
    ``data_root``), what was used, how long it took."""
    _need("provenance", d, dict, "a JSON object")
    for k in ("data_root", "data_fingerprint", "weights", "weights_source", "version", "created", "precision", "strategy"):
        if k in d:
            _need(k, d[k], str, "a string", allow_none=True)
    for k in ("counts", "packages", "machine", "timings_s"):
        if k in d:
            _need(k, d[k], dict, "a JSON object", allow_none=True)
    if "wall_time_s" in d:
        check_number("wall_time_s", d["wall_time_s"], 0, allow_none=True)
    return d


def _check_config(d: Any) -> Config:
    return Config.from_dict(d)


def _check_operating_point(d: Any):
    from core.calibration import OperatingPoint

    return OperatingPoint.from_dict(d)


# filename -> (validator, NaN literals allowed). Reports may carry NaN (json.dumps writes an
# undefined metric so); the files that decide a verdict may not.
JSON_VALIDATORS: dict[str, tuple[Callable[[Any], Any], bool]] = {
    "config.json": (_check_config, False),
    "operating_point.json": (_check_operating_point, False),
    "card.json": (check_card, True),
    "metrics.json": (check_metrics, True),
    "history.json": (check_history, True),
    "provenance.json": (check_provenance, True),
}


def read_version_json(directory: str | os.PathLike, filename: str) -> dict:
    """``filename`` of the version folder ``directory``, read as a bounded regular file and
    validated ({} when absent). Raises ValueError naming the file and the field, or
    :class:`core.fsutil.UnsafeFileError` (symlink, FIFO, device, too large)."""
    p = Path(directory) / filename
    if not os.path.lexists(p):
        return {}
    check, nonfinite = JSON_VALIDATORS.get(filename, (None, True))
    d = read_json_file(p, JSON_LIMITS.get(filename, 4 * 2**20), expect=None, allow_nonfinite=nonfinite)
    if check is None:
        return _need(filename, d, dict, "a JSON object")
    try:
        check(d)
    except ValueError as e:
        raise ValueError(f"{filename}: {e}") from None
    return d


def version_json(directory: str | os.PathLike, filename: str) -> tuple[dict, str | None]:
    """``(data, problem)`` for ``filename`` of the version folder ``directory``, never raising for
    a bad file: the one tolerant reader of a version's files (pages, the admin review, the UI's
    cached loaders). ``({}, None)`` when the file is absent; ``({}, sentence)`` when the folder
    is a symbolic link or the file is refused by :func:`read_version_json` (a symlink, FIFO or
    device, larger than its limit, not JSON, not a JSON object, failing its validator); else
    the validated object and None. The sentence names the file (and the field)."""
    d = Path(directory)
    if d.is_symlink():  # a version is never read through a link (versions() lists it as broken)
        return {}, f"'{d.name}': its folder is a symbolic link; a version is never read through a link."
    try:
        return read_version_json(d, filename), None
    except (ValueError, TypeError, OSError, RecursionError) as e:  # UnsafeFileError is an OSError
        return {}, _problem(filename, e)


def _problem(filename: str, e: BaseException) -> str:
    """One sentence for a refused file: UnsafeFileError and our ValueErrors already name it."""
    msg = str(e).strip() or type(e).__name__
    if isinstance(e, UnsafeFileError) or msg.startswith((filename, f"'{filename}'")):
        return msg
    return f"{filename}: {msg}"


def _entry_problems(d: Path, entries: tuple) -> list[str]:
    """Problems of the entries of a version folder as lstat saw them ((name, mode, ...) each):
    links and special files, then required files missing."""
    problems = []
    for name, mode, *_ in entries:
        if stat.S_ISLNK(mode):
            problems.append(f"'{name}' is a symbolic link; files of a version are never read through a link.")
        elif not (stat.S_ISREG(mode) or stat.S_ISDIR(mode)):
            problems.append(f"'{name}' is not a regular file.")
    return problems + [f"'{f}' is missing." for f in REQUIRED_FILES if not os.path.lexists(d / f)]


def _file_problems(d: Path) -> tuple[list[str], dict]:
    """(problems, card) of the files of version folder ``d``: every JSON file validated, and the
    OOD statistics loaded."""
    problems: list[str] = []
    card: dict = {}
    for filename in JSON_VALIDATORS:
        try:
            obj = read_version_json(d, filename)
        except (ValueError, OSError, RecursionError) as e:
            problems.append(_problem(filename, e))
        else:
            if filename == "card.json":
                card = obj
    try:
        from core.ood import OODStats

        OODStats.load(d)
    except (ValueError, OSError) as e:
        problems.append(_problem("ood.json", e))
    return problems, card


_CHECKED: dict[str, tuple[tuple, list[str], dict]] = {}  # folder -> (stat stamp, problems, card)
_IMPORTED: set[tuple[str, str]] = set()  # (database URL, artifacts root) whose old files were imported


@dataclasses.dataclass(frozen=True)
class Pointer:
    """The active-version document as stored: ``version`` (a valid name, not checked to exist;
    None when unset or invalid), ``revision`` (what a compare-and-swap expects; None when no
    pointer was ever stored), ``problem`` (why a stored value is ignored)."""

    version: str | None
    revision: int | None
    problem: str | None = None
    time: str | None = None
    source: str | None = None


class Registry:
    """The registry of the artifacts folder ``root``; ``db``: the shared database (default
    ``core.db.connect(root)``: ``$PNEUMOSCOPE_DATABASE_URL``, else SQLite under ``root``),
    connected on first use."""

    def __init__(self, root: str | os.PathLike | None = None, *, db: "dbm.Database | None" = None):
        self.layout = Layout.of(root)  # every path under the artifacts folder (core.layout)
        self.root = self.layout.root
        self.models_dir = self.layout.models
        self.staging_dir = self.layout.staging
        self.active_file = self.layout.active_pointer  # releases before issue 25 (imported once)
        self.pending_file = self.layout.pending_pointer
        self._db = db

    # --- the database ----------------------------------------------------------------------
    @property
    def db(self) -> "dbm.Database":
        """The shared database, after the one-time import of this root's old pointer files."""
        if self._db is None:
            self._db = dbm.connect(self.root)
        mark = (self._db.url, str(self.root.absolute()))
        if mark not in _IMPORTED:
            self._import_legacy(self._db)
            _IMPORTED.add(mark)
        return self._db

    def _import_legacy(self, db: "dbm.Database") -> None:
        """Import ``admin/active_history.json`` (and its pre-issue-23 place ``jobs/``) into the
        "activation" stream and ``ACTIVE`` into the pointer document, once per database
        (idempotent by the file's path relative to the root; the pointer only when the database
        has none). The files are left in place, untouched, and never read again."""
        for p in self.layout.imported(self.layout.active_history):
            if not os.path.lexists(p):
                continue
            try:  # a bounded regular file: a FIFO does not hang, a link to /dev/zero is not followed
                rows = [e for e in read_json_file(p, expect=list) if isinstance(e, dict)]
            except (OSError, ValueError) as e:  # UnsafeFileError is an OSError
                log.warning("Not importing the activation history %s: %s", p, e)
                rows = []
            if db.import_once(self.layout.relative(p), ACTIVATION_STREAM, rows):
                log.info("Imported %d activations from %s into the database", len(rows), p)
        if os.path.lexists(self.active_file):
            name, problem = self._read_pointer(self.active_file)
            if problem:
                log.warning("Not importing the active-version pointer: %s", problem)
            docs = [(POINTER_KIND, POINTER_KEY, {"version": name, "time": utc_now_iso(), "source": "import"})] \
                if name else []
            if db.import_documents_once(self.layout.relative(self.active_file), docs):
                log.info("Imported the active-version pointer %s (%s) into the database", self.active_file, name)

    # --- reading -----------------------------------------------------------------------
    def is_complete(self, name: str) -> bool:
        """The version's folder holds every required file (structure only; whether the files are
        valid is :meth:`check_version`'s job)."""
        d = self.layout.version(name)
        return d.is_dir() and all((d / f).is_file() for f in REQUIRED_FILES)

    def _read_pointer(self, path: Path) -> tuple[str | None, str | None]:
        """(version name, problem) of a pointer file read as a bounded regular file: a FIFO does not
        hang, a symlink to /dev/zero is not followed. (None, None) when the file does not exist."""
        try:
            name = read_regular_text(path, POINTER_LIMIT).strip()
        except FileNotFoundError:
            return None, None
        except (UnsafeFileError, OSError) as e:
            return None, f"{e}" if isinstance(e, UnsafeFileError) else f"'{path.name}' cannot be read ({e})."
        if not name:
            return None, None
        try:
            validate_version_name(name)  # never follow '../x' out of models/
        except ValueError:
            return None, f"'{path.name}' holds an invalid version name {_short(name)}; it is ignored."
        return name, None

    def _version_stamp(self, d: Path) -> tuple:
        """What changes when any file of the folder changes (lstat of the folder and its entries)."""
        out = []
        for p in [d, *sorted(d.iterdir())]:
            st = os.lstat(p)
            out.append((p.name, st.st_mode, st.st_size, st.st_mtime_ns, st.st_ino))
        return tuple(out)

    def _folder_problem(self, d: Path) -> str | None:
        """Why the version folder ``d`` is not read at all (a symlink, not a folder, outside the
        artifacts folder), or None."""
        try:
            st = os.lstat(d)
        except OSError as e:
            return f"its folder cannot be read ({e})."
        if stat.S_ISLNK(st.st_mode):
            try:
                target = os.readlink(d)
            except OSError:
                target = "?"
            return f"its folder is a symbolic link (to {_short(target)}); a version is never read through a link."
        if not stat.S_ISDIR(st.st_mode):
            return "it is not a folder."
        if not is_within(d, self.root):
            return "its folder lies outside the artifacts folder (through a symbolic link); it is not read."
        return None

    def _inspect(self, name: str) -> tuple[list[str], dict]:
        """(problems, card) of version ``name``: [] and the validated card when it is usable.

        Refused: a version folder that is a symlink or lies outside the artifacts folder, any file
        in it that is a symlink or not a regular file, a required file missing, and any JSON file
        (or the OOD pair) that fails validation. Cached per folder until a file in it changes."""
        validate_version_name(name)
        d = self.layout.version(name)
        problem = self._folder_problem(d)
        if problem is not None:
            return [problem], {}
        try:
            stamp = self._version_stamp(d)
        except OSError as e:
            return [f"its folder cannot be read ({e})."], {}
        key = str(d)
        hit = _CHECKED.get(key)
        if hit is not None and hit[0] == stamp:
            return list(hit[1]), dict(hit[2])
        problems, card = _entry_problems(d, stamp[1:]), {}
        if not problems:
            problems, card = _file_problems(d)
        if problems:
            log.warning("Model version %s is broken: %s", name, " ".join(problems))
        if len(_CHECKED) > 256:
            _CHECKED.clear()
        _CHECKED[key] = (stamp, list(problems), dict(card))
        return problems, card

    def check_version(self, name: str) -> list[str]:
        """Why version ``name`` cannot be used, one sentence each naming the file (and the field,
        the values allowed and the value received); [] when it is usable."""
        return self._inspect(name)[0]

    def versions(self) -> list[VersionInfo]:
        """Every version with the required files, oldest first; a broken one is listed with its
        ``problems`` and an empty card (the admin page shows it, to roll back or delete it)."""
        try:
            st = os.lstat(self.models_dir)
        except OSError:
            return []
        if not stat.S_ISDIR(st.st_mode) and not stat.S_ISLNK(st.st_mode):
            return []
        active = self.active_version()
        out = []
        for d in self._version_dirs():
            problems, card = self._inspect(d.name)
            out.append(VersionInfo(d.name, d, {} if problems else card, d.name == active, problems))
        out.sort(key=lambda v: (v.created, v.name))
        return out

    def pointer(self) -> Pointer:
        """The active-version document as stored in the database (one read)."""
        doc = self.db.get(POINTER_KIND, POINTER_KEY)
        if doc is None:
            return Pointer(None, None)
        name, when, source = doc.data.get("version"), doc.data.get("time"), doc.data.get("source")
        extra = {"time": when if isinstance(when, str) else None, "source": source if isinstance(source, str) else None}
        if name is None or name == "":
            return Pointer(None, doc.revision, **extra)
        try:
            validate_version_name(name)  # never follow '../x' out of models/
        except ValueError:
            return Pointer(None, doc.revision, f"it holds an invalid version name {_short(name)}.", **extra)
        return Pointer(name, doc.revision, **extra)

    def active_version(self, pointer: Pointer | None = None) -> str | None:
        """The active version's name (read from the database now, or from ``pointer``), or None
        when unset or pointing at nothing usable. A version that is complete but broken is still
        returned: loading it then refuses it by name."""
        p = self.pointer() if pointer is None else pointer
        if p.problem:
            log.warning("The active-version pointer is ignored: %s", p.problem)
            return None
        if p.version is None:
            return None
        if not self.is_complete(p.version):
            log.warning("The active-version pointer names %r, which is not a complete version", p.version)
            return None
        return p.version

    def active_pointer_problem(self) -> str | None:
        """Why the active-version pointer is ignored (an invalid name, a version that does not
        exist), or None when it is fine or simply unset."""
        p = self.pointer()
        if p.problem:
            return f"The active-version pointer is ignored: {p.problem}"
        if p.version is not None and not self.is_complete(p.version):
            return f"The active-version pointer names {p.version!r}, which is not a complete version."
        return None

    def path(self, name: str | None = None) -> Path:
        name = name or self.active_version()
        if name is None:
            pointer = self.active_pointer_problem()
            raise RegistryError(
                f"No active model in {self.root}{f' ({pointer})' if pointer else ''}. Train one with "
                "`python -m core train --activate` or activate an existing version with "
                "`python -m core models activate NAME`."
            )
        validate_version_name(name)
        if not self.is_complete(name):
            raise RegistryError(f"Model version {name!r} does not exist in {self.models_dir}.")
        return self.layout.version(name)

    def require_usable(self, name: str | None, action: str = "could not be loaded") -> Path:
        """The folder of version ``name`` if it passes :meth:`check_version`, else
        :class:`BrokenVersionError` (a RegistryError) naming the version and the first problem."""
        d = self.path(name)
        problems = self.check_version(d.name)
        if problems:
            raise BrokenVersionError(d.name, problems, action)
        return d

    def version_json(self, name: str | None, filename: str) -> tuple[dict, str | None]:
        """:func:`version_json` of version ``name`` (default: active): ``(data, problem)``, never
        raising; the problem also says when there is no such version (or no active one)."""
        try:
            d = self.path(name)
        except (RegistryError, ValueError) as e:
            return {}, str(e)
        data, problem = version_json(d, filename)
        return data, (f"Model version {d.name!r}: {problem}" if problem else None)

    def read_json(self, name: str | None, filename: str) -> dict:
        """A JSON file of a version, validated ({} when absent); RegistryError naming the version
        and the file when it is refused (:meth:`version_json` that raises); RegistryError or
        ValueError when there is no such version."""
        d = self.path(name)
        data, problem = version_json(d, filename)
        if problem:
            raise RegistryError(f"Model version {d.name!r}: {problem}")
        return data

    def load(self, name: str | None = None) -> "LoadedModel":
        """Load a version (default: active) with Keras safe mode; a broken version (see
        :meth:`check_version`) is refused with :class:`BrokenVersionError` before anything loads."""
        from core.calibration import OperatingPoint
        from core.model import load_model

        d = self.require_usable(name)
        try:
            config = Config.from_dict(read_json_file(d / "config.json"))
            return LoadedModel(
                name=d.name,
                path=d,
                model=load_model(d / "model.keras"),
                config=config,
                operating_point=OperatingPoint.load(d / "operating_point.json"),
                card=read_version_json(d, "card.json"),
            )
        except (KeyboardInterrupt, SystemExit, MemoryError):
            raise
        except Exception as e:  # noqa: BLE001 - a damaged or hostile file: one readable line
            log.info("Loading model version %s failed", d.name, exc_info=True)
            raise RegistryError(load_error_message(d.name, e)) from None

    # --- writing -----------------------------------------------------------------------
    def _version_dirs(self) -> list[Path]:
        """Folders under models/ that are complete versions by name and files (not inspected)."""
        try:
            entries = sorted(self.models_dir.iterdir())
        except OSError as e:  # e.g. a link to something that is not a folder
            log.warning("Cannot list %s: %s", self.models_dir, e)
            return []
        return [d for d in entries
                if not d.name.startswith(".") and _VERSION_RE.match(d.name) and self.is_complete(d.name)]

    def new_version_name(self, prefix: str = "v") -> str:
        # names only: validating every version's files (versions()) is not needed to number a new one
        existing = [d.name for d in self._version_dirs()] if self.models_dir.is_dir() else []
        nums = [int(m.group(1)) for n in existing if (m := re.match(r"^v(\d+)", n))]
        stamp = _dt.datetime.now().strftime("%Y%m%d-%H%M%S")
        return f"{prefix}{(max(nums) + 1) if nums else 1:04d}-{stamp}"

    def publish(self, writer: Callable[[Path], None], name: str | None = None, activate: bool = False, *,
                source: str = "api") -> str:
        """Write a version with ``writer(staging_dir)`` then move it into place atomically;
        ``activate``: then make it the active version (recorded with ``source``)."""
        name = validate_version_name(name or self.new_version_name())
        final = self.layout.version(name)
        if os.path.lexists(final):
            raise RegistryError(f"Model version {name!r} already exists.")
        self._ensure_staging()
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
            self.set_active(name, source=source)  # also drops the PENDING_ACTIVATION marker
        return name

    # --- interrupted publishes -------------------------------------------------------------
    def _write_pending(self, name: str) -> None:
        atomic_write_text(self.pending_file, name + "\n", sync_dir=True)

    def pending_activation(self) -> str | None:
        """The version a publish with ``activate=True`` was asked to activate but did not (yet):
        complete and not active. None when there is nothing pending (or the marker is not a
        regular file with a version name: it is then ignored, never followed)."""
        name, problem = self._read_pointer(self.pending_file)
        if problem:
            log.warning("%s", problem)
        if name is None or not self.is_complete(name) or self.active_version() == name:
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

    def complete_pending_activation(self, *, source: str = "api") -> str | None:
        """Finish an interrupted ``publish(activate=True)``: activate the version if it was published
        completely, and drop the marker either way. Returns the version activated, or None.
        Call it while holding the training lock (no publish in progress)."""
        name = self.pending_activation()
        problems = self.check_version(name) if name is not None else []
        if problems:
            log.warning("Not completing the interrupted activation of %s: the version is broken (%s)",
                        name, " ".join(problems))
            name = None
        elif name is not None:
            self.set_active(name, source=source)
            log.warning("Completed the interrupted activation of %s", name)
        self.pending_file.unlink(missing_ok=True)
        return name

    def set_active(self, name: str, *, action: str = "promote", source: str = "api",
                   expect: int | None = -1) -> str | None:
        """Point the active version at ``name`` and append its history row (``action``,
        ``previous``, ``source``) to the "activation" stream, in one transaction. Returns the
        version it replaced (None when unset). A broken version is refused
        (:class:`BrokenVersionError`); setting the version already active changes nothing.

        ``expect``: the pointer revision the caller decided on (:meth:`pointer`; None: no pointer
        stored yet); when it changed meanwhile, :class:`RegistryError` ("changed by someone else")
        and nothing is written. ``-1``: whatever is current, still compare-and-swapped on the
        revision read in the transaction, so the recorded ``previous`` is always the version
        really replaced."""
        validate_version_name(name)
        if not self.is_complete(name):
            raise RegistryError(f"Cannot activate {name!r}: no complete version with that name.")
        problems = self.check_version(name)
        if problems:
            raise BrokenVersionError(name, problems, "cannot be activated")
        db = self.db
        for _ in range(_CAS_RETRIES):
            try:
                previous = self._swap_pointer(db, name, action, source, expect)
                break
            except dbm.Conflict:
                if expect != -1:
                    now = self.pointer().version
                    raise RegistryError(
                        f"The active version was changed by someone else meanwhile (now {now or 'none'}); "
                        f"{name!r} was not activated. Reload and try again.") from None
        else:
            raise RegistryError("The active version kept changing (other instances are activating versions); "
                                f"{name!r} was not activated. Try again in a moment.")
        self.pending_file.unlink(missing_ok=True)  # any activation supersedes an interrupted one
        if previous != name:
            log.info("Active model is now %s (was %s)", name, previous)
        return previous

    def _swap_pointer(self, db: "dbm.Database", name: str, action: str, source: str, expect: int | None) -> str | None:
        """One transaction: read the pointer, compare-and-swap it to ``name``, append the history
        row. Raises :class:`core.db.Conflict` when the revision is not the one expected."""
        with db.transaction() as c:
            doc = db.get(POINTER_KIND, POINTER_KEY, conn=c)
            revision = doc.revision if doc is not None else None
            if expect != -1 and revision != expect:
                raise dbm.Conflict(f"The active-version pointer is at revision {revision}, expected {expect}.")
            previous = doc.data.get("version") if doc is not None else None
            previous = previous if isinstance(previous, str) and previous else None
            if previous == name:
                return previous  # already active: no new revision, no history row
            now = utc_now_iso()
            db.put(POINTER_KIND, POINTER_KEY, {"version": name, "time": now, "source": source}, expect=revision, conn=c)
            db.append(ACTIVATION_STREAM, {"time": now, "action": action, "version": name, "previous": previous,
                                          "source": source}, conn=c)
        return previous

    def activation_history(self) -> list[dict]:
        """Every pointer change, oldest first: ``{"time", "action", "version", "previous", "source"}``."""
        return [r for _, r in self.db.events(ACTIVATION_STREAM)]

    def delete(self, name: str) -> None:
        validate_version_name(name)
        if name == self.active_version():
            raise RegistryError(f"Refusing to delete the active version {name!r}; activate another one first.")
        d = self.layout.version(name)
        if os.path.islink(d):  # a version that is a link: remove the link, never what it points to
            target = os.readlink(d)
            os.unlink(d)
            log.warning("Deleted version %s, a symbolic link (to %s); what it pointed to was not touched", name, target)
            return
        if not d.is_dir():
            raise RegistryError(f"Model version {name!r} does not exist.")
        if not is_within(d, self.root):
            raise RegistryError(f"Refusing to delete {name!r}: its folder lies outside {self.root} "
                                "(the models folder is a symbolic link); nothing was deleted.")
        # Move out of models/ first (atomic), then remove: a crash mid-delete leaves debris
        # in .staging, never a half-deleted version that still looks complete.
        self._ensure_staging()
        trash = self.staging_dir / f"deleted-{name}.{uuid.uuid4().hex[:8]}"
        os.rename(d, trash)
        shutil.rmtree(trash, ignore_errors=True)  # never follows links inside it

    def _staging_link(self) -> str | None:
        """What ``.staging`` is when it is not a real folder (a symlink, a file, a FIFO), else None."""
        try:
            st = os.lstat(self.staging_dir)
        except FileNotFoundError:
            return None
        if stat.S_ISDIR(st.st_mode):
            return None
        if stat.S_ISLNK(st.st_mode):
            try:
                return f"a symbolic link to {os.readlink(self.staging_dir)!r}"
            except OSError:
                return "a symbolic link"
        return "not a folder"

    def _ensure_staging(self) -> None:
        """A real ``.staging`` folder inside the artifacts folder. One that is a symlink (e.g. to a
        folder outside artifacts) or not a folder is removed itself (``unlink``: what a link points
        to is never touched) and replaced by a real folder, so nothing is written, renamed or
        deleted through it."""
        what = self._staging_link()
        if what is not None:
            log.warning("%s was %s; removed it (nothing it pointed to was touched) and made a real folder",
                        self.staging_dir, what)
            os.unlink(self.staging_dir)
        self.staging_dir.mkdir(parents=True, exist_ok=True)

    def clean_staging(self) -> int:
        """Remove leftovers of crashed publishes. Returns how many entries were removed.

        Everything under ``.staging`` is debris unless a publish is running right now, so call it
        only while holding the training lease (``core.locks.acquire_training_lock``), as the job
        runner, ``python -m core train`` and ``python -m core models clean-staging`` do.
        """
        what = self._staging_link()
        if what is not None:  # never empty what a link points to: remove the link itself
            os.unlink(self.staging_dir)
            log.warning("%s was %s; removed the link itself, nothing it pointed to was touched",
                        self.staging_dir, what)
            return 1
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
        """metrics.json of this version, validated ({} when absent; ValueError/OSError when refused)."""
        return read_version_json(self.path, "metrics.json")
