"""Clinician feedback on verdicts, the relabel review queue, and consented pixels (issue 17 A).

Where things are::

    shared database (core.db), stream "feedback"   append-only "feedback", "review" and
                                                   "pixels_deleted" records (no pixels)
    <artifacts>/feedback/images/<sha256>.png       de-identified pixels, only for feedback given
                                                   with consent (a file on the shared artifacts path)
    <artifacts>/feedback/feedback.lock             the file lock the pixel writes and the clean-up hold

A ``feedback`` record: ``id``, ``time``, ``image_sha256``, ``model_version``, ``probability``,
``threshold``, ``guard_status`` / ``guard_code``, ``reader_id`` (random per browser session,
never a name), ``agree``, ``believed_label`` (NORMAL / PNEUMONIA / unsure), ``comment``,
``pixels_stored``, ``source``. Its status (pending / accepted / rejected, with a reason) is the
latest ``review`` record naming it: nothing is ever rewritten, a decision is a new record.

The records live in the database of the artifacts root that holds the feedback folder (its
parent: ``core.layout`` puts it at ``<artifacts>/feedback``), or in the ``Database`` given, so
feedback written by any app instance sharing the database appears in one review queue. Each
record is one committed row of the append-only ``event_log`` table (the database refuses UPDATE
and DELETE on it). Before the database the records were the JSON-lines file
``<artifacts>/feedback/feedback.jsonl``: it is imported into the stream once, at the first use of
the store (idempotent by its path relative to the artifacts root, across instances; a torn or
damaged line is skipped and counted in a log line), and left in place: **it is no longer
written**. A database that cannot be reached raises ``core.db.DatabaseError`` (a sentence).

Pixels: only when the reader ticks the consent box, and only the decoded grey image written
as a fresh PNG (no DICOM header, no file bytes, no metadata). Every write, review and deletion
is audited (``core.audit``, action ``feedback``), without the comment or the reason (free text).

Pixels and their record are written in an order that leaves no orphan image (issue 21: a
``kill -9`` between the two writes left consented PNGs with no record, and ``.tmp`` files
nobody listed): under the store's file lock, the PNG goes to ``images/.<sha256>.<record id>.png.tmp``
(fsynced), then the record is appended, then the temporary file is renamed into place. A crash
can leave only a temporary file: without its record it is removed, with its record it is
finished (renamed into place, unless the admin deleted that image's pixels since).
:meth:`FeedbackStore.debris` lists every leftover in ``images/`` (also orphan PNGs from older
versions and anything else that is not a stored image) and :meth:`FeedbackStore.clean_debris`
(Admin -> Feedback, ``python -m core feedback clean``) finishes or removes those older than
``DEBRIS_MIN_AGE_S``, under the same lock as the writers, each one audited.
"""

from __future__ import annotations

import io
import logging
import os
import re
import stat
import time
import uuid
from pathlib import Path
from typing import TYPE_CHECKING, Any, Iterable

import numpy as np

from core import audit, locks
from core.config import CLASS_NAMES
from core.exitcodes import EXIT_DATA, EXIT_OK, EXIT_USAGE
from core.formatting import utc_now_iso
from core.fsutil import fsync_dir
from core.readerid import is_reader_id, new_reader_id  # one anonymous id for feedback and reader studies

if TYPE_CHECKING:
    from core.db import Database

log = logging.getLogger(__name__)

STREAM = "feedback"  # the database stream of the records (core.db)
BELIEVED_LABELS = ("NORMAL", "PNEUMONIA", "unsure")
STATUSES = ("pending", "accepted", "rejected")
MAX_COMMENT = 2000
MAX_REASON = 500
# Record fields written to the CSV export; the probabilities go out in percent, as *_pct columns
# (core.formatting.pct_columns), like every other CSV of the project.
CSV_FIELDS = ("id", "time", "status", "reason", "reviewed", "image_sha256", "model_version", "probability",
              "threshold", "guard_status", "guard_code", "reader_id", "agree", "believed_label", "comment",
              "pixels_stored", "pixels_available", "source")
CSV_PERCENT_FIELDS = ("probability", "threshold")
CSV_COLUMNS = tuple(f"{c}_pct" if c in CSV_PERCENT_FIELDS else c for c in CSV_FIELDS)


# Leftovers of interrupted writes older than this are cleaned (a write in progress takes well
# under a second, and it holds the store lock that the cleaner takes too).
DEBRIS_MIN_AGE_S = 60.0
_PENDING_RE = re.compile(r"^\.([0-9a-f]{64})\.([0-9a-f]{12})\.png\.tmp$")
_PIXELS_RE = re.compile(r"^([0-9a-f]{64})\.png$")
DEBRIS_KINDS = {
    "unfinished": "pixels whose record was written but not yet moved into place: finish (rename into place)",
    "temporary": "a temporary file of an interrupted write with no record: remove",
    "orphan": "consented pixels with no feedback record that keeps them: remove",
    "link": "a symbolic link (never followed): remove the link",
    "unknown": "not something the feedback store writes: left alone, remove it by hand",
}


class FeedbackError(ValueError):
    """A feedback request that cannot be honoured (unknown id, bad label...), for a person."""


def default_feedback_dir(artifacts: str | os.PathLike | None = None) -> Path:
    """``<artifacts>/feedback`` (default registry root: ``$PNEUMOSCOPE_ARTIFACTS`` or ./artifacts)."""
    from core.layout import Layout

    return Layout.of(artifacts).feedback


def grey_pixels(image: np.ndarray) -> np.ndarray:
    """The decoded image as 2-D uint8 grey (RGB -> luminance; grey RGB copies are exact)."""
    a = np.asarray(image)
    if a.ndim == 3:
        if a.shape[2] >= 3:
            rgb = a[..., :3]
            if np.array_equal(rgb[..., 0], rgb[..., 1]) and np.array_equal(rgb[..., 0], rgb[..., 2]):
                a = rgb[..., 0]
            else:
                a = rgb.astype(np.float32) @ np.array([0.299, 0.587, 0.114], np.float32)
        else:
            a = a[..., 0]
    if a.ndim != 2:
        raise FeedbackError(f"Expected a 2-D or (h, w, c) image. Received shape {np.asarray(image).shape}.")
    if a.dtype != np.uint8:
        a = np.clip(np.rint(a), 0, 255).astype(np.uint8)
    return a


class FeedbackStore:
    """The feedback of one artifacts root. ``root``: its feedback folder (pixels; default
    ``<artifacts>/feedback`` of the default root); ``db``: the database of the records (default: that
    of the artifacts root holding ``root``). Audit events go to the same database."""

    def __init__(self, root: str | os.PathLike | None = None, *, db: "Database | None" = None):
        self.root = Path(root) if root is not None else default_feedback_dir()
        self.artifacts = self.root.parent
        self.images_dir = self.root / "images"
        self.legacy_log = self.root / "feedback.jsonl"  # imported once, no longer written
        self._given_db = db

    # --- low level -------------------------------------------------------------------------------
    def _lock(self):
        """The file lock of the pixel writes and their clean-up (records need none: the database)."""
        self.root.mkdir(parents=True, exist_ok=True)
        return locks.file_lock(self.root / "feedback.lock", timeout=30)

    @property
    def db(self) -> "Database":
        """The records' database, after the one-time import of the old ``feedback.jsonl``."""
        from core import db as dbm

        if self._given_db is not None:
            return self._given_db
        d = dbm.connect(self.artifacts)
        dbm.import_jsonl_once(d, self.artifacts, f"{self.root.name}/feedback.jsonl", STREAM)
        return d

    def _append(self, record: dict) -> dict:
        """Append one record (one committed row; raises core.db.DatabaseError)."""
        self.db.append(STREAM, record)
        return record

    def records(self) -> list[dict]:
        """Every readable record, oldest first (in the order the database committed them)."""
        return [rec for _, rec in self.db.events(STREAM) if rec.get("type") in ("feedback", "review", "pixels_deleted")]

    def pixel_path(self, sha256: str) -> Path:
        if not isinstance(sha256, str) or len(sha256) != 64 or any(c not in "0123456789abcdef" for c in sha256):
            raise FeedbackError(f"Not a SHA-256 hex digest: {sha256!r}")
        return self.images_dir / f"{sha256}.png"

    @staticmethod
    def _png(image: np.ndarray) -> bytes:
        from PIL import Image

        buf = io.BytesIO()
        Image.fromarray(grey_pixels(image), mode="L").save(buf, format="PNG")  # a fresh PNG: no metadata
        return buf.getvalue()

    def _pending_path(self, sha256: str, record_id: str) -> Path:
        return self.images_dir / f".{sha256}.{record_id}.png.tmp"

    def _write_pending(self, sha256: str, record_id: str, png: bytes) -> Path:
        """The PNG under its temporary name, fsynced (the caller holds the store lock)."""
        self.images_dir.mkdir(parents=True, exist_ok=True)
        tmp = self._pending_path(sha256, record_id)
        fd = os.open(str(tmp), os.O_WRONLY | os.O_CREAT | os.O_EXCL | getattr(os, "O_NOFOLLOW", 0), 0o640)
        try:
            with os.fdopen(fd, "wb") as fh:
                fh.write(png)
                fh.flush()
                os.fsync(fh.fileno())
        except BaseException:
            _unlink_quietly(tmp)
            raise
        return tmp

    def _finish_pending(self, tmp: Path, sha256: str) -> None:
        """Move pixels whose record is written into place (the caller holds the store lock)."""
        os.replace(tmp, self.pixel_path(sha256))
        fsync_dir(self.images_dir)

    def _audit(self, outcome: str, **fields: Any) -> None:
        audit.append("feedback", artifacts=self._given_db or self.artifacts, outcome=outcome, **fields)

    # --- writes ----------------------------------------------------------------------------------
    def record(self, *, image_sha256: str, model_version: str | None, probability: float | None,
               threshold: float | None, guard_status: str | None, guard_code: str | None, reader_id: str,
               agree: bool, believed_label: str, comment: str = "", consent: bool = False,
               pixels: np.ndarray | None = None, source: str = "app") -> dict:
        """Append one feedback record. Pixels are written only when ``consent`` is True (and
        ``pixels`` given); without consent they are never touched."""
        if believed_label not in BELIEVED_LABELS:
            raise FeedbackError(f"believed_label must be one of {BELIEVED_LABELS}. Received: {believed_label!r}")
        self.pixel_path(image_sha256)  # validates the hash
        if not is_reader_id(reader_id):
            raise FeedbackError(f"reader_id must be an anonymous id from new_reader_id() ('r-' + hex digits). "
                                f"Received: reader_id={reader_id!r}")
        png = self._png(pixels) if consent and pixels is not None else None  # encoded outside the lock
        stored = png is not None
        rec = {
            "type": "feedback", "id": uuid.uuid4().hex[:12], "time": utc_now_iso("milliseconds", zulu=True), "image_sha256": image_sha256,
            "model_version": model_version, "probability": None if probability is None else float(probability),
            "threshold": None if threshold is None else float(threshold), "guard_status": guard_status,
            "guard_code": guard_code, "reader_id": str(reader_id), "agree": bool(agree),
            "believed_label": believed_label, "comment": str(comment or "")[:MAX_COMMENT], "pixels_stored": stored,
            "source": source,
        }
        if png is None:
            self._append(rec)
        else:  # pixels (temporary name) -> record -> rename: a crash never leaves an orphan image
            with self._lock():
                tmp = self._write_pending(image_sha256, rec["id"], png)
                try:
                    self._append(rec)
                except BaseException:
                    _unlink_quietly(tmp)  # no record: no pixels either
                    raise
                try:
                    self._finish_pending(tmp, image_sha256)
                except OSError as e:  # the record is written: clean_debris finishes the rename
                    log.error("Feedback %s: pixels written but not moved into place (%s); "
                              "the admin's clean-up finishes it", rec["id"], e)
        self._audit("recorded", feedback_id=rec["id"], image_sha256=image_sha256, model_version=model_version,
                    agree=rec["agree"], believed_label=believed_label, pixels_stored=stored, reader_id=rec["reader_id"],
                    source=source)
        return rec

    def record_prediction(self, pred: Any, *, reader_id: str, agree: bool, believed_label: str, comment: str = "",
                          consent: bool = False, source: str = "app") -> dict:
        """:meth:`record` for a ``core.predict.Prediction``; the pixels are its decoded display
        copy (never the uploaded file), and only with consent."""
        return self.record(
            image_sha256=pred.sha256, model_version=pred.model_version, probability=pred.probability,
            threshold=pred.threshold, guard_status=pred.guard_status, guard_code=pred.guard_code,
            reader_id=reader_id, agree=agree, believed_label=believed_label, comment=comment, consent=consent,
            pixels=getattr(pred, "image", None) if consent else None, source=source,
        )

    def review(self, feedback_id: str, decision: str, reason: str, *, source: str = "app") -> dict:
        """Accept or reject a feedback record's label (a new ``review`` line; the latest wins)."""
        if decision not in ("accepted", "rejected"):
            raise FeedbackError(f"decision must be 'accepted' or 'rejected'. Received: {decision!r}")
        reason = str(reason or "").strip()
        if not reason:
            raise FeedbackError("A reason is required to accept or reject feedback.")
        fb = {r["id"]: r for r in self.records() if r["type"] == "feedback"}.get(feedback_id)
        if fb is None:
            raise FeedbackError(f"No feedback record with id {feedback_id!r}.")
        if decision == "accepted" and fb.get("believed_label") not in CLASS_NAMES:
            raise FeedbackError("An 'unsure' record names no label to accept; reject it instead.")
        rec = {"type": "review", "id": uuid.uuid4().hex[:12], "feedback_id": feedback_id, "time": utc_now_iso("milliseconds", zulu=True),
               "decision": decision, "reason": reason[:MAX_REASON], "source": source}
        self._append(rec)
        self._audit(decision, feedback_id=feedback_id, image_sha256=fb.get("image_sha256"),
                    believed_label=fb.get("believed_label"), source=source)
        return rec

    def accept(self, feedback_id: str, reason: str, *, source: str = "app") -> dict:
        return self.review(feedback_id, "accepted", reason, source=source)

    def reject(self, feedback_id: str, reason: str, *, source: str = "app") -> dict:
        return self.review(feedback_id, "rejected", reason, source=source)

    def delete_pixels(self, sha256: str, *, source: str = "app") -> bool:
        """Delete the stored pixels of one image (audited). Returns whether a file was removed."""
        p = self.pixel_path(sha256)
        with self._lock():
            existed = p.is_file()
            if existed:
                p.unlink()
        self._append({"type": "pixels_deleted", "id": uuid.uuid4().hex[:12], "image_sha256": sha256, "time": utc_now_iso("milliseconds", zulu=True),
                      "source": source})
        self._audit("pixels_deleted", image_sha256=sha256, pixels_stored=False, source=source)
        return existed

    # --- reads -----------------------------------------------------------------------------------
    def items(self, *, disagreement: bool | None = None, model_version: str | None = None,
              status: str | Iterable[str] | None = None) -> list[dict]:
        """Feedback records with their current ``status`` / ``reason`` / ``reviewed`` time and
        ``pixels_available``, newest first; optionally only disagreements (True) / agreements
        (False), one model version, some statuses."""
        recs = self.records()
        kept = _consented(recs)
        reviews: dict[str, dict] = {}
        for r in recs:
            if r["type"] == "review":
                reviews[r.get("feedback_id")] = r
        wanted = {status} if isinstance(status, str) else (set(status) if status else None)
        out = []
        for r in recs:
            if r["type"] != "feedback":
                continue
            rv = reviews.get(r["id"])
            item = {**r, "status": rv["decision"] if rv else "pending", "reason": rv["reason"] if rv else "",
                    "reviewed": rv["time"] if rv else ""}
            if disagreement is not None and item.get("agree") == disagreement:
                continue
            if model_version and item.get("model_version") != model_version:
                continue
            if wanted is not None and item["status"] not in wanted:
                continue
            # Pixels count only with a record that keeps them (no orphan file reaches training).
            try:
                item["pixels_available"] = item["image_sha256"] in kept and _is_regular(self.pixel_path(item["image_sha256"]))
            except FeedbackError:
                item["pixels_available"] = False
            out.append(item)
        out.reverse()
        return out

    def model_versions(self) -> list[str]:
        return sorted({str(r.get("model_version")) for r in self.records() if r["type"] == "feedback" and r.get("model_version")})

    def stored_pixels(self) -> list[dict]:
        """What pixels are stored: one row per PNG (hash, bytes, size, feedback ids, statuses)."""
        from PIL import Image

        if not self.images_dir.is_dir():
            return []
        by_sha: dict[str, list[dict]] = {}
        for it in self.items():
            by_sha.setdefault(it["image_sha256"], []).append(it)
        rows = []
        for p in sorted(self.images_dir.glob("*.png")):
            sha = p.stem
            if not _PIXELS_RE.match(p.name) or not _is_regular(p):
                continue  # listed by debris(), never opened through a link
            try:
                with Image.open(p) as im:
                    w, h = im.size
            except OSError:
                w = h = None
            its = by_sha.get(sha, [])
            rows.append({"image_sha256": sha, "bytes": p.stat().st_size, "width": w, "height": h,
                         "feedback_ids": ",".join(i["id"] for i in its),
                         "statuses": ",".join(sorted({i["status"] for i in its}))})
        return rows

    # --- leftovers of interrupted writes (issue 21) ----------------------------------------------
    def debris(self, *, now: float | None = None) -> list[dict]:
        """Everything in ``images/`` that is not a stored image kept by a record, oldest first:
        ``{"name", "kind", "image_sha256", "bytes", "age_s", "action"}`` (kinds: DEBRIS_KINDS)."""
        return self._debris(self.records(), time.time() if now is None else now)

    def _debris(self, recs: list[dict], now: float) -> list[dict]:
        if not self.images_dir.is_dir() or self.images_dir.is_symlink():
            return []
        kept = _consented(recs)
        finishable = _finishable(recs)
        rows = []
        with os.scandir(self.images_dir) as it:
            for entry in it:
                try:
                    st = entry.stat(follow_symlinks=False)
                except OSError:
                    continue  # removed meanwhile
                name, sha = entry.name, None
                m_pending, m_pixels = _PENDING_RE.match(name), _PIXELS_RE.match(name)
                if stat.S_ISLNK(st.st_mode):
                    kind = "link"
                elif not stat.S_ISREG(st.st_mode):
                    kind = "unknown"
                elif m_pixels:
                    sha = m_pixels.group(1)
                    if sha in kept:
                        continue  # a stored image with its record: not debris
                    kind = "orphan"
                elif m_pending:
                    sha = m_pending.group(1)
                    kind = "unfinished" if (sha, m_pending.group(2)) in finishable else "temporary"
                elif name.endswith(".tmp"):
                    kind = "temporary"  # e.g. an atomic write of an older version
                else:
                    kind = "unknown"
                rows.append({"name": name, "kind": kind, "image_sha256": sha, "bytes": st.st_size,
                             "age_s": round(max(0.0, now - st.st_mtime), 1), "action": DEBRIS_KINDS[kind]})
        rows.sort(key=lambda r: -r["age_s"])
        return rows

    def clean_debris(self, *, min_age_s: float = DEBRIS_MIN_AGE_S, source: str = "app") -> dict:
        """Finish or remove the leftovers older than ``min_age_s`` (under the store lock, so no
        write of this machine is in progress): unfinished pixels whose record still keeps them
        are moved into place, temporary files, orphan images and links are removed, anything
        else is left. Each file is audited. Returns counts: finished, removed, too_young, left."""
        counts = {"finished": 0, "removed": 0, "too_young": 0, "left": 0}
        with self._lock():
            now = time.time()
            for row in self._debris(self.records(), now):
                path = self.images_dir / row["name"]
                if row["kind"] == "unknown":
                    counts["left"] += 1
                    continue
                if row["age_s"] < min_age_s:
                    counts["too_young"] += 1
                    continue
                try:
                    if row["kind"] == "unfinished" and not _is_regular(self.pixel_path(row["image_sha256"])):
                        self._finish_pending(path, row["image_sha256"])
                        counts["finished"] += 1
                        outcome = "pixels_completed"
                    else:  # unfinished with the image already in place is a duplicate: remove it
                        path.unlink()
                        counts["removed"] += 1
                        outcome = "debris_removed"
                except FileNotFoundError:
                    continue
                except OSError as e:
                    log.warning("Feedback leftover %s could not be cleaned: %s", row["name"], e)
                    counts["left"] += 1
                    continue
                self._audit(outcome, image_sha256=row["image_sha256"], pixels_stored=outcome == "pixels_completed",
                            source=source)
        return counts

    def training_items(self) -> list[dict]:
        """Accepted feedback usable for training: a NORMAL/PNEUMONIA label and stored pixels.
        One per image (the latest accepted record wins), oldest first:
        ``{"image_sha256", "label", "path", "feedback_id"}``."""
        by_sha: dict[str, dict] = {}
        for it in reversed(self.items(status="accepted")):  # oldest first, later ones win
            if it.get("believed_label") in CLASS_NAMES and it.get("pixels_available"):
                by_sha[it["image_sha256"]] = {"image_sha256": it["image_sha256"], "label": it["believed_label"],
                                              "path": str(self.pixel_path(it["image_sha256"])), "feedback_id": it["id"]}
        return list(by_sha.values())

    def load_training_arrays(self, size: int):
        """The accepted, consented feedback images as a ``core.dataset.ArraySet`` at ``size`` px
        (``paths`` are ``feedback/<sha256>.png``), plus the list of their hashes."""
        from core.dataset import ArraySet
        from core.imageio import load_image, resize_for_model

        items = self.training_items()
        xs, ys, paths, errors, hashes = [], [], [], [], []
        for it in items:
            try:
                xs.append(resize_for_model(load_image(it["path"]).array, size))
            except Exception as e:  # noqa: BLE001 - one bad file must not stop a training
                errors.append((it["path"], str(e)))
                continue
            ys.append(CLASS_NAMES.index(it["label"]))
            paths.append(f"feedback/{it['image_sha256']}.png")
            hashes.append(it["image_sha256"])
        x = np.stack(xs) if xs else np.zeros((0, size, size, 3), np.uint8)
        return ArraySet(x.astype(np.uint8), np.asarray(ys, np.int32), paths, errors), hashes

    def export_rows(self, items: list[dict] | None = None, **filters: Any) -> list[dict]:
        """CSV rows of ``items`` (already read with :meth:`items`), else of ``self.items(**filters)``;
        probability and threshold in percent (``probability_pct``, ``threshold_pct``)."""
        from core.formatting import pct_columns

        return [pct_columns({k: it.get(k) for k in CSV_FIELDS}, CSV_PERCENT_FIELDS)
                for it in (self.items(**filters) if items is None else items)]

    def export_csv(self, items: list[dict] | None = None, **filters: Any) -> bytes:
        """The (filtered) queue as CSV through ``core.csvsafe`` (formula cells neutralised)."""
        from core.csvsafe import csv_bytes

        return csv_bytes(self.export_rows(items, **filters), CSV_COLUMNS)


def _is_regular(path: Path) -> bool:
    """A regular file reached without following a symlink."""
    try:
        return stat.S_ISREG(os.lstat(path).st_mode)
    except OSError:
        return False


def _unlink_quietly(path: Path) -> None:
    try:
        os.unlink(path)
    except OSError:
        pass


def _pixel_events(recs: list[dict]) -> dict[str, list[tuple[str, str | None]]]:
    """Per image hash, its pixel events in log order: ("stored", record id) / ("deleted", None)."""
    events: dict[str, list[tuple[str, str | None]]] = {}
    for r in recs:
        sha = r.get("image_sha256")
        if not isinstance(sha, str):
            continue
        if r["type"] == "feedback" and r.get("pixels_stored") is True:
            events.setdefault(sha, []).append(("stored", r.get("id")))
        elif r["type"] == "pixels_deleted":
            events.setdefault(sha, []).append(("deleted", None))
    return events


def _consented(recs: list[dict]) -> set[str]:
    """Hashes whose pixels a record keeps: consent given after the last deletion of them."""
    return {sha for sha, ev in _pixel_events(recs).items() if ev[-1][0] == "stored"}


def _finishable(recs: list[dict]) -> set[tuple[str, str]]:
    """(hash, record id) of consented records not followed by a deletion of that image's pixels."""
    out = set()
    for sha, ev in _pixel_events(recs).items():
        for kind, rid in reversed(ev):
            if kind == "deleted":
                break
            out.add((sha, rid))
    return out


# --- CLI: python -m core feedback list|export|accept|reject|clean ---------------------------------
def add_cli(sub) -> None:
    """The ``feedback`` subcommand (called by core.cli.build_parser)."""
    p = sub.add_parser("feedback", help="clinician feedback: list / export the review queue, accept / reject relabels")
    p.add_argument("action", choices=["list", "export", "accept", "reject", "clean"],
                   help="clean: finish or remove leftovers of interrupted pixel writes (older than "
                        f"{int(DEBRIS_MIN_AGE_S)} s) in the feedback images folder")
    p.add_argument("id", nargs="?", help="feedback id (accept / reject)")
    p.add_argument("--reason", default=None, help="why (required for accept / reject)")
    p.add_argument("--disagree", action="store_true", help="only disagreements (list / export)")
    p.add_argument("--model-version", default=None, help="only feedback on this model version (list / export)")
    p.add_argument("--status", default=None, choices=STATUSES, help="only this status (list / export)")
    p.add_argument("--out", default=None, help="CSV file (export; default: stdout)")


def cmd_feedback(args, registry) -> int:
    import sys

    from core.formatting import printable  # names and ids are printed as one visible line (issue 21)

    store = FeedbackStore(default_feedback_dir(registry.root))
    filters = {"disagreement": True if args.disagree else None, "model_version": args.model_version, "status": args.status}
    if args.action == "clean":
        before = store.debris()
        for row in before:
            print(f"{row['kind']:<10}  {row['age_s']:>9.0f} s  {printable(row['name'], 100)}")
        c = store.clean_debris(source="cli")
        print(f"{len(before)} leftover(s): {c['finished']} finished, {c['removed']} removed, "
              f"{c['too_young']} younger than {int(DEBRIS_MIN_AGE_S)} s kept, {c['left']} left for a person")
        return EXIT_OK
    if args.action == "list":
        items = store.items(**filters)
        if not items:
            print("no feedback")
            return EXIT_OK
        print(f"{'id':<12}  {'time':<24}  {'status':<8}  {'agree':<5}  {'believed':<9}  {'model':<20}  {'pixels':<6}  sha256")
        for it in items:  # fields read from the log: one visible line per record
            print(f"{printable(it['id']):<12}  {printable(it['time']):<24}  {printable(it['status']):<8}  {('yes' if it['agree'] else 'no'):<5}  "
                  f"{printable(it['believed_label']):<9}  {printable(it.get('model_version') or '', 20):<20}  "
                  f"{('yes' if it['pixels_available'] else 'no'):<6}  {printable(it['image_sha256'])[:16]}")
        print(f"{len(items)} record(s)")
        return EXIT_OK
    if args.action == "export":
        data = store.export_csv(**filters)
        if args.out:
            Path(args.out).write_bytes(data)
            print(f"wrote {printable(args.out)}", file=sys.stderr)
        else:
            sys.stdout.write(data.decode("utf-8"))
        return EXIT_OK
    if not args.id or not args.reason:
        print(f"error: feedback {args.action} needs an id and --reason", file=sys.stderr)
        return EXIT_USAGE
    try:
        store.review(args.id, "accepted" if args.action == "accept" else "rejected", args.reason, source="cli")
    except FeedbackError as e:
        print(f"error: {printable(e)}", file=sys.stderr)
        return EXIT_DATA
    print(f"{printable(args.id)}: {args.action}ed")
    return EXIT_OK


__all__ = ["BELIEVED_LABELS", "FeedbackError", "FeedbackStore", "add_cli", "cmd_feedback", "default_feedback_dir",
           "grey_pixels", "new_reader_id"]
