"""The one home of what every PneumoScope PDF shares (core.reports: the case report, the reader-study report).

fpdf2's core fonts only know latin-1, so every string goes through :func:`latin1` first: dashes,
quotes and symbols are mapped, anything else becomes '?'. :func:`new_pdf` opens an A4 document
with the app's metadata and the bold title line, ready for the caller's body.
"""

from __future__ import annotations

from typing import Any

_LATIN1_MAP = {
    "\u2014": "-", "\u2013": "-", "\u2212": "-", "\u2010": "-", "\u2011": "-",
    "\u2018": "'", "\u2019": "'", "\u201c": '"', "\u201d": '"', "\u2026": "...",
    "\u2265": ">=", "\u2264": "<=", "\u2248": "~", "\u2192": "->", "\u2022": "*",
    "\u00a0": " ", "\u2009": " ", "\u202f": " ",
}


def latin1(text: Any) -> str:
    """Text that fpdf2's core fonts can render (latin-1), never raising."""
    s = str(text)
    for k, v in _LATIN1_MAP.items():
        s = s.replace(k, v)
    return s.encode("latin-1", "replace").decode("latin-1")


def new_pdf(title: str, heading: str, heading_size: int = 16):
    """An fpdf2 ``FPDF``: A4 portrait, mm, automatic page breaks, title/creator metadata, one page
    with ``heading`` in bold; the font is left at regular 9 pt for the body."""
    from fpdf import FPDF  # lazy: only report downloads need fpdf2

    pdf = FPDF(orientation="P", unit="mm", format="A4")
    pdf.set_auto_page_break(auto=True, margin=15)
    pdf.set_title(latin1(title))
    pdf.set_creator("PneumoScope")
    pdf.add_page()
    pdf.set_font("Helvetica", "B", heading_size)
    pdf.cell(0, 10, latin1(heading), new_x="LMARGIN", new_y="NEXT")
    pdf.set_font("Helvetica", "", 9)
    return pdf
