"""Decode untrusted image bytes where they cannot hurt the server (issue 21).

Every file a person, the CLI or a PACS hands us goes through :func:`decode_untrusted`: the
decoders (Pillow, OpenCV, pydicom and their C libraries) run in a small pool of worker
processes (``core.decode_worker``), each with

* an **address-space cap**: what the worker holds after start-up plus ``memory_bytes``
  (default 900 MiB, ``$PNEUMOSCOPE_DECODE_MEMORY_MB``), so a decoder bomb ends in that
  worker's ``MemoryError``, not in the server's swap or the OOM killer;
* a **CPU-time cap** per request (``cpu_seconds``, default 10 s, ``$PNEUMOSCOPE_DECODE_CPU_S``)
  enforced by the kernel (SIGXCPU), and a **wall-clock deadline** (``wall_seconds``, default
  15 s) after which the pool kills the worker itself (a decoder stuck without using CPU);
* no file writes (``RLIMIT_FSIZE = 0``), a minimal environment (no secrets), its own session.

A worker lost that way costs one request: the caller gets an :class:`~core.imageio.ImageError`
in words (``memory_limit``: "this file needs more memory than allowed to decode",
``time_limit``, ``decoder_failed``), the pool starts a fresh worker for the next request, and
every other request is served as usual. This bounds *any* decoder, including the bombs nobody
has listed yet; ``core.imageio`` additionally refuses, before a decoder runs, what the format
declares (inflated DICOM size, the size inside a compressed frame, JPEG scans, the memory an
alpha channel or a palette expands to).

The worker returns the grey image (and the colour one, when the file had colour) reduced to
``core.imageio.WORK_MAX_SIDE`` on its longer side, so the server holds at most ~16 MB per
image whatever the file; ``core.imageio.resize_for_model`` reduces full-size arrays the same
way first, so model inputs are identical to an in-process decode.

The pool is process-wide (:func:`default_pool`), thread-safe (Streamlit serves each session
in its own thread) and holds at most ``workers`` processes (default ``min(2, CPUs)``,
``$PNEUMOSCOPE_DECODE_WORKERS``); further requests wait for a free worker.
"""

from __future__ import annotations

import atexit
import json
import logging
import os
import select
import signal
import struct
import subprocess
import sys
import threading
import time
from pathlib import Path

import numpy as np

from core import imageio
from core.imageio import DecodedImage, ImageError

log = logging.getLogger(__name__)
_worker_log = logging.getLogger("core.decode_worker")

ENV_WORKERS = "PNEUMOSCOPE_DECODE_WORKERS"
ENV_MEMORY_MB = "PNEUMOSCOPE_DECODE_MEMORY_MB"
ENV_CPU_S = "PNEUMOSCOPE_DECODE_CPU_S"
ENV_WALL_S = "PNEUMOSCOPE_DECODE_WALL_S"
DEFAULT_MEMORY_MB = 900
DEFAULT_CPU_S = 10.0
DEFAULT_WALL_S = 15.0
START_TIMEOUT_S = 60.0  # a worker imports numpy, OpenCV, Pillow and pydicom (~0.3 s idle, more on a busy box)
QUEUE_TIMEOUT_S = 120.0  # waiting for a free worker

_REPO_ROOT = str(Path(__file__).resolve().parent.parent)
_BOOT = "import sys; sys.path.insert(0, sys.argv[1]); from core.decode_worker import main; sys.exit(main())"
# What a worker inherits from the server's environment: enough to run Python, no secrets.
_ENV_KEEP = ("PATH", "LANG", "LC_ALL", "LC_CTYPE", "PYTHONPATH", "PYTHONHOME", "VIRTUAL_ENV", "TMPDIR", "HOME",
             "SYSTEMROOT")
_THREADS_ONE = {"OMP_NUM_THREADS": "1", "OPENBLAS_NUM_THREADS": "1", "MKL_NUM_THREADS": "1",
                "OPENCV_FOR_THREADS_NUM": "1", "OPENCV_LOG_LEVEL": "ERROR", "MALLOC_ARENA_MAX": "2",
                "PYTHONDONTWRITEBYTECODE": "1"}


def _env_number(name: str, default: float) -> float:
    raw = os.environ.get(name)
    if raw is None or raw.strip() == "":
        return default
    try:
        value = float(raw)
    except ValueError:
        raise ValueError(f"{name} must be a positive number. Received: {name}={raw!r}") from None
    if not 0 < value < float("inf"):  # NaN fails both comparisons
        raise ValueError(f"{name} must be a positive number. Received: {name}={raw!r}")
    return value


class _WorkerGone(Exception):
    """The worker process ended or stopped answering (carries how, for the message)."""

    def __init__(self, how: str, returncode: int | None) -> None:
        super().__init__(how)
        self.how = how
        self.returncode = returncode


class _Worker:
    """One decode worker process and its channel."""

    def __init__(self, memory_bytes: int, verbose: bool) -> None:
        env = {k: v for k, v in os.environ.items() if k in _ENV_KEEP}
        env.update(_THREADS_ONE)
        env["PNEUMOSCOPE_DECODE_MEMORY_BYTES"] = str(int(memory_bytes))
        self.proc = subprocess.Popen(
            [sys.executable, "-c", _BOOT, _REPO_ROOT],
            stdin=subprocess.PIPE, stdout=subprocess.PIPE,
            stderr=None if verbose else subprocess.DEVNULL,  # C libraries' chatter stays out of the terminal
            env=env, close_fds=True, start_new_session=True,  # Ctrl-C in a terminal is the server's to handle
        )
        ready, _ = self._receive(time.monotonic() + START_TIMEOUT_S)
        if not ready.get("ready"):
            raise _WorkerGone("did not start", self.proc.poll())
        self.pid = int(ready["pid"])

    # --- channel ------------------------------------------------------------------------------
    def _read(self, n: int, deadline: float) -> bytes:
        fd = self.proc.stdout.fileno()
        chunks, left = [], n
        while left:
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                raise _WorkerGone("deadline", None)
            ready, _, _ = select.select([fd], [], [], remaining)
            if not ready:
                raise _WorkerGone("deadline", None)
            chunk = os.read(fd, min(left, 1 << 20))
            if not chunk:
                raise _WorkerGone("ended", self._wait())
            chunks.append(chunk)
            left -= len(chunk)
        return b"".join(chunks)

    def _receive(self, deadline: float) -> tuple[dict, bytes]:
        head = json.loads(self._read(struct.unpack(">I", self._read(4, deadline))[0], deadline))
        n = 0
        for key in ("gray", "rgb"):
            if head.get(key):
                n += int(np.prod(head[key]))
        return head, (self._read(n, deadline) if n else b"")

    def _wait(self) -> int | None:
        try:
            return self.proc.wait(timeout=5)
        except subprocess.TimeoutExpired:
            return None

    def request(self, data: bytes, filename: str | None, max_side: int | None, cpu_s: float,
                wall_s: float) -> tuple[dict, bytes]:
        settings = {name: getattr(imageio, name) for name in imageio.WORKER_SETTINGS}
        head = json.dumps({"n": len(data), "filename": filename, "max_side": max_side, "cpu_s": cpu_s,
                           "settings": settings}).encode()
        deadline = time.monotonic() + wall_s
        try:
            self.proc.stdin.write(struct.pack(">I", len(head)) + head)
            self.proc.stdin.write(data)
            self.proc.stdin.flush()
        except (BrokenPipeError, OSError):
            raise _WorkerGone("ended", self._wait()) from None
        return self._receive(deadline)

    def kill(self) -> None:
        if self.proc.poll() is None:
            try:
                os.killpg(self.proc.pid, signal.SIGKILL)
            except OSError:
                self.proc.kill()
        self._wait()
        for fh in (self.proc.stdin, self.proc.stdout):
            try:
                fh.close()
            except OSError:
                pass

    def alive(self) -> bool:
        return self.proc.poll() is None


class DecodePool:
    """A bounded pool of decode workers; :meth:`decode` is the isolated ``decode_image``."""

    def __init__(self, workers: int | None = None, memory_bytes: int | None = None,
                 cpu_seconds: float | None = None, wall_seconds: float | None = None) -> None:
        cpus = os.cpu_count() or 1
        self.workers = int(workers or _env_number(ENV_WORKERS, min(2, cpus)))
        self.memory_bytes = int(memory_bytes or _env_number(ENV_MEMORY_MB, DEFAULT_MEMORY_MB) * 2**20)
        self.cpu_seconds = float(cpu_seconds or _env_number(ENV_CPU_S, DEFAULT_CPU_S))
        self.wall_seconds = float(wall_seconds or _env_number(ENV_WALL_S, DEFAULT_WALL_S))
        if self.workers < 1:
            raise ValueError(f"workers must be at least 1. Received: workers={workers!r}")
        self._slots = threading.BoundedSemaphore(self.workers)
        self._idle: list[_Worker] = []
        self._lock = threading.Lock()
        self._closed = False
        self.stats = {"started": 0, "replaced": 0, "requests": 0, "last_peak_rss": None}

    # --- workers ------------------------------------------------------------------------------
    def _new_worker(self) -> _Worker:
        try:
            w = _Worker(self.memory_bytes, verbose=log.isEnabledFor(logging.DEBUG))
        except (OSError, ValueError, _WorkerGone) as exc:
            log.error("The image decoder process could not be started: %s", exc)
            raise ImageError("decoder_failed", "The server could not start its image decoder, so the file was "
                                               "not analysed. Please tell the administrator.") from None
        with self._lock:
            self.stats["started"] += 1
        return w

    def prestart(self) -> None:
        """Start one worker in the background, so the first request does not wait for it
        (nothing to do when one is idle already)."""
        with self._lock:
            if self._idle or self._closed:
                return

        def run() -> None:
            try:
                w = self._new_worker()
            except ImageError:
                return
            with self._lock:
                if self._closed or len(self._idle) >= self.workers:
                    w.kill()
                else:
                    self._idle.append(w)

        threading.Thread(target=run, name="decode-pool-prestart", daemon=True).start()

    def _take(self) -> _Worker:
        with self._lock:
            while self._idle:
                w = self._idle.pop()
                if w.alive():
                    return w
                w.kill()
        return self._new_worker()

    def _give_back(self, w: _Worker, recycle: bool) -> None:
        with self._lock:
            if not recycle and not self._closed and w.alive():
                self._idle.append(w)
                return
            self.stats["replaced"] += 1
        w.kill()

    # --- decoding -----------------------------------------------------------------------------
    def decode(self, data: bytes, filename: str | None = None,
               max_side: int | None = None) -> DecodedImage:
        """:func:`core.imageio.decode_image` in a worker; the result is reduced to ``max_side``
        (default ``core.imageio.WORK_MAX_SIDE``). Raises ``ImageError`` for every bad input,
        including one that exhausts the worker's memory or time."""
        data = imageio.checked_input(data)  # cheap refusals need no worker
        if self._closed:
            raise ImageError("decoder_failed", "The image decoder has been shut down; the file was not analysed.")
        side = int(imageio.WORK_MAX_SIDE if max_side is None else max_side)
        if not self._slots.acquire(timeout=QUEUE_TIMEOUT_S):
            raise ImageError("time_limit", "The server is busy decoding other files; please try again in a minute.")
        try:
            w = self._take()
            t0 = time.monotonic()
            try:
                head, body = w.request(data, filename, side, self.cpu_seconds, self.wall_seconds)
            except _WorkerGone as gone:
                self._give_back(w, recycle=True)
                raise self._failure(gone, w, time.monotonic() - t0) from None
            except BaseException:  # interrupted mid-request (e.g. the caller's thread is stopped):
                self._give_back(w, recycle=True)  # its channel is in an unknown state
                raise
            self._give_back(w, recycle=bool(head.get("recycle")))
        finally:
            self._slots.release()
        with self._lock:
            self.stats["requests"] += 1
            self.stats["last_peak_rss"] = head.get("peak_rss")
        for level, name, msg in head.get("logs") or []:
            # our own modules keep their level; libraries' records (pydicom prints tracebacks
            # at ERROR for files it cannot decode) are detail for -v, not for the user
            _worker_log.log(int(level) if str(name).startswith("core") else logging.DEBUG, "%s: %s", name, msg)
        if not head.get("ok"):
            code = str(head.get("code") or "corrupt")
            raise ImageError(code if code in imageio.ERROR_CODES else "corrupt",
                             str(head.get("message") or "The file could not be decoded."))
        return _rebuild(head, body)

    def _failure(self, gone: _WorkerGone, w: _Worker, seconds: float) -> ImageError:
        rc = gone.returncode
        if gone.how == "deadline":
            log.warning("Decode worker %s passed the %.0f s deadline; killed", w.pid, self.wall_seconds)
            return imageio.time_limit_error(self.wall_seconds)
        if rc is not None and rc < 0 and -rc in (signal.SIGXCPU, signal.SIGKILL):
            # SIGXCPU at the CPU limit (SIGKILL: a hard limit the server itself runs under)
            log.warning("Decode worker %s stopped by %s after %.1f s (CPU limit %.0f s)", w.pid,
                        signal.Signals(-rc).name, seconds, self.cpu_seconds)
            return imageio.time_limit_error(self.cpu_seconds)
        how = f"signal {signal.Signals(-rc).name}" if rc is not None and rc < 0 else f"exit code {rc}"
        log.warning("Decode worker %s ended (%s) while decoding a file", w.pid, how)
        return ImageError("decoder_failed", "The image decoder stopped while reading this file (it may be damaged "
                                            "or built to attack decoders), so it was not analysed. Other files are "
                                            "not affected.")

    def close(self) -> None:
        with self._lock:
            self._closed = True
            idle, self._idle = self._idle, []
        for w in idle:
            w.kill()


def _rebuild(head: dict, body: bytes) -> DecodedImage:
    """The worker's reply -> DecodedImage (grey replicated to three channels, as decode_image)."""
    h, w = (int(x) for x in head["gray"])
    gray = np.frombuffer(body, np.uint8, count=h * w).reshape(h, w)
    rgb = None
    if head.get("rgb"):
        shape = tuple(int(x) for x in head["rgb"])
        rgb = np.frombuffer(body, np.uint8, offset=h * w).reshape(shape).copy()
    return DecodedImage(array=imageio._replicate(gray), info=dict(head.get("info") or {}),
                        original_rgb=rgb)


_default: DecodePool | None = None
_default_lock = threading.Lock()


def default_pool() -> DecodePool:
    """The process-wide pool (created on first use, closed at exit)."""
    global _default
    with _default_lock:
        if _default is None or _default._closed:
            _default = DecodePool()
            atexit.register(_default.close)
        return _default


def decode_untrusted(data: bytes, filename: str | None = None, max_side: int | None = None) -> DecodedImage:
    """Decode bytes from a user, the CLI or a PACS in an isolated, resource-limited worker.

    Same contract as :func:`core.imageio.decode_image` (``ImageError`` for every bad input),
    plus ``memory_limit`` / ``time_limit`` / ``decoder_failed`` when the file exhausts the
    worker; the image comes back reduced to ``core.imageio.WORK_MAX_SIDE``."""
    return default_pool().decode(data, filename=filename, max_side=max_side)


def load_untrusted(path: str | os.PathLike[str]) -> DecodedImage:
    """:func:`core.imageio.read_file` (regular files only, bounded) then :func:`decode_untrusted`."""
    p = Path(path)
    return decode_untrusted(imageio.read_file(p), filename=p.name)


__all__ = ["DecodePool", "decode_untrusted", "default_pool", "load_untrusted"]
