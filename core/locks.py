"""File locks, in one place.

* :func:`file_lock` - an inter-process lock on a lock file (the ``filelock`` package, which
  uses ``flock`` on POSIX: the kernel frees it when the holder exits or is killed, even with
  ``kill -9``). Used as a context manager for short critical sections: job state updates, the
  job starter, the admin login lockout, audit appends, the activation history, feedback.
* the **training lock** (:func:`try_exclusive_fd`) - held by the training job process for its
  whole life. It is a raw ``flock`` descriptor on purpose, not a ``filelock`` object: the
  starter takes it and hands that very descriptor to the child process (``pass_fds``), then
  closes its own copy without unlocking, so the lock is never free between "checked" and
  "running". ``filelock`` cannot hand a held lock to another process.
* the **training lock of an artifacts folder** (:func:`acquire_training_lock`,
  :func:`try_training_lock`, :func:`start_guard`): ``<jobs folder>/train.lock``, taken under the
  short ``start.lock`` so that "is a training running?" and "start one" never race. Every
  training entry point takes it (``core.jobs.start_job``/``create_job`` for the admin page and
  ``python -m core train``, ``python -m core models clean-staging``); one training per registry.
"""

from __future__ import annotations

import errno
import fcntl
import logging
import os
import stat
from pathlib import Path

from filelock import FileLock, Timeout

__all__ = ["FileLock", "Timeout", "file_lock", "try_exclusive_fd", "confirm_exclusive_fd", "is_free",
           "TRAIN_LOCK", "START_LOCK", "start_guard", "try_training_lock", "acquire_training_lock", "training_lock_is_free"]

TRAIN_LOCK = "train.lock"  # held by the training process for its whole life
START_LOCK = "start.lock"  # serialises starters and liveness probes (held for milliseconds)

log = logging.getLogger(__name__)


def _no_link_in_place(path: Path) -> None:
    """A lock file is an empty regular file that only ever gets flocked. One that is a symlink
    (e.g. to a file outside the artifacts folder), a FIFO or a device was put there by someone
    else and is never held by our code: remove that entry itself (``unlink`` never touches what a
    link points to), so the lock is taken on a fresh regular file and nothing outside is opened,
    created or truncated through it (issue 21)."""
    try:
        st = os.lstat(path)
    except FileNotFoundError:
        return
    if stat.S_ISREG(st.st_mode):
        return
    log.warning("Lock file %s was not a regular file (mode %o); replaced it", path, st.st_mode)
    os.unlink(path)


def file_lock(path: str | os.PathLike, timeout: float = -1, *, mode: int = 0o644) -> FileLock:
    """A ``filelock.FileLock`` on ``path`` (its folder is created; a symlink or FIFO in its place is
    removed first). ``timeout`` in seconds, -1 waits forever; on timeout acquiring raises
    ``filelock.Timeout``. Use as ``with file_lock(p):``."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    _no_link_in_place(path)
    return FileLock(str(path), timeout=timeout, mode=mode)


def try_exclusive_fd(path: str | os.PathLike) -> int | None:
    """A descriptor holding an exclusive ``flock`` on ``path`` (created if needed), or None
    when another process holds it. Close the descriptor to release it (the kernel does on exit)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    _no_link_in_place(path)
    fd = os.open(str(path), os.O_RDWR | os.O_CREAT | getattr(os, "O_NOFOLLOW", 0), 0o644)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except OSError as e:
        os.close(fd)
        if e.errno in (errno.EWOULDBLOCK, errno.EAGAIN, errno.EACCES):
            return None
        raise
    return fd


def confirm_exclusive_fd(fd: int) -> None:
    """Assert that the (inherited) descriptor ``fd`` holds its exclusive lock; raises OSError if not."""
    fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)


def is_free(path: str | os.PathLike) -> bool:
    """Whether no process holds the exclusive lock on ``path`` right now (a probe; racy unless
    the caller serialises probes and takers with another lock)."""
    fd = try_exclusive_fd(path)
    if fd is None:
        return False
    os.close(fd)
    return True


def start_guard(jobs_dir: str | os.PathLike) -> FileLock:
    """The start guard of a jobs folder (``<jobs_dir>/start.lock``): hold it while checking and
    taking the training lock, or while deciding that a job whose lock is free is dead."""
    return file_lock(Path(jobs_dir) / START_LOCK)


def try_training_lock(jobs_dir: str | os.PathLike) -> int | None:
    """A descriptor holding ``<jobs_dir>/train.lock``, or None when a training holds it.
    Callers hold :func:`start_guard` (use :func:`acquire_training_lock` otherwise)."""
    return try_exclusive_fd(Path(jobs_dir) / TRAIN_LOCK)


def acquire_training_lock(jobs_dir: str | os.PathLike) -> int | None:
    """A descriptor holding the training lock of ``jobs_dir`` (taken under the start guard), or
    None when a training is running. Close it to release the lock (the kernel does on exit, even
    on ``kill -9``). ``jobs_dir`` is ``core.jobs.jobs_root(artifacts)``."""
    Path(jobs_dir).mkdir(parents=True, exist_ok=True)
    with start_guard(jobs_dir):
        return try_training_lock(jobs_dir)


def training_lock_is_free(jobs_dir: str | os.PathLike) -> bool:
    """Whether no training holds the lock of ``jobs_dir`` now (a probe: hold the start guard)."""
    return is_free(Path(jobs_dir) / TRAIN_LOCK)
