"""Reusable page pieces: sidebar, metric cards, help boxes, the per-image result view.

Functions named ``*_ui`` draw widgets and return plain values; the others only render.
"""

from __future__ import annotations

import logging

import pandas as pd
import streamlit as st

from core.formatting import band, num, pct
from core.guard import FIX_ADVICE  # the sentences the guard ends the fixable rejections with
from core.reports import DISCLAIMER, build_pdf, build_png, verdict
from ui import explain_view, loaders
from ui.report import map_words
from ui.text import MAX_MESSAGE, md, md_code

log = logging.getLogger(__name__)

NOT_A_DEVICE = "Research demo — not a medical device"
TRAIN_HELP = (
    "Train and activate one with `python -m core train --activate` (add `--data-root PATH` "
    "for your copy of the dataset), or activate an existing version with "
    "`python -m core models activate NAME`."
)
DATA_HELP = (
    "Download the Kaggle *Chest X-Ray Images (Pneumonia)* dataset with "
    "`python -m core data download` (uses kagglehub; needs internet and Kaggle credentials), "
    "or point `PNEUMOSCOPE_DATA_ROOT` at a folder laid out as "
    "`<root>/{train,val,test}/{NORMAL,PNEUMONIA}/*.jpeg`, then reload this page."
)


# --- sidebar ------------------------------------------------------------------------------
def database_unavailable(e: Exception) -> str:
    """What a page says when the shared database (core.db) cannot be reached."""
    return (f"{md(e, MAX_MESSAGE)} Nothing was changed; this page works again once the database is back "
            "(ask whoever runs the server).")


def active_version() -> str | None:
    """The active model version, or None (no model, an unreadable registry folder, or the shared
    database unreachable: then said in an error box, never a traceback)."""
    from core.db import DatabaseError

    try:
        return loaders.active_version()
    except OSError as e:  # unreadable registry folder
        log.warning("Cannot read the registry: %s", e)
        return None
    except DatabaseError as e:
        log.error("Cannot read the active version: %s", e)
        st.error(database_unavailable(e), icon=":material/database:")
        return None


def sidebar() -> str | None:
    """Active-model card + disclaimer, drawn once per run by the entrypoint (streamlit_app.py)
    around whichever page runs. Returns the active version (or None)."""
    with st.sidebar:
        version = active_version()
        st.markdown("#### Active model")
        try:
            c = loaders.card(version) if version is not None else {}
        except (OSError, ValueError) as e:  # the frame must never take the page down with it
            log.warning("Cannot read the card of %s: %s", version, e)
            c = {}
        problems = version_problems(version) if version is not None else []
        if version is None:
            st.info(f"No model is active in {md_code(loaders.registry_root())}. {TRAIN_HELP}", icon=":material/model_training:")
        elif problems:  # refused by name (issue 21); the page below still renders
            st.error(broken_notice(version, problems), icon=":material/report:")
        else:
            test_auc = (c.get("test") or {}).get("roc_auc")
            size = md(c.get("input_size"), 12)  # the card is read from disk: its strings are text (issue 21)
            st.markdown(
                f"**{md_code(version)}**\n\n"
                f"- Input size: **{f'{size} × {size} px' if size else 'n/a'}**\n"
                f"- Weights: {md(c.get('weights_source', 'n/a'))}\n"
                f"- Test ROC-AUC: **{num(test_auc)}**"
                + (f" (n = {md(c['test'].get('n'), 12)})" if test_auc is not None and c['test'].get('n') else "")
            )
        st.warning(
            f"**{NOT_A_DEVICE}.** For research and teaching only; not for diagnosis or "
            "treatment decisions. A qualified clinician must read every image.",
            icon=":material/warning:",
        )
        st.caption("Bundled sample X-rays: Kermany et al. 2018 (Mendeley Data, CC BY 4.0).")
    return version


def version_problems(version: str) -> list[str]:
    """Why ``version`` is broken ([] when usable or when the check itself cannot run: the frame
    never takes a page down)."""
    try:
        return loaders.version_problems(version)
    except (OSError, ValueError) as e:
        log.warning("Cannot check version %s: %s", version, e)
        return []


def broken_notice(version: str, problems: list[str], advice: str | None = None) -> str:
    """The one Markdown sentence for a broken version (its problems are file content: escaped)."""
    more = f" (and {len(problems) - 1} more)" if len(problems) > 1 else ""
    advice = advice or "An administrator can activate another version and delete this one on the Admin page."
    return f"**{md_code(version)} is broken** and cannot be used: {md(problems[0], MAX_MESSAGE)}{more} {advice}"


def flash(kind: str, text: str) -> None:
    """A message (``kind``: st.success / st.warning / ...) shown once, after the next rerun.
    ``text`` is Markdown: names in it go through ui.text.md / md_code."""
    st.session_state["flash"] = (kind, text)


def show_flash() -> None:
    """Show (and forget) the message :func:`flash` left for this run."""
    msg = st.session_state.pop("flash", None)
    if msg:
        getattr(st, msg[0])(msg[1])


def no_model_notice() -> None:
    st.info(
        f"**No model is available yet.** The registry at {md_code(loaders.registry_root())} has no active "
        f"version. {TRAIN_HELP}",
        icon=":material/model_training:",
    )


def metric_card(label: str, value: str, ci: tuple[float, float] | None = None, as_pct: bool = True, help: str | None = None) -> None:
    with st.container(border=True):
        st.metric(label, value, help=help)
        if ci is not None:
            lo, hi = ci
            st.caption(f"95 % CI {pct(lo) if as_pct else num(lo)} – {pct(hi) if as_pct else num(hi)}")
        else:
            st.caption("95 % CI n/a")


def facts_table(info: dict) -> tuple[pd.DataFrame, pd.DataFrame | None]:
    """(image facts, DICOM tags or None) as two-column tables of strings, for ``st.table``.

    ``st.table`` renders every cell as Markdown, and the values come from the file (format,
    mode, DICOM Manufacturer, ...): every cell is escaped (ui.text.md)."""
    rows = []
    if info.get("width"):
        rows.append(("Size", f"{info['width']} × {info['height']} px"))
    for key, label in (("format", "Format"), ("mode", "Mode"), ("bit_depth", "Bits per sample"), ("frames", "Frames"), ("intensity_scaling", "Intensity scaling")):
        if info.get(key) is not None:
            rows.append((label, str(info[key])))
    if info.get("n_bytes") is not None:
        rows.append(("File size", f"{info['n_bytes'] / 1024:.0f} KB"))
    if info.get("was_color") is not None:
        rows.append(("Colour input", "yes" if info["was_color"] else "no (grayscale)"))
    if info.get("value_range"):
        lo, hi = info["value_range"]
        rows.append(("Raw value window", f"{lo:g} – {hi:g}"))
    facts = pd.DataFrame([(md(k), md(v)) for k, v in rows], columns=["Property", "Value"])
    dicom = info.get("dicom") or {}
    tags = pd.DataFrame([(md(k), md(v)) for k, v in dicom.items()], columns=["DICOM tag", "Value"]) if dicom else None
    return facts, tags


# The input guard's checks in plain words (core.guard check names): (what is checked, what it means).
CHECK_WORDS = {
    "size": ("Image size", "Large enough for the model to judge."),
    "aspect_ratio": ("Shape", "Width and height like a single radiograph, not a strip or a collage."),
    "color": ("Grayscale", "An X-ray, not a colour photograph."),
    "constant": ("Contrast", "Enough contrast and shades of grey: not blank, not a document or a drawing."),
    "layout": ("Chest layout", "Looks like a frontal chest X-ray: upright, not turned, not a negative."),
    "modality": ("DICOM modality", "The file says it is a radiograph (CR or DX)."),
    "nonfinite": ("Pixel values", "Every pixel holds a valid number."),
    "ood": ("Like the training films", "Close to the chest X-rays the model learned from."),
}
CHECK_RESULT_WORDS = {"pass": "passed", "warn": "check this", "fail": "FAILED", "skipped": "not run"}
# The measured quantities (keys of a check's value) in words, for the numbers behind the toggle.
MEASURE_WORDS = {
    "gray_std": "intensity spread (of 255)",
    "entropy_bits": "shades of grey used (bits)",
    "mode_fraction": "share of the commonest grey level",
    "layout_corr": "similarity to an average chest X-ray",
    "layout_corr_rot90": "the same, turned by 90°",
    "upright_score": "upright score",
}


def guard_summary(guard: dict) -> pd.DataFrame | None:
    """The input guard's checks in plain words, no numbers: what was checked, the result and what
    it means (the numbers are in :func:`guard_table`, behind a toggle). Escaped for ``st.table``."""
    checks = guard.get("checks") or []
    if not checks:
        return None
    rows = []
    for c in checks:
        name = str(c.get("name", ""))
        title, meaning = CHECK_WORDS.get(name, (name.replace("_", " ").capitalize(), ""))
        rows.append(tuple(md(x) for x in (title, CHECK_RESULT_WORDS.get(c.get("status"), str(c.get("status", ""))), meaning)))
    return pd.DataFrame(rows, columns=["Check", "Result", "What it checks"])


def guard_table(guard: dict) -> pd.DataFrame | None:
    """The input guard's individual checks with their measured values and limits (the numbers),
    escaped for ``st.table`` (a measured value can be DICOM text, e.g. the Modality)."""
    checks = guard.get("checks") or []
    if not checks:
        return None

    def show(v):
        if v is None:
            return ""
        if isinstance(v, float):
            return f"{v:.3g}"
        if isinstance(v, (list, tuple)):
            return " – ".join(show(x) for x in v)
        if isinstance(v, dict):
            return "; ".join(f"{MEASURE_WORDS.get(k, k.replace('_', ' '))} {show(x)}" for k, x in v.items())
        return str(v)

    def title(c) -> str:
        name = str(c.get("name", ""))
        return CHECK_WORDS.get(name, (name.replace("_", " "),))[0]

    return pd.DataFrame(
        [tuple(md(x) for x in (title(c), CHECK_RESULT_WORDS.get(c.get("status"), str(c.get("status", ""))), show(c.get("value")), show(c.get("limit"))))
         for c in checks],
        columns=["Check", "Result", "Measured", "Limit"],
    )


# --- the per-image result view ----------------------------------------------------------------
# Rejections with an obvious correction: guard code -> (fix, button label, icon).
FIXES = {
    "inverted": ("invert", "Invert (negative to positive) and analyse again", ":material/invert_colors:"),
    "upside_down": ("rotate180", "Turn by 180° and analyse again", ":material/rotate_right:"),
}


def fix_offer_ui(pred, key: str) -> str | None:
    """For a film rejected as a negative or as upside down: a button that analyses it again
    corrected. Returns the fix ("invert" | "rotate180") on the click's rerun, else None."""
    if not fix_offered(pred):
        return None
    fix, label, icon = FIXES[pred.guard_code]
    return fix if st.button(label, key=f"{key}-fix", icon=icon, type="primary") else None


def fix_offered(pred) -> bool:
    """True when :func:`fix_offer_ui` shows its one-click button for ``pred``: a rejection as a
    negative or as upside down, and no other check failing (e.g. the learned OOD score, the DICOM
    Modality), since turning or inverting would not make the image acceptable then."""
    from core.guard import suggested_fix

    return bool(pred.ok and pred.guard_status == "rejected" and pred.guard_code in FIXES and
                suggested_fix((pred.info or {}).get("guard") or {"status": pred.guard_status, "code": pred.guard_code}))


def rejection_text(pred, with_button: bool) -> str:
    """The rejection sentence (Markdown, the guard's message escaped). ``with_button``: the page
    shows the one-click fix above, so the text names that button instead of the guard's advice
    to change the file and upload it again."""
    msg = pred.guard_message or "this does not look like a chest X-ray."
    if not with_button or pred.guard_code not in FIXES:
        return f"**Image rejected by the input check:** {md(msg, MAX_MESSAGE)}"
    advice = FIX_ADVICE.get(pred.guard_code, "")
    if advice and advice in msg:
        msg = msg.replace(advice, "").strip()
    label = FIXES[pred.guard_code][1]
    return (f"**Image rejected by the input check:** {md(msg, MAX_MESSAGE)} Press **{label}** above to analyse it "
            "that way in one click; the uploaded file is not changed.")


def _result_card(pred, v) -> None:
    with st.container(border=True):
        st.markdown(f"### :{v.color}[{v.title}]")
        if pred.guard_status == "rejected":
            st.markdown("No pneumonia verdict is given for this image.")
        else:
            # Stacked, not side by side: two metrics in a narrow column truncate ("97…").
            st.metric("Probability", pct(pred.probability), help="Calibrated (temperature-scaled) probability of pneumonia.")
            st.metric("Threshold", pct(pred.threshold), help="Decision threshold on the calibrated probability, stored with the model (chosen on the validation split, never on test).")
            st.caption(v.explanation)
            if pred.band is not None:
                st.caption(f"Indeterminate band: {band(*pred.band)}")
            st.caption(f"Model {md_code(pred.model_version)}")  # its own line: a name is never broken inside
        if pred.guard_status == "accepted":
            st.caption(f":green[:material/check_circle:] Input check passed — {md(pred.guard_message or 'looks like a frontal chest X-ray.', MAX_MESSAGE)}")


def opacity_ui(key: str) -> float:
    return st.slider("Heatmap opacity", 0.0, 1.0, explain_view.DEFAULT_ALPHA, 0.05, key=key, help="0 = image only, 1 = heatmap only")


# Widths of the verdict card and of the image pair: side by side in a 1440 px window, one under
# the other at 1024 px (a wrapping row of fixed widths: two half-width columns shrank the images
# to ~117 px and the overlay caption to a strip there).
CARD_WIDTH = 320
IMAGES_WIDTH = 560


def input_checks_ui(pred, key: str) -> None:
    """The input checks in plain words; the measured numbers behind a toggle."""
    guard = (pred.info or {}).get("guard") or {}
    summary = guard_summary(guard)
    if summary is None:
        return
    st.markdown("**Input checks**")
    st.table(summary, hide_index=True)
    if st.toggle("Show the measured numbers", key=f"{key}-guard-numbers",
                 help="What each check measured on this image and the limit it was compared with."):
        st.table(guard_table(guard), hide_index=True)


def render_case(pred, key: str, uploaded_rgb=None, fix_button: bool = False) -> None:
    """Everything about one analysed image: verdict, images, facts, report downloads.

    ``pred.heatmap`` must already be computed (see ui.inference.with_method) for the
    overlay to show. ``uploaded_rgb``: the upload as decoded, in colour, shown under
    "Uploaded image" for a rejected image (the model's grayscale copy hides why a colour
    photo was rejected). ``fix_button``: the page shows the one-click correction above (the
    rejection message then names it instead of "upload it again").
    """
    if not pred.ok:
        st.error(f"**{md(pred.filename)}** could not be analysed: {md(pred.error, MAX_MESSAGE)}", icon=":material/error:")
        return
    v = verdict(pred)
    rejected = pred.guard_status == "rejected"
    # Names, DICOM text and messages that embed them are escaped: Markdown renders them as text (issue 21).
    if pred.guard_status == "warning" and pred.guard_message:
        st.warning(f"**Check this image:** {md(pred.guard_message, MAX_MESSAGE)}", icon=":material/warning:")
    if rejected:
        st.error(rejection_text(pred, fix_button), icon=":material/block:")
    done = [text for k, text in (("inverted_for_analysis", "inverted (negative to positive)"),
                                 ("rotated_for_analysis", "turned by 180°")) if (pred.info or {}).get(k)]
    if done:
        st.info(f"Analysed after the image was {' and '.join(done)}; the uploaded file is unchanged.", icon=":material/build:")

    row = st.container(horizontal=True, wrap=True, gap="large")
    with row, st.container(width=CARD_WIDTH):
        _result_card(pred, v)
    with row, st.container(width=IMAGES_WIDTH):
        if rejected:
            shown = uploaded_rgb if uploaded_rgb is not None else pred.image
            st.image(shown, caption="Uploaded image", width="stretch", alt="Original X-ray")
            with st.expander("Unreliable output — shown for inspection only", expanded=False):
                st.caption("The input check rejected this image; the numbers below are not a verdict.")
                st.metric("Raw model output (unreliable)", pct(pred.raw_probability))
                alpha = opacity_ui(f"{key}-alpha")
                ov = explain_view.overlay_image(pred, alpha)
                if ov is not None:
                    st.image(ov, caption=f"{md(explain_view.method_label(pred.heatmap_method, pred.heatmap_layer))} (unreliable)",
                             width="stretch", alt="Heatmap overlay (unreliable)")
        else:
            alpha = opacity_ui(f"{key}-alpha")
            images = st.container()
            c1, c2 = images.columns(2, gap="small")
            c1.image(pred.image, caption="Original", width="stretch", alt="Original X-ray")
            # The caption under both images, at their full width (under the overlay alone it was a strip).
            explain_view.render_overlay(pred, alpha, where=c2, caption_where=images,
                                        missing="No heatmap is available for this image.")
    # Full width: st.table wraps long values; a dataframe grid would cut them.
    facts, tags = facts_table(pred.info or {})
    with st.expander("Image facts", expanded=False):
        st.table(facts, hide_index=True)
        if tags is not None:
            st.markdown("**DICOM (non-identifying tags only)**")
            st.table(tags, hide_index=True)
        input_checks_ui(pred, key)
    _report_buttons(pred, key)
    from ui import feedback_view

    feedback_view.case_feedback(pred, key)  # agree / disagree, believed label, consent (issue 17)


def _report_buttons(pred, key: str) -> None:
    stem = (pred.filename.rsplit(".", 1)[0] or "case")[:60]

    def overlay_rgb():  # fixed opacity, whatever the slider says; none for a rejected image
        return None if pred.guard_status == "rejected" else explain_view.report_overlay(pred)

    # A wrapping row of content-width buttons: fixed columns cut the labels ("Case r…") at 1024 px.
    row = st.container(horizontal=True, wrap=True, gap="small")
    # Callables: the report (and its overlay) is only built when the button is clicked.
    row.download_button(
        "Case report (PDF)", lambda: build_pdf(pred, overlay_rgb(), words=map_words(pred)), file_name=f"pneumoscope-{stem}.pdf",
        mime="application/pdf", key=f"{key}-pdf", icon=":material/picture_as_pdf:", on_click="ignore",
    )
    row.download_button(
        "Report image (PNG)", lambda: build_png(pred, overlay_rgb(), words=map_words(pred)), file_name=f"pneumoscope-{stem}.png",
        mime="image/png", key=f"{key}-png", icon=":material/image:", on_click="ignore",
    )


def disclaimer_footer() -> None:
    st.caption(DISCLAIMER)
