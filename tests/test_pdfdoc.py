"""core/pdfdoc.py: the PDF basics both reports share."""

from __future__ import annotations

from core.pdfdoc import latin1, new_pdf


def test_latin1_maps_typography_and_never_raises():
    assert latin1("a — b – c ≥ d ≤ e → f “g” ‘h’ …") == "a - b - c >= d <= e -> f \"g\" 'h' ..."
    out = latin1("日本 X-ray")
    out.encode("latin-1")  # unknown characters replaced, never raising
    assert out.endswith(" X-ray") and "?" in out
    assert latin1(None) == "None" and latin1(0.5) == "0.5"


def test_new_pdf_has_metadata_heading_and_a_body_font():
    pdf = new_pdf("A title — with a dash", "Heading ≥ 1")
    assert pdf.page_no() == 1
    assert (pdf.font_family, pdf.font_style, pdf.font_size_pt) == ("helvetica", "", 9)
    pdf.multi_cell(0, 5, latin1("body text"))
    data = bytes(pdf.output())
    assert data.startswith(b"%PDF")
    assert b"PneumoScope" in data  # creator
    assert b"A title - with a dash" in data  # title metadata, made latin-1


def test_both_reports_use_it():
    """The case report and the reader-study report open their PDFs through core.pdfdoc."""
    import inspect

    from core import reader_study
    from ui import report

    assert "new_pdf(" in inspect.getsource(report.build_pdf)
    assert "new_pdf(" in inspect.getsource(reader_study.to_pdf)
    assert report.latin1 is latin1 and reader_study.latin1 is latin1
