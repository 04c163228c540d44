"""Reading a training job's progress for the UI: its events, a running summary, its log.

The job (``core.job_runner``, for the admin page's jobs and ``python -m core train`` alike)
appends ``core.events.ProgressEvent.to_dict()`` lines to ``<job_dir>/events.jsonl``
(``core.jsonl``) and its log to ``<job_dir>/job.log``; this module only reads them. Functions
take a job (anything with ``events_path`` / ``log_path``, e.g. ``core.jobs.JobInfo``) or a job
folder path.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Iterable, Protocol, Union

from core import jsonl


class _JobFiles(Protocol):
    """What this module needs of a job (``core.jobs.JobInfo`` has it)."""

    @property
    def events_path(self) -> Path: ...

    @property
    def log_path(self) -> Path: ...


JobRef = Union[_JobFiles, str, os.PathLike]

EVENTS_READ_LIMIT = 8 * 2**20  # bytes of events.jsonl read per call; the next call goes on from there


def _path(job: JobRef, name: str) -> Path:
    if isinstance(job, (str, os.PathLike)):
        return Path(job) / name
    return job.events_path if name == "events.jsonl" else job.log_path


def _open_regular(path: Path):
    """``path`` opened for reading if it is a regular file reached without a symlink, else None:
    a FIFO there must not hang the page, a link to /dev/zero must not be read (issue 21)."""
    from core.fsutil import open_regular

    try:
        return open_regular(path)
    except OSError:  # UnsafeFileError included
        return None


def read_events(job: JobRef, offset: int = 0) -> tuple[list[dict], int]:
    """Complete JSON lines of events.jsonl from byte ``offset``; returns (events, new offset).
    Reads at most :data:`EVENTS_READ_LIMIT` bytes per call, from a regular file only (no symlink)."""
    return jsonl.read(_path(job, "events.jsonl"), offset=offset, limit=EVENTS_READ_LIMIT)


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
        self._phase_t0: dict[str, float] = {}

    def update(self, events: Iterable[dict]) -> "ProgressSummary":
        for ev in events:
            self.n_events += 1
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


def summarize(job: JobRef, summary: ProgressSummary | None = None) -> ProgressSummary:
    """Read new events of ``job`` into ``summary`` (a fresh one by default)."""
    summary = summary or ProgressSummary()
    events, summary.offset = read_events(job, summary.offset)
    return summary.update(events)


def log_tail(job: JobRef, lines: int = 40, max_bytes: int = 65536) -> str:
    fh = _open_regular(_path(job, "job.log"))  # not a FIFO, a device or a link
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

