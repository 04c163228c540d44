"""Reader study: a clinician reads N films, first alone, then with the AI's output.

No Streamlit here (``app_pages/reader_study.py`` is the page). The flow per film:

1. the reader records a read (NORMAL / PNEUMONIA + confidence 1-5) **before** any AI output
   (:meth:`Study.record_first_read`);
2. the AI verdict, calibrated probability and threshold are revealed and stored
   (:meth:`Study.reveal_ai`; refused before step 1);
3. the reader may revise the read (AI-assisted second read, :meth:`Study.record_revision`),
   and the case is closed with the time spent on it (:meth:`Study.finish_case`).

This module holds the study's state (films, cases, the study), its storage and the
single-writer rule. The statistics (sensitivity and specificity of the reader alone, the model
alone and reader + AI, with Wilson 95 % CIs) are ``core.reader_stats.results``; the PDF and CSV
are ``core.reports.study_pdf`` / ``study_csv``.

Studies are documents of kind ``reader_study`` (key: the study id) in the shared database
(``core.db``: SQLite under the artifacts folder, or PostgreSQL for several instances), each save
one transaction: a crash mid-write leaves the previous revision intact. The reader id is random
(``core.readerid``: ``r-`` + 12 hex digits, the id clinician feedback uses), never a name; studies
saved with the earlier ``R-`` + 8 hex digits still load. The JSON files of before
(``<artifacts>/reader_studies/*.json``) are imported once, the first time the store is used for
that artifacts root (idempotent; a file that cannot be read or fails the checks is skipped, logged
and listed by :func:`scan_studies` while it is still there); the files are left in place and no
longer written.

**One writer per study** (issue 21: two sessions resuming the same study overwrote each other's
reads). The document has a ``revision`` (the database's) and a ``writer`` (a random id of the
browser session that may save). :func:`save` is a compare-and-swap on the revision: it writes
only when the database still has the revision and writer this copy was loaded with, else it
raises :class:`StudyConflict` and changes nothing -- a save based on a stale copy never
overwrites, whichever instance or host it comes from (no file lock or pid on one machine is
involved). A second session gets the study only through :func:`open_for_writing`, which refuses
(:class:`StudyInUse`) while another session is the writer unless asked to take it over; taking
over bumps the revision, so the first session's next save is refused with a message. Every
read a session was told is saved is in the database.

**Studies are input.** Old files are read as bounded regular files (``core.fsutil``); files and
database documents alike are checked field by field (a damaged or tampered one is refused by
name), and films are resolved only inside the folder they come from -- the bundled samples, or
the data root configured on this machine, never a root written in the study: an absolute film path, ``..`` or a symbolic link
leading out of that folder is refused with a message and nothing outside it is read.
"""

from __future__ import annotations

import contextlib
import dataclasses
import datetime as _dt
import json
import logging
import math
import os
import re
import secrets
import threading
from pathlib import Path
from typing import Any, Iterator, Sequence

import numpy as np

from core import fsutil
from core.config import CLASS_NAMES
from core.formatting import utc_now_iso
from core.readerid import is_reader_id, new_reader_id

log = logging.getLogger(__name__)

DEFAULT_N = 20
MIN_N = 2  # one film of each class at least
CONFIDENCE_LEVELS = (1, 2, 3, 4, 5)
CONFIDENCE_WORDS = {1: "very unsure", 2: "unsure", 3: "moderate", 4: "confident", 5: "very confident"}
CONFIDENCE_HELP = " · ".join(f"{k} = {CONFIDENCE_WORDS[k]}" for k in (1, 3, 5))  # the read forms' help text
READS = tuple(CLASS_NAMES)  # ("NORMAL", "PNEUMONIA")
SCHEMA = 1
SOURCE_TEST = "official test split"
SOURCE_SAMPLES = "bundled samples"
_REPO = Path(__file__).resolve().parent.parent
SAMPLES_ROOT = _REPO / "samples" / "chest_xray"
_ID_RE = re.compile(r"^rs-[0-9]{8}-[0-9]{6}-[0-9a-f]{6}$")
MAX_STUDY_BYTES = 16 * 2**20  # a study of the whole test split (624 films) is ~0.4 MB
MAX_CASES = 20_000


class ReaderStudyError(ValueError):
    """A problem with a message meant for a person (the page shows it, no traceback)."""


class StudyConflict(ReaderStudyError):
    """A save refused because the saved study changed since this copy was loaded (another
    session took the study over, or saved a newer revision). Nothing was written."""


class StudyInUse(ReaderStudyError):
    """Another session is the study's writer; ``study`` is the saved copy (for its facts)."""

    def __init__(self, message: str, study: "Study"):
        super().__init__(message)
        self.study = study


def new_writer_id() -> str:
    """A random id for one browser session that may write a study (never a name)."""
    return "w-" + secrets.token_hex(8)


def film_path_problem(path: Any) -> str | None:
    """Why a film path from a study file is refused (None when it is a plain relative path).
    Study files store paths relative to the films' folder; anything else is not followed."""
    if not isinstance(path, str) or not path.strip() or "\x00" in path or len(path) > 4096:
        return "is not a file name"
    posix = path.replace("\\", "/")
    if posix.startswith("/") or re.match(r"^[A-Za-z]:", posix):
        return "is absolute"
    if ".." in posix.split("/"):
        return "goes up out of its folder with '..'"
    return None


# --- films ------------------------------------------------------------------------------------
@dataclasses.dataclass(frozen=True)
class Film:
    path: str  # as stored: relative to ``root`` (portable), or absolute
    truth: str  # "NORMAL" | "PNEUMONIA"


def film_pool(data_root: str | os.PathLike | None) -> tuple[Path, list[Film], str, str | None]:
    """(root, films, source, warning) to draw from.

    The official **test** split of ``data_root`` when it has one (never the train or val
    films: the model saw those); otherwise the bundled samples' test films, with a warning
    that N is then small. Paths are relative to the returned root.
    """
    from core.dataset import DatasetError, discover

    if data_root is not None:
        try:
            index = discover(data_root)
        except (DatasetError, OSError):
            index = None
        if index is not None and index.split("test"):
            root = Path(index.root)
            films = _inside(root, [Film(s.path.relative_to(root).as_posix(), s.class_name) for s in index.split("test")])
            return root, films, SOURCE_TEST, None
    try:
        index = discover(SAMPLES_ROOT)
        films = _inside(SAMPLES_ROOT, [Film(s.path.relative_to(SAMPLES_ROOT).as_posix(), s.class_name)
                                       for s in index.split("test")])
    except (DatasetError, OSError):
        films = []
    warning = (
        f"No dataset with an official test split is configured (PNEUMOSCOPE_DATA_ROOT), so the films "
        f"come from the {len(films)} bundled sample X-rays: N is small and the confidence intervals "
        "are wide. Configure the dataset for a real study."
    )
    return SAMPLES_ROOT, films, SOURCE_SAMPLES, warning


def _inside(root: Path, films: list[Film]) -> list[Film]:
    """The films whose file, links resolved, lies inside ``root`` (a link leading out is left out)."""
    real_root = os.path.realpath(root)
    keep = [f for f in films if fsutil.is_within(os.path.join(real_root, f.path), real_root)]
    if len(keep) < len(films):
        log.warning("%d film(s) under %s lead outside it through a symbolic link; left out of the pool",
                    len(films) - len(keep), root)
    return keep


def draw_films(pool: Sequence[Film], n: int, seed: int) -> list[Film]:
    """``n`` films drawn **stratified by class** (each class in proportion to the pool, at
    least one of each), in a seeded random order. The same (pool, n, seed) gives the same list.

    Raises ReaderStudyError for an n outside [MIN_N, len(pool)] or a pool without both classes.
    """
    try:
        n = int(n)
        seed = int(seed)
    except (TypeError, ValueError):
        raise ReaderStudyError(f"N and the seed must be whole numbers. Received: N={n!r}, seed={seed!r}") from None
    by_class = {c: sorted((f for f in pool if f.truth == c), key=lambda f: f.path) for c in READS}
    missing = [c for c, fs in by_class.items() if not fs]
    if missing:
        raise ReaderStudyError(f"The films to draw from have no {' or '.join(missing)} image; a study needs both classes.")
    total = sum(len(fs) for fs in by_class.values())
    if not MIN_N <= n <= total:
        raise ReaderStudyError(f"N must be between {MIN_N} and {total} (the films available). Received: N={n}")
    if seed < 0:
        raise ReaderStudyError(f"The seed must be 0 or more. Received: seed={seed}")
    n_pos = round(n * len(by_class["PNEUMONIA"]) / total)
    n_pos = min(max(n_pos, 1), n - 1, len(by_class["PNEUMONIA"]))
    n_neg = n - n_pos
    if n_neg > len(by_class["NORMAL"]):  # not enough normals: take the rest as pneumonia
        n_neg = len(by_class["NORMAL"])
        n_pos = n - n_neg
    rng = np.random.default_rng(seed)
    picked: list[Film] = []
    for c, k in (("NORMAL", n_neg), ("PNEUMONIA", n_pos)):
        idx = rng.choice(len(by_class[c]), size=k, replace=False)
        picked.extend(by_class[c][int(i)] for i in idx)
    order = rng.permutation(len(picked))
    return [picked[int(i)] for i in order]


# --- the study ----------------------------------------------------------------------------
def new_study_id() -> str:
    stamp = _dt.datetime.now(_dt.timezone.utc).strftime("%Y%m%d-%H%M%S")
    return f"rs-{stamp}-{secrets.token_hex(3)}"


def _check_read(label: Any, confidence: Any) -> tuple[str, int]:
    if label not in READS:
        raise ReaderStudyError(f"A read must be one of {', '.join(READS)}. Received: {label!r}")
    try:
        conf = int(confidence)
    except (TypeError, ValueError):
        conf = None
    if conf not in CONFIDENCE_LEVELS or isinstance(confidence, bool):
        raise ReaderStudyError(f"The confidence must be a whole number from 1 to 5. Received: {confidence!r}")
    return label, conf


def _seconds(value: Any) -> float:
    try:
        s = float(value)
    except (TypeError, ValueError):
        raise ReaderStudyError(f"Time per case must be a number of seconds. Received: {value!r}") from None
    if not math.isfinite(s) or s < 0:
        raise ReaderStudyError(f"Time per case must be 0 seconds or more. Received: {value!r}")
    return round(s, 2)


@dataclasses.dataclass
class Case:
    path: str
    truth: str
    first_read: str | None = None
    first_confidence: int | None = None
    first_read_at: str | None = None
    read_seconds: float | None = None  # image shown -> first read recorded
    ai_label: str | None = None  # NORMAL | PNEUMONIA | INDETERMINATE | REJECTED | ERROR
    ai_probability: float | None = None  # calibrated P(pneumonia)
    ai_threshold: float | None = None
    ai_heatmap_method: str | None = None
    revised_read: str | None = None
    revised_confidence: int | None = None
    total_seconds: float | None = None  # image shown -> case closed (pauses excluded)
    done: bool = False

    @property
    def revealed(self) -> bool:
        return self.ai_label is not None

    @property
    def final_read(self) -> str | None:
        """Reader + AI: the revised read, else the first read."""
        return self.revised_read or self.first_read

    @property
    def ai_positive(self) -> bool | None:
        """The model's call at its stored threshold: anything but NORMAL is positive (refer)."""
        return None if self.ai_label is None else self.ai_label != "NORMAL"

    @property
    def changed(self) -> bool:
        return self.revised_read is not None and self.revised_read != self.first_read


@dataclasses.dataclass
class Study:
    study_id: str
    reader_id: str
    model_version: str
    seed: int
    n: int
    source: str
    data_root: str
    threshold: float | None
    cases: list[Case]
    created: str = dataclasses.field(default_factory=lambda: utc_now_iso(zulu=True))
    finished: str | None = None
    schema: int = SCHEMA
    revision: int = 0  # the database revision this copy was loaded from / last saved as (0: never saved)
    writer: str | None = None  # the session that may save it (new_writer_id()); None: nobody yet
    saved: str | None = None  # when it was last saved

    # -- construction ---------------------------------------------------------------------
    @classmethod
    def create(cls, films: Sequence[Film], *, root: str | os.PathLike, model_version: str, seed: int,
               source: str, threshold: float | None = None, reader_id: str | None = None,
               writer: str | None = None) -> "Study":
        if not films:
            raise ReaderStudyError("A study needs at least one film.")
        bad = [(i, f.path, why) for i, f in enumerate(films) if (why := film_path_problem(f.path))]
        if bad:
            i, path, problem = bad[0]
            raise ReaderStudyError(f"Film {i + 1}'s path {path!r} {problem}; films must be relative to their folder.")
        return cls(
            study_id=new_study_id(), reader_id=reader_id or new_reader_id(), model_version=str(model_version),
            seed=int(seed), n=len(films), source=source, data_root=str(root), threshold=threshold,
            cases=[Case(path=f.path, truth=f.truth) for f in films], writer=writer,
        )

    def film_root(self, data_root: str | os.PathLike | None) -> Path:
        """The folder this study's films are read from: the bundled samples for a samples study,
        else ``data_root``, the data folder configured on this machine -- never the root written
        in the study file (a file is input: it could name any folder)."""
        if self.source == SOURCE_SAMPLES:
            return SAMPLES_ROOT
        if data_root is None:
            raise ReaderStudyError("No data folder is configured (PNEUMOSCOPE_DATA_ROOT), so the films of this "
                                   "study cannot be found.")
        return Path(data_root).expanduser()

    def film_path(self, i: int, data_root: str | os.PathLike | None) -> Path:
        """The file of case ``i``, resolved inside :meth:`film_root` (links resolved). Raises
        ReaderStudyError, without touching the file, for an absolute path, ``..`` or a link
        leading out of that folder."""
        c = self._case(i)
        problem = film_path_problem(c.path)
        if problem:
            raise ReaderStudyError(f"Film {i + 1}'s path {c.path!r} in the study file {problem}; films must be "
                                   "relative to the data folder, so it was not read.")
        root = self.film_root(data_root)
        real_root = os.path.realpath(root)
        real = os.path.realpath(os.path.join(real_root, c.path))
        if not fsutil.is_within(real, real_root):
            raise ReaderStudyError(f"Film {i + 1} ({c.path!r}) leads outside the data folder through a symbolic "
                                   "link, so it was not read.")
        return Path(real)

    def film_problems(self, data_root: str | os.PathLike | None) -> list[str]:
        """One message per case whose film cannot be resolved inside :meth:`film_root`."""
        out = []
        for i in range(len(self.cases)):
            try:
                self.film_path(i, data_root)
            except ReaderStudyError as e:
                out.append(str(e))
        return out

    @property
    def current(self) -> int | None:
        """Index of the first case not closed yet (None when all are)."""
        return next((i for i, c in enumerate(self.cases) if not c.done), None)

    @property
    def complete(self) -> bool:
        return self.current is None

    def _case(self, i: int) -> Case:
        if not isinstance(i, int) or not 0 <= i < len(self.cases):
            raise ReaderStudyError(f"There is no case {i!r} in this study of {len(self.cases)}.")
        return self.cases[i]

    # -- the three steps of a case ---------------------------------------------------------
    def record_first_read(self, i: int, label: str, confidence: int, seconds: float) -> Case:
        c = self._case(i)
        if c.first_read is not None:
            raise ReaderStudyError(f"Case {i + 1} already has a first read; it cannot be changed after the AI output.")
        c.first_read, c.first_confidence = _check_read(label, confidence)
        c.read_seconds = _seconds(seconds)
        c.first_read_at = utc_now_iso(zulu=True)
        return c

    def reveal_ai(self, i: int, label: str, probability: float | None, threshold: float | None,
                  heatmap_method: str | None = None) -> Case:
        c = self._case(i)
        if c.first_read is None:
            raise ReaderStudyError(f"Record your own read of case {i + 1} before the AI output is shown.")
        c.ai_label = str(label or "ERROR")
        c.ai_probability = None if probability is None else float(probability)
        c.ai_threshold = None if threshold is None else float(threshold)
        c.ai_heatmap_method = heatmap_method
        return c

    def record_revision(self, i: int, label: str | None, confidence: int | None = None) -> Case:
        """The AI-assisted second read (None = keep the first read)."""
        c = self._case(i)
        if not c.revealed:
            raise ReaderStudyError(f"Case {i + 1}: a revised read comes after the AI output is shown.")
        if label is None:
            c.revised_read = c.revised_confidence = None
        else:
            c.revised_read, c.revised_confidence = _check_read(label, confidence)
        return c

    def finish_case(self, i: int, seconds: float) -> Case:
        c = self._case(i)
        if not c.revealed:
            raise ReaderStudyError(f"Case {i + 1} is not finished: record a read and reveal the AI output first.")
        c.total_seconds = max(_seconds(seconds), c.read_seconds or 0.0)
        c.done = True
        if self.complete and self.finished is None:
            self.finished = utc_now_iso(zulu=True)
        return c

    # -- (de)serialisation ----------------------------------------------------------------
    def to_dict(self) -> dict:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, d: dict) -> "Study":
        """A study from its JSON, every field checked (a file is input): raises ReaderStudyError
        naming the first problem."""
        try:
            fields = {f.name for f in dataclasses.fields(Case)}
            cases = [Case(**{k: v for k, v in c.items() if k in fields}) for c in d["cases"]]
            keep = {f.name for f in dataclasses.fields(cls)} - {"cases"}
            study = cls(cases=cases, **{k: v for k, v in d.items() if k in keep})
        except (KeyError, TypeError, AttributeError) as e:
            raise ReaderStudyError(f"Not a reader-study file ({type(e).__name__}: {e}).") from None
        problem = study._problem()
        if problem:
            raise ReaderStudyError(f"Not a valid reader-study file: {problem}.")
        return study

    def _problem(self) -> str | None:
        """The first field that a study written by this code cannot have (None when all are fine)."""
        if not isinstance(self.study_id, str) or not _ID_RE.match(self.study_id):
            return f"study_id {self.study_id!r} is not a study id"
        if not is_reader_id(self.reader_id, legacy=True):  # r- + hex; R- + 8 hex before issue 23
            return f"reader_id {self.reader_id!r} is not an anonymous reader id"
        for name in ("model_version", "source", "data_root", "created"):
            if not isinstance(getattr(self, name), str):
                return f"{name} is not text"
        for name in ("finished", "writer", "saved"):
            if getattr(self, name) is not None and not isinstance(getattr(self, name), str):
                return f"{name} is not text"
        if not _is_int(self.seed) or not _is_int(self.n) or not _is_int(self.revision) or self.revision < 0:
            return "seed, n and revision must be whole numbers (revision 0 or more)"
        if self.threshold is not None and not _is_probability(self.threshold):
            return "threshold is not a probability"
        if not 1 <= len(self.cases) <= MAX_CASES:
            return f"it has {len(self.cases)} cases"
        return next((p for i, c in enumerate(self.cases, 1) if (p := _case_problem(i, c))), None)


def _is_int(v: Any) -> bool:
    return isinstance(v, int) and not isinstance(v, bool)


def _is_num(v: Any) -> bool:
    """A finite JSON number (bools are not numbers here)."""
    return _is_int(v) or (isinstance(v, float) and math.isfinite(v))


def _is_probability(v: Any) -> bool:
    return _is_num(v) and 0 <= v <= 1


def _case_problem(i: int, c: Case) -> str | None:
    """The first field of case ``i`` (1-based) that a study written by this code cannot have."""
    problem = film_path_problem(c.path)
    if problem:
        return f"case {i}'s film path {c.path!r} {problem} (films must be relative to the data folder)"
    if c.truth not in READS:
        return f"case {i}'s truth {c.truth!r} is not {' or '.join(READS)}"
    for read, conf in ((c.first_read, c.first_confidence), (c.revised_read, c.revised_confidence)):
        if read is not None and read not in READS:
            return f"case {i} has a read {read!r}"
        if conf is not None and (not _is_int(conf) or conf not in CONFIDENCE_LEVELS):
            return f"case {i} has a confidence {conf!r}"
    if c.ai_label is not None and not isinstance(c.ai_label, str):
        return f"case {i}'s AI verdict is not text"
    for name in ("ai_probability", "ai_threshold"):
        v = getattr(c, name)
        if v is not None and not _is_probability(v):
            return f"case {i}'s {name} is not a probability"
    for name in ("read_seconds", "total_seconds"):
        v = getattr(c, name)
        if v is not None and not (_is_num(v) and v >= 0):
            return f"case {i}'s {name} is not a duration"
    if not isinstance(c.done, bool) or (c.done and (c.first_read is None or c.ai_label is None)):
        return f"case {i} is marked done without a read and an AI output"
    return None


# --- store ----------------------------------------------------------------------------------
KIND = "reader_study"  # the documents' kind in core.db; the key is the study id
IMPORT_KIND = "reader_study_import"  # one document: the old study files the import refused
LEGACY_SOURCE = "reader_studies/"  # the old folder, relative to the artifacts root (import_documents_once)
_imported: set[tuple[str, str]] = set()  # (database url, artifacts root) whose old files this process checked
_imported_lock = threading.Lock()


def studies_dir(artifacts: str | os.PathLike | None = None) -> Path:
    """The folder of the study files of before issue 25 (imported into the database once, never
    written again)."""
    from core.layout import Layout

    return Layout.of(artifacts).studies


def _check_id(study_id: Any) -> str:
    if not isinstance(study_id, str) or not _ID_RE.match(study_id):
        raise ReaderStudyError(f"Not a reader-study id: {study_id!r}")
    return study_id


def _database(artifacts=None):
    """The database of ``artifacts``, with that root's old study files imported into it once."""
    from core import db as dbm
    from core.layout import Layout

    root = Layout.of(artifacts).root
    db = dbm.connect(root)
    key = (db.url, str(root.resolve()))
    if key not in _imported:
        with _imported_lock:
            if key not in _imported:
                _import_files(db, root)
                _imported.add(key)
    return db


def _read_file(path: Path) -> Study:
    """A study file of before issue 25, read as a bounded regular file and checked field by field."""
    study_id = _check_id(path.stem)
    try:
        d = fsutil.read_json_file(path, limit=MAX_STUDY_BYTES, expect=dict)
    except fsutil.UnsafeFileError as e:
        raise ReaderStudyError(f"The reader study {study_id} cannot be read: {e}") from None
    except OSError as e:
        raise ReaderStudyError(f"The reader study {study_id} cannot be read ({e.strerror or type(e).__name__}).") from None
    try:
        study = Study.from_dict(d)
    except ReaderStudyError as e:
        raise ReaderStudyError(f"The reader study {study_id} is refused: {e}") from None
    if study.study_id != study_id:
        raise ReaderStudyError(f"The reader study {study_id} is refused: its file names another study "
                               f"({study.study_id}).")
    from core import db as dbm

    # The database bounds a document (core.db.MAX_DOC_BYTES); one over it would abort the whole import.
    size = len(json.dumps(study.to_dict(), separators=(",", ":")).encode())
    if size > dbm.MAX_DOC_BYTES:
        raise ReaderStudyError(f"The reader study {study_id} is refused: it is {size:,} bytes, over the "
                               f"{dbm.MAX_DOC_BYTES:,}-byte limit of the database.")
    return study


def _import_files(db, root: Path) -> None:
    """Import ``<root>/reader_studies/*.json`` once (idempotent, one transaction, a study already in
    the database wins). Refused files are logged and kept as an ``IMPORT_KIND`` document, so that
    :func:`scan_studies` lists them on every instance; the files are left in place, never written."""
    if db.imported(LEGACY_SOURCE):
        return
    folder = studies_dir(root)
    try:
        paths = sorted(folder.glob("rs-*.json")) if folder.is_dir() else []
    except OSError as e:  # not marked as imported: tried again at the next use, nothing lost
        raise ReaderStudyError(f"The reader-study files of before in {folder} cannot be listed "
                               f"({e.strerror or type(e).__name__}), so they cannot be imported yet.") from None
    docs, refused = [], []
    for p in paths:
        try:
            study = _read_file(p)
        except ReaderStudyError as e:
            log.warning("Reader study file %s not imported: %s", p, e)
            refused.append({"file": p.name, "message": str(e)})
            continue
        docs.append((KIND, study.study_id, dict(study.to_dict(), revision=1)))  # the database counts anew
    if refused:
        docs.append((IMPORT_KIND, LEGACY_SOURCE, {"refused": refused}))
    made = db.import_documents_once(LEGACY_SOURCE, docs)
    if made is not None and (docs or refused):
        log.info("Imported %d reader-study document(s) from %s into %s (%d file(s) refused); the files are no "
                 "longer written", made, folder, db.describe(), len(refused))


def _import_problems(db, artifacts) -> list[str]:
    """The import's messages for old study files that are still there."""
    doc = db.get(IMPORT_KIND, LEGACY_SOURCE)
    folder = studies_dir(artifacts)
    return [str(r.get("message")) for r in (doc.data.get("refused") or [] if doc else [])
            if isinstance(r, dict) and os.path.lexists(folder / str(r.get("file", "")))]


def _from_doc(doc) -> Study:
    """A study from its database document, checked like a file (the database is shared: input too)."""
    try:
        study = Study.from_dict(doc.data)
    except ReaderStudyError as e:
        raise ReaderStudyError(f"The reader study {doc.key} is refused: {e}") from None
    if study.study_id != doc.key:
        raise ReaderStudyError(f"The reader study {doc.key} is refused: its document names another study "
                               f"({study.study_id}).")
    study.revision = doc.revision  # the database's revision is the one the compare-and-swap uses
    return study


def _read(study_id: str, artifacts=None, conn=None, db=None) -> tuple[Study | None, Any]:
    """(the saved study or None, its document) -- checked; ReaderStudyError when it is refused."""
    _check_id(study_id)
    db = db or _database(artifacts)
    doc = db.get(KIND, study_id, conn=conn)
    return (None if doc is None else _from_doc(doc)), doc


def _write(db, study: Study, doc, conn) -> tuple[int, str]:
    """Put ``study`` as the revision after ``doc`` (None: create it), compare-and-swap on ``doc``'s
    revision. Returns (revision, saved); the caller advances its copy once the transaction commits."""
    d = study.to_dict()
    d["revision"], d["saved"] = (doc.revision + 1 if doc else 1), utc_now_iso(zulu=True)
    rev = db.put(KIND, study.study_id, d, expect=doc.revision if doc else None, conn=conn)
    return rev, d["saved"]


@contextlib.contextmanager
def _database_errors(what: str) -> Iterator[None]:
    """A database that cannot be reached is a sentence for the page (ReaderStudyError), never a traceback.
    A lost compare-and-swap (core.db.Conflict) is left to the caller."""
    from core import db as dbm

    try:
        yield
    except dbm.Conflict:
        raise
    except dbm.DatabaseError as e:
        log.error("%s: %s", what, e)
        raise ReaderStudyError(f"{what}: {e}") from None


def _conflict(study: Study, disk: Study | None) -> StudyConflict:
    if disk is None:
        return StudyConflict(f"Study {study.study_id} was not saved: another browser session changed it at the same "
                             "time. Every read confirmed before is in the saved study. To go on here, resume it from "
                             "the setup screen and take it over.")
    who = ("another browser session took this study over" if disk.writer != study.writer
           else "another browser session saved it")
    return StudyConflict(
        f"Study {study.study_id} was not saved: {who} (saved {disk.saved or 'earlier'}; "
        f"{sum(c.done for c in disk.cases)} of {disk.n} cases are done there). Every read confirmed "
        "before is in the saved study. To go on here, resume it from the setup screen and take it over.")


def save(study: Study, artifacts=None) -> int:
    """Save ``study`` if, and only if, the database still holds the revision this copy was loaded
    from and this copy's session is its writer: a compare-and-swap on the document's revision, so
    it holds across processes and hosts sharing the database. Atomic (one transaction). Returns
    the new revision (also set on ``study``, only once committed).

    Raises :class:`StudyConflict` -- nothing written -- when another session took the study
    over or saved a newer revision; ReaderStudyError when the saved study is refused (it is not
    overwritten) or the database cannot be reached (nothing written)."""
    from core import db as dbm

    sid = _check_id(study.study_id)
    with _database_errors(f"Study {sid} was not saved"):
        db = _database(artifacts)
        try:
            with db.transaction() as c:
                disk, doc = _read(sid, conn=c, db=db)
                if disk is not None and (disk.revision != study.revision or disk.writer != study.writer):
                    raise _conflict(study, disk)
                if disk is None and study.revision:
                    log.warning("Reader study %s: it had gone from the database; writing this session's copy again", sid)
                rev, saved = _write(db, study, doc, c)
        except dbm.Conflict:  # another instance wrote between our read and our write
            try:
                disk = _read(sid, db=db)[0]
            except ReaderStudyError:
                disk = None
            raise _conflict(study, disk) from None
    study.revision, study.saved = rev, saved
    return rev


def load(study_id: str, artifacts=None) -> Study:
    """The saved study, read-only (to write, use :func:`open_for_writing`)."""
    _check_id(study_id)
    with _database_errors(f"The reader study {study_id} cannot be read"):
        study = _read(study_id, artifacts)[0]
    if study is None:
        raise ReaderStudyError(f"No saved reader study {study_id}.")
    return study


def _claim(db, study_id: str, writer: str, take_over: bool) -> tuple[Study, str | None, bool]:
    """One try of :func:`open_for_writing` in one transaction: (study, previous writer, written)."""
    with db.transaction() as c:
        study, doc = _read(study_id, conn=c, db=db)
        if study is None:
            raise ReaderStudyError(f"No saved reader study {study_id}.")
        if study.complete or study.writer == writer:
            return study, study.writer, False
        if study.writer is not None and not take_over:
            raise StudyInUse(
                f"Study {study_id} is open in another browser session (last saved {study.saved or 'earlier'}, "
                f"{sum(c.done for c in study.cases)} of {study.n} cases done). Take it over here only if that "
                "session is no longer used: it will not be able to save any further read.", study)
        previous = study.writer
        study.writer = writer
        study.revision, study.saved = _write(db, study, doc, c)
    return study, previous, True


def open_for_writing(study_id: str, writer: str, artifacts=None, *, take_over: bool = False) -> Study:
    """The saved study with ``writer`` (this session) as its one writer.

    A study nobody writes, or this session already writes, is claimed. While **another**
    session is its writer this raises :class:`StudyInUse` unless ``take_over``: then this
    session becomes the writer and the other session's next save is refused
    (:class:`StudyConflict`); its saved reads stay. A finished study is returned as it is
    (nothing more is written to it). The claim is a compare-and-swap on the study's revision in
    the shared database: of two sessions claiming one study at once, on any instances, one gets
    it and the other is told it is in use."""
    from core import db as dbm

    if not isinstance(writer, str) or not writer:
        raise ReaderStudyError("A writer id (new_writer_id()) is needed to resume a study.")
    _check_id(study_id)
    with _database_errors(f"The reader study {study_id} cannot be opened"):
        db = _database(artifacts)
        for _ in range(5):  # a lost compare-and-swap: decide again on the copy that won
            try:
                study, previous, written = _claim(db, study_id, writer, take_over)
                break
            except dbm.Conflict:
                continue
        else:
            raise ReaderStudyError(f"The reader study {study_id} kept changing while it was opened; try again.")
    if written and previous is not None:
        from core import audit

        audit.append("reader_study", artifacts=artifacts, outcome="taken_over", study_id=study_id,
                     source="reader_study")
    return study


def scan_studies(artifacts=None) -> tuple[list[Study], list[str]]:
    """(saved studies newest first, one message per study refused by name: a document that fails
    the checks, or an old study file the import refused that is still in place)."""
    from core import db as dbm

    try:
        db = _database(artifacts)
        docs, problems = db.list(KIND), _import_problems(db, artifacts)
    except (dbm.DatabaseError, ReaderStudyError) as e:
        log.error("Reader studies cannot be listed: %s", e)
        return [], [f"The saved reader studies cannot be listed: {e}"]
    out, refused = [], []
    for doc in sorted(docs, key=lambda d: d.key, reverse=True):  # ids start with their UTC time
        try:
            out.append(_from_doc(doc))
        except ReaderStudyError as e:
            log.warning("%s", e)
            refused.append(str(e))
    return out, refused + problems


def list_studies(artifacts=None) -> list[Study]:
    """Saved studies, newest first (refused ones skipped with a log line; see scan_studies)."""
    return scan_studies(artifacts)[0]


def audit_finished(study: Study, artifacts=None) -> dict:
    """One ``reader_study`` audit line for a finished study (ids and counts, no film names), in the
    trail of ``artifacts`` (core.audit)."""
    from core import audit

    return audit.append("reader_study", artifacts=artifacts, outcome="finished", study_id=study.study_id,
                        reader_id=study.reader_id, model_version=study.model_version,
                        threshold=study.threshold, n_cases=len(study.cases), seed=study.seed,
                        source="reader_study")


__all__ = [
    "Case", "CONFIDENCE_HELP", "CONFIDENCE_LEVELS", "DEFAULT_N", "Film", "ReaderStudyError", "Study",
    "StudyConflict", "StudyInUse", "audit_finished", "draw_films", "film_path_problem", "film_pool",
    "list_studies", "load", "new_reader_id", "new_writer_id", "open_for_writing", "save", "scan_studies",
    "studies_dir",
]
