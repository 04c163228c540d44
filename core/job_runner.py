"""Running a registered training job: ``python -m core.job_runner JOB_DIR [--lock-fd N]``.

:func:`execute` runs the job of a job folder in the calling process and records it: state.json
(running, then succeeded / failed / cancelled with the reason), ``events.jsonl`` (progress,
``core.jsonl``), ``job.log`` (logging), the ``cancel`` flag and SIGTERM as cancellation. The
training itself is :func:`core.runner.run_training`. Two callers:

* :func:`run`, the body of the job process that :func:`core.jobs.start_job` spawns in a new
  session with the training lock's descriptor inherited (``--lock-fd``). Started by hand without
  it, it takes the lock itself (busy: exit code 6). It lowers its CPU priority, and maps the
  outcome to an exit code of :mod:`core.exitcodes`: 0 published, 1 unexpected error,
  3 data/config problem, 6 another job holds the lock, 130 cancelled.
* ``python -m core train`` (``core.cli.cmd_train``), in the foreground: its job is registered
  by ``core.jobs.create_job`` and executed here with the CLI's progress printer as ``echo``;
  SIGINT stays the terminal's Ctrl-C (KeyboardInterrupt), SIGTERM (the admin page's escalated
  cancel) cancels like in a job process.
"""

from __future__ import annotations

import argparse
import contextlib
import logging
import os
import signal
import sys
import threading
import time
from pathlib import Path
from typing import Iterator

from core import jsonl, locks
from core.config import Config
from core.events import ProgressFn, TrainingCancelled
from core.exitcodes import EXIT_BUSY, EXIT_CANCELLED, EXIT_DATA, EXIT_ERROR, EXIT_OK
from core.formatting import utc_now_iso
from core.jobs import load_job, update_state

log = logging.getLogger("core.jobs")  # the job log's lines keep the name they always had

BATCH_EVENT_INTERVAL_S = 1.0  # batch events are thinned to at most one per second
JOB_SIGNALS = (signal.SIGTERM, signal.SIGINT)  # the job process: both cancel
JOB_NICENESS = 10  # a clinician's prediction in the app must not wait behind training


class _Signals:
    """The given signals -> TrainingCancelled in the main thread, until :meth:`hold` (publishing)."""

    def __init__(self, signums: tuple[int, ...]) -> None:
        self.signums = signums
        self.received = False
        self.defer = False
        self._saved: dict[int, object] = {}

    def handler(self, signum, frame) -> None:  # noqa: ARG002
        first = not self.received
        self.received = True
        if first and not self.defer:
            raise TrainingCancelled(f"Training was cancelled (signal {signal.Signals(signum).name}).")

    def install(self) -> None:
        if threading.current_thread() is not threading.main_thread():
            return  # only the main thread may set handlers; the cancel flag still works
        for s in self.signums:
            self._saved[s] = signal.signal(s, self.handler)

    def hold(self) -> None:
        """From here on a signal must not interrupt (the atomic publish, recording the outcome)."""
        self.defer = True

    def restore(self) -> None:
        for s, previous in self._saved.items():
            signal.signal(s, previous)
        self._saved.clear()


@contextlib.contextmanager
def job_log(job_dir: Path) -> Iterator[None]:
    """``logging`` (INFO and up) also goes to ``job_dir/job.log`` for the duration. Handlers that
    were there keep showing what they showed (the CLI's console stays at WARNING)."""
    root = logging.getLogger()
    before = root.level
    quiet = [h for h in root.handlers if h.level == logging.NOTSET]
    for h in quiet:
        h.setLevel(before)
    handler = logging.FileHandler(job_dir / "job.log")
    handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(name)s: %(message)s"))
    root.addHandler(handler)
    root.setLevel(min(before, logging.INFO) if before else logging.NOTSET)
    try:
        yield
    finally:
        root.removeHandler(handler)
        handler.close()
        root.setLevel(before)
        for h in quiet:
            h.setLevel(logging.NOTSET)


def _event_writer(job_dir: Path, echo: ProgressFn | None = None) -> ProgressFn:
    """Progress -> ``events.jsonl`` (batch events thinned, epoch lines logged) and ``echo``."""
    path = job_dir / "events.jsonl"
    last = {"t": 0.0}
    elog = logging.getLogger("core.jobs.progress")

    def emit(ev) -> None:
        if echo is not None:
            echo(ev)
        d = ev.to_dict() if hasattr(ev, "to_dict") else dict(ev)
        if d.get("kind") == "batch":
            now = time.monotonic()
            last_of_epoch = d.get("batch") is not None and d.get("batch") == d.get("batches")
            if now - last["t"] < BATCH_EVENT_INTERVAL_S and not last_of_epoch:
                return
            last["t"] = now
        elif d.get("kind") == "epoch_end":
            m = " ".join(f"{k}={v:.4f}" for k, v in (d.get("metrics") or {}).items() if isinstance(v, (int, float)))
            elog.info("%s epoch %s/%s %s", d.get("phase"), d.get("epoch"), d.get("epochs"), m)
        elif d.get("kind") == "phase_start" and d.get("message"):
            elog.info("%s", d["message"])  # stage messages are logged by core.training itself
        try:
            jsonl.append(path, d)  # one writer (this process): no lock needed
        except (OSError, ValueError) as e:  # the page loses a progress line, the training goes on
            elog.warning("Could not write a progress event: %s", e)

    return emit


def _log_failure(job_id: str, exc: BaseException, outcome: str, reason: str) -> None:
    if outcome == "cancelled":
        log.info("Training job %s cancelled: %s", job_id, reason)
    elif isinstance(exc, Exception) and reason.startswith(("Unexpected error", "Out of memory")):
        log.error("Training job %s failed: %s", job_id, reason, exc_info=exc)  # the traceback, in the log only
    else:
        log.error("Training job %s failed: %s", job_id, reason)


def execute(job_dir: str | os.PathLike, request: dict, *, lock_fd: int | None, source: str = "job",
            echo: ProgressFn | None = None, signums: tuple[int, ...] = JOB_SIGNALS,
            on_recovered=None):
    """Run the job of ``job_dir`` (its ``request``) in this process and record its outcome in
    state.json; returns the ``core.runner.TrainingRun``. Raises what the training raised (after
    recording it), or ``core.jobs.JobBusy``. ``lock_fd`` holds the training lock (None: taken here)."""
    from core.registry import Registry
    from core.runner import failure, run_training

    job_dir = Path(job_dir)
    job_id = request.get("job_id", job_dir.name)
    sigs = _Signals(signums)
    cancel_flag = job_dir / "cancel"

    def should_stop() -> bool:
        return sigs.received or cancel_flag.exists()

    update_state(job_dir, status="running", pid=os.getpid(), started=utc_now_iso())
    log.info("Training job %s started (pid %d)", job_id, os.getpid())
    outcome, fields = "cancelled", {"error": "Training was cancelled."}  # a signal before the first line below
    try:
        sigs.install()  # inside the try: a signal from here on always ends in a recorded state
        run = run_training(
            Config.from_dict(request["config"]), Registry(request.get("artifacts")), data_root=Path(request["data_root"]),
            source=source, progress=_event_writer(job_dir, echo), should_stop=should_stop, lock_fd=lock_fd,
            job_id=job_id, requested_by=request.get("requested_by"), audit_path=request.get("audit_path"),
            limit_per_class=request.get("limit_per_class"), n_bootstrap=int(request.get("n_bootstrap") or 1000),
            naive_phase1=bool(request.get("naive_phase1")), version=request.get("version"),
            activate=bool(request.get("activate")), before_publish=sigs.hold, on_recovered=on_recovered,
        )
        outcome, fields = "succeeded", run.record()
        return run
    except BaseException as e:
        sigs.hold()
        outcome, reason = failure(e)
        fields = {"error": reason}
        _log_failure(job_id, e, outcome, reason)
        raise
    finally:
        sigs.hold()
        update_state(job_dir, status=outcome, finished=utc_now_iso(), **fields)
        log.info("Training job %s finished: %s", job_id, outcome)
        sigs.restore()


def exit_code(exc: BaseException | None) -> int:
    """The job process's exit code for a training that raised ``exc`` (None: published)."""
    from core.runner import OOM_MESSAGE, failure

    if exc is None:
        return EXIT_OK
    outcome, reason = failure(exc)
    if outcome == "cancelled":
        return EXIT_CANCELLED
    return EXIT_ERROR if reason == OOM_MESSAGE or reason.startswith("Unexpected error") else EXIT_DATA


def _lower_priority() -> None:
    """Lower this (training) process's CPU priority so the app's predictions stay fast."""
    try:
        os.nice(JOB_NICENESS)
    except (OSError, AttributeError) as e:  # pragma: no cover - not permitted / not POSIX
        log.info("Could not lower the training job's priority: %s", e)


def run(job_dir: str | os.PathLike, lock_fd: int | None = None) -> int:
    """Body of the job process (``python -m core.job_runner JOB_DIR``). Returns the exit code."""
    job_dir = Path(job_dir).resolve()
    with job_log(job_dir):
        _lower_priority()
        request = load_job(job_dir).request
        if not request:
            log.error("No readable request.json in %s", job_dir)
            update_state(job_dir, status="failed", error="The job folder has no readable request.json.",
                         finished=utc_now_iso())
            return EXIT_ERROR
        if lock_fd is None:  # started by hand: take the lock like a starter would
            lock_fd = locks.acquire_training_lock(job_dir.parent)
            if lock_fd is None:
                update_state(job_dir, status="failed", error="Another training job is running.", finished=utc_now_iso())
                return EXIT_BUSY
        try:
            execute(job_dir, request, lock_fd=lock_fd)
        except BaseException as e:  # noqa: BLE001 - recorded by execute; the exit code says which kind
            return exit_code(e)
        return EXIT_OK  # the lock is released when this process exits


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m core.job_runner",
                                     description="Run a prepared PneumoScope training job folder (normally started by "
                                                 "core.jobs.start_job).")
    parser.add_argument("job_dir")
    parser.add_argument("--lock-fd", type=int, default=None, help="inherited descriptor holding train.lock")
    args = parser.parse_args(argv)
    return run(args.job_dir, args.lock_fd)


if __name__ == "__main__":
    sys.exit(main())
