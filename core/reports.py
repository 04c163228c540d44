"""The reports of PneumoScope: the per-case report (PDF and PNG) and the reader-study report
(PDF and CSV). Both PDFs open through ``core.pdfdoc`` (A4, metadata, latin-1 text).

No Streamlit here: the functions take a ``core.predict.Prediction`` (or a
``core.reader_study.Study``) and plain arrays and return bytes, so they are easy to test and can
run lazily when a download is clicked. fpdf2's core fonts only know latin-1: every string goes
through ``core.pdfdoc.latin1`` first (dashes, quotes, symbols mapped, anything else replaced by
'?'); the PNG's built-in font is ASCII (:func:`ascii_text`).

The case report says what the explanation map shows in the words of the view that drew it
(:class:`MapWords`; the app passes ``ui.report.map_words(pred)``), so the report and the page
never word the same map differently.
"""

from __future__ import annotations

import datetime as _dt
import io
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import numpy as np

from core.formatting import NA, pct_value
from core.formatting import band as fmt_band
from core.formatting import pct as fmt_pct
from core.pdfdoc import latin1, new_pdf
from core.reader_stats import ARM_LABELS

if TYPE_CHECKING:
    from core.reader_study import Study


# --- the case report ---------------------------------------------------------------------------
DISCLAIMER = (
    "Research demo - not a medical device. This output is produced by a machine-learning "
    "model for research and teaching only. It is not a diagnosis and must not be used for "
    "clinical decisions; a qualified clinician must review every image."
)


@dataclass(frozen=True)
class Verdict:
    title: str  # short label for a clinician
    color: str  # streamlit colour name: red / green / orange / gray
    explanation: str


# A verdict's colour in the PDF and PNG reports (the page uses the Streamlit colour name).
VERDICT_RGB = {"red": (180, 30, 30), "green": (20, 120, 60), "orange": (190, 110, 0), "gray": (90, 90, 90)}


def verdict(pred) -> Verdict:
    """How a Prediction is worded everywhere (page, table, report)."""
    if not pred.ok:
        return Verdict("Not analysed", "gray", pred.error or "The image could not be read.")
    if pred.guard_status == "rejected":
        return Verdict(
            "No verdict — image rejected",
            "gray",
            pred.guard_message or "The input check rejected this image, so no pneumonia verdict is given.",
        )
    if pred.label == "INDETERMINATE":
        lo, hi = pred.band or (None, None)
        band = f" ({fmt_band(lo, hi)})" if lo is not None else ""
        return Verdict(
            "Indeterminate — refer",
            "orange",
            f"The probability lies in the model's uncertainty band{band}: the model cannot "
            "separate normal from pneumonia for this image. Refer for expert reading.",
        )
    if pred.label == "PNEUMONIA":
        return Verdict(
            "Pneumonia suspected",
            "red",
            "The calibrated probability is at or above the decision threshold.",
        )
    return Verdict("No pneumonia detected", "green", "The calibrated probability is below the decision threshold.")


def _rejected(pred) -> bool:
    return not pred.ok or pred.guard_status == "rejected"


def input_check_text(pred) -> str | None:
    """The report's "Input check" value: passed / warning / rejected with the guard's message;
    None for a file that could not be read (no check ran on it)."""
    if not pred.ok:
        return None
    status, message = pred.guard_status, pred.guard_message or pred.guard_code or ""
    if status == "accepted":
        return f"passed - {message}" if message else "passed"
    if status in ("warning", "rejected"):
        return f"{status}: {message}"
    return "not run"


def summary_lines(pred) -> list[tuple[str, str]]:
    """(label, value) pairs shown in reports (probabilities in percent, core.formatting).

    A rejected image (or an unreadable file) has no probability here, not even the model's raw
    output, and no threshold or band to compare one with: no export carries the output on an
    image the input check refused (the page shows it, marked unreliable, for inspection only)."""
    v = verdict(pred)
    rows = [("Result", v.title)]
    if not _rejected(pred):  # the threshold and band only mean something next to a probability
        rows.append(("Calibrated probability of pneumonia", fmt_pct(pred.probability)))
        if pred.threshold is not None:
            rows.append(("Decision threshold", fmt_pct(pred.threshold)))
        if pred.band is not None:
            rows.append(("Indeterminate band", fmt_band(*pred.band)))
    rows.append(("Model version", pred.model_version or "n/a"))
    check = input_check_text(pred)
    if check is not None:
        rows.append(("Input check", check))
    info = pred.info or {}
    if info.get("width"):
        rows.append(("Image", f"{info.get('format', '?')}, {info['width']} x {info['height']} px, {info.get('mode', '?')}"))
    if pred.sha256:
        rows.append(("Image SHA-256", pred.sha256[:16] + "..."))
    return rows


REPORT_TITLE = "PneumoScope - case report"
IMAGE_CAPTION = "Input image (as analysed)"


@dataclass(frozen=True)
class MapWords:
    """What a case report says about the explanation map, worded by the view that shows it
    (``ui.report.map_words``: ui.explain_view knows the method's name and how coarse the map is
    for this model). The default is a prediction without a map."""

    name: str = "Heatmap"  # the method, e.g. 'HiResCAM (block3_conv2)'
    sentence: str = ""  # what red means, or that the map is flat


def overlay_caption(pred, overlay_rgb, words: MapWords | None = None) -> str:
    """Short caption under the report's second image: the method, or why there is none. A
    rejected image has no map in a report, so no caption either."""
    if _rejected(pred):
        return ""
    if overlay_rgb is None:
        return "No heatmap (see below)" if pred.heatmap is not None else ""
    return f"{(words or MapWords()).name} overlay"


def map_sentence(pred, words: MapWords | None = None) -> str:
    """The full sentence about the map (what red means, or that the map is flat); none for a
    rejected image (its map is not a result either)."""
    if pred.heatmap is None or _rejected(pred):
        return ""
    return (words or MapWords()).sentence


def header_line(pred, created: _dt.datetime) -> str:
    """'Generated <time> | file: <name>': the first line of the PDF and of the PNG report."""
    return f"Generated {created:%Y-%m-%d %H:%M %Z}  |  file: {pred.filename}"


def _now() -> _dt.datetime:
    return _dt.datetime.now().astimezone()


def _png_bytes(arr: np.ndarray) -> bytes:
    from PIL import Image

    buf = io.BytesIO()
    Image.fromarray(np.asarray(arr, dtype=np.uint8)).save(buf, format="PNG")
    return buf.getvalue()


def _fit(arr: np.ndarray, side: int = 512) -> np.ndarray:
    from core.imageio import shrink_to

    return shrink_to(np.asarray(arr), side)


def build_pdf(pred, overlay_rgb: np.ndarray | None = None, created: _dt.datetime | None = None,
              words: MapWords | None = None) -> bytes:
    """One-page PDF: image and heatmap overlay side by side, result, model facts, disclaimer.
    ``words``: how the map is named and explained (:class:`MapWords`, from ``ui.report.map_words``)."""
    created = created or _now()
    v = verdict(pred)
    if _rejected(pred):
        overlay_rgb = None  # a rejected image's map is not a result: never drawn in a report
    pdf = new_pdf("PneumoScope case report", REPORT_TITLE, heading_size=18)
    pdf.set_text_color(90, 90, 90)
    pdf.cell(0, 5, latin1(header_line(pred, created)), new_x="LMARGIN", new_y="NEXT")
    pdf.set_text_color(0, 0, 0)
    pdf.ln(3)

    pdf.set_font("Helvetica", "B", 15)
    pdf.set_text_color(*VERDICT_RGB.get(v.color, (0, 0, 0)))
    pdf.cell(0, 9, latin1(v.title), new_x="LMARGIN", new_y="NEXT")
    pdf.set_text_color(0, 0, 0)
    pdf.set_font("Helvetica", "", 10)
    pdf.multi_cell(0, 5, latin1(v.explanation), new_x="LMARGIN", new_y="NEXT")
    pdf.ln(2)

    if pred.image is not None:
        y = pdf.get_y()
        w = 88
        pdf.image(io.BytesIO(_png_bytes(_fit(pred.image))), x=pdf.l_margin, y=y, w=w)
        h = w * pred.image.shape[0] / pred.image.shape[1]
        if overlay_rgb is not None:
            pdf.image(io.BytesIO(_png_bytes(_fit(overlay_rgb))), x=pdf.l_margin + w + 6, y=y, w=w)
        pdf.set_y(y + h + 1)
        pdf.set_font("Helvetica", "I", 8)
        pdf.cell(w + 6, 4, IMAGE_CAPTION)
        pdf.cell(w, 4, latin1(overlay_caption(pred, overlay_rgb, words)), new_x="LMARGIN", new_y="NEXT")
        pdf.ln(1)
        pdf.multi_cell(0, 4, latin1(map_sentence(pred, words)), new_x="LMARGIN", new_y="NEXT")
        pdf.ln(2)

    pdf.set_font("Helvetica", "", 10)
    for label, value in summary_lines(pred):
        pdf.set_font("Helvetica", "B", 10)
        pdf.cell(70, 6, latin1(label))
        pdf.set_font("Helvetica", "", 10)
        pdf.multi_cell(0, 6, latin1(value), new_x="LMARGIN", new_y="NEXT")
    pdf.ln(4)
    pdf.set_font("Helvetica", "B", 9)
    pdf.set_fill_color(255, 243, 205)
    pdf.multi_cell(0, 5, latin1(DISCLAIMER), border=1, fill=True, new_x="LMARGIN", new_y="NEXT")
    return bytes(pdf.output())


def ascii_text(text: object) -> str:
    """ASCII approximation (the PNG's built-in font has no accents): 'Zoë' -> 'Zoe'."""
    import unicodedata

    return unicodedata.normalize("NFKD", latin1(text)).encode("ascii", "ignore").decode("ascii")


def _font(size: int):
    from PIL import ImageFont

    try:
        return ImageFont.load_default(size=size)  # scalable built-in font (needs FreeType)
    except (TypeError, OSError, AttributeError):  # pragma: no cover - old Pillow / no FreeType
        return ImageFont.load_default()


def build_png(pred, overlay_rgb: np.ndarray | None = None, side: int = 448, created: _dt.datetime | None = None,
              words: MapWords | None = None) -> bytes:
    """The same report as one PNG, with the same facts as the PDF: title, generation time and
    file, images with captions, result, explanation, facts, disclaimer."""
    import textwrap

    import cv2
    from PIL import Image, ImageDraw

    if _rejected(pred):
        overlay_rgb = None  # as in the PDF: no map of a rejected image
    tiles = []
    for a in (pred.image, overlay_rgb):
        if a is None:
            continue
        a = np.asarray(a, np.uint8)
        h, w = a.shape[:2]
        s = side / max(h, w)  # same displayed size whatever the input resolution
        tiles.append(Image.fromarray(cv2.resize(a, (max(1, round(w * s)), max(1, round(h * s))), interpolation=cv2.INTER_AREA if s < 1 else cv2.INTER_CUBIC)))
    pad, gap = 20, 16
    width = max(pad * 2 + sum(t.width for t in tiles) + gap * max(0, len(tiles) - 1), 640)
    v = verdict(pred)
    title_f, head_f, body_f, small_f = _font(24), _font(22), _font(16), _font(14)
    chars = max(40, int((width - 2 * pad) / 7.6))
    created = created or _now()
    disclaimer = textwrap.wrap(ascii_text(DISCLAIMER), chars)
    explanation = textwrap.wrap(ascii_text(v.explanation), int(chars * 7.6 / 8.6))
    map_lines = textwrap.wrap(ascii_text(map_sentence(pred, words)), chars)
    rows = summary_lines(pred)
    img_h = max((t.height for t in tiles), default=0)
    cap_h = 20 if tiles else 0
    height = (pad + 34 + 20 + img_h + cap_h + 20 * len(map_lines) + 16 + 34 + 22 * len(explanation) + 8
              + 24 * len(rows) + 16 + 20 * len(disclaimer) + pad)
    canvas = Image.new("RGB", (width, height), "white")
    draw = ImageDraw.Draw(canvas)
    y = pad
    draw.text((pad, y), REPORT_TITLE, fill=(20, 20, 20), font=title_f)
    y += 34
    draw.text((pad, y), ascii_text(header_line(pred, created)), fill=(90, 90, 90), font=small_f)
    y += 20
    x = pad
    captions = [IMAGE_CAPTION, overlay_caption(pred, overlay_rgb, words)][: len(tiles)]
    for t, cap in zip(tiles, captions):
        canvas.paste(t, (x, y))
        draw.text((x, y + img_h + 2), cap if len(cap) * 7 <= t.width else textwrap.shorten(cap, max(10, t.width // 7), placeholder="..."),
                  fill=(90, 90, 90), font=small_f)
        x += t.width + gap
    y += img_h + cap_h
    for line in map_lines:
        draw.text((pad, y), line, fill=(60, 60, 60), font=small_f)
        y += 20
    y += 16
    draw.text((pad, y), ascii_text(v.title), fill=VERDICT_RGB.get(v.color, (0, 0, 0)), font=head_f)
    y += 34
    for line in explanation:
        draw.text((pad, y), line, fill=(40, 40, 40), font=body_f)
        y += 22
    y += 8
    for label, value in rows:
        draw.text((pad, y), ascii_text(label), fill=(60, 60, 60), font=body_f)
        draw.text((pad + 300, y), ascii_text(value), fill=(20, 20, 20), font=body_f)
        y += 24
    y += 16
    draw.rectangle((pad - 6, y - 6, width - pad + 6, y + 20 * len(disclaimer) + 2), fill=(255, 243, 205), outline=(200, 160, 60))
    for line in disclaimer:
        draw.text((pad, y), line, fill=(90, 60, 0), font=small_f)
        y += 20
    buf = io.BytesIO()
    canvas.save(buf, format="PNG")
    return buf.getvalue()


# --- the reader-study report -----------------------------------------------------------------
def study_rows(study: "Study") -> list[dict]:
    """One row per case of a reader study (the CSV's rows and the PDF's case table)."""
    rows = []
    for i, c in enumerate(study.cases):
        rows.append({
            "study_id": study.study_id, "reader_id": study.reader_id, "model_version": study.model_version,
            "seed": study.seed, "case": i + 1, "film": c.path, "truth": c.truth,
            "first_read": c.first_read, "first_confidence": c.first_confidence,
            "ai_verdict": c.ai_label,
            "ai_probability_pct": pct_value(c.ai_probability),
            "threshold_pct": pct_value(c.ai_threshold),
            "ai_call": None if c.ai_positive is None else ("PNEUMONIA (refer)" if c.ai_positive else "NORMAL"),
            "revised_read": c.revised_read, "revised_confidence": c.revised_confidence,
            "final_read": c.final_read if c.done else None, "changed": c.changed if c.done else None,
            "change_right": (c.revised_read == c.truth) if c.done and c.changed else None,
            "read_seconds": c.read_seconds, "case_seconds": c.total_seconds,
        })
    return rows


def study_csv(study: "Study") -> bytes:
    """The reader study as CSV, one row per case; formula-like cells neutralised (core.csvsafe)."""
    from core.csvsafe import csv_bytes

    return csv_bytes(study_rows(study))


def _ci(ci) -> str:
    """A Wilson interval as '71.2-95.0 %' (core.formatting.band)."""
    return NA if not ci else fmt_band(ci[0], ci[1], dash="-")


def study_metrics_table(res: dict) -> list[dict]:
    """Rows (arm, sensitivity, CI, specificity, CI) as text, for the page and the PDF."""
    return [
        {"Arm": ARM_LABELS[a], "Sensitivity": fmt_pct(r["sensitivity"]), "Sensitivity 95 % CI": _ci(r["sensitivity_ci95"]),
         "Specificity": fmt_pct(r["specificity"]), "Specificity 95 % CI": _ci(r["specificity_ci95"]), "Cases": r["n"]}
        for a, r in res["arms"].items()
    ]


def study_pdf(study: "Study", res: dict | None = None) -> bytes:
    """The reader-study PDF: study facts, metrics with CIs, the confusion matrices, changes,
    per-case table. ``res``: ``core.reader_stats.results(study)`` (computed when not given)."""
    if res is None:
        from core.reader_stats import results

        res = results(study)
    pdf = new_pdf("PneumoScope reader study", "PneumoScope - reader study")
    facts = (f"Study {study.study_id} | reader {study.reader_id} | model {study.model_version} | seed {study.seed} | "
             f"{res['n_cases']} of {res['n_planned']} cases read | films: {study.source} | "
             f"threshold {fmt_pct(study.threshold)} | created {study.created}")
    pdf.multi_cell(0, 5, latin1(facts), new_x="LMARGIN", new_y="NEXT")
    pdf.ln(2)

    def table(header: list[str], rows: list[list[Any]], widths: list[float]) -> None:
        pdf.set_font("Helvetica", "B", 9)
        for h, w in zip(header, widths):
            pdf.cell(w, 6, latin1(h), border=1)
        pdf.ln()
        pdf.set_font("Helvetica", "", 9)
        for r in rows:
            for v, w in zip(r, widths):
                pdf.cell(w, 6, latin1("" if v is None else v), border=1)
            pdf.ln()
        pdf.ln(2)

    pdf.set_font("Helvetica", "B", 11)
    pdf.cell(0, 7, "Sensitivity and specificity (95 % Wilson CI)", new_x="LMARGIN", new_y="NEXT")
    mt = study_metrics_table(res)
    table(list(mt[0]), [list(r.values()) for r in mt], [30, 25, 35, 25, 35, 15])
    pdf.set_font("Helvetica", "I", 8)
    pdf.multi_cell(0, 4, latin1(res["model_rule"]), new_x="LMARGIN", new_y="NEXT")
    ops = res["operating_points"]
    pdf.multi_cell(0, 4, latin1(
        "Operating points (false-positive rate, sensitivity): " + "; ".join(
            f"{ARM_LABELS[a]} ({fmt_pct(pt[0])}, {fmt_pct(pt[1])})" for a, pt in ops.items() if pt is not None)
        + (f". Model ROC-AUC on these films: {res['roc']['auc']:.3f}." if res["roc"] else ".")), new_x="LMARGIN", new_y="NEXT")
    pdf.ln(2)
    pdf.set_font("Helvetica", "B", 11)
    pdf.cell(0, 7, "Confusion matrices (rows = truth, columns = call)", new_x="LMARGIN", new_y="NEXT")
    rows = []
    for a, r in res["arms"].items():
        (tn, fp), (fn, tp) = r["confusion_matrix"]
        rows.append([ARM_LABELS[a], tn, fp, fn, tp])
    table(["Arm", "TN", "FP", "FN", "TP"], rows, [40, 20, 20, 20, 20])
    ch = res["changes"]
    pdf.set_font("Helvetica", "B", 11)
    pdf.cell(0, 7, "Reads changed after the AI output", new_x="LMARGIN", new_y="NEXT")
    pdf.set_font("Helvetica", "", 9)
    pdf.multi_cell(0, 5, latin1(
        f"{ch['n_changed']} of {res['n_cases']} reads changed ({fmt_pct(ch['rate'])}): {ch['n_right']} to the right answer, "
        f"{ch['n_wrong']} to a wrong one; {ch['n_toward_ai']} toward the AI's call."), new_x="LMARGIN", new_y="NEXT")
    pdf.ln(2)
    pdf.set_font("Helvetica", "B", 11)
    pdf.cell(0, 7, "Cases", new_x="LMARGIN", new_y="NEXT")
    table(["#", "Truth", "First read", "AI", "P(pn.)", "Final", "Changed", "s"],
          [[r["case"], r["truth"], f"{r['first_read'] or ''} ({r['first_confidence'] or ''})", r["ai_verdict"],
            "" if r["ai_probability_pct"] is None else f"{r['ai_probability_pct']:.1f} %", r["final_read"],
            {True: "yes", False: "no"}.get(r["changed"], ""), r["case_seconds"]]
           for r in study_rows(study)],
          [10, 25, 32, 30, 20, 25, 18, 15])
    pdf.set_font("Helvetica", "B", 8)
    pdf.set_fill_color(255, 243, 205)
    pdf.multi_cell(0, 4, "Research demo - not a medical device. Reader-study results describe this reader on "
                   "these films only.", border=1, fill=True, new_x="LMARGIN", new_y="NEXT")
    return bytes(pdf.output())


__all__ = [
    "DISCLAIMER", "IMAGE_CAPTION", "MapWords", "REPORT_TITLE", "Verdict", "ascii_text", "build_pdf", "build_png",
    "header_line", "input_check_text", "latin1", "map_sentence", "overlay_caption", "study_csv",
    "study_metrics_table", "study_pdf", "study_rows", "summary_lines", "verdict",
]
