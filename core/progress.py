"""Reading a training job's progress for the UI: its events, a running summary, its log.

The job (``core.job_runner``, for the admin page's jobs and ``python -m core train`` alike)
appends ``core.events.ProgressEvent.to_dict()`` records (plus the ``time`` they were written) to
the stream ``job:<job_id>`` of the shared database (``core.db``), so every app instance shows the
same progress, and its log to ``<artifacts>/jobs/<job_id>/job.log`` on the shared artifacts path;
this module only reads them. Functions take a ``core.jobs.JobInfo``; :func:`log_tail` also takes
a job folder path.
"""

from __future__ import annotations

import datetime as _dt
import os
from pathlib import Path
from typing import TYPE_CHECKING, Iterable

if TYPE_CHECKING:
    from core.jobs import JobInfo

EVENTS_READ_LIMIT = 5000  # events read per call; the next call goes on from there


def read_events(job: "JobInfo", offset: int = 0) -> tuple[list[dict], int]:
    """The job's progress events after sequence number ``offset`` (0: from the start); returns
    (events, new offset). Reads at most :data:`EVENTS_READ_LIMIT` events per call."""
    from core import jobs

    rows = jobs.database(job.artifacts).events(job.stream, after=offset, limit=EVENTS_READ_LIMIT)
    return [rec for _, rec in rows], (rows[-1][0] if rows else offset)


def _open_regular(path: Path):
    """``path`` opened for reading if it is a regular file reached without a symlink, else None:
    a FIFO there must not hang the page, a link to /dev/zero must not be read (issue 21)."""
    from core.fsutil import open_regular

    try:
        return open_regular(path)
    except OSError:  # UnsafeFileError included
        return None


def _time(value) -> float | None:
    if not isinstance(value, str) or not value:
        return None
    try:
        return _dt.datetime.fromisoformat(value.replace("Z", "+00:00")).timestamp()
    except ValueError:
        return None


TRAIN_PHASES = ("head", "finetune")


class ProgressSummary:
    """Folds progress events into what the page shows (phase, epoch, batch bar, curves, ETA).

    Incremental: keep one per job, ``update`` with the events read since the last offset.
    """

    def __init__(self) -> None:
        self.offset = 0
        self.phase: str | None = None
        self.message = ""
        self.epoch: int | None = None
        self.epochs: int | None = None
        self.batch: int | None = None
        self.batches: int | None = None
        self.batch_metrics: dict = {}
        self.elapsed_s = 0.0
        self.done = False
        self.n_events = 0
        self.curves: dict[str, dict[str, list[float]]] = {}
        self.last_event_at: float | None = None  # epoch seconds the last event was written (None: unknown)
        self._phase_t0: dict[str, float] = {}

    def update(self, events: Iterable[dict]) -> "ProgressSummary":
        for ev in events:
            self.n_events += 1
            self.last_event_at = _time(ev.get("time")) or self.last_event_at
            kind, phase = ev.get("kind"), ev.get("phase")
            before = self.elapsed_s
            self.elapsed_s = float(ev.get("elapsed_s") or self.elapsed_s)
            if kind == "done":
                self.done, self.phase, self.message = True, "done", "Training finished; publishing the version"
                continue
            if phase and phase != self.phase:
                # (Re-)entering a phase: it started when the previous event was written.
                self.phase = phase
                self._phase_t0[phase] = before if kind != "phase_start" else self.elapsed_s
                self.epoch = self.epochs = self.batch = self.batches = None
            if ev.get("message"):
                self.message = ev["message"]
            if kind == "phase_start":
                self._phase_t0[phase] = self.elapsed_s
                self.epochs = ev.get("epochs")
            elif kind == "batch":
                self.batch, self.batches = ev.get("batch"), ev.get("batches")
                if ev.get("epoch") is not None:
                    self.epoch, self.epochs = ev.get("epoch"), ev.get("epochs")
                self.batch_metrics = ev.get("metrics") or {}
            elif kind == "epoch_end":
                self.epoch, self.epochs = ev.get("epoch"), ev.get("epochs")
                self.batch = self.batches = ev.get("batches")
                c = self.curves.setdefault(phase or "?", {})
                for k, v in (ev.get("metrics") or {}).items():
                    c.setdefault(k, []).append(v)
        return self

    @property
    def fraction(self) -> float | None:
        """Fraction of the current phase done (None when unknown)."""
        if self.phase in TRAIN_PHASES and self.epochs:
            ep = (self.epoch or 1) - 1
            within = (self.batch / self.batches) if self.batch and self.batches else 0.0
            if self.batch and self.batches and self.batch == self.batches and self.epoch:
                ep, within = self.epoch, 0.0  # epoch complete
            return min(max((ep + within) / self.epochs, 0.0), 1.0)
        if self.batch and self.batches:
            return min(self.batch / self.batches, 1.0)
        return None

    @property
    def batch_fraction(self) -> float | None:
        if self.batch and self.batches:
            return min(self.batch / self.batches, 1.0)
        return None

    @property
    def eta_s(self) -> float | None:
        """Remaining time of the current phase, extrapolated (early stopping may end it sooner)."""
        f = self.fraction
        t0 = self._phase_t0.get(self.phase or "")
        if not f or f <= 0 or t0 is None or f >= 1:
            return None
        spent = self.elapsed_s - t0
        return max(spent * (1 - f) / f, 0.0) if spent > 0 else None

    def epoch_table(self) -> list[dict]:
        """One row per finished epoch over both phases: {'epoch', 'phase', metrics...}."""
        rows, n = [], 0
        for phase in TRAIN_PHASES:
            c = self.curves.get(phase, {})
            length = max((len(v) for v in c.values()), default=0)
            for i in range(length):
                n += 1
                rows.append({"epoch": n, "phase": phase, **{k: v[i] for k, v in c.items() if i < len(v)}})
        return rows

    def to_dict(self) -> dict:
        return {
            "phase": self.phase, "message": self.message, "epoch": self.epoch, "epochs": self.epochs,
            "batch": self.batch, "batches": self.batches, "batch_metrics": self.batch_metrics,
            "elapsed_s": self.elapsed_s, "eta_s": self.eta_s, "fraction": self.fraction, "done": self.done,
            "curves": self.curves, "n_events": self.n_events,
        }


def summarize(job: "JobInfo", summary: ProgressSummary | None = None) -> ProgressSummary:
    """Read new events of ``job`` into ``summary`` (a fresh one by default)."""
    summary = summary or ProgressSummary()
    events, summary.offset = read_events(job, summary.offset)
    return summary.update(events)


def log_tail(job: "JobInfo | str | os.PathLike", lines: int = 40, max_bytes: int = 65536) -> str:
    """The last ``lines`` lines of the job's log (a JobInfo or a job folder)."""
    path = Path(job) / "job.log" if isinstance(job, (str, os.PathLike)) else job.log_path
    fh = _open_regular(path)  # not a FIFO, a device or a link
    if fh is None:
        return ""
    try:
        with fh:
            fh.seek(0, os.SEEK_END)
            size = fh.tell()
            fh.seek(max(size - max_bytes, 0))
            data = fh.read(max_bytes)
    except OSError:
        return ""
    return "\n".join(data.decode("utf-8", "replace").splitlines()[-lines:])

