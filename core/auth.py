"""Admin password check with a global, file-backed lockout. No Streamlit here.

The admin password comes from ``.streamlit/secrets.toml`` (key ``admin_password``; the
page reads ``st.secrets`` and passes the value down) or ``$PNEUMOSCOPE_ADMIN_PASSWORD``.
There is **no default password**: without one configured the admin page stays locked.

Comparison is constant-time (``hmac.compare_digest`` on UTF-8 bytes). After
``max_failures`` consecutive failures every attempt is refused for ``lockout_s`` seconds,
whatever the password. The counter lives in a small JSON file under ``artifacts/jobs/``
(read-modify-write under ``flock``) so it holds across browser sessions, Streamlit
restarts and server processes. Every attempt is written to the audit trail as action
``login`` with outcome ``ok`` / ``failed`` / ``locked`` — never the password itself.
"""

from __future__ import annotations

import dataclasses
import fcntl
import hmac
import json
import logging
import math
import os
import time
import uuid
from pathlib import Path
from typing import Mapping

from core import audit
from core.config import default_artifacts_dir

log = logging.getLogger(__name__)

PASSWORD_ENV = "PNEUMOSCOPE_ADMIN_PASSWORD"
SECRET_KEY = "admin_password"
MAX_FAILURES = 5
LOCKOUT_S = 300.0

SETUP_INSTRUCTIONS = (
    "No admin password is configured, so the admin page stays locked. Set one in either place "
    "(there is no default password):\n\n"
    "1. `.streamlit/secrets.toml` next to `streamlit_app.py` (this file is git-ignored):\n\n"
    "   ```toml\n   admin_password = \"a-long-random-passphrase\"\n   ```\n\n"
    f"2. or the environment variable `{PASSWORD_ENV}` before starting Streamlit:\n\n"
    f"   ```bash\n   export {PASSWORD_ENV}='a-long-random-passphrase'\n   streamlit run streamlit_app.py\n   ```\n\n"
    "Then reload this page."
)


def resolve_password(secret_value: object = None, env: Mapping[str, str] | None = None) -> str | None:
    """The configured admin password: the secrets value if set, else the env var, else None.

    Blank values count as "not configured" (an empty password would be a default password).
    """
    env = os.environ if env is None else env
    for cand in (secret_value, env.get(PASSWORD_ENV)):
        if isinstance(cand, (int, float)) and not isinstance(cand, bool):
            cand = str(cand)  # TOML `admin_password = 1234` parses as an int
        if isinstance(cand, str) and cand.strip():
            return cand
    return None


def verify(attempt: str, expected: str) -> bool:
    """Constant-time comparison (time does not depend on where the strings differ)."""
    if not isinstance(attempt, str) or not isinstance(expected, str):
        return False
    return hmac.compare_digest(attempt.encode("utf-8"), expected.encode("utf-8"))


def default_lockout_path() -> Path:
    return default_artifacts_dir() / "jobs" / "auth_lockout.json"


@dataclasses.dataclass
class LockStatus:
    locked: bool
    failures: int  # consecutive failures so far (reset by a success or when a lockout ends)
    remaining_s: float  # seconds left in the lockout (0 when not locked)
    attempts_left: int  # failures still allowed before a lockout

    @property
    def remaining_text(self) -> str:
        m, s = divmod(int(math.ceil(self.remaining_s)), 60)
        return f"{m} min {s:02d} s" if m else f"{s} s"


@dataclasses.dataclass
class LoginResult:
    ok: bool
    outcome: str  # "ok" | "failed" | "locked" | "not_configured"
    message: str
    status: LockStatus


class Lockout:
    """Global failure counter + lockout, stored as JSON and updated under an exclusive flock."""

    def __init__(self, path: str | os.PathLike | None = None, max_failures: int = MAX_FAILURES,
                 lockout_s: float = LOCKOUT_S, clock=time.time):
        self.path = Path(path) if path is not None else default_lockout_path()
        self.max_failures = int(max_failures)
        self.lockout_s = float(lockout_s)
        self.clock = clock

    # --- storage ---------------------------------------------------------------------------
    def _lock_fd(self) -> int:
        self.path.parent.mkdir(parents=True, exist_ok=True)
        fd = os.open(str(self.path.with_name(self.path.name + ".lock")), os.O_RDWR | os.O_CREAT, 0o600)
        fcntl.flock(fd, fcntl.LOCK_EX)
        return fd

    def _read(self) -> dict:
        try:
            d = json.loads(self.path.read_text())
            return d if isinstance(d, dict) else {}
        except (OSError, ValueError):
            return {}  # missing or damaged: start from a clean counter

    def _write(self, d: dict) -> None:
        tmp = self.path.with_name(f".{self.path.name}.{uuid.uuid4().hex}.tmp")
        tmp.write_text(json.dumps(d))
        os.replace(tmp, self.path)

    def _status_from(self, d: dict, now: float) -> LockStatus:
        until = float(d.get("locked_until") or 0.0)
        failures = int(d.get("failures") or 0)
        if until > now:
            return LockStatus(True, failures, until - now, 0)
        if until:  # a lockout that has run out starts a fresh count
            failures = 0
        return LockStatus(False, failures, 0.0, max(self.max_failures - failures, 0))

    # --- API -----------------------------------------------------------------------------
    def status(self) -> LockStatus:
        return self._status_from(self._read(), self.clock())

    def attempt(self, attempt: str, expected: str | None) -> tuple[str, LockStatus]:
        """Check ``attempt`` under the lock; returns (outcome, status).

        Holding the flock across check + record means N concurrent wrong guesses count N
        times and nobody gets a free guess while the lockout is being written.
        """
        fd = self._lock_fd()
        try:
            now = self.clock()
            d = self._read()
            st = self._status_from(d, now)
            if expected is None:
                return "not_configured", st
            if st.locked:
                return "locked", st
            ok = verify(attempt, expected)
            if ok:
                d = {"failures": 0, "locked_until": 0, "last_success": now}
            else:
                failures = st.failures + 1
                d = {"failures": failures, "locked_until": 0, "last_failure": now}
                if failures >= self.max_failures:
                    d["locked_until"] = now + self.lockout_s
                    log.warning("Admin login locked for %.0f s after %d failed attempts", self.lockout_s, failures)
            self._write(d)
            return ("ok" if ok else "failed"), self._status_from(d, now)
        finally:
            os.close(fd)

    def reset(self) -> None:
        fd = self._lock_fd()
        try:
            self._write({"failures": 0, "locked_until": 0})
        finally:
            os.close(fd)


def login(attempt: str, expected: str | None, *, lockout: Lockout | None = None,
          audit_path: str | os.PathLike | None = None, **audit_fields) -> LoginResult:
    """Check a login attempt, update the lockout and write the audit line (never the password)."""
    lockout = lockout or Lockout()
    outcome, st = lockout.attempt(attempt if isinstance(attempt, str) else "", expected)
    if outcome == "ok":
        msg = "Signed in."
    elif outcome == "not_configured":
        msg = SETUP_INSTRUCTIONS
    elif outcome == "locked":
        msg = (f"Too many failed attempts: the admin login is locked for another {st.remaining_text}. "
               "Try again later.")
    elif st.locked:
        msg = (f"Wrong password. That was failure {st.failures} of {lockout.max_failures}: the admin login "
               f"is now locked for {st.remaining_text}.")
    else:
        msg = f"Wrong password. {st.attempts_left} attempt(s) left before a {int(lockout.lockout_s // 60)}-minute lockout."
    if outcome != "not_configured":
        audit.append("login", path=audit_path, outcome=outcome, **audit_fields)
    return LoginResult(outcome == "ok", outcome, msg, st)
