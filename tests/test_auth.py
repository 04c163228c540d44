"""core.auth: password resolution, constant-time check, file-backed global lockout, audit."""

from __future__ import annotations

import hmac
import json
import threading

import pytest

from core import audit, auth


class Clock:
    def __init__(self, t: float = 1_000_000.0):
        self.t = t

    def __call__(self) -> float:
        return self.t


@pytest.fixture()
def lockout(tmp_path):
    clock = Clock()
    lo = auth.Lockout(tmp_path / "jobs" / "auth_lockout.json", max_failures=5, lockout_s=300, clock=clock)
    lo.clock_obj = clock
    return lo


def test_resolve_password_prefers_secrets_then_env_and_has_no_default():
    assert auth.resolve_password(None, env={}) is None
    assert auth.resolve_password("", env={auth.PASSWORD_ENV: "  "}) is None
    assert auth.resolve_password(None, env={auth.PASSWORD_ENV: "from-env"}) == "from-env"
    assert auth.resolve_password("from-secrets", env={auth.PASSWORD_ENV: "from-env"}) == "from-secrets"
    assert auth.resolve_password(1234, env={}) == "1234"  # TOML integer
    assert auth.resolve_password(True, env={}) is None


def test_verify_uses_hmac_compare_digest(monkeypatch):
    calls = []
    real = hmac.compare_digest

    def spy(a, b):
        calls.append((a, b))
        return real(a, b)

    monkeypatch.setattr(auth.hmac, "compare_digest", spy)
    assert auth.verify("pässword", "pässword")
    assert not auth.verify("password", "pässword")
    assert not auth.verify(None, "x")
    assert len(calls) == 2 and all(isinstance(a, bytes) for a, _ in calls)


def test_lockout_after_five_failures_for_five_minutes(lockout, tmp_path):
    log = tmp_path / "audit.jsonl"
    for i in range(4):
        r = auth.login("nope", "secret", lockout=lockout, audit_path=log)
        assert not r.ok and r.outcome == "failed" and r.status.attempts_left == 4 - i
    r = auth.login("nope", "secret", lockout=lockout, audit_path=log)
    assert r.outcome == "failed" and r.status.locked and "now locked" in r.message
    # Locked: even the right password is refused, and refusals do not extend the lock.
    lockout.clock_obj.t += 200
    r = auth.login("secret", "secret", lockout=lockout, audit_path=log)
    assert not r.ok and r.outcome == "locked" and 99 <= r.status.remaining_s <= 100
    # After 5 minutes the lock lifts and the count starts afresh.
    lockout.clock_obj.t += 101
    st = lockout.status()
    assert not st.locked and st.failures == 0 and st.attempts_left == 5
    assert auth.login("secret", "secret", lockout=lockout, audit_path=log).ok
    outcomes = [rec["outcome"] for rec in audit.read(log, actions=["login"])]
    assert outcomes == ["failed"] * 5 + ["locked", "ok"]
    assert "secret" not in log.read_text() and "nope" not in log.read_text()


def test_success_resets_the_counter(lockout, tmp_path):
    log = tmp_path / "a.jsonl"
    for _ in range(4):
        auth.login("x", "secret", lockout=lockout, audit_path=log)
    assert auth.login("secret", "secret", lockout=lockout, audit_path=log).ok
    assert lockout.status().failures == 0
    for _ in range(4):
        assert not auth.login("x", "secret", lockout=lockout, audit_path=log).status.locked


def test_lockout_is_shared_through_the_file(tmp_path):
    path = tmp_path / "lock.json"
    a = auth.Lockout(path)
    for _ in range(5):
        a.attempt("x", "secret")
    b = auth.Lockout(path)  # another session / process reading the same file
    assert b.status().locked
    assert json.loads(path.read_text())["clients"][auth.client_key(None)]["failures"] == 5


def test_damaged_lockout_file_starts_clean(tmp_path):
    path = tmp_path / "lock.json"
    path.write_text("{not json")
    lo = auth.Lockout(path)
    assert not lo.status().locked
    outcome, st = lo.attempt("x", "secret")
    assert outcome == "failed" and st.failures == 1


def test_concurrent_wrong_guesses_are_all_counted(tmp_path):
    lo = auth.Lockout(tmp_path / "lock.json", max_failures=5)
    outcomes = []
    barrier = threading.Barrier(12)

    def guess():
        barrier.wait()
        outcomes.append(lo.attempt("wrong", "secret")[0])

    threads = [threading.Thread(target=guess) for _ in range(12)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert sorted(outcomes) == ["failed"] * 5 + ["locked"] * 7
    assert lo.status().locked


def test_not_configured_refuses_and_explains(tmp_path):
    log = tmp_path / "a.jsonl"
    r = auth.login("anything", None, lockout=auth.Lockout(tmp_path / "l.json"), audit_path=log)
    assert not r.ok and r.outcome == "not_configured"
    assert auth.PASSWORD_ENV in r.message and "secrets.toml" in r.message
    assert not log.exists()


# --- issue 14: per-client lockout, global slow-down (never a global lockout) ---------------------
def _lo(tmp_path, clock, sleeps, **kw):
    return auth.Lockout(tmp_path / "lock.json", max_failures=5, lockout_s=300, clock=clock,
                        sleep=lambda s: (sleeps.append(s), setattr(clock, "t", clock.t + s)), **kw)


def test_one_client_failing_five_times_does_not_lock_out_the_admin(tmp_path):
    clock, sleeps = Clock(), []
    lo = _lo(tmp_path, clock, sleeps)
    log = tmp_path / "a.jsonl"
    for _ in range(5):
        r = auth.login("guess", "secret", lockout=lo, audit_path=log, client="attacker-session")
    assert r.status.locked and "this browser" in r.message
    assert auth.login("secret", "secret", lockout=lo, audit_path=log, client="attacker-session").outcome == "locked"
    admin = auth.login("secret", "secret", lockout=lo, audit_path=log, client="admin-session")
    assert admin.ok and admin.outcome == "ok"
    assert not lo.status("admin-session").locked and lo.status("attacker-session").locked
    assert sleeps == []  # 5 failures are below the global backstop
    text = log.read_text()  # the audit has a hashed client, never the raw key or the passwords
    assert auth.client_key("attacker-session") in text and "attacker-session" not in text and "guess" not in text


def test_global_backstop_slows_everyone_down_growing_but_never_locks(tmp_path):
    clock, sleeps = Clock(), []
    lo = _lo(tmp_path, clock, sleeps, global_free=10, global_step=5, base_delay_s=1.0, max_delay_s=8.0)
    # An attacker rotating sessions: 4 failures each, so no per-client lockout ever triggers.
    for i in range(40):
        r = auth.login("guess", "secret", lockout=lo, client=f"session-{i // 4}")
        assert r.outcome == "failed"
    assert len(sleeps) == 29  # attempts 12..40 waited (11 failures and more before them)
    assert sleeps[0] == 1.0 and sleeps[5] == 2.0 and sleeps[10] == 4.0 and max(sleeps) == 8.0  # doubling, capped
    assert sleeps == sorted(sleeps)
    assert "waits" in r.message
    n = len(sleeps)
    admin = auth.login("secret", "secret", lockout=lo, client="admin")  # slowed, not locked out
    assert admin.ok and len(sleeps) == n + 1 and sleeps[-1] == 8.0
    clock.t += auth.GLOBAL_WINDOW_S + 1  # the window passes: no delay any more
    assert lo.delay_s() == 0.0
    assert auth.login("secret", "secret", lockout=lo, client="admin").ok and len(sleeps) == n + 1


def test_locked_clients_are_refused_without_counting_globally(tmp_path):
    clock, sleeps = Clock(), []
    lo = _lo(tmp_path, clock, sleeps, global_free=10)
    for _ in range(50):
        auth.login("guess", "secret", lockout=lo, client="one")
    assert sleeps == [] and lo.delay_s() == 0.0  # 5 counted failures, 45 refusals while locked
