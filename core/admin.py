"""Registry administration: promote (activate), roll back, delete, and the activation history.

This is the one path for changing which version is active or removing one, whoever asks:
the admin page (``source="app"``), ``python -m core models activate|delete`` and
``train --activate`` (``source="cli"``), and Python code (``source`` passed in, default
``"api"``). Each call

* changes the registry (:class:`core.registry.Registry`): the active-version pointer and its
  history row change together in one database transaction (``Registry.set_active``; the stream
  "activation" of the shared database, ``core.db``, oldest first; what "roll back" goes back to,
  so a CLI activation can be rolled back from the app, and an activation on one app instance
  from another), and
* appends one audit line (:mod:`core.audit`), failed attempts included.

Several app instances behave as one (issue 25): a promote or roll back decides on the pointer
revision it read and compare-and-swaps on it, so two administrators acting at once (on one
instance or two) cannot record a wrong "previous" version -- the second is refused with
"changed by someone else ... reload". Promote, roll back and delete also hold the database lease
``registry`` for their few milliseconds, so a delete on one instance cannot remove the version
another instance is activating at that moment (a lease, not a file lock: it holds across hosts
and lapses by itself if its holder is killed). ``Registry.set_active`` / ``Registry.delete``
stay the low-level primitives; do not call them directly for an administrative action.

The history file of earlier releases (``admin/active_history.json``, before issue 23
``jobs/active_history.json``) is imported into the stream once, by the registry.
"""

from __future__ import annotations

import contextlib
import logging
import time
from typing import Iterator

from core import audit
from core import db as dbm
from core.registry import Registry, RegistryError

log = logging.getLogger(__name__)

LEASE_NAME = "registry"  # held while a promote / roll back / delete decides and acts
LEASE_TTL_S = 60.0  # how long a lease of a killed holder blocks others (an action takes milliseconds)
LOCK_TIMEOUT_S = 15.0  # how long an action waits for another one to finish

__all__ = ["activation_review", "activation_stack", "complete_pending_activation", "delete_version", "promote",
           "read_active_history", "record_activation", "recover", "rollback", "rollback_chain", "rollback_target"]


@contextlib.contextmanager
def _locked(registry: Registry) -> Iterator[None]:
    """Hold the ``registry`` lease of the shared database (every instance, every host)."""
    db, holder = registry.db, dbm.holder_id()
    deadline = time.monotonic() + LOCK_TIMEOUT_S
    while not db.try_lease(LEASE_NAME, holder, LEASE_TTL_S):
        if time.monotonic() > deadline:
            raise RegistryError("Another registry change is in progress (on this or another app instance); "
                                "try again in a moment.")
        time.sleep(0.05)
    try:
        yield
    finally:
        try:
            db.release(LEASE_NAME, holder)
        except dbm.DatabaseError as e:  # it lapses by itself after LEASE_TTL_S
            log.warning("Could not release the registry lease: %s", e)


def read_active_history(registry: Registry) -> list[dict]:
    """Every activation recorded (promote / rollback / train --activate / completed interrupted
    activation), oldest first: ``{"time", "action", "version", "previous", "source"}``."""
    return registry.activation_history()


def activation_stack(history: list[dict]) -> list[str]:
    """The versions a series of roll backs steps back through, oldest first, the last one being
    the version the history leaves active (issue 22: roll back was a toggle between two versions).

    Replayed from the history: an activation (promote, train --activate, a completed interrupted
    activation) puts its version on top (an earlier place of that version is dropped, so each
    version is listed once, at its latest activation); a roll back takes the version it left off
    the stack, so a second roll back goes one step further back and never returns to a version
    rolled back from (promote it again for that). An entry whose "previous" is not on top (a
    history imported from an older release that was cut at 200 entries or had an ACTIVE written
    by hand) puts that version under it."""
    stack: list[str] = []

    def put(v: str) -> None:
        if v in stack:
            stack.remove(v)
        stack.append(v)

    for e in history:
        version, prev = e.get("version"), e.get("previous")
        if not isinstance(version, str) or not version:
            continue
        prev = prev if isinstance(prev, str) and prev else None
        if e.get("action") == "rollback":
            if prev is not None and prev in stack:
                stack.remove(prev)
            put(version)
        else:
            if prev is not None and (not stack or stack[-1] != prev):
                put(prev)
            put(version)
    return stack


def _usable(registry: Registry, name: str) -> bool:
    try:
        return registry.is_complete(name) and not registry.check_version(name)
    except ValueError:  # not a version name at all
        return False


def rollback_chain(registry: Registry) -> list[str]:
    """The versions successive roll backs would activate, next one first: the activation stack
    below the active version, without versions deleted or broken since (stepped over)."""
    current = registry.active_version()
    if current is None:
        return []
    stack = activation_stack(read_active_history(registry))  # each version once
    return [v for v in reversed(stack) if v != current and _usable(registry, v)]


def rollback_target(registry: Registry) -> str | None:
    """The version a roll back activates: the one active before the current one (per the
    activation history, stepping over deleted or broken versions); None when there is none."""
    chain = rollback_chain(registry)
    return chain[0] if chain else None


_UNSET = object()


def _activate(registry: Registry, action: str, choose, *, source: str, failed_version: str | None = None,
              expect_active=_UNSET):
    """Under the registry lease: ``choose(current)`` names the target (or raises), and the pointer
    moves to it with its history row, compare-and-swapped on the revision ``current`` was read at;
    one audit line either way. Returns (target, previous). ``expect_active``: refuse
    (RegistryError) when the active version is no longer that one, so a confirmation shown for
    one active version does not act on another."""
    current = None
    try:
        with _locked(registry):
            pointer = registry.pointer()
            current = registry.active_version(pointer)
            if expect_active is not _UNSET and current != expect_active:
                raise RegistryError(f"The active version changed meanwhile: someone else made it {current or 'none'} "
                                    f"(was {expect_active or 'none'}); nothing was changed. Reload and review again.")
            target = choose(current)
            registry.set_active(target, action=action, source=source, expect=pointer.revision)
    except (RegistryError, ValueError, dbm.DatabaseError) as e:
        audit.append(action, artifacts=registry.root, outcome="failed", model_version=failed_version or current,
                     error=str(e), source=source)
        if isinstance(e, dbm.DatabaseError):
            raise RegistryError(str(e)) from None
        raise
    audit.append(action, artifacts=registry.root, outcome="ok", model_version=target, previous=current, source=source)
    return target, current


def promote(registry: Registry, name: str, *, source: str = "api", expect_active=_UNSET) -> str | None:
    """Make ``name`` the active version; returns the previously active one (or None).
    Raises RegistryError / ValueError (audited as ``outcome="failed"``). ``expect_active``: only
    if that is still the active version (what the admin confirmed against)."""
    def choose(current):
        if name == current:
            raise RegistryError(f"{name!r} is already the active version.")
        return name

    return _activate(registry, "promote", choose, source=source, failed_version=name,
                     expect_active=expect_active)[1]


def rollback(registry: Registry, *, source: str = "api", expect_active=_UNSET,
             expect_target: str | None = None) -> str:
    """Step back one activation: activate :func:`rollback_target`; returns its name. A second
    roll back goes one step further back (:func:`activation_stack`). ``expect_active`` /
    ``expect_target``: only if those are still the active version and the target (what the
    admin confirmed)."""
    def choose(current):
        target = rollback_target(registry)
        if target is None:
            raise RegistryError("Nothing to roll back to: there is no earlier active version recorded "
                                "(or those have been deleted). Promote a version instead.")
        if expect_target is not None and target != expect_target:
            raise RegistryError(f"The roll-back target changed meanwhile (now {target}, was {expect_target}); "
                                "nothing was changed. Review again.")
        return target

    return _activate(registry, "rollback", choose, source=source, expect_active=expect_active)[0]


# --- what an activation changes (the admin page asks before promote / roll back, issue 22) --------
REVIEW_METRICS = ("Images", "ROC-AUC", "Sensitivity", "Specificity", "Accuracy", "Threshold")
REVIEW_CARD_ROWS = ("Created", "Training data")
# A candidate lower than the active version by more than this (point estimates) is called worse.
WORSE_BY = {"roc_auc": ("ROC-AUC", 0.005), "sensitivity": ("sensitivity", 0.01),
            "specificity": ("specificity", 0.01), "accuracy": ("accuracy", 0.01)}


def _version_json(registry: Registry, name: str | None, filename: str) -> dict:
    """The file's data, {} when absent or damaged (the review says what it lacks)."""
    return registry.version_json(name, filename)[0] if name else {}


def activation_review(registry: Registry, target: str, active: str | None = None) -> dict:
    """What making ``target`` the active version changes, for a confirmation step: the active
    version's and the candidate's test figures side by side with their test set sizes
    (``core.evaluation.compare_reports`` rows: metric, active, target, difference) and plain
    warnings for what must not be missed: evaluated on a smaller or different test set (no
    difference is shown then), worse than the active version, no test report, a quick
    ``limit_per_class`` training. ``active`` defaults to the registry's active version.

    Returns ``{"target", "active", "rows", "test_set", "comparable", "worse", "warnings"}``;
    names are plain text (the page escapes them)."""
    from core.evaluation import compare_reports, report_split
    from core.formatting import num, pct

    active = registry.active_version() if active is None else active
    m_t, m_a = _version_json(registry, target, "metrics.json"), _version_json(registry, active, "metrics.json")
    out = {"target": target, "active": active, "rows": [], "test_set": None, "comparable": False, "worse": [],
           "warnings": []}
    warnings = out["warnings"]
    (rt, split_t), (ra, _) = report_split(m_t), report_split(m_a)
    if split_t != "test":
        warnings.append(f"{target} has no test-split report" + (f" (only {split_t})" if split_t else "")
                        + ": its figures cannot be checked on held-out images.")
    prov = _version_json(registry, target, "provenance.json")
    limit = prov.get("limit_per_class")
    if isinstance(limit, int) and not isinstance(limit, bool) and limit > 0:
        warnings.append(f"{target} was trained on at most {limit} images per class and split (a quick smoke "
                        "run), not on the whole training set.")
    if not active:
        return out  # nothing active: nothing to compare with
    cmp = compare_reports(m_a, m_t, active, target, _version_json(registry, active, "card.json"),
                          _version_json(registry, target, "card.json"))
    label_t = cmp["labels"][1]
    order = REVIEW_CARD_ROWS + REVIEW_METRICS  # the test set size first among the figures
    rows = [r for r in cmp["rows"] if r["metric"].split(" (")[0] in order]
    out["rows"] = sorted(rows, key=lambda r: order.index(r["metric"].split(" (")[0]))
    out["test_set"], out["comparable"] = cmp["test_set"], cmp["comparable"]
    if ra is not None and rt is not None and not cmp["comparable"]:
        warnings.append(cmp["test_set"]["text"])
    where = "on the same images" if cmp["comparable"] else "each on its own test set, which are not comparable"
    for key, (label, margin) in WORSE_BY.items():
        va, vt = (ra or {}).get(key), (rt or {}).get(key)
        if isinstance(va, (int, float)) and isinstance(vt, (int, float)) and vt < va - margin:
            fmt = num if key == "roc_auc" else pct
            out["worse"].append(f"{label} {fmt(vt)} vs {fmt(va)}")
    if out["worse"]:
        warnings.append(f"{label_t} is worse than the active {active} ({where}): " + ", ".join(out["worse"]) + ".")
    return out


def delete_version(registry: Registry, name: str, *, source: str = "api") -> None:
    """Delete a non-active version (the registry refuses the active one)."""
    try:
        with _locked(registry):  # not while a promote/rollback on any instance is choosing it
            registry.delete(name)
    except (RegistryError, ValueError, OSError, dbm.DatabaseError) as e:
        audit.append("delete", artifacts=registry.root, outcome="failed", model_version=name, error=str(e), source=source)
        if isinstance(e, dbm.DatabaseError):
            raise RegistryError(str(e)) from None
        raise
    audit.append("delete", artifacts=registry.root, outcome="ok", model_version=name, source=source)


def record_activation(registry: Registry, version: str, previous: str | None, *, source: str) -> None:
    """Audit an activation the registry did itself (``publish(..., activate=True)``): the
    ``promote`` line. Its history row was written by the registry in the same transaction as
    the pointer (``Registry.set_active``), so it can be rolled back like any other."""
    if version == previous:
        return
    audit.append("promote", artifacts=registry.root, outcome="ok", model_version=version,
                 previous=previous, source=source)


def complete_pending_activation(registry: Registry, *, source: str) -> str | None:
    """:meth:`Registry.complete_pending_activation`, recorded like any activation. Returns the
    version activated, or None. Call it while holding the training lock."""
    previous = registry.active_version()
    done = registry.complete_pending_activation(source=source)
    if done:
        record_activation(registry, done, previous, source=source)
    return done


def recover(registry: Registry, *, source: str) -> tuple[int, str | None]:
    """Leftovers of a killed training or ``train --activate``: remove stale ``.staging`` entries and
    finish an interrupted activation (recorded like any other). Returns (entries removed, version
    activated or None). Call it while holding the training lock."""
    removed = registry.clean_staging()
    return removed, complete_pending_activation(registry, source=source)

