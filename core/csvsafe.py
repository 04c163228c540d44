r"""CSV export without spreadsheet formula injection (OWASP "CSV injection").

Every CSV the project writes (``python -m core predict --csv``, the app's batch results
download, the admin page's audit and feedback exports, the reader-study results) goes
through :func:`write_csv` / :func:`csv_bytes`.

**Approach: an apostrophe before every risky field, not "quote every text cell".** A text
cell is neutralised at its start *and after every character a spreadsheet may split a cell
on*: ``,`` ``;`` tab ``|`` and line breaks (``\r``, ``\n``). Wherever a field would begin
there, leading spaces (and double quotes) are skipped, and if the field then starts with
``=``, ``+``, ``-`` or ``@`` (or their full-width forms ``＝ ＋ － ＠``) an apostrophe is
inserted where the field begins: ``x;=1+1`` is written ``x;'=1+1``, ``a,@SUM(1)`` is written ``a,'@SUM(1)``,
``ok\n=cmd`` is written ``ok\n'=cmd`` and ``=1+1`` is written ``'=1+1``. A cell that starts
with a tab or a line break also gets a leading apostrophe (OWASP's list). Excel, LibreOffice
and Google Sheets show a field that starts with an apostrophe as text, whichever separator
they split on (a file opened with ``;`` as the separator, a "text to columns" on ``|``, a
paste of one cell).

Why not quote every text cell instead: quotes are CSV syntax, not a "this is text" marker, so
a quoted ``"=1+1"`` is still run as a formula; and quoting only protects a separator inside a
cell from an importer that honours quotes with the same separator, while the apostrophe works
for any split. (The writer still quotes cells that contain ``,``, quotes or line breaks, as
CSV requires.) The cost: a risky field shows its apostrophe, e.g. ``x;'=1+1``.

Numbers are written as numbers: int/float values are never touched, and a field that is a
plain decimal number (``-0.5``, ``+3``, ``1e-3``) is not a formula and is left alone, so
``-0.5`` as text stays ``-0.5``. File names, messages, comments and every other string are
neutralised.
"""

from __future__ import annotations

import csv
import io
import json
import re
from typing import Any, Iterable, Mapping, Sequence, TextIO

LINE_STARTS = ("\t", "\r", "\n")  # a cell starting with one of these gets an apostrophe too
# Characters that make a spreadsheet start a formula where a field begins (full-width forms too).
FORMULA_STARTS = "=+-@\uff1d\uff0b\uff0d\uff20"
# Characters a spreadsheet may split a cell on (the separator it guesses or is told; line breaks).
SEPARATORS = ",;\t|\r\n"
# Where a field begins: the cell's start or a separator, then leading spaces (and the double
# quotes a splitter that does not honour them would leave) before the first character.
_FIELD_START = re.compile(r"(^|[" + re.escape(SEPARATORS) + r"])([ \"]*)(?=[" + re.escape(FORMULA_STARTS) + r"])")
_NUMBER = re.compile(r"[ \"]*[+-]?(\d+(\.\d*)?|\.\d+)([eE][+-]?\d+)?[ \"]*")


def _risky_field(text: str, start: int) -> bool:
    """True when the field beginning at ``text[start]`` (up to the next separator) would start
    a formula: not a plain number."""
    end = start
    while end < len(text) and text[end] not in SEPARATORS:
        end += 1
    return _NUMBER.fullmatch(text, start, end) is None


def neutralise_text(text: str) -> str:
    """One text cell: an apostrophe where a field that would start a formula begins -- at the
    start and after every separator (``,`` ``;`` tab ``|`` line breaks), leading spaces (and
    double quotes) skipped; plain numbers are left alone. A cell starting with a tab or a line break gets a
    leading apostrophe too."""

    def mark(m: re.Match) -> str:
        return m.group(1) + ("'" if _risky_field(text, m.start(2)) else "") + m.group(2)

    out = _FIELD_START.sub(mark, text)
    if out.startswith(LINE_STARTS):
        out = "'" + out
    return out


def neutralise(value: Any) -> Any:
    """One cell: a string is passed through :func:`neutralise_text`; lists/dicts become JSON
    text (then neutralised the same way); other values (numbers, None, bools) are returned
    unchanged."""
    if isinstance(value, (dict, list, tuple)):
        value = json.dumps(value, default=str)
    if isinstance(value, str):
        return neutralise_text(value)
    return value


def safe_row(row: Mapping[str, Any]) -> dict[str, Any]:
    """Every cell of ``row`` neutralised (keys too: a column name is a cell of the header row)."""
    return {k: neutralise(v) for k, v in row.items()}


def write_csv(fh: TextIO, rows: Iterable[Mapping[str, Any]], fieldnames: Sequence[str] | None = None) -> int:
    """Write ``rows`` as CSV with a header to ``fh``; returns the number of rows written.

    ``fieldnames`` default: the keys of the first row, then any new key in first-seen order.
    Keys not in ``fieldnames`` are ignored.
    """
    rows = list(rows)
    if fieldnames is None:
        names: list[str] = []
        for r in rows:
            names.extend(k for k in r if k not in names)
        fieldnames = names
    w = csv.DictWriter(fh, fieldnames=list(fieldnames), extrasaction="ignore")
    w.writerow({k: neutralise(k) for k in fieldnames})
    for r in rows:
        w.writerow(safe_row(r))
    return len(rows)


def csv_bytes(rows: Iterable[Mapping[str, Any]], fieldnames: Sequence[str] | None = None) -> bytes:
    """:func:`write_csv` into UTF-8 bytes (for download buttons); a lone surrogate (an undecodable
    byte of a file name) is written as a visible ``\\udcff`` escape instead of failing."""
    buf = io.StringIO(newline="")
    write_csv(buf, rows, fieldnames)
    return buf.getvalue().encode("utf-8", "backslashreplace")


__all__ = ["FORMULA_STARTS", "LINE_STARTS", "SEPARATORS", "csv_bytes", "neutralise", "neutralise_text", "safe_row",
           "write_csv"]
