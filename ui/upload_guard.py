"""Upload limits that hold on the server, not only in the page (issue 21).

Streamlit enforces ``server.maxUploadSize`` (50 MB per file, ``.streamlit/config.toml``) while the
request streams in, but nothing limits how many files one session stores or how many bytes they
add up to: a client that PUTs files straight to ``/_stcore/upload_file/<session>/<id>`` (no
browser needed) could park 12 x 50 MB in one session, held until the session expires. The
Predict page's own batch check (``core.imageio.batch_limit_error``) only runs once the bytes are
already in memory.

:func:`install` wraps Streamlit's in-memory upload store (``MemoryUploadedFileManager.add_file``,
the one place every uploaded file passes through) so that a file is refused with HTTP 413 --
before it is stored -- when it would take its session past ``core.imageio.MAX_UPLOAD_FILES``
files or ``MAX_UPLOAD_TOTAL_BYTES`` bytes, or the whole server past :data:`MAX_SERVER_BYTES`.
The browser then shows the upload as failed; the page's own message explains the limits.
Replacing a file (same id) counts only the difference. Files are freed when the user removes
them or the session ends (``server.disconnectedSessionTTL``, 120 s after the browser closed).

Streamlit has no public hook for this; the wrapper targets the store of the pinned Streamlit
(requirements.txt) and :func:`install` fails loudly at start-up if that store changes.
"""

from __future__ import annotations

import logging
import os
import threading

from core import imageio

log = logging.getLogger(__name__)

# All sessions together may hold at most this many uploaded bytes (default 2 GiB; setting
# PNEUMOSCOPE_MAX_UPLOAD_SERVER_MB): many sessions cannot together exhaust the server either.
MAX_SERVER_BYTES = int(float(os.environ.get("PNEUMOSCOPE_MAX_UPLOAD_SERVER_MB", "2048")) * 2**20)

_installed = False
_install_lock = threading.Lock()
_add_lock = threading.Lock()


class UploadRefused(Exception):
    """Raised by :func:`check` (mapped to HTTP 413 in the server) with the reason in words."""


def check(session_files: dict, file_id: str, new_size: int, server_bytes: int) -> None:
    """Raise :class:`UploadRefused` when storing a file of ``new_size`` bytes under ``file_id``
    in a session that holds ``session_files`` ({id: record with ``.data``}) would break a limit.
    ``server_bytes``: what all sessions hold now."""
    old = session_files.get(file_id)
    old_size = len(old.data) if old is not None else 0
    count = len(session_files) + (0 if old is not None else 1)
    total = sum(len(f.data) for f in session_files.values()) - old_size + new_size
    if count > imageio.MAX_UPLOAD_FILES:
        raise UploadRefused(f"at most {imageio.MAX_UPLOAD_FILES} files per session")
    if total > imageio.MAX_UPLOAD_TOTAL_BYTES:
        raise UploadRefused(f"at most {imageio.MAX_UPLOAD_TOTAL_BYTES / 2**20:g} MB per session")
    if server_bytes - old_size + new_size > MAX_SERVER_BYTES:
        raise UploadRefused(f"the server holds {MAX_SERVER_BYTES / 2**20:g} MB of uploads already")


def install() -> bool:
    """Wrap Streamlit's upload store once per process; True when the guard is (now) active."""
    global _installed
    with _install_lock:
        if _installed:
            return True
        from starlette.exceptions import HTTPException
        from streamlit.runtime.memory_uploaded_file_manager import MemoryUploadedFileManager

        original = MemoryUploadedFileManager.add_file
        if not all(hasattr(MemoryUploadedFileManager, a) for a in ("add_file", "remove_file", "get_files")):
            raise RuntimeError("Streamlit's MemoryUploadedFileManager changed; the upload limits cannot be installed")

        def add_file(self, session_id, file):  # noqa: ANN001 - Streamlit's signature
            # Every add passes here: one lock around check + add makes them atomic against other
            # adds (removals only free space). The store's own lock guards the read.
            with _add_lock:
                with self._lock:
                    session_files = dict(self.file_storage.get(session_id, {}))
                    server_bytes = int(getattr(self, "_total_bytes", 0))
                try:
                    check(session_files, file.file_id, len(file.data), server_bytes)
                except UploadRefused as why:
                    log.warning("Upload refused (%s): %d bytes, session holds %d file(s)", why, len(file.data),
                                len(session_files))
                    raise HTTPException(status_code=413, detail=f"Upload refused: {why}") from None
                original(self, session_id, file)

        add_file.__wrapped__ = original  # type: ignore[attr-defined]
        add_file.pneumoscope_guard = True  # type: ignore[attr-defined]
        MemoryUploadedFileManager.add_file = add_file
        _installed = True
        log.info("Server-side upload limits active: %d files / %g MB per session, %g MB per server",
                 imageio.MAX_UPLOAD_FILES, imageio.MAX_UPLOAD_TOTAL_BYTES / 2**20, MAX_SERVER_BYTES / 2**20)
        return True


__all__ = ["MAX_SERVER_BYTES", "UploadRefused", "check", "install"]
