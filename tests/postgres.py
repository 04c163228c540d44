"""A throwaway PostgreSQL server for tests: ``initdb`` + ``pg_ctl`` in a temporary folder on a free port.

Debian's ``postgresql`` package (CI installs it) keeps its binaries in /usr/lib/postgresql/<N>/bin,
off PATH. PostgreSQL refuses to run as root, so under root (CI containers) the server runs as the
``postgres`` account the package creates. Tests skip with the reason when no server can be made.
"""

from __future__ import annotations

import contextlib
import glob
import os
import pwd
import shutil
import subprocess
import tempfile
from pathlib import Path
from typing import Iterator

from tests.helpers import free_port


def pg_bin(name: str) -> str | None:
    found = shutil.which(name)
    if found:
        return found
    cands = sorted(glob.glob(f"/usr/lib/postgresql/*/bin/{name}"),
                   key=lambda p: int(Path(p).parent.parent.name) if Path(p).parent.parent.name.isdigit() else 0)
    return cands[-1] if cands else None


def unavailable_reason() -> str | None:
    """Why no throwaway server can be started here, or None."""
    if not (pg_bin("initdb") and pg_bin("pg_ctl")):
        return "PostgreSQL is not installed (Debian: apt-get install postgresql)"
    if os.geteuid() == 0:
        try:
            pwd.getpwnam("postgres")
        except KeyError:
            return "running as root and there is no 'postgres' account to run PostgreSQL as"
    try:
        import psycopg  # noqa: F401
    except ImportError:
        return "psycopg is not installed (pip install -r requirements.txt)"
    return None


def _run(cmd: list[str], user: str | None, **kw) -> subprocess.CompletedProcess:
    return subprocess.run(cmd, user=user, check=True, capture_output=True, text=True, timeout=120, **kw)


@contextlib.contextmanager
def postgres_server() -> Iterator[str]:
    """Start a fresh cluster; yields its SQLAlchemy URL; stops it and removes the folder."""
    user = "postgres" if os.geteuid() == 0 else None
    base = Path(tempfile.mkdtemp(prefix="pneumoscope-pg-"))
    data, sock = base / "data", base / "sock"
    sock.mkdir()
    if user:
        pw = pwd.getpwnam(user)
        for p in (base, sock):
            os.chown(p, pw.pw_uid, pw.pw_gid)
    port = free_port()
    env = {**os.environ, "LC_ALL": "C.UTF-8", "LANG": "C.UTF-8"}
    try:
        _run([pg_bin("initdb"), "-D", str(data), "-U", "postgres", "--auth=trust", "-E", "UTF8", "--no-sync"],
             user, env=env)
        opts = (f"-p {port} -k {sock} -c listen_addresses=127.0.0.1 -c fsync=on -c max_connections=60 "
                "-c shared_buffers=16MB")
        _run([pg_bin("pg_ctl"), "-D", str(data), "-o", opts, "-l", str(base / "log"), "-w", "-t", "60", "start"],
             user, env=env)
    except (subprocess.CalledProcessError, subprocess.TimeoutExpired) as e:
        log = (base / "log").read_text(errors="replace")[-2000:] if (base / "log").exists() else ""
        shutil.rmtree(base, ignore_errors=True)
        out = getattr(e, "stderr", "") or ""
        raise RuntimeError(f"could not start PostgreSQL: {out[-1500:]}\n{log}") from e
    try:
        yield f"postgresql+psycopg://postgres@127.0.0.1:{port}/postgres"
    finally:
        with contextlib.suppress(subprocess.CalledProcessError, subprocess.TimeoutExpired):
            _run([pg_bin("pg_ctl"), "-D", str(data), "-m", "immediate", "-w", "stop"], user, env=env)
        shutil.rmtree(base, ignore_errors=True)
