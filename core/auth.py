"""Admin password check with a per-client lockout and a global slow-down. No Streamlit here.

The admin password comes from ``.streamlit/secrets.toml`` (key ``admin_password``; the
page reads ``st.secrets`` and passes the value down) or ``$PNEUMOSCOPE_ADMIN_PASSWORD``.
There is **no default password**: without one configured the admin page stays locked.

Comparison is constant-time (``hmac.compare_digest`` on UTF-8 bytes). Throttling has two
layers (issue 14: a global lockout let anyone lock the real admin out by failing 5 times):

* **Per client** (the caller passes a key: the browser's address when known, else the
  Streamlit session id): after ``max_failures`` consecutive failures that client is refused
  for ``lockout_s`` seconds, whatever the password. Other clients are not affected.
* **Global backstop**: when more than ``global_free`` failures (from all clients together)
  happened in the last ``global_window_s`` seconds, every attempt first waits a delay that
  doubles every ``global_step`` further failures, up to ``max_delay_s``. An attacker who
  rotates sessions is slowed down; nobody, the admin included, is ever locked out by it.

The trade-off: a per-session key can be renewed by reloading the page, so against a
determined attacker the global delay (not the per-client lock) is what limits the guessing
rate -- a long random password remains the real protection. The state lives in a small JSON
file under ``artifacts/jobs/`` (read-modify-write under a file lock, ``core.locks``; client keys stored as
salted hashes, never the address) so it holds across sessions, restarts and processes.
Every attempt is written to the audit trail as action ``login`` with outcome ``ok`` /
``failed`` / ``locked`` and the hashed client -- never the password itself.
"""

from __future__ import annotations

import dataclasses
import hashlib
import hmac
import json
import logging
import math
import os
import time
from pathlib import Path
from typing import Mapping

from core import audit, locks
from core.config import default_artifacts_dir
from core.fsutil import atomic_write_text

log = logging.getLogger(__name__)

PASSWORD_ENV = "PNEUMOSCOPE_ADMIN_PASSWORD"
SECRET_KEY = "admin_password"
MAX_FAILURES = 5
LOCKOUT_S = 300.0
# Global backstop: failures from all clients in the window above which attempts are slowed.
GLOBAL_FREE = 10
GLOBAL_WINDOW_S = 900.0
GLOBAL_STEP = 5  # the delay doubles every GLOBAL_STEP further failures...
BASE_DELAY_S = 1.0
MAX_DELAY_S = 30.0  # ...up to this
_KEEP_FAILURES = 500  # global failure timestamps kept in the file
_CLIENT_SALT = "pneumoscope-login-client:"

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
    failures: int  # this client's consecutive failures (reset by a success or when its lockout ends)
    remaining_s: float  # seconds left in this client's lockout (0 when not locked)
    attempts_left: int  # failures still allowed to this client before its lockout
    delay_s: float = 0.0  # global slow-down applied to every attempt right now (0 = none)

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


def client_key(client: object) -> str:
    """A short salted hash of the client identifier (what is stored and audited)."""
    return hashlib.sha256((_CLIENT_SALT + str(client if client is not None else "")).encode("utf-8")).hexdigest()[:16]


class Lockout:
    """Per-client failure counters + lockouts and a global delay, stored as JSON under an exclusive flock.

    ``client``: any string identifying the caller (address or session id); None is one shared
    anonymous client. ``sleep`` is injectable for tests.
    """

    def __init__(self, path: str | os.PathLike | None = None, max_failures: int = MAX_FAILURES,
                 lockout_s: float = LOCKOUT_S, clock=time.time, *, global_free: int = GLOBAL_FREE,
                 global_window_s: float = GLOBAL_WINDOW_S, global_step: int = GLOBAL_STEP,
                 base_delay_s: float = BASE_DELAY_S, max_delay_s: float = MAX_DELAY_S, sleep=time.sleep):
        self.path = Path(path) if path is not None else default_lockout_path()
        self.max_failures = int(max_failures)
        self.lockout_s = float(lockout_s)
        self.clock = clock
        self.global_free = int(global_free)
        self.global_window_s = float(global_window_s)
        self.global_step = max(1, int(global_step))
        self.base_delay_s = float(base_delay_s)
        self.max_delay_s = float(max_delay_s)
        self.sleep = sleep

    # --- storage ---------------------------------------------------------------------------
    def _lock(self) -> locks.FileLock:
        return locks.file_lock(self.path.with_name(self.path.name + ".lock"), mode=0o600)

    def _read(self) -> dict:
        try:
            d = json.loads(self.path.read_text())
        except (OSError, ValueError):
            d = {}  # missing or damaged: start from clean counters
        if not isinstance(d, dict):
            d = {}
        if not isinstance(d.get("clients"), dict):
            d["clients"] = {}
        if not isinstance(d.get("global_failures"), list):
            d["global_failures"] = []
        return d

    def _write(self, d: dict) -> None:
        atomic_write_text(self.path, json.dumps(d), fsync=False)

    def _recent_failures(self, d: dict, now: float) -> list[float]:
        """Times of the failed attempts (all clients) inside the global window."""
        return [t for t in d.get("global_failures", []) if isinstance(t, (int, float)) and now - t < self.global_window_s]

    def _delay_from(self, d: dict, now: float) -> float:
        excess = len(self._recent_failures(d, now)) - self.global_free
        if excess <= 0:
            return 0.0
        return float(min(self.max_delay_s, self.base_delay_s * 2 ** ((excess - 1) // self.global_step)))

    def _status_from(self, d: dict, now: float, key: str) -> LockStatus:
        c = (d.get("clients") or {}).get(key) or {}
        until = float(c.get("locked_until") or 0.0)
        failures = int(c.get("failures") or 0)
        delay = self._delay_from(d, now)
        if until > now:
            return LockStatus(True, failures, until - now, 0, delay)
        if until:  # a lockout that has run out starts a fresh count
            failures = 0
        return LockStatus(False, failures, 0.0, max(self.max_failures - failures, 0), delay)

    # --- API -----------------------------------------------------------------------------
    def status(self, client: object = None) -> LockStatus:
        return self._status_from(self._read(), self.clock(), client_key(client))

    def delay_s(self) -> float:
        """The global slow-down every attempt waits right now (0 when failures are few)."""
        return self._delay_from(self._read(), self.clock())

    def attempt(self, attempt: str, expected: str | None, client: object = None) -> tuple[str, LockStatus]:
        """Check ``attempt`` for ``client`` under the lock; returns (outcome, status).

        Holding the flock across check + record means N concurrent wrong guesses count N
        times and nobody gets a free guess while a lockout is being written. (The global
        delay is waited by :func:`login` before this, outside the lock.)
        """
        key = client_key(client)
        with self._lock():
            now = self.clock()
            d = self._read()
            st = self._status_from(d, now, key)
            if expected is None:
                return "not_configured", st
            if st.locked:
                return "locked", st
            ok = verify(attempt, expected)
            clients = {k: v for k, v in d["clients"].items()  # forget clients idle for a day
                       if isinstance(v, dict) and now - float(v.get("last") or 0) < 86400}
            if ok:
                clients[key] = {"failures": 0, "locked_until": 0, "last": now}
            else:
                failures = st.failures + 1
                entry = {"failures": failures, "locked_until": 0, "last": now}
                if failures >= self.max_failures:
                    entry["locked_until"] = now + self.lockout_s
                    log.warning("Admin login locked for one client for %.0f s after %d failed attempts",
                                self.lockout_s, failures)
                clients[key] = entry
                d["global_failures"] = (self._recent_failures(d, now) + [now])[-_KEEP_FAILURES:]
            d["clients"] = clients
            self._write(d)
            return ("ok" if ok else "failed"), self._status_from(d, now, key)

    def reset(self) -> None:
        with self._lock():
            self._write({"clients": {}, "global_failures": []})


def login(attempt: str, expected: str | None, *, lockout: Lockout | None = None,
          audit_path: str | os.PathLike | None = None, client: object = None, **audit_fields) -> LoginResult:
    """Check a login attempt for ``client``, update the counters and write the audit line
    (never the password; the client only as a salted hash). Waits the global delay first."""
    lockout = lockout or Lockout()
    delay = lockout.delay_s() if expected is not None else 0.0
    if delay > 0:
        log.warning("Admin login slowed down by %.0f s (many recent failures)", delay)
        lockout.sleep(delay)
    outcome, st = lockout.attempt(attempt if isinstance(attempt, str) else "", expected, client=client)
    if outcome == "ok":
        msg = "Signed in."
    elif outcome == "not_configured":
        msg = SETUP_INSTRUCTIONS
    elif outcome == "locked":
        msg = (f"Too many failed attempts from this browser: the admin login is locked here for another "
               f"{st.remaining_text}. Try again later.")
    elif st.locked:
        msg = (f"Wrong password. That was failure {st.failures} of {lockout.max_failures}: the admin login "
               f"is now locked in this browser for {st.remaining_text}.")
    else:
        msg = (f"Wrong password. {st.attempts_left} attempt(s) left before a "
               f"{int(lockout.lockout_s // 60)}-minute lockout of this browser.")
    if outcome in ("failed", "locked") and st.delay_s > 0:
        msg += (f" There were many failed sign-in attempts recently (from any browser), so every attempt now "
                f"waits {st.delay_s:.0f} s.")
    if outcome != "not_configured":
        audit.append("login", path=audit_path, outcome=outcome, client=client_key(client),
                     delay_s=delay or None, **audit_fields)
    return LoginResult(outcome == "ok", outcome, msg, st)
