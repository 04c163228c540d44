"""One training run, the same for every entry point: :func:`run_training`.

Both ways of training a model go through it, so they lock, recover, audit and publish alike:

* the admin page's jobs: ``core.jobs.start_job`` spawns ``python -m core.job_runner JOB_DIR``,
  whose :func:`core.job_runner.execute` calls :func:`run_training` (``source="job"``);
* ``python -m core train`` (``core.cli.cmd_train``): registers a job too
  (``core.jobs.create_job``) and runs it **in the foreground** through the same
  :func:`core.job_runner.execute` (``source="cli"``). The admin page therefore shows a CLI
  training like one it started (status, progress, log) and its **Cancel** button stops it the
  same way (the ``cancel`` flag polled between batches, then SIGTERM after the grace period).
  The CLI's flags, exit codes and messages are those of a plain foreground command.

Steps of :func:`run_training`, in order::

    lock        the training lock (the database lease "training", core.locks: one training at a
                time across instances): the lease the job took, or taken here (busy: JobBusy)
    recover     stale .staging debris removed, an interrupted --activate finished (admin.recover)
    audit       "retrain" "started" (source, job id, who asked, the recipe facts, data root)
    train       core.training.train (the feedback folder is always the registry's own)
    publish     core.publish.publish (staging + atomic rename), activated only when asked
    audit       "retrain" "succeeded" (version, wall time, feedback images), or "failed" /
                "cancelled" with the reason; then the activation's "promote" line and history

What only one process of a distributed training may do (recover, audit, publish, activate) is
grouped in the ``_chief_*`` functions, so one ``is_chief`` switch can guard them.
"""

from __future__ import annotations

import dataclasses
import logging
import os
from typing import Callable

from core import audit, distribute, locks
from core.config import Config
from core.events import ProgressFn, TrainingCancelled

log = logging.getLogger(__name__)

__all__ = ["TrainingRun", "failure", "run_training"]

OOM_MESSAGE = "Out of memory: try a smaller input size or batch size."


@dataclasses.dataclass
class TrainingRun:
    """A published training: the version, whether it is active now, and the TrainResult."""

    version: str
    active: bool
    result: object  # core.training.TrainResult

    @property
    def feedback_images(self) -> int:
        return int((self.result.provenance.get("feedback") or {}).get("images") or 0)

    def record(self) -> dict:
        """The facts a job's state.json keeps about the published version."""
        metrics = self.result.metrics
        test = metrics.get("test", {})
        return {"version": self.version, "wall_time_s": self.result.provenance.get("wall_time_s"),
                "test": {k: test.get(k) for k in ("accuracy", "roc_auc", "sensitivity", "specificity")} if test else {},
                "val_roc_auc": metrics.get("validation", {}).get("roc_auc"),
                "feedback_images": self.feedback_images}


def failure(exc: BaseException) -> tuple[str, str]:
    """``(outcome, reason)`` of a training that raised ``exc``: outcome ``cancelled`` or
    ``failed``; the reason is one line for a person (state.json, the audit line)."""
    from core.dataset import DatasetError
    from core.registry import RegistryError

    if isinstance(exc, (TrainingCancelled, KeyboardInterrupt)):
        return "cancelled", str(exc) or "Training was cancelled."
    if isinstance(exc, (DatasetError, ValueError, RegistryError, FileNotFoundError, distribute.DistributedTrainingError)):
        return "failed", str(exc)
    if isinstance(exc, MemoryError):
        return "failed", OOM_MESSAGE
    if isinstance(exc, Exception):
        return "failed", f"Unexpected error: {type(exc).__name__}: {exc} (see the job log)."
    return "cancelled", str(exc) or type(exc).__name__  # SystemExit, a signal during cleanup...


def _hold_lock(registry, lease):
    """Check the training lease handed over (``lease``, a ``core.db.Lease``), or take it; returns a
    lease this call must release (None when the caller owns it). Raises JobBusy."""
    from core import jobs

    if lease is not None:
        if not lease.held or lease.lost.is_set():  # taken by core.jobs.create_job / the job process
            raise jobs.JobBusy(f"The training lock for {registry.root} is not held by this training.")
        return None
    own = locks.acquire_training_lock(registry.root)
    if own is None:
        busy = jobs.busy_error(jobs.database(registry.root), registry.root)
        raise jobs.JobBusy(f"A training job is already running for {registry.root} ({busy.holder}). "
                           "Wait for it to finish or cancel it first.", busy.holder)
    return own


# --- what only one process does (the chief of a distributed training) --------------------------
def _chief_begin(registry, config: Config, *, source: str, data_root, job_id, requested_by,
                 on_recovered) -> None:
    """Recover the registry (we hold the training lock: no publish is running), then audit the start."""
    from core import admin

    try:
        n, done = admin.recover(registry, source=source)
    except Exception:  # noqa: BLE001 - housekeeping must not stop a training from starting
        log.warning("Registry recovery at training start failed", exc_info=True)
        n, done = 0, None
    if n or done:
        log.info("Registry recovery: %d stale staging entries removed; interrupted activation completed: %s", n, done)
    if on_recovered is not None:
        on_recovered(n, done)
    audit.training("started", source=source, artifacts=registry.root, config=config, job_id=job_id,
                   requested_by=requested_by, data_root=str(data_root))


def _chief_publish(result, registry, *, version: str | None, activate: bool, source: str,
                   job_id) -> TrainingRun:
    """Publish (staging + atomic rename; activated when asked), audit the success, then record
    the activation (history + ``promote`` line after the ``retrain`` line it promotes)."""
    from core import admin
    from core.publish import publish

    previous = registry.active_version()
    name = publish(result, registry, version, activate=activate, source=source)
    run = TrainingRun(name, registry.active_version() == name, result)
    log.info("Published version %s (%s)", name, "active" if run.active else "not active")
    audit.training("succeeded", source=source, artifacts=registry.root, job_id=job_id, version=name,
                   wall_time_s=result.provenance.get("wall_time_s"), feedback_images=run.feedback_images)
    if activate:  # a CLI activation can be rolled back from the app like any other
        admin.record_activation(registry, name, previous, source=source)
    return run


def _chief_fail(exc: BaseException, *, source: str, artifacts, job_id) -> None:
    outcome, reason = failure(exc)
    audit.training(outcome, source=source, artifacts=artifacts, job_id=job_id, error=reason)


# --- the run ------------------------------------------------------------------------------------
def run_training(
    config: Config,
    registry,
    *,
    data_root: str | os.PathLike,
    source: str,
    progress: ProgressFn | None = None,
    should_stop: Callable[[], bool] | None = None,
    activate: bool = False,
    version: str | None = None,
    lease=None,
    job_id: str | None = None,
    requested_by: str | None = None,
    limit_per_class: int | None = None,
    n_bootstrap: int = 1000,
    naive_phase1: bool = False,
    before_publish: Callable[[], None] | None = None,
    on_recovered: Callable[[int, str | None], None] | None = None,
) -> TrainingRun:
    """Lock, recover, audit, train, publish (and activate), audit: see the module docstring.

    ``registry`` is a ``core.registry.Registry``; ``source`` names the entry point in the audit
    trail (``"job"``, ``"cli"``). ``before_publish`` is called once training is done and before
    anything is written (the job process stops turning signals into cancellation there);
    ``on_recovered(n_removed, version_activated)`` reports the recovery step. Returns a
    :class:`TrainingRun`; raises what training raised (TrainingCancelled, DatasetError,
    ValueError, ...) after auditing it, or ``core.jobs.JobBusy`` when another training holds the lock.
    """
    from core import training
    from core.feedback import default_feedback_dir

    if not distribute.is_chief(training.get_strategy(config.strategy)):
        # A non-chief worker of a multi-worker training (core.distribute): it trains its share of
        # every step and writes nothing -- no lock, recovery, audit or publish; the chief does them once.
        result = training.train(config, data_root, progress=progress, should_stop=should_stop, naive_phase1=naive_phase1,
                                limit_per_class=limit_per_class, n_bootstrap=n_bootstrap,
                                feedback_dir=default_feedback_dir(registry.root))
        return TrainingRun(None, False, result)
    own_lease = _hold_lock(registry, lease)
    try:
        _chief_begin(registry, config, source=source, data_root=data_root, job_id=job_id,
                     requested_by=requested_by, on_recovered=on_recovered)
        try:
            result = training.train(config, data_root, progress=progress, should_stop=should_stop,
                                    naive_phase1=naive_phase1, limit_per_class=limit_per_class,
                                    n_bootstrap=n_bootstrap, feedback_dir=default_feedback_dir(registry.root))
            if before_publish is not None:
                before_publish()
            if should_stop is not None and should_stop():
                raise TrainingCancelled("Training was cancelled before publishing.")
            return _chief_publish(result, registry, version=version, activate=activate, source=source,
                                  job_id=job_id)
        except BaseException as e:
            _chief_fail(e, source=source, artifacts=registry.root, job_id=job_id)
            raise
    finally:
        if own_lease is not None:
            own_lease.release()  # killed with -9 instead, it lapses after its ttl
