"""Clinician feedback on verdicts, the relabel review queue, and consented pixels (issue 17 A).

Layout under ``<artifacts>/feedback/`` (git-ignored)::

    feedback.jsonl       append-only JSON lines: "feedback", "review" and "pixels_deleted" records
    feedback.lock        the file lock every writer holds (``filelock``)
    images/<sha256>.png  de-identified pixels, only for feedback given with consent

A ``feedback`` record: ``id``, ``time``, ``image_sha256``, ``model_version``, ``probability``,
``threshold``, ``guard_status`` / ``guard_code``, ``reader_id`` (random per browser session,
never a name), ``agree``, ``believed_label`` (NORMAL / PNEUMONIA / unsure), ``comment``,
``pixels_stored``, ``source``. Its status (pending / accepted / rejected, with a reason) is the
latest ``review`` record naming it: nothing is ever rewritten, a decision is a new line.

Crash safety: every line is written with one ``os.write`` on an ``O_APPEND`` descriptor under
the lock, then ``fsync``; a line torn by a crash (no final newline) is skipped on reading and
the next writer starts on a fresh line, so it never glues itself onto the torn one.

Pixels: only when the reader ticks the consent box, and only the decoded grey image written
as a fresh PNG (no DICOM header, no file bytes, no metadata). Every write, review and deletion
is audited (``core.audit``, action ``feedback``), without the comment or the reason (free text).
"""

from __future__ import annotations

import io
import json
import logging
import os
import secrets
import uuid
from pathlib import Path
from typing import Any, Iterable

import numpy as np

from core import audit, locks
from core.config import CLASS_NAMES, default_artifacts_dir
from core.exitcodes import EXIT_DATA, EXIT_OK, EXIT_USAGE
from core.formatting import utc_now_iso
from core.fsutil import atomic_write_bytes

log = logging.getLogger(__name__)

BELIEVED_LABELS = ("NORMAL", "PNEUMONIA", "unsure")
STATUSES = ("pending", "accepted", "rejected")
MAX_COMMENT = 2000
MAX_REASON = 500
CSV_COLUMNS = ("id", "time", "status", "reason", "reviewed", "image_sha256", "model_version", "probability",
               "threshold", "guard_status", "guard_code", "reader_id", "agree", "believed_label", "comment",
               "pixels_stored", "pixels_available", "source")


class FeedbackError(ValueError):
    """A feedback request that cannot be honoured (unknown id, bad label...), for a person."""


def default_feedback_dir(artifacts: str | os.PathLike | None = None) -> Path:
    """``<artifacts>/feedback`` (default registry root: ``$PNEUMOSCOPE_ARTIFACTS`` or ./artifacts)."""
    return (Path(artifacts) if artifacts is not None else default_artifacts_dir()) / "feedback"


def new_reader_id() -> str:
    """An anonymous reader id: random, one per browser session, never derived from a name."""
    return "r-" + secrets.token_hex(6)


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
    def __init__(self, root: str | os.PathLike | None = None, *, audit_path: str | os.PathLike | None = None):
        self.root = Path(root) if root is not None else default_feedback_dir()
        self.log_path = self.root / "feedback.jsonl"
        self.images_dir = self.root / "images"
        self.audit_path = audit_path

    # --- low level -------------------------------------------------------------------------------
    def _lock(self):
        return locks.file_lock(self.root / "feedback.lock", timeout=30)

    def _append(self, record: dict) -> dict:
        line = json.dumps(record, default=str, separators=(",", ":")).encode() + b"\n"
        with self._lock():
            fd = os.open(str(self.log_path), os.O_RDWR | os.O_APPEND | os.O_CREAT, 0o640)
            try:
                size = os.fstat(fd).st_size
                if size and os.pread(fd, 1, size - 1) != b"\n":
                    line = b"\n" + line  # a torn last line (crash mid-write): start a fresh one
                os.write(fd, line)
                os.fsync(fd)
            finally:
                os.close(fd)
        return record

    def records(self) -> list[dict]:
        """Every readable record, oldest first (a torn or damaged line is skipped)."""
        if not self.log_path.is_file():
            return []
        out = []
        with open(self.log_path, "rb") as fh:
            for raw in fh:
                if not raw.endswith(b"\n"):
                    continue  # torn last line
                try:
                    rec = json.loads(raw)
                except (json.JSONDecodeError, UnicodeDecodeError):
                    continue
                if isinstance(rec, dict) and rec.get("type") in ("feedback", "review", "pixels_deleted"):
                    out.append(rec)
        return out

    def pixel_path(self, sha256: str) -> Path:
        if not isinstance(sha256, str) or len(sha256) != 64 or any(c not in "0123456789abcdef" for c in sha256):
            raise FeedbackError(f"Not a SHA-256 hex digest: {sha256!r}")
        return self.images_dir / f"{sha256}.png"

    def _save_pixels(self, sha256: str, image: np.ndarray) -> Path:
        from PIL import Image

        dst = self.pixel_path(sha256)
        self.images_dir.mkdir(parents=True, exist_ok=True)
        buf = io.BytesIO()
        Image.fromarray(grey_pixels(image), mode="L").save(buf, format="PNG")  # a fresh PNG: no metadata
        atomic_write_bytes(dst, buf.getvalue())
        return dst

    def _audit(self, outcome: str, **fields: Any) -> None:
        audit.append("feedback", path=self.audit_path, outcome=outcome, **fields)

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
        if not reader_id or not str(reader_id).startswith("r-"):
            raise FeedbackError("reader_id must be an anonymous id from new_reader_id().")
        stored = False
        if consent and pixels is not None:
            with self._lock():
                self._save_pixels(image_sha256, pixels)
            stored = True
        rec = {
            "type": "feedback", "id": uuid.uuid4().hex[:12], "time": utc_now_iso("milliseconds", zulu=True), "image_sha256": image_sha256,
            "model_version": model_version, "probability": None if probability is None else float(probability),
            "threshold": None if threshold is None else float(threshold), "guard_status": guard_status,
            "guard_code": guard_code, "reader_id": str(reader_id), "agree": bool(agree),
            "believed_label": believed_label, "comment": str(comment or "")[:MAX_COMMENT], "pixels_stored": stored,
            "source": source,
        }
        self._append(rec)
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
            try:
                item["pixels_available"] = self.pixel_path(item["image_sha256"]).is_file()
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
        """CSV rows of ``items`` (already read with :meth:`items`), else of ``self.items(**filters)``."""
        return [{k: it.get(k) for k in CSV_COLUMNS} for it in (self.items(**filters) if items is None else items)]

    def export_csv(self, items: list[dict] | None = None, **filters: Any) -> bytes:
        """The (filtered) queue as CSV through ``core.csvsafe`` (formula cells neutralised)."""
        from core.csvsafe import csv_bytes

        return csv_bytes(self.export_rows(items, **filters), CSV_COLUMNS)


# --- CLI: python -m core feedback list|export|accept|reject ---------------------------------------
def add_cli(sub) -> None:
    """The ``feedback`` subcommand (called by core.cli.build_parser)."""
    p = sub.add_parser("feedback", help="clinician feedback: list / export the review queue, accept / reject relabels")
    p.add_argument("action", choices=["list", "export", "accept", "reject"])
    p.add_argument("id", nargs="?", help="feedback id (accept / reject)")
    p.add_argument("--reason", default=None, help="why (required for accept / reject)")
    p.add_argument("--disagree", action="store_true", help="only disagreements (list / export)")
    p.add_argument("--model-version", default=None, help="only feedback on this model version (list / export)")
    p.add_argument("--status", default=None, choices=STATUSES, help="only this status (list / export)")
    p.add_argument("--out", default=None, help="CSV file (export; default: stdout)")


def cmd_feedback(args, registry) -> int:
    import sys

    from core.formatting import printable  # names and ids are printed as one visible line (issue 21)

    store = FeedbackStore(default_feedback_dir(registry.root), audit_path=audit.default_audit_path(registry.root))
    filters = {"disagreement": True if args.disagree else None, "model_version": args.model_version, "status": args.status}
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
