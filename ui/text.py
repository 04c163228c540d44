"""Names are text: user-supplied strings in the app's Markdown (issue 21).

Streamlit renders Markdown almost everywhere a string goes: ``st.markdown``, ``st.caption``,
``st.subheader``, the ``st.error``/``warning``/``info``/``success`` boxes, toasts, widget
labels, radio and pills options, expander and tab labels, image captions, metric labels and
values, and every cell of ``st.table``. Only ``st.text``, ``st.code``, ``st.dataframe`` and the
options of ``st.selectbox``/``st.multiselect`` are shown as plain text. A file name, a
clinician's comment, a review reason, DICOM text (Manufacturer, Modality, ...), a reader id, a
version or job name read from disk or an error message that embeds one of them must therefore
never be put into one of those strings as it is: ``![x](https://host/beacon).jpeg`` would make
every browser that shows it fetch that URL; links, headings, colours (``:red[...]``), KaTeX
(``$...$``), Material icons (``:material/...:``) and emoji shortcodes would render; and a
right-to-left override (U+202E) would reverse the app's own sentence around the name.

What Streamlit 1.67's Markdown (react-markdown + remark-gfm + remark-math + remark-directive +
Streamlit's own plugins) interprets, and how each helper here stops it:

* **Syntax** (CommonMark/GFM: emphasis, links, images, autolinks ``<...>``, raw HTML, entities,
  headings, lists, quotes, tables, strikethrough, footnotes; remark-math ``$``; directives
  ``:name[...]``; the ``:material/`` prefix, which Streamlit rewrites in the *source* before
  parsing): every ASCII punctuation character is backslash-escaped (CommonMark lets each one
  be, and then shows it literally). Escaping all of them, not a list, is what keeps this
  correct when a plugin adds syntax made of punctuation.
* **Text transforms that run after parsing**, on the text with its escapes already resolved
  (so escaping cannot reach them): GFM autolink literals (``http://``, ``https://``, ``www.``,
  e-mail addresses), emoji shortcodes (``:smile:``, ``:+1:``), ``:streamlit:`` (the logo),
  ``:material_name:`` icons and the typographic replacements (`` -> `` to an arrow, `` -- `` to
  a dash, ...). Each pattern is broken by a WORD JOINER (U+2060: invisible, no width, no line
  break) inserted after every ``:`` followed by a non-space, between ``www`` and ``.``, after
  every ``@`` followed by a name character and inside the two-character arrows. Its only cost:
  such a name copied from the page carries that invisible character.
* **Control and bidi characters** (newline, ESC, U+202A-U+202E, U+2066-U+2069, U+200E/F,
  U+061C, zero-width and other format characters): made visible by
  :func:`core.formatting.printable` (``\\u202e``), the same helper the CLI prints names with.
* **Length**: bounded (``max_len``, an ellipsis when cut).

Helpers: :func:`md` (escaped text, for sentences and table cells), :func:`md_code` (an inline
code span: nothing inside is interpreted; for version names, job ids, paths), :func:`plain`
(for the plain-text places: selectbox options, ``st.text``) and :func:`html_text` (Plotly
titles, which understand a few HTML tags). Prefer plain-text elements (``st.dataframe``,
``st.text``, ``st.code``) for names where the layout allows.
"""

from __future__ import annotations

import html
import re
import string
from typing import Any

from core.formatting import printable

MAX_LEN = 300  # a file name, a version name, a DICOM value
MAX_MESSAGE = 1000  # an error or guard message (it may embed a name)
MAX_COMMENT = 2000  # a clinician's comment (the form's own limit)

WORD_JOINER = "\u2060"
_MD_SPECIAL = frozenset(string.punctuation)  # all 32 ASCII punctuation characters
# Patterns that Streamlit's Markdown turns into links, emoji, icons or symbols *after* parsing.
_AFTER_PARSE = (
    (re.compile(r":(?=\S)"), ":" + WORD_JOINER),  # emoji, :streamlit:, :material_x:, scheme://
    (re.compile(r"(www)(?=\.)", re.IGNORECASE), r"\1" + WORD_JOINER),  # www.example.org
    (re.compile(r"@(?=[-\w])"), "@" + WORD_JOINER),  # name@example.org
    (re.compile(r"(?:(?<=\s)|^)(<->|->|<-|--|>=|<=|~=)(?=\s|$)"),
     lambda m: m.group(1)[0] + WORD_JOINER + m.group(1)[1:]),  # typographic arrows and dashes
)


def plain(value: Any, max_len: int | None = MAX_LEN) -> str:
    """``value`` as one line of visible plain text (controls and bidi characters escaped,
    bounded): for places that do not render Markdown (selectbox options, ``st.text``)."""
    return printable(value, max_len)


def md(value: Any, max_len: int | None = MAX_LEN) -> str:
    """``value`` as Markdown that renders exactly as its text: embed it in any string that
    Streamlit renders as Markdown (``st.error(f"{md(name)} could not be analysed")``).
    Nothing in it becomes a link, image, heading, colour, formula, icon, emoji or HTML."""
    s = printable(value, max_len)
    for pattern, repl in _AFTER_PARSE:
        s = pattern.sub(repl, s)
    s = "".join("\\" + ch if ch in _MD_SPECIAL else ch for ch in s)
    # Four leading spaces would start an indented code block where the text begins a line, and a
    # paragraph drops its trailing spaces: the outermost space on each side is written as an entity.
    if s.startswith(" "):
        s = "&#32;" + s[1:]
    if s.endswith(" ") and len(s) > 1:
        s = s[:-1] + "&#32;"
    return s


def md_code(value: Any, max_len: int | None = MAX_LEN) -> str:
    """``value`` as an inline code span (a version name, a job id, a path): CommonMark shows a
    code span's content literally and Streamlit's text transforms skip it; the fence is longer
    than any run of backticks inside. "" for an empty value."""
    s = printable(value, max_len)
    if not s:
        return ""
    # The one rewrite Streamlit applies to the source before parsing (":material/" ->
    # ":material_") would change the text shown; a word joiner keeps the source from matching.
    s = s.replace(":material/", ":material" + WORD_JOINER + "/")
    fence = "`" * (max((len(run) for run in re.findall(r"`+", s)), default=0) + 1)
    if s[0] == "`" or s[-1] == "`" or (s[0] == " " and s[-1] == " " and s.strip(" ")):
        s = f" {s} "  # CommonMark strips one space on each side
    return f"{fence}{s}{fence}"


def html_text(value: Any, max_len: int | None = MAX_LEN) -> str:
    """``value`` for a Plotly title or label (Plotly reads <b>, <a href>, <br>, entities):
    HTML-escaped, controls and bidi characters visible, bounded."""
    return html.escape(printable(value, max_len), quote=True)


__all__ = ["MAX_COMMENT", "MAX_LEN", "MAX_MESSAGE", "WORD_JOINER", "html_text", "md", "md_code", "plain"]
