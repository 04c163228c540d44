"""Admin password check: a global cap on wrong guesses, a per-session lockout, one-time codes.
No Streamlit here.

The admin password comes from ``.streamlit/secrets.toml`` (key ``admin_password``; the
page reads ``st.secrets`` and passes the value down) or ``$PNEUMOSCOPE_ADMIN_PASSWORD``.
There is **no default password**: without one configured the admin page stays locked.

Comparison is constant-time (``hmac.compare_digest`` on UTF-8 bytes). Throttling (issue 21:
100 sessions rotating every 5 guesses made ~14,600 wrong guesses per hour through the old
global slow-down, and each delayed attempt held a server thread in ``time.sleep``):

* **Global cap, a token bucket** shared by every session and process: it holds
  ``BUCKET_CAPACITY`` tokens and gains ``REFILL_PER_HOUR`` per hour. A wrong password costs
  one token; with less than one token left, a password attempt is **refused at once**
  ("try again in N s") *without the password being compared* and without waiting. So in any
  window of T hours at most ``BUCKET_CAPACITY + REFILL_PER_HOUR * T`` wrong passwords are
  ever checked, however many sessions an attacker opens: **at most 40 in any one hour, 30 per
  hour sustained** (:data:`MAX_WRONG_GUESSES_PER_HOUR`). No attempt sleeps.
* **Per session** (the caller passes a key: the page uses a random id per page session, which a
  reload renews -- the messages say so, :func:`session_scope_note`):
  after ``max_failures`` consecutive failures that session is refused for ``lockout_s``
  seconds. Cheap friction and a clear message; the bucket is what caps an attacker.
* **One-time sign-in code** so an attacker who keeps the bucket empty cannot lock the real
  admin out: ``python -m core admin sign-in-code``, run on the server, prints a random code
  (16 characters of Crockford base32 = 80 bits) that signs in **once** within
  ``CODE_TTL_S`` (10 minutes). Code attempts do not use the bucket (they never check the
  password, so they cannot be used to guess it), are compared in constant time against a
  SHA-256 of the code (the code itself is never stored), and are audited. A new code replaces
  the previous one. Guessing an 80-bit code is hopeless: 10,000 tries per second for the whole
  10 minutes succeed with probability 5e-18.

The state lives in ``artifacts/admin/auth_lockout.json`` (``core.layout.Layout.auth_lockout``; a
file at its pre-issue-23 place ``jobs/`` is moved there once; mode 0600; read-modify-write under a
file lock, ``core.locks``; client keys stored as salted hashes). It is read as a bounded
regular file (``core.fsutil.read_json_file``): a FIFO, a symlink (to ``/dev/zero`` or
anywhere), an oversized, invalid or tampered file **fails safe** -- it counts as an *empty*
bucket (password sign-in paused until it refills; the one-time code still works) and is
replaced by a valid file at the next attempt; it never switches throttling off. Every attempt
is written to the audit trail as action ``login`` (outcomes ``ok`` / ``failed`` / ``locked`` /
``throttled`` / ``code_ok`` / ``code_failed``, ``code_issued`` for the CLI) with the hashed
client -- never the password or the code.
"""

from __future__ import annotations

import contextlib
import dataclasses
import hashlib
import hmac
import json
import logging
import math
import os
import secrets
import time
from pathlib import Path
from typing import Mapping

from core import audit, locks
from core.formatting import duration
from core.fsutil import atomic_write_text, read_json_file
from core.layout import Layout

log = logging.getLogger(__name__)

PASSWORD_ENV = "PNEUMOSCOPE_ADMIN_PASSWORD"
SECRET_KEY = "admin_password"
MAX_FAILURES = 5
LOCKOUT_S = 300.0
# Global cap: a token bucket of wrong guesses shared by all sessions and processes.
BUCKET_CAPACITY = 10  # wrong passwords allowed in a burst when nobody failed for a while
REFILL_PER_HOUR = 30.0  # tokens regained per hour (one every 120 s)
# In any window of T hours at most BUCKET_CAPACITY + REFILL_PER_HOUR * T wrong passwords are checked.
MAX_WRONG_GUESSES_PER_HOUR = int(BUCKET_CAPACITY + REFILL_PER_HOUR)  # 40 in any one hour (30/h sustained)
# One-time sign-in codes (python -m core admin sign-in-code).
CODE_TTL_S = 600.0
CODE_ALPHABET = "0123456789ABCDEFGHJKMNPQRSTVWXYZ"  # Crockford base32: no I, L, O, U
CODE_LENGTH = 16  # 16 x 5 bits = 80 bits
CODE_COMMAND = "python -m core admin sign-in-code"
LOCK_TIMEOUT_S = 10.0  # the state file's lock is held for milliseconds; never wait forever
STATE_READ_LIMIT = 256 * 1024  # the state file is a few KB (at most _KEEP_CLIENTS entries)
_KEEP_CLIENTS = 1000
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


def default_lockout_path(artifacts: str | os.PathLike | None = None) -> Path:
    """``<artifacts>/admin/auth_lockout.json``, moved there from ``jobs/`` once if needed."""
    layout = Layout.of(artifacts)
    return layout.migrate(layout.auth_lockout)


@dataclasses.dataclass
class LockStatus:
    locked: bool
    failures: int  # this client's consecutive failures (reset by a success or when its lockout ends)
    remaining_s: float  # seconds left in this client's lockout (0 when not locked)
    attempts_left: int  # failures still allowed to this client before its lockout
    tokens: float = float(BUCKET_CAPACITY)  # wrong guesses the global bucket still allows right now
    retry_in_s: float = 0.0  # when the bucket is empty: seconds until the next password attempt is checked
    state_error: str | None = None  # why the state file was not usable (then the bucket counts as empty)

    @property
    def throttled(self) -> bool:
        """Password sign-in is paused for everyone (the global bucket is empty)."""
        return self.retry_in_s > 0

    @property
    def remaining_text(self) -> str:
        return duration(math.ceil(max(self.remaining_s, 0.0)))

    @property
    def retry_text(self) -> str:
        return duration(math.ceil(max(self.retry_in_s, 0.0)))


@dataclasses.dataclass
class LoginResult:
    ok: bool
    outcome: str  # "ok" | "failed" | "locked" | "throttled" | "code_ok" | "code_failed" | "not_configured"
    message: str
    status: LockStatus


def client_key(client: object) -> str:
    """A short salted hash of the client identifier (what is stored and audited)."""
    return hashlib.sha256((_CLIENT_SALT + str(client if client is not None else "")).encode("utf-8")).hexdigest()[:16]


def normalise_code(code: object) -> str:
    """A typed code as stored: upper case, spaces and dashes dropped, Crockford's O->0, I/L->1."""
    if not isinstance(code, str):
        return ""
    s = "".join(ch for ch in code.upper() if ch not in " -\t")
    return s.translate(str.maketrans({"O": "0", "I": "1", "L": "1"}))


def _code_hash(code: str) -> str:
    return hashlib.sha256(("pneumoscope-signin-code:" + code).encode("utf-8")).hexdigest()


def _number(v: object) -> float | None:
    """A finite number from the state file, else None (bool, text, NaN are not numbers here)."""
    if isinstance(v, bool) or not isinstance(v, (int, float)):
        return None
    v = float(v)
    return v if math.isfinite(v) else None


class Lockout:
    """The global token bucket, per-client lockouts and the one-time code, stored as JSON under
    an exclusive file lock. ``client``: any string identifying the caller (the page: a random id
    per browser session); None is one shared anonymous client. ``clock`` is injectable for tests.
    Nothing here sleeps: a refused attempt returns at once with the seconds to wait.
    """

    def __init__(self, path: str | os.PathLike | None = None, max_failures: int = MAX_FAILURES,
                 lockout_s: float = LOCKOUT_S, clock=time.time, *, capacity: int = BUCKET_CAPACITY,
                 refill_per_hour: float = REFILL_PER_HOUR, code_ttl_s: float = CODE_TTL_S):
        self.path = Path(path) if path is not None else default_lockout_path()
        self.max_failures = int(max_failures)
        self.lockout_s = float(lockout_s)
        self.clock = clock
        self.capacity = float(capacity)
        if not self.capacity >= 1 or not float(refill_per_hour) > 0:
            raise ValueError("The sign-in bucket needs a capacity of at least 1 and a positive refill rate.")
        self.refill_per_s = float(refill_per_hour) / 3600.0
        self.code_ttl_s = float(code_ttl_s)

    @property
    def max_wrong_per_hour(self) -> int:
        """The cap: at most this many wrong passwords are checked in any one-hour window."""
        return int(self.capacity + self.refill_per_s * 3600.0)

    # --- storage ---------------------------------------------------------------------------
    def _lock(self) -> locks.FileLock:
        return locks.file_lock(self.path.with_name(self.path.name + ".lock"), timeout=LOCK_TIMEOUT_S, mode=0o600)

    def _read(self, now: float) -> tuple[dict, str | None]:
        """The state with the bucket refilled to ``now``, and why the file was not usable (or None).

        Fails safe: a file that is not a bounded regular JSON object (FIFO, symlink, device, too
        large, not JSON, wrong types) gives an **empty** bucket, never a full one."""
        empty = {"bucket": {"tokens": 0.0, "t": now}, "clients": {}, "code": None}
        try:
            d = read_json_file(self.path, limit=STATE_READ_LIMIT, expect=dict)
        except FileNotFoundError:
            return {"bucket": {"tokens": self.capacity, "t": now}, "clients": {}, "code": None}, None
        except OSError as exc:  # UnsafeFileError included
            log.warning("Admin sign-in state %s refused (%s); password sign-in counts as throttled", self.path, exc)
            return empty, str(exc)
        error = None
        b = d.get("bucket")
        tokens = _number(b.get("tokens")) if isinstance(b, dict) else None
        t = _number(b.get("t")) if isinstance(b, dict) else None
        if tokens is None or t is None:
            error = f"'{self.path.name}' has no valid sign-in bucket"
            log.warning("Admin sign-in state %s: no valid bucket; counting it as empty", self.path)
            tokens, t = 0.0, now
        tokens = min(max(tokens, 0.0), self.capacity)
        if t > now:  # a time in the future (clock set back, or tampering) earns nothing; rewritten below
            error = error or f"'{self.path.name}' has a refill time in the future"
            t = now
        tokens = min(self.capacity, tokens + (now - t) * self.refill_per_s)
        clients = d.get("clients")
        clients = {k: v for k, v in clients.items() if isinstance(k, str) and isinstance(v, dict)} \
            if isinstance(clients, dict) else {}
        code = d.get("code")
        if not (isinstance(code, dict) and isinstance(code.get("sha256"), str)
                and _number(code.get("expires")) is not None and code["expires"] > now):
            code = None  # none, damaged or expired
        return {"bucket": {"tokens": tokens, "t": now}, "clients": clients, "code": code}, error

    def _write(self, d: dict) -> None:
        atomic_write_text(self.path, json.dumps({"v": 2, **d}), mode=0o600, fsync=False)

    def _status_from(self, d: dict, now: float, key: str, error: str | None = None) -> LockStatus:
        c = d["clients"].get(key) or {}
        until = _number(c.get("locked_until")) or 0.0
        failures = int(_number(c.get("failures")) or 0)
        tokens = d["bucket"]["tokens"]
        retry = 0.0 if tokens >= 1.0 else (1.0 - tokens) / self.refill_per_s
        if until > now:
            return LockStatus(True, failures, until - now, 0, tokens, retry, error)
        if until:  # a lockout that has run out starts a fresh count
            failures = 0
        return LockStatus(False, failures, 0.0, max(self.max_failures - failures, 0), tokens, retry, error)

    @staticmethod
    def _prune(clients: dict, now: float) -> dict:
        """Forget clients idle for a day; keep the newest _KEEP_CLIENTS - 1 (the caller adds one):
        bounds the file whatever the number of sessions."""
        fresh = [(k, v) for k, v in clients.items() if now - (_number(v.get("last")) or 0.0) < 86400]
        fresh.sort(key=lambda kv: _number(kv[1].get("last")) or 0.0)
        return dict(fresh[-(_KEEP_CLIENTS - 1):])

    # --- API -----------------------------------------------------------------------------
    def status(self, client: object = None) -> LockStatus:
        now = self.clock()
        d, error = self._read(now)
        return self._status_from(d, now, client_key(client), error)

    @contextlib.contextmanager
    def _state(self, client: object):
        """Under the file lock: (client key, now, state dict, read error, LockStatus)."""
        key = client_key(client)
        with self._lock():
            now = self.clock()
            d, error = self._read(now)
            yield key, now, d, error, self._status_from(d, now, key, error)

    def attempt(self, attempt: str, expected: str | None, client: object = None) -> tuple[str, LockStatus]:
        """Check a password ``attempt`` for ``client`` under the lock; returns (outcome, status).

        Order: not configured -> this client locked -> bucket empty ("throttled": the password is
        **not** compared) -> compare. Only a compared wrong password costs a token. Holding the
        lock across check + record means N concurrent wrong guesses cost N tokens."""
        with self._state(client) as (key, now, d, error, st):
            if expected is None:
                return "not_configured", st
            if st.locked or st.throttled:
                if error:
                    self._write(d)  # replace a damaged file by a valid (empty-bucket) one
                return ("locked" if st.locked else "throttled"), st
            ok = verify(attempt, expected)
            clients = self._prune(d["clients"], now)
            if ok:
                clients[key] = {"failures": 0, "locked_until": 0, "last": now}
            else:
                d["bucket"]["tokens"] -= 1.0
                failures = st.failures + 1
                entry = {"failures": failures, "locked_until": 0, "last": now}
                if failures >= self.max_failures:
                    entry["locked_until"] = now + self.lockout_s
                    log.warning("Admin login locked for one client for %.0f s after %d failed attempts",
                                self.lockout_s, failures)
                clients[key] = entry
                if d["bucket"]["tokens"] < 1.0:
                    log.warning("Admin password sign-in paused for everyone: the wrong-guess budget is used up")
            d["clients"] = clients
            self._write(d)
            return ("ok" if ok else "failed"), self._status_from(d, now, key)

    def issue_code(self) -> tuple[str, float]:
        """A new one-time sign-in code (replacing any previous one) and its expiry time. Only its
        SHA-256 is stored."""
        raw = "".join(secrets.choice(CODE_ALPHABET) for _ in range(CODE_LENGTH))
        with self._lock():
            now = self.clock()
            d, _ = self._read(now)
            expires = now + self.code_ttl_s
            d["code"] = {"sha256": _code_hash(raw), "expires": expires, "issued": now}
            self._write(d)
        return "-".join(raw[i:i + 4] for i in range(0, CODE_LENGTH, 4)), expires

    def attempt_code(self, code: str, expected: str | None, client: object = None) -> tuple[str, LockStatus]:
        """Check a one-time code under the lock: ``code_ok`` consumes it (it works once),
        ``code_failed`` changes nothing. The bucket and the per-client lockout do not apply
        (no password is compared here). Constant-time against the stored hash."""
        with self._state(client) as (key, now, d, error, st):
            if expected is None:
                return "not_configured", st
            stored = (d.get("code") or {}).get("sha256") or ""
            given = normalise_code(code)
            # Always one comparison of two 64-character digests, whether or not a code is active.
            ok = hmac.compare_digest(_code_hash(given).encode(), (stored or "-" * 64).encode()) \
                and bool(stored) and len(given) == CODE_LENGTH
            if ok:
                d["code"] = None
                clients = self._prune(d["clients"], now)
                clients[key] = {"failures": 0, "locked_until": 0, "last": now}
                d["clients"] = clients
                self._write(d)
                return "code_ok", self._status_from(d, now, key)
            if error:
                self._write(d)
            return "code_failed", st

    def reset(self) -> None:
        """Full bucket, no lockouts, no code (tests and the CLI's recovery)."""
        with self._lock():
            self._write({"bucket": {"tokens": self.capacity, "t": self.clock()}, "clients": {}, "code": None})


def _throttled_message(st: LockStatus) -> str:
    return (f"Too many wrong passwords were tried recently (from any browser), so password sign-in is paused "
            f"for everyone: try again in {st.retry_text}. The password was not checked. An administrator with "
            f"access to the server can sign in now with a one-time code: run `{CODE_COMMAND}` there.")


def session_scope_note(lockout: Lockout | None = None) -> str:
    """What the per-session lockout does and does not hold (issue 22: the page said "locked in
    this browser for 5 min" and a reload gave 5 fresh attempts). The lock is per page session (the
    page's random id; a reload starts a new one); the limit that holds across sessions, browsers
    and reloads is the global bucket."""
    lockout = lockout or Lockout()
    return (f"A reload starts a new page session with its own {lockout.max_failures} attempts, but wrong "
            f"passwords from all sessions and browsers together stay capped: at most {int(lockout.capacity)} in a burst, "
            f"then one every {duration(1.0 / lockout.refill_per_s)}.")


def locked_message(st: LockStatus, lockout: Lockout | None = None) -> str:
    """The message of a page session locked after too many failures (the page and login())."""
    return (f"Too many failed attempts in this page session: sign-in is locked here for another "
            f"{st.remaining_text}. " + session_scope_note(lockout))


def login(attempt: str, expected: str | None, *, lockout: Lockout | None = None,
          audit_path: str | os.PathLike | None = None, client: object = None, **audit_fields) -> LoginResult:
    """Check a password attempt for ``client``, update the counters and write the audit line
    (never the password; the client only as a salted hash). Never waits: a throttled attempt is
    refused at once with the time to wait in the message."""
    lockout = lockout or Lockout()
    outcome, st = lockout.attempt(attempt if isinstance(attempt, str) else "", expected, client=client)
    if outcome == "ok":
        msg = "Signed in."
    elif outcome == "not_configured":
        msg = SETUP_INSTRUCTIONS
    elif outcome == "locked":
        msg = locked_message(st, lockout)
    elif outcome == "throttled":
        msg = _throttled_message(st)
    elif st.locked:
        msg = (f"Wrong password. That was failure {st.failures} of {lockout.max_failures}: sign-in is now locked "
               f"here (this page session) for {st.remaining_text}. " + session_scope_note(lockout))
    else:
        msg = (f"Wrong password. {st.attempts_left} attempt(s) left in this page session before a "
               f"{int(lockout.lockout_s // 60)}-minute lockout of it.")
    if outcome == "failed" and st.throttled:
        msg += " " + _throttled_message(st)
    if outcome != "not_configured":
        audit.append("login", path=audit_path, outcome=outcome, client=client_key(client),
                     delay_s=round(st.retry_in_s, 1) if outcome == "throttled" else None, **audit_fields)
    return LoginResult(outcome == "ok", outcome, msg, st)


def login_with_code(code: str, expected: str | None, *, lockout: Lockout | None = None,
                    audit_path: str | os.PathLike | None = None, client: object = None, **audit_fields) -> LoginResult:
    """Sign in with a one-time code from ``python -m core admin sign-in-code`` (audited, never
    the code). Works while password sign-in is throttled; each code works once."""
    lockout = lockout or Lockout()
    outcome, st = lockout.attempt_code(code, expected, client=client)
    if outcome == "code_ok":
        msg = "Signed in with the one-time code (it cannot be used again)."
    elif outcome == "not_configured":
        msg = SETUP_INSTRUCTIONS
    else:
        msg = (f"This sign-in code is not valid: it is wrong, was already used, or is older than "
               f"{int(lockout.code_ttl_s // 60)} minutes. Run `{CODE_COMMAND}` on the server for a new one.")
    if outcome != "not_configured":
        audit.append("login", path=audit_path, outcome=outcome, client=client_key(client), **audit_fields)
    return LoginResult(outcome == "code_ok", outcome, msg, st)


# --- CLI: python -m core admin sign-in-code -------------------------------------------------------
def add_cli(sub) -> None:
    """The ``admin`` subcommand (called by core.cli.build_parser)."""
    p = sub.add_parser("admin", help="admin sign-in: print a one-time sign-in code for the admin page")
    p.add_argument("action", choices=["sign-in-code"],
                   help=f"sign-in-code: a code that signs in once within {int(CODE_TTL_S // 60)} minutes, "
                        "also while password sign-in is paused after many wrong guesses")


def cmd_admin(args, registry) -> int:
    import sys

    from core.exitcodes import EXIT_DATA, EXIT_OK

    lockout = Lockout(default_lockout_path(registry.root))
    try:
        code, expires = lockout.issue_code()
    except OSError as e:
        print(f"error: cannot write the sign-in state {lockout.path} ({e})", file=sys.stderr)
        return EXIT_DATA
    audit.append("login", path=audit.default_audit_path(registry.root), outcome="code_issued", source="cli")
    minutes = int(round((expires - lockout.clock()) / 60))
    print(f"One-time admin sign-in code (valid once, for {minutes} minutes): {code}")
    print("Admin page -> 'Sign in with a one-time code'. A new code replaces this one. Do not share it.",
          file=sys.stderr)
    return EXIT_OK
