"""CSV export without spreadsheet formula injection (OWASP "CSV injection").

Every CSV the project writes (``python -m core predict --csv``, the app's batch results
download, the admin page's audit export) goes through :func:`write_csv` / :func:`csv_bytes`.
A text cell that a spreadsheet would run as a formula -- it starts with ``=``, ``+``, ``-``,
``@``, a tab or a carriage return (or a line feed) -- gets a leading apostrophe, the
neutralisation OWASP recommends: Excel, LibreOffice and Google Sheets then show it as text.
Numbers are written as numbers (a negative number is not a formula); file names, messages
and every other string are neutralised.
"""

from __future__ import annotations

import csv
import io
import json
from typing import Any, Iterable, Mapping, Sequence, TextIO

FORMULA_PREFIXES = ("=", "+", "-", "@", "\t", "\r", "\n")


def neutralise(value: Any) -> Any:
    """One cell: a string that could start a formula gets a leading ``'``; lists/dicts become
    JSON text (then neutralised the same way); other values are returned unchanged."""
    if isinstance(value, (dict, list, tuple)):
        value = json.dumps(value, default=str)
    if isinstance(value, str) and value.startswith(FORMULA_PREFIXES):
        return "'" + value
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
    """:func:`write_csv` into UTF-8 bytes (for download buttons)."""
    buf = io.StringIO(newline="")
    write_csv(buf, rows, fieldnames)
    return buf.getvalue().encode("utf-8")


__all__ = ["FORMULA_PREFIXES", "csv_bytes", "neutralise", "safe_row", "write_csv"]
