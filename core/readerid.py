"""The one anonymous reader id of PneumoScope: clinician feedback and reader studies.

A reader id is random, one per browser session (feedback) or per study (reader study), and
never derived from a name or an account: ``r-`` + 12 hex digits (48 random bits), made by
:func:`new_reader_id`.

Reader studies saved before issue 23 carry the old form ``R-`` + 8 hex digits; they still load
and display (:func:`is_reader_id` with ``legacy=True``). Nothing writes that form any more.
"""

from __future__ import annotations

import re
import secrets
from typing import Any

PREFIX = "r-"
# The form checked on input: the prefix and a short token of id characters (what
# new_reader_id makes, and the short fixed ids tests and tools use, such as "r-1"). No spaces,
# so a name ("Dr Smith", "r-Dr Smith") is refused.
_CURRENT_RE = re.compile(r"^r-[0-9A-Za-z_-]{1,64}$")
# Reader studies written before issue 23 (core.reader_study.new_reader_id: "R-" + 8 hex).
_LEGACY_RE = re.compile(r"^R-[0-9a-f]{8}$")


def new_reader_id() -> str:
    """An anonymous reader id, ``r-`` + 12 random hex digits: never derived from a name."""
    return PREFIX + secrets.token_hex(6)


def is_reader_id(value: Any, *, legacy: bool = False) -> bool:
    """Whether ``value`` is an anonymous reader id (``r-`` + token). With ``legacy``, the
    pre-issue-23 reader-study form ``R-`` + 8 hex digits is accepted too (stored files only)."""
    if not isinstance(value, str):
        return False
    return bool(_CURRENT_RE.match(value) or (legacy and _LEGACY_RE.match(value)))


__all__ = ["PREFIX", "is_reader_id", "new_reader_id"]
