"""The decode worker: one process that decodes untrusted image bytes for ``core.decode_pool``.

Started by the pool as ``python -c ...`` with its stdin/stdout as a private channel; never run
by hand. After importing the decoders it caps its own address space (``RLIMIT_AS``: what it
holds after start-up plus the pool's memory budget), forbids writing files (``RLIMIT_FSIZE``)
and, before each request, sets a CPU-time limit (``RLIMIT_CPU``) a few seconds above what it
has used so far. A decoder bomb then ends in a ``MemoryError`` (reported as ``memory_limit``)
or in the kernel's SIGXCPU of this process (the pool reports ``time_limit``); either
way only this process is lost and the pool starts another.

Channel (both directions): a 4-byte big-endian length, a JSON header, then the raw bytes the
header announces. Request: ``{"n": <bytes of the file>, "filename": ..., "max_side": ...,
"cpu_s": ..., "settings": {core.imageio limits}}`` + file bytes. Reply: ``{"ok": true,
"info": ..., "gray": [h, w], "rgb": [h, w, 3] | null, "peak_rss": ..., "recycle": bool,
"logs": [...]}`` + the grey plane (and the colour image) as uint8 bytes, or ``{"ok": false,
"code": ..., "message": ...}``. The grey image is sent as one plane (the pool replicates it
to three channels) and already reduced to ``max_side`` (``core.imageio.WORK_MAX_SIDE``).
"""

from __future__ import annotations

import json
import logging
import os
import resource
import struct
import sys
from typing import Any, BinaryIO

MAX_LOG_RECORDS = 40
MAX_LOG_CHARS = 400


def status_kb(field: str) -> int:
    """A ``VmXxx`` figure of /proc/self/status in KiB (0 where /proc is missing)."""
    try:
        with open("/proc/self/status", "rb") as fh:
            for line in fh:
                if line.startswith(field.encode() + b":"):
                    return int(line.split()[1])
    except OSError:
        pass
    return 0


def reset_peak() -> None:
    """Reset VmHWM (peak RSS), so each reply reports its own request's peak (Linux only)."""
    try:
        with open("/proc/self/clear_refs", "w") as fh:
            fh.write("5")
    except OSError:
        pass


def _trim() -> None:
    """Give freed heap back to the system between requests (glibc)."""
    try:
        import ctypes

        ctypes.CDLL("libc.so.6").malloc_trim(0)
    except (OSError, AttributeError):  # not glibc
        pass


def _read_exact(fh: BinaryIO, n: int) -> bytes | None:
    chunks, left = [], n
    while left:
        chunk = fh.read(min(left, 1 << 20))
        if not chunk:
            return None
        chunks.append(chunk)
        left -= len(chunk)
    return b"".join(chunks)


def _send(fh: BinaryIO, header: dict, *payload: bytes | memoryview) -> None:
    head = json.dumps(header, default=str).encode()
    fh.write(struct.pack(">I", len(head)) + head)
    for p in payload:
        fh.write(p)
    fh.flush()


class _Collect(logging.Handler):
    """Keeps this request's log records; the pool logs them in the server's log."""

    def __init__(self) -> None:
        super().__init__(logging.DEBUG)
        self.records: list[list[Any]] = []

    def emit(self, record: logging.LogRecord) -> None:
        if len(self.records) < MAX_LOG_RECORDS:
            try:
                msg = record.getMessage()
            except (TypeError, ValueError):  # a record whose arguments do not fit its format
                msg = str(record.msg)
            self.records.append([record.levelno, record.name, msg[:MAX_LOG_CHARS]])


def main() -> int:
    # The channel is a private copy of fds 0/1; fd 0 becomes /dev/null and fd 1 goes to stderr,
    # so a C library that prints cannot corrupt a reply.
    chan_in = os.fdopen(os.dup(0), "rb", buffering=0)
    chan_out = os.fdopen(os.dup(1), "wb", buffering=0)
    null = os.open(os.devnull, os.O_RDONLY)
    os.dup2(null, 0)
    os.close(null)
    os.dup2(2, 1)

    import cv2
    import numpy as np
    from PIL import Image

    import importlib

    import pydicom.pixels  # noqa: F401
    from core import imageio

    # The decoder plugins load now, not inside a request under its limits.
    for plugin in ("pylibjpeg", "libjpeg", "openjpeg", "jpeg_ls", "rle"):
        try:
            importlib.import_module(plugin)
        except ImportError:
            pass

    cv2.setNumThreads(1)
    Image.init()
    logging.captureWarnings(True)
    collect = _Collect()
    root = logging.getLogger()
    root.handlers[:] = [collect]
    root.setLevel(logging.INFO)
    logging.getLogger("core").setLevel(logging.DEBUG)

    budget = int(os.environ.get("PNEUMOSCOPE_DECODE_MEMORY_BYTES", str(900 * 2**20)))
    baseline_vm = status_kb("VmSize") * 1024
    limit = baseline_vm + budget
    resource.setrlimit(resource.RLIMIT_AS, (limit, limit))
    resource.setrlimit(resource.RLIMIT_FSIZE, (0, 0))  # a decoder has no file to write
    resource.setrlimit(resource.RLIMIT_CORE, (0, 0))
    cpu_hard = resource.getrlimit(resource.RLIMIT_CPU)[1]
    _send(chan_out, {"ready": True, "pid": os.getpid()})

    while True:
        raw = _read_exact(chan_in, 4)
        if raw is None:  # the pool closed the channel (or its process died): done
            return 0
        header = json.loads(_read_exact(chan_in, struct.unpack(">I", raw)[0]) or b"{}")
        data = _read_exact(chan_in, int(header["n"]))
        if data is None:
            return 0
        for name, value in (header.get("settings") or {}).items():
            if name in imageio.WORKER_SETTINGS:
                setattr(imageio, name, value)
        used = sum(resource.getrusage(resource.RUSAGE_SELF)[:2])
        soft = int(used + float(header.get("cpu_s", 10))) + 1
        # the soft limit only (an unprivileged process cannot raise a hard limit again): the
        # kernel's SIGXCPU ends this process there; the pool's wall-clock deadline backs it up
        resource.setrlimit(resource.RLIMIT_CPU, (soft, cpu_hard))
        collect.records = []
        reset_peak()
        reply: dict[str, Any]
        payload: list[bytes | memoryview] = []
        try:
            d = imageio.decode_image(data, filename=header.get("filename"), max_side=header.get("max_side"))
            gray = np.ascontiguousarray(d.array[..., 0])
            rgb = None if d.original_rgb is None else np.ascontiguousarray(d.original_rgb, dtype=np.uint8)
            reply = {"ok": True, "info": d.info, "gray": list(gray.shape),
                     "rgb": None if rgb is None else list(rgb.shape)}
            payload = [memoryview(gray).cast("B")] + ([] if rgb is None else [memoryview(rgb).cast("B")])
            del d
        except imageio.ImageError as e:
            reply = {"ok": False, "code": e.code, "message": e.message}
        except MemoryError:
            e = imageio.memory_limit_error()
            reply = {"ok": False, "code": e.code, "message": e.message}
        del data
        peak_vm = status_kb("VmPeak") * 1024
        if not reply["ok"] and reply["code"] != "memory_limit" and peak_vm > limit - 64 * 2**20:
            # a C decoder that failed at the address-space cap often says "damaged": it was the cap
            e = imageio.memory_limit_error()
            reply.update(code=e.code, message=e.message)
        reply["peak_rss"] = status_kb("VmHWM") * 1024
        reply["logs"] = collect.records
        # A worker that came near its cap (or ran out) is replaced: its heap may stay large and
        # fragmented, and a failure in its next request must not be blamed on this one.
        reply["recycle"] = bool(peak_vm - baseline_vm > budget // 2)
        _send(chan_out, reply, *payload)
        payload = []
        _trim()


if __name__ == "__main__":
    sys.exit(main())
