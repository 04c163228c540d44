"""core/pdfdoc.py: the PDF basics both reports (core.reports) share."""

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


def test_both_reports_use_it(monkeypatch):
    """The case report and the reader-study report (both in core.reports) open their PDFs
    through core.pdfdoc.new_pdf."""
    import numpy as np

    from core import reader_study as rs
    from core import reports
    from core.predict import Prediction

    opened: list[str] = []

    def spy(title, heading, heading_size=16):
        opened.append(title)
        return new_pdf(title, heading, heading_size)

    monkeypatch.setattr(reports, "new_pdf", spy)
    pred = Prediction(filename="a.png", ok=True, label="NORMAL", probability=0.1, raw_probability=0.1, threshold=0.5,
                      image=np.full((8, 8, 3), 100, np.uint8))
    study = rs.Study.create([rs.Film("n.jpeg", "NORMAL"), rs.Film("p.jpeg", "PNEUMONIA")], root="/data",
                            model_version="v1", seed=0, source=rs.SOURCE_TEST, threshold=0.5)
    assert reports.build_pdf(pred).startswith(b"%PDF") and reports.study_pdf(study).startswith(b"%PDF")
    assert opened == ["PneumoScope case report", "PneumoScope reader study"]
    assert reports.latin1 is latin1
