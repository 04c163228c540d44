"""core.formatting (one unit for probabilities) and core.reports (PDF/PNG reports with the same facts)."""

from __future__ import annotations

import ast
import datetime as dt
import re
import zlib
from pathlib import Path

import numpy as np

from core import formatting as F
from tests.helpers import ast_findings, project_sources

REPO = Path(__file__).resolve().parent.parent


# --- one formatter, one unit ---------------------------------------------------------------------
def test_probabilities_are_percent_with_one_decimal():
    assert F.pct(0.19) == "19.0 %"
    assert F.pct(0.1546) == "15.5 %"
    assert F.band(0.09, 0.29) == "9.0–29.0 %"
    assert F.pts(0.012) == "+1.2 pts"
    for bad in (None, float("nan"), float("inf"), "x", True):
        assert F.pct(bad) == "n/a"
    assert F.num(0.95123) == "0.951" and F.num(None) == "n/a"
    assert F.duration(3725) == "1 h 02 min" and F.duration(185) == "3 min 05 s" and F.duration(None) == "n/a"


def test_plural_agrees_with_the_count():
    assert F.plural(1, "film") == "1 film" and F.plural(0, "film") == "0 films" and F.plural(3, "film") == "3 films"
    assert F.plural(2, "entry", "entries") == "2 entries" and F.plural(1, "entry", "entries") == "1 entry"


def test_pct_columns_renames_and_converts_only_the_keys_given():
    row = {"time": "t", "threshold": 0.18958, "roc_auc": 0.95, "probability": None}
    assert F.pct_columns(row, ("threshold", "probability")) == {"time": "t", "threshold_pct": 19.0, "roc_auc": 0.95,
                                                                  "probability_pct": None}


def test_percent_row_renames_probability_columns_and_keeps_order():
    row = {"file": "a.png", "ok": True, "result": "NORMAL", "probability_pneumonia": 0.1234, "raw_probability": 0.2,
           "threshold": 0.19, "indeterminate_band": "0.090-0.290", "ood_score": 12.5, "message": ""}
    out = F.percent_row(row)
    assert list(out) == ["file", "ok", "result", "probability_pneumonia_pct", "raw_probability_pct", "threshold_pct",
                         "indeterminate_band_pct", "ood_score", "message"]
    assert out["probability_pneumonia_pct"] == 12.3 and out["threshold_pct"] == 19.0
    assert out["indeterminate_band_pct"] == "9.0-29.0"
    assert F.percent_row({"probability_pneumonia": None, "indeterminate_band": None}) == {
        "probability_pneumonia_pct": None, "indeterminate_band_pct": None}


_FORMATTER = re.compile(r"(pct|pts|num|band|duration|fmt_\w*|_fmt\w*|format_pct)")


def _formatter_def(node) -> str | None:
    """A function (at any depth) named like one of core.formatting's number formatters."""
    if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)) and _FORMATTER.fullmatch(node.name):
        return f"def {node.name}"
    return None


def test_no_second_set_of_number_formatters(tmp_path):
    """One formatter, one unit: no module of ui/, app_pages/, core/ or the entrypoint defines its own
    pct/num/duration/fmt_* function (found on the syntax tree, nested ones included)."""
    sources = [p for p in project_sources(REPO, ("core", "ui", "app_pages")) if p.name != "formatting.py"]
    assert ast_findings(sources, _formatter_def) == []
    planted = tmp_path / "planted.py"
    planted.write_text('def page():\n    def fmt_rate(x):  # "def pct(" in a comment is not a definition\n        return x\n')
    assert ast_findings([planted], _formatter_def) == ["planted.py:2: def fmt_rate"]
    assert {n for n in ("pct", "num", "band", "duration") if callable(getattr(F, n, None))} == {"pct", "num", "band", "duration"}


# --- reports -------------------------------------------------------------------------------------
def _pred(**kw):
    from core.predict import Prediction

    img = np.full((80, 64, 3), 120, np.uint8)
    d = dict(filename="case-7.png", ok=True, label="INDETERMINATE", probability=0.2, raw_probability=0.3,
             threshold=0.19, band=(0.09, 0.29), model_version="v0001-tiny", sha256="ab" * 32,
             guard_status="warning", guard_message="Low contrast - check exposure.",
             info={"format": "PNG", "width": 64, "height": 80, "mode": "L"}, image=img,
             heatmap=np.eye(8, dtype=np.float32), heatmap_method="gradcam", heatmap_layer="block5_conv4")
    d.update(kw)
    return Prediction(**d)


def _pdf_text(pdf: bytes) -> str:
    """All text drawn in a PDF made by fpdf2 (content streams, inflated when compressed)."""
    chunks = []
    for m in re.finditer(rb"stream\r?\n(.*?)\nendstream", pdf, re.S):
        data = m.group(1)  # a compressed stream may end in a byte 0x0d: decompressobj ignores a trailing EOL
        try:
            data = zlib.decompressobj().decompress(data)
        except zlib.error:
            pass
        chunks.extend(s.decode("latin-1") for s in re.findall(rb"\((.*?)(?<!\\)\)\s*Tj", data, re.S))
    return " ".join(c.replace("\\(", "(").replace("\\)", ")") for c in chunks)


def _png_text(monkeypatch, build) -> str:
    from PIL import ImageDraw

    drawn: list[str] = []
    orig = ImageDraw.ImageDraw.text

    def spy(self, xy, text, *a, **k):
        drawn.append(str(text))
        return orig(self, xy, text, *a, **k)

    monkeypatch.setattr(ImageDraw.ImageDraw, "text", spy)
    build()
    return " ".join(drawn)


def test_pdf_and_png_reports_carry_the_same_facts_and_a_timestamp(monkeypatch):
    from core.reports import ascii_text, build_pdf, build_png, summary_lines, verdict
    from ui.report import map_words

    pred = _pred()
    img = pred.image
    when = dt.datetime(2026, 3, 4, 5, 6, tzinfo=dt.timezone.utc)
    words = map_words(pred)
    pdf_text = re.sub(r"\s+", " ", _pdf_text(build_pdf(pred, overlay_rgb=img, created=when, words=words)))
    png_text = re.sub(r"\s+", " ", _png_text(monkeypatch, lambda: build_png(pred, overlay_rgb=img, created=when,
                                                                               words=words)))
    facts = ["Generated 2026-03-04 05:06 UTC", "case-7.png", "Input image (as analysed)", "Grad-CAM (block5_conv4) overlay",
             verdict(pred).title, verdict(pred).explanation]
    for label, value in summary_lines(pred):
        facts += [label, value]
    for fact in map(ascii_text, facts):  # both renderers map dashes/quotes the same way
        assert fact in pdf_text, ("PDF", fact)
        assert fact in png_text, ("PNG", fact)
    # The map's sentence, in the page's words (ui.explain_view), starts the same in both.
    assert words.name == "Grad-CAM (block5_conv4)" and words.sentence.startswith("Grad-CAM (block5_conv4) for PNEUMONIA")
    assert ascii_text(words.sentence)[:60] in pdf_text and ascii_text(words.sentence)[:60] in png_text
    # The explanation (with the band, in percent) is in both, too.
    assert "9.0-29.0 %" in png_text and "9.0-29.0 %" in pdf_text
    # Same unit everywhere: probability, threshold and band in percent, never a bare decimal.
    rows = dict(summary_lines(pred))
    assert rows["Calibrated probability of pneumonia"] == "20.0 %"
    assert rows["Decision threshold"] == "19.0 %"
    assert rows["Indeterminate band"] == "9.0–29.0 %"
    assert "0.190" not in pdf_text and "0.190" not in png_text


def test_rejected_image_report_has_no_probability_and_no_map(monkeypatch):
    """Issue 22 item 2: no number from the model on a rejected image (not even 'raw model
    output'), and no heatmap caption or sentence under 'no heatmap'."""
    from core.reports import build_pdf, build_png, map_sentence, overlay_caption, summary_lines
    from ui.report import map_words

    pred = _pred(label="REJECTED", probability=0.616, raw_probability=0.616, guard_status="rejected",
                 guard_code="colour", guard_message="This looks like a photograph, not a radiograph.")
    ov = np.full_like(pred.image, 200)  # even if a caller passes an overlay
    words = map_words(pred)  # even with the map's words
    rows = dict(summary_lines(pred))
    assert rows["Result"].startswith("No verdict")
    assert rows["Input check"] == "rejected: This looks like a photograph, not a radiograph."
    assert not any("%" in v for v in rows.values()) and not any("robab" in k or "output" in k for k in rows)
    assert overlay_caption(pred, ov, words) == "" and map_sentence(pred, words) == ""
    pdf_text = _pdf_text(build_pdf(pred, overlay_rgb=ov, words=words))
    png_text = _png_text(monkeypatch, lambda: build_png(pred, overlay_rgb=ov, words=words))
    for text in (pdf_text, png_text):
        assert "photograph" in text and "%" not in text and "61.6" not in text
        assert "Raw model output" not in text and "No heatmap" not in text
        assert "Grad-CAM" not in text and "overlay" not in text and "raised" not in text
    # Only the analysed image is drawn, never the map (one tile: the PNG is narrower than with two).
    from PIL import Image
    import io

    assert Image.open(io.BytesIO(build_png(pred, overlay_rgb=ov))).size == \
        Image.open(io.BytesIO(build_png(pred, overlay_rgb=None))).size


def test_accepted_image_report_has_the_input_check_line(monkeypatch):
    """Issue 22 item 3: the input check is one of the report's facts for accepted images too."""
    from core.reports import build_pdf, build_png, summary_lines

    pred = _pred(label="PNEUMONIA", probability=0.91, guard_status="accepted", guard_code="ok",
                 guard_message="Looks like a frontal chest X-ray.")
    rows = dict(summary_lines(pred))
    assert rows["Input check"] == "passed - Looks like a frontal chest X-ray."
    assert rows["Calibrated probability of pneumonia"] == "91.0 %"
    for text in (_pdf_text(build_pdf(pred)), _png_text(monkeypatch, lambda: build_png(pred))):
        assert "Input check" in text and "passed - Looks like a frontal chest X-ray." in text
    assert dict(summary_lines(_pred(guard_status=None)))["Input check"] == "not run"
    from core.predict import Prediction

    unreadable = Prediction(filename="x.png", ok=False, error="The file is empty (0 bytes).")
    assert "Input check" not in dict(summary_lines(unreadable))


def test_png_report_timestamp_changes_the_image():
    from core.reports import build_png

    pred = _pred()
    a = build_png(pred, created=dt.datetime(2026, 1, 1, 0, 0, tzinfo=dt.timezone.utc))
    b = build_png(pred, created=dt.datetime(2027, 1, 1, 0, 0, tzinfo=dt.timezone.utc))
    assert a != b



def test_report_without_map_words_names_no_method_and_adds_no_sentence():
    from core.reports import MapWords, map_sentence, overlay_caption

    pred = _pred()
    assert overlay_caption(pred, pred.image) == "Heatmap overlay" == overlay_caption(pred, pred.image, MapWords())
    assert overlay_caption(pred, None) == "No heatmap (see below)"  # a map that was not drawn (flat)
    assert overlay_caption(_pred(heatmap=None), None) == "" and map_sentence(_pred(heatmap=None), MapWords("X", "y")) == ""
    assert map_sentence(pred) == "" and map_sentence(pred, MapWords("X", "red = y")) == "red = y"


def test_flat_map_is_said_in_words_in_both_formats(monkeypatch):
    from core.reports import build_pdf, build_png, overlay_caption
    from ui.report import map_words

    pred = _pred(heatmap=np.zeros((8, 8), np.float32))
    words = map_words(pred)
    assert overlay_caption(pred, None, words) == "No heatmap (see below)" and "no region raised" in words.sentence
    assert "no region raised" in _pdf_text(build_pdf(pred, None, words=words))
    assert "no region raised" in _png_text(monkeypatch, lambda: build_png(pred, None, words=words))


def test_reports_module_imports_neither_ui_nor_streamlit():
    """core.reports is library code: the case report and the reader-study report build without
    the app (the words for the map come in as data, core.reports.MapWords)."""
    import subprocess
    import sys
    from pathlib import Path

    code = ("import sys, core.reports, core.reader_stats, core.reader_study; "
            "bad = sorted(m for m in sys.modules if m.split('.')[0] in ('ui', 'app_pages', 'streamlit')); "
            "assert not bad, bad")
    subprocess.run([sys.executable, "-c", code], check=True, cwd=Path(__file__).resolve().parent.parent, timeout=120)

# --- names are text (issue 21) --------------------------------------------------------------------
def test_printable_makes_controls_bidi_and_format_characters_visible():
    assert F.printable("a\nb\r\tc") == "a\\nb\\r\\tc"
    assert F.printable("\x1b[2K\x1b[1Aok\x07\x7f\x85") == "\\x1b[2K\\x1b[1Aok\\x07\\x7f\\x85"
    bidi = "\u202a\u202b\u202c\u202d\u202e\u2066\u2067\u2068\u2069\u200e\u200f\u061c"
    assert F.printable(bidi) == "".join(f"\\u{ord(c):04x}" for c in bidi)
    assert F.printable("\u200b\u200d\ufeff\u00ad\u2028\u2029") == "\\u200b\\u200d\\ufeff\\xad\\u2028\\u2029"
    assert F.printable("z\udcff.png") == "z\\udcff.png"  # an undecodable byte of a file name (surrogateescape)
    assert F.printable(None) == "" and F.printable(12) == "12"


def test_printable_keeps_normal_names_and_bounds_the_length():
    for s in ("person1_virus_6.jpeg", "IM-0001-0001.jpeg", "Müller Röntgen.png", "胸部.png", "ملف.png", "😀 a\\b.png"):
        assert F.printable(s) == s
    assert F.printable("x" * 10, 10) == "x" * 10 and F.printable("x" * 11, 10) == "x" * 9 + "…"
    assert F.printable("ab\n" * 100, 8) == "ab\\nab…"
    cut = F.printable("a\u202e" * 50, 9)
    assert len(cut) <= 9 and cut.endswith("…") and "\\u20…" not in cut  # an escape is never cut in half
    assert cut == "a\\u202ea…"


# --- moved from test_predict_page_issue15.py ---------------------------------------------------------
def test_results_csv_carries_probabilities_in_percent():
    import pandas as pd

    from core.formatting import percent_row
    from core.predict import Prediction

    p = Prediction(filename="a.png", ok=True, label="NORMAL", probability=0.1234, raw_probability=0.2,
                   threshold=0.19, band=(0.09, 0.29), model_version="v1")
    df = pd.DataFrame([percent_row(p.to_row())])
    assert {"probability_pneumonia_pct", "threshold_pct", "indeterminate_band_pct"} <= set(df.columns)
    assert "probability_pneumonia" not in df.columns and "threshold" not in df.columns
    assert df.loc[0, "probability_pneumonia_pct"] == 12.3 and df.loc[0, "threshold_pct"] == 19.0
    assert df.loc[0, "indeterminate_band_pct"] == "9.0-29.0"
