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

The state is one document of the shared database (``core.db``; kind ``"auth"``, key
``"signin"``), so the bucket, the lockouts and the code are the same for every app instance
behind a load balancer (issue 25): an attacker cannot multiply the budget by the number of
instances. Each attempt is a read-modify-write compare-and-swapped on the document's revision
and retried when another instance wrote in between, so N concurrent wrong guesses on any
instances cost N tokens. Client keys are stored as salted hashes. A document that is damaged
or tampered (no valid bucket, a refill time in the future) **fails safe** -- it counts as an
*empty* bucket (password sign-in paused until it refills; the one-time code still works) and
is replaced by a valid state at the next attempt; it never switches throttling off.

The state file of earlier releases (``admin/auth_lockout.json``, before issue 23
``jobs/auth_lockout.json``) is imported once per database, only when the database has no state
yet, and left in place (no longer read or written). It is read as a bounded regular file
(``core.fsutil.read_json_file``): a FIFO, a symlink (to ``/dev/zero`` or anywhere), an oversized
or invalid file is imported as an empty bucket, never a full one. Every attempt
is written to the audit trail as action ``login`` (outcomes ``ok`` / ``failed`` / ``locked`` /
``throttled`` / ``code_ok`` / ``code_failed``, ``code_issued`` for the CLI) with the hashed
client -- never the password or the code.
"""

from __future__ import annotations

import dataclasses
import hashlib
import hmac
import logging
import math
import os
import secrets
import time
from pathlib import Path
from typing import Mapping

from core import audit
from core import db as dbm
from core.formatting import duration
from core.fsutil import read_json_file
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
STATE_KIND, STATE_KEY = "auth", "signin"  # the database document of the sign-in state
CAS_RETRIES = 50  # an update re-reads and retries when another instance wrote in between
STATE_READ_LIMIT = 256 * 1024  # the old state file is a few KB (at most _KEEP_CLIENTS entries)
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


_IMPORTED: set[tuple[str, str]] = set()  # (database URL, artifacts root) whose old state file was imported


def _import_legacy(db: dbm.Database, root: Path, now: float) -> None:
    """Import the sign-in state file of earlier releases once (the new place wins over ``jobs/``),
    only when the database has no state yet. A file that is not a bounded regular JSON object
    (FIFO, symlink, too large, not JSON) is imported as an empty bucket: never a full one."""
    layout = Layout(root)
    found = [p for p in reversed(layout.imported(layout.auth_lockout)) if os.path.lexists(p)]
    if not found:
        return
    p = found[0]
    try:
        state = read_json_file(p, limit=STATE_READ_LIMIT, expect=dict)
    except (OSError, ValueError) as e:  # UnsafeFileError is an OSError
        log.warning("Admin sign-in state %s refused (%s); imported as an empty bucket", p, e)
        state = {"bucket": {"tokens": 0.0, "t": now}, "clients": {}, "code": None}
    if db.import_documents_once(layout.relative(p), [(STATE_KIND, STATE_KEY, state)]):
        log.info("Imported the admin sign-in state %s into the database", p)


@dataclasses.dataclass
class LockStatus:
    locked: bool
    failures: int  # this client's consecutive failures (reset by a success or when its lockout ends)
    remaining_s: float  # seconds left in this client's lockout (0 when not locked)
    attempts_left: int  # failures still allowed to this client before its lockout
    tokens: float = float(BUCKET_CAPACITY)  # wrong guesses the global bucket still allows right now
    retry_in_s: float = 0.0  # when the bucket is empty: seconds until the next password attempt is checked
    state_error: str | None = None  # why the stored state was not usable (then the bucket counts as empty)

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
    """A finite number from the stored state, else None (bool, text, NaN are not numbers here)."""
    if isinstance(v, bool) or not isinstance(v, (int, float)):
        return None
    v = float(v)
    return v if math.isfinite(v) else None


class Lockout:
    """The global token bucket, per-client lockouts and the one-time code, stored as one document of
    the shared database (compare-and-swap). ``artifacts``: the artifacts root (its database, and
    where an old state file is imported from; default ``core.config.default_artifacts_dir()``);
    ``db``: use this database instead. ``client``: any string identifying the caller (the page: a
    random id per browser session); None is one shared anonymous client. ``clock`` is injectable
    for tests. Nothing here sleeps: a refused attempt returns at once with the seconds to wait.
    """

    def __init__(self, artifacts: str | os.PathLike | None = None, max_failures: int = MAX_FAILURES,
                 lockout_s: float = LOCKOUT_S, clock=time.time, *, capacity: int = BUCKET_CAPACITY,
                 refill_per_hour: float = REFILL_PER_HOUR, code_ttl_s: float = CODE_TTL_S,
                 db: dbm.Database | None = None):
        self.root = Layout.of(artifacts).root
        self._db = db
        self.max_failures = int(max_failures)
        self.lockout_s = float(lockout_s)
        self.clock = clock
        self.capacity = float(capacity)
        if not self.capacity >= 1 or not float(refill_per_hour) > 0:
            raise ValueError("The sign-in bucket needs a capacity of at least 1 and a positive refill rate. "
                             f"Received: capacity={capacity!r}, refill_per_hour={refill_per_hour!r}")
        self.refill_per_s = float(refill_per_hour) / 3600.0
        self.code_ttl_s = float(code_ttl_s)

    @property
    def max_wrong_per_hour(self) -> int:
        """The cap: at most this many wrong passwords are checked in any one-hour window."""
        return int(self.capacity + self.refill_per_s * 3600.0)

    # --- storage ---------------------------------------------------------------------------
    @property
    def db(self) -> dbm.Database:
        """The shared database (connected on first use), after the one-time import of the old file."""
        if self._db is None:
            self._db = dbm.connect(self.root)
        mark = (self._db.url, str(self.root.absolute()))
        if mark not in _IMPORTED:
            _import_legacy(self._db, self.root, self.clock())
            _IMPORTED.add(mark)
        return self._db

    def _parse(self, d: dict | None, now: float) -> tuple[dict, str | None]:
        """The stored state ``d`` (None: nothing stored yet) with the bucket refilled to ``now``, and
        why it was not usable (or None). Fails safe: no valid bucket gives an **empty** bucket."""
        if d is None:
            return {"bucket": {"tokens": self.capacity, "t": now}, "clients": {}, "code": None}, None
        error = None
        b = d.get("bucket")
        tokens = _number(b.get("tokens")) if isinstance(b, dict) else None
        t = _number(b.get("t")) if isinstance(b, dict) else None
        if tokens is None or t is None:
            error = "the stored sign-in state has no valid bucket"
            log.warning("Admin sign-in state: no valid bucket; counting it as empty")
            tokens, t = 0.0, now
        tokens = min(max(tokens, 0.0), self.capacity)
        if t > now:  # a time in the future (clock set back, or tampering) earns nothing; rewritten below
            error = error or "the stored sign-in state has a refill time in the future"
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

    def _update(self, client: object, decide):
        """Read-modify-write of the state, compare-and-swapped and retried: ``decide(key, now, d,
        error, status)`` returns ``(result, write)``; when ``write`` the (changed) ``d`` is stored,
        only if nobody wrote since it was read (else all of it runs again on the fresh state)."""
        key = client_key(client)
        db = self.db
        for _ in range(CAS_RETRIES):
            now = self.clock()
            doc = db.get(STATE_KIND, STATE_KEY)
            d, error = self._parse(doc.data if doc is not None else None, now)
            result, write = decide(key, now, d, error, self._status_from(d, now, key, error))
            if not write:
                return result
            try:
                db.put(STATE_KIND, STATE_KEY, {"v": 3, **d}, expect=doc.revision if doc is not None else None)
                return result
            except dbm.Conflict:
                continue  # another attempt (any instance) wrote first: decide again on its state
        raise dbm.DatabaseError("The admin sign-in state kept changing under heavy load; try again in a moment.")

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
        doc = self.db.get(STATE_KIND, STATE_KEY)
        d, error = self._parse(doc.data if doc is not None else None, now)
        return self._status_from(d, now, client_key(client), error)

    def attempt(self, attempt: str, expected: str | None, client: object = None) -> tuple[str, LockStatus]:
        """Check a password ``attempt`` for ``client``; returns (outcome, status).

        Order: not configured -> this client locked -> bucket empty ("throttled": the password is
        **not** compared) -> compare. Only a compared wrong password costs a token. The decision
        and its record are one compare-and-swap, so N concurrent wrong guesses cost N tokens."""
        def decide(key, now, d, error, st):
            if expected is None:
                return ("not_configured", st), False
            if st.locked or st.throttled:
                # a damaged state is replaced by a valid (empty-bucket) one
                return ("locked" if st.locked else "throttled", st), bool(error)
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
                clients[key] = entry
            d["clients"] = clients
            return ("ok" if ok else "failed", self._status_from(d, now, key)), True

        outcome, st = self._update(client, decide)
        if outcome == "failed" and st.locked:
            log.warning("Admin login locked for one client for %.0f s after %d failed attempts",
                        self.lockout_s, st.failures)
        if outcome == "failed" and st.throttled:
            log.warning("Admin password sign-in paused for everyone: the wrong-guess budget is used up")
        return outcome, st

    def issue_code(self) -> tuple[str, float]:
        """A new one-time sign-in code (replacing any previous one) and its expiry time. Only its
        SHA-256 is stored."""
        raw = "".join(secrets.choice(CODE_ALPHABET) for _ in range(CODE_LENGTH))

        def decide(key, now, d, error, st):
            expires = now + self.code_ttl_s
            d["code"] = {"sha256": _code_hash(raw), "expires": expires, "issued": now}
            return expires, True

        expires = self._update(None, decide)
        return "-".join(raw[i:i + 4] for i in range(0, CODE_LENGTH, 4)), expires

    def attempt_code(self, code: str, expected: str | None, client: object = None) -> tuple[str, LockStatus]:
        """Check a one-time code: ``code_ok`` consumes it (it works once, on every instance: the
        consumption is a compare-and-swap), ``code_failed`` changes nothing. The bucket and the
        per-client lockout do not apply (no password is compared here). Constant-time against
        the stored hash."""
        given = normalise_code(code)

        def decide(key, now, d, error, st):
            if expected is None:
                return ("not_configured", st), False
            stored = (d.get("code") or {}).get("sha256") or ""
            # Always one comparison of two 64-character digests, whether or not a code is active.
            ok = hmac.compare_digest(_code_hash(given).encode(), (stored or "-" * 64).encode()) \
                and bool(stored) and len(given) == CODE_LENGTH
            if not ok:
                return ("code_failed", st), bool(error)
            d["code"] = None
            clients = self._prune(d["clients"], now)
            clients[key] = {"failures": 0, "locked_until": 0, "last": now}
            d["clients"] = clients
            return ("code_ok", self._status_from(d, now, key)), True

        return self._update(client, decide)

    def reset(self) -> None:
        """Full bucket, no lockouts, no code (tests and the CLI's recovery)."""
        self.db.put(STATE_KIND, STATE_KEY, {"v": 3, "bucket": {"tokens": self.capacity, "t": self.clock()},
                                            "clients": {}, "code": None})


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
          artifacts=None, client: object = None, **audit_fields) -> LoginResult:
    """Check a password attempt for ``client``, update the counters and write the audit line
    (never the password; the client only as a salted hash) to the trail of ``artifacts`` (a root,
    None for the default, or a ``core.db.Database``). Never waits: a throttled attempt is
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
        audit.append("login", artifacts=artifacts if artifacts is not None else lockout.root, outcome=outcome,
                     client=client_key(client), delay_s=round(st.retry_in_s, 1) if outcome == "throttled" else None, **audit_fields)
    return LoginResult(outcome == "ok", outcome, msg, st)


def login_with_code(code: str, expected: str | None, *, lockout: Lockout | None = None,
                    artifacts=None, client: object = None, **audit_fields) -> LoginResult:
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
        audit.append("login", artifacts=artifacts if artifacts is not None else lockout.root, outcome=outcome,
                     client=client_key(client), **audit_fields)
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

    from core.exitcodes import EXIT_DATABASE, EXIT_OK

    lockout = Lockout(registry.root)
    try:
        code, expires = lockout.issue_code()
    except dbm.DatabaseError as e:
        print(f"error: cannot write the sign-in state: {e}", file=sys.stderr)
        return EXIT_DATABASE
    audit.append("login", artifacts=registry.root, outcome="code_issued", source="cli")
    minutes = int(round((expires - lockout.clock()) / 60))
    print(f"One-time admin sign-in code (valid once, for {minutes} minutes): {code}")
    print("Admin page -> 'Sign in with a one-time code'. A new code replaces this one. Do not share it.",
          file=sys.stderr)
    return EXIT_OK
