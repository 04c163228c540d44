"""The one home of number formatting: pages, tables, CSV files, reports and the CLI.

Probabilities (calibrated probability, raw model output, decision threshold, the
indeterminate band) and rates (accuracy, sensitivity, ...) are always shown in **percent
with one decimal**: ``pct(0.19) == "19.0 %"``, ``band(0.09, 0.29) == "9.0–29.0 %"``.
Scores that are not probabilities (ROC-AUC, PR-AUC, F1, OOD distances) stay decimals
(:func:`num`). CSV files carry the same unit: probability columns are named ``..._pct``
and hold percent values rounded to one decimal (:func:`percent_row`).

Names are text: :func:`printable` shows a user-supplied string (file name, DICOM text, version
name, error message) as one line with its control and bidi characters made visible; the CLI
prints every name through it and ``ui.text`` builds the app's Markdown escaping on it.

No Streamlit, no TensorFlow: the CLI and the PDF/PNG report import this too.
"""

from __future__ import annotations

import datetime as _dt
import math
import unicodedata
from typing import Any

PCT_DIGITS = 1
NA = "n/a"
# Keys of ``Prediction.to_row()`` that are probabilities; CSV files rename them with "_pct".
PROBABILITY_KEYS = ("probability_pneumonia", "raw_probability", "threshold")
BAND_KEY = "indeterminate_band"


def _finite(x: Any) -> bool:
    return isinstance(x, (int, float)) and not isinstance(x, bool) and math.isfinite(x)


def pct_value(x: Any, digits: int = PCT_DIGITS) -> float | None:
    """A probability as a percent number, rounded (0.1234 -> 12.3); None when not a number."""
    return round(100.0 * float(x), digits) if _finite(x) else None


def pct(x: Any, digits: int = PCT_DIGITS) -> str:
    """A probability or rate as text: 0.19 -> '19.0 %'; 'n/a' when missing or not finite."""
    v = pct_value(x, digits)
    return NA if v is None else f"{v:.{digits}f} %"


def band(lo: Any, hi: Any, digits: int = PCT_DIGITS, dash: str = "–") -> str:
    """The indeterminate band: (0.09, 0.29) -> '9.0–29.0 %'."""
    a, b = pct_value(lo, digits), pct_value(hi, digits)
    if a is None or b is None:
        return NA
    return f"{a:.{digits}f}{dash}{b:.{digits}f} %"


def pts(delta: Any, digits: int = PCT_DIGITS) -> str:
    """A difference of two rates in percentage points: 0.012 -> '+1.2 pts'."""
    return NA if not _finite(delta) else f"{100.0 * delta:+.{digits}f} pts"


def num(x: Any, digits: int = 3) -> str:
    """A score that is not a probability (AUC, F1, distances): 0.9512 -> '0.951'."""
    return f"{x:.{digits}f}" if _finite(x) else NA


def utc_now_iso(timespec: str = "seconds", zulu: bool = False) -> str:
    """The current UTC time as ISO 8601 ("2026-11-30T15:02:03+00:00"; ``zulu``: "...Z"). The one
    clock format of the registry, the jobs, the audit trail, feedback and reader studies."""
    s = _dt.datetime.now(_dt.timezone.utc).isoformat(timespec=timespec)
    return s.replace("+00:00", "Z") if zulu else s


def duration(s: Any) -> str:
    """Seconds as '1 h 02 min' / '3 min 05 s' / '42 s'."""
    if not _finite(s):
        return NA
    s = int(round(s))
    h, rem = divmod(s, 3600)
    m, sec = divmod(rem, 60)
    if h:
        return f"{h} h {m:02d} min"
    if m:
        return f"{m} min {sec:02d} s"
    return f"{sec} s"


def counts(c: Any) -> str:
    """``{"train": {"NORMAL": 1, "PNEUMONIA": 3}, ...}`` -> ``train 1 N / 3 P · ...``."""
    if not isinstance(c, dict):
        return NA
    parts = []
    for split, short in (("train", "train"), ("validation", "val"), ("val", "val"), ("test", "test")):
        d = c.get(split)
        if isinstance(d, dict) and d:
            parts.append(f"{short} {d.get('NORMAL', 0)} N / {d.get('PNEUMONIA', 0)} P")
    return " · ".join(parts) or NA


def plural(n: Any, noun: str, plural_form: str | None = None) -> str:
    """A count with its noun in agreement: ``plural(1, "film")`` -> '1 film', ``plural(3, "film")``
    -> '3 films' (``plural_form`` for irregular nouns: ``plural(2, "entry", "entries")``)."""
    return f"{n} {noun if n == 1 else (plural_form or noun + 's')}"


def percent_row(row: dict) -> dict:
    """A ``Prediction.to_row()`` dict with its probabilities in percent, for CSV files.

    ``probability_pneumonia`` 0.1234 -> ``probability_pneumonia_pct`` 12.3 (same for
    ``raw_probability`` and ``threshold``); ``indeterminate_band`` '0.090-0.290' (or a
    tuple) -> ``indeterminate_band_pct`` '9.0-29.0'. Column order is kept.
    """
    out: dict = {}
    for k, v in row.items():
        if k in PROBABILITY_KEYS:
            out[f"{k}_pct"] = pct_value(v)
        elif k == BAND_KEY:
            out[f"{k}_pct"] = _band_csv(v)
        else:
            out[k] = v
    return out


def pct_columns(row: dict, keys: Any) -> dict:
    """``row`` with each key of ``keys`` that it has renamed ``<key>_pct`` and its value in percent
    (one decimal; None stays None), other keys and the order kept: the CSV/JSON unit of the
    feedback export, the audit export and ``evaluate --json``."""
    keys = set(keys)
    return {(f"{k}_pct" if k in keys else k): (pct_value(v) if k in keys else v)
            for k, v in row.items()}


def _band_csv(v: Any) -> str | None:
    if v is None or v == "":
        return None
    if isinstance(v, (tuple, list)) and len(v) == 2:
        lo, hi = v
    else:
        try:
            lo, hi = (float(x) for x in str(v).split("-"))
        except ValueError:
            return str(v)
    a, b = pct_value(lo), pct_value(hi)
    return None if a is None or b is None else f"{a:.1f}-{b:.1f}"


# --- names are text: control and format characters made visible (issue 21) --------------------
ELLIPSIS = "…"
_NAMED_ESCAPES = {"\n": "\\n", "\r": "\\r", "\t": "\\t"}
# Unicode categories that are never shown as themselves: C0/C1 controls (newline, ESC of ANSI
# sequences, DEL), format characters (the bidi embeddings/overrides/isolates U+202A-U+202E and
# U+2066-U+2069, the marks U+200E/U+200F/U+061C, zero-width spaces/joiners, the BOM, the soft
# hyphen), lone surrogates (undecodable bytes of a file name under surrogateescape) and the
# line/paragraph separators U+2028/U+2029.
_HIDDEN_CATEGORIES = frozenset({"Cc", "Cf", "Cs", "Zl", "Zp"})


def _escape_char(ch: str) -> str:
    if ch in _NAMED_ESCAPES:
        return _NAMED_ESCAPES[ch]
    cp = ord(ch)
    if cp < 0x100:
        return f"\\x{cp:02x}"
    return f"\\u{cp:04x}" if cp < 0x10000 else f"\\U{cp:08x}"


def printable(value: Any, max_len: int | None = None) -> str:
    """A user-supplied string (file name, DICOM text, comment, version name, error message) as
    one line of visible text: for terminals (CLI tables and messages) and, through
    ``ui.text``, for the app.

    Every control, format, separator or lone-surrogate character is replaced by a visible
    escape (``\\n``, ``\\r``, ``\\t``, ``\\x1b``, ``\\u202e``, ``\\udcff``), so a name with a
    newline cannot forge a second table row, ANSI escapes cannot move the cursor or erase
    lines, and a right-to-left override cannot reverse the sentence it is embedded in.
    Everything else (letters of any script, accents, spaces, punctuation, emoji) is kept as
    it is: normal names are unchanged. ``max_len``: at most that many characters, the last
    one an ellipsis when cut (an escape is never cut in half). ``None`` becomes "".
    """
    s = "" if value is None else str(value)
    if max_len is not None:
        max_len = max(int(max_len), 1)
        s_head = s[: max_len + 1]  # each character gives at least one: the rest is cut anyway
    else:
        s_head = s
    pieces = [_escape_char(ch) if unicodedata.category(ch) in _HIDDEN_CATEGORIES else ch for ch in s_head]
    text = "".join(pieces)
    if max_len is None or (len(s) <= max_len and len(text) <= max_len):
        return text
    out, n = [], 0
    for piece in pieces:
        if n + len(piece) > max_len - 1:
            break
        out.append(piece)
        n += len(piece)
    return "".join(out) + ELLIPSIS
