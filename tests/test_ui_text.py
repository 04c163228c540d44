"""ui.text: user-supplied strings embedded in Streamlit Markdown render as their text (issue 21).

The parse-level check renders with markdown-it-py (CommonMark, + GFM tables and strikethrough);
the text transforms Streamlit 1.67 applies after parsing are checked with the patterns from its
frontend bundle (StreamlitMarkdown: GFM autolink literals, remark-emoji, :streamlit:, Material
icons, typographic symbols; the ``:material/`` rewrite of the source).
"""

from __future__ import annotations

import html
import random
import re
import string

import pytest

from core.formatting import printable
from ui.text import MAX_LEN, WORD_JOINER, html_text, md, md_code, plain

markdown_it = pytest.importorskip("markdown_it")
RENDER = markdown_it.MarkdownIt("commonmark").enable(["table", "strikethrough"]).render

HOSTILE = [
    "![x](https://example.invalid/beacon).jpeg",
    "![x](https:host).jpeg",
    "[link](http://x)",
    "<https://example.invalid>",
    "# heading",
    "## h2 ##",
    ":red[x]",
    ":blue-background[x] :green-badge[y] :small[z] :color[c]{foreground=\"red\"} :help[tip]",
    ":material/home: :material_home: :streamlit: :smile: :+1: :-1:",
    "$x^2$",
    "$$\\int_0^1$$",
    "<img src=x onerror=alert(1)>",
    "<script>alert(1)</script>",
    "&amp; &#60; &lt;b&gt;",
    "**bold** __b__ *i* _i_ ~~s~~ `code` ``x``",
    "1. item",
    "- item",
    "+ item",
    "> quote",
    "| a | b |\n|---|---|\n| c | d |",
    "a\nb\r\nc",
    "---",
    "===",
    "[^1] [ref]: http://x",
    "http://example.invalid www.example.invalid a@example.invalid mailto:a@b.c",
    "a -> b <- c <-> d -- e >= f <= g ~= h",
    "abc\u202egpj.exe",
    "\u2066x\u2069 \u200e\u200f\u061c \u200b\ufeff",
    "\x1b[2K\x1b[1A\x07",
    "    four leading spaces",
    "\\",
    "trailing backslash \\",
    "\\*not bold\\*",
    "x" * 5,
]


def _shown(rendered_html: str) -> str:
    """The text of one rendered paragraph (the word joiners are invisible)."""
    inner = rendered_html.strip()
    assert inner.startswith("<p>") and inner.endswith("</p>"), rendered_html
    return html.unescape(inner[3:-4]).replace(WORD_JOINER, "")


def _random_strings(n: int, seed: int = 21) -> list[str]:
    rng = random.Random(seed)
    alphabet = string.punctuation * 3 + "ab12 " + "\n\t\u202e\u2066é😀"
    return ["".join(rng.choice(alphabet) for _ in range(rng.randint(1, 24))) for _ in range(n)]


@pytest.mark.parametrize("s", HOSTILE + list(string.punctuation) + [string.punctuation])
def test_md_renders_as_exactly_its_visible_text(s):
    rendered = RENDER(md(s))
    assert "<a" not in rendered and "<img" not in rendered and "<h" not in rendered.replace("<hr", "")
    assert _shown(rendered) == printable(s, MAX_LEN)


def test_md_renders_as_its_text_for_random_punctuation_soup():
    for s in _random_strings(600):
        assert _shown(RENDER(md(s))) == printable(s, MAX_LEN), repr(s)


# Streamlit 1.67's text transforms after parsing (its StreamlitMarkdown bundle), applied to the
# text with the escapes resolved: none may fire on an escaped name.
AFTER_PARSE = {
    "autolink literal": r"(https?:\/\/|www(?=\.))([-.\w]+)([^ \t\r\n]*)",
    "e-mail autolink": r"(?<![^\s\W_])([-.\w+]+)@([-\w]+(?:\.[-\w]+)+)",
    "emoji": r":\+1:|:-1:|:[\w-]+:",
    "logo": r":streamlit:",
    "material icon": r":material_(\w+):",
    "typographic": r"(^|\s)(<->|->|<-|--|>=|<=|~=)(\s|$)",
}


@pytest.mark.parametrize("s", HOSTILE + _random_strings(200, seed=3))
def test_no_text_transform_fires_on_an_escaped_string(s):
    out = md(s)
    resolved = re.sub(r"\\([!-/:-@\[-`{-~])", r"\1", out)  # what the text node holds after parsing
    for what, pattern in AFTER_PARSE.items():
        assert not re.search(pattern, resolved, re.IGNORECASE), (what, s, out)
    assert ":material/" not in out  # rewritten in the source before parsing
    # Streamlit loads remark-emoji only when its source test matches: it does not.
    assert not re.search(r":(?!material\/|streamlit:)[\w+-][\w_+-]*:", out)


def test_the_breaks_only_land_where_a_transform_would_fire():
    assert md("plain name 2024.jpeg") == "plain name 2024\\.jpeg"  # no word joiner in a normal name
    assert WORD_JOINER not in md("a: b, c @ d - e")
    assert md("http://x") == "http\\:" + WORD_JOINER + "\\/\\/x"
    assert md("WWW.x") == "WWW" + WORD_JOINER + "\\.x"


@pytest.mark.parametrize("s", HOSTILE + ["`", "``", "a`b", "`a`", " a ", "  ", "a ``` b", ":material/home:"])
def test_md_code_is_a_code_span_of_exactly_the_visible_text(s):
    out = md_code(s)
    if not printable(s).strip(" "):
        assert RENDER(out).strip() in ("", "<p><code>  </code></p>", "<p><code> </code></p>")
        return
    rendered = RENDER(out).strip()
    assert rendered.startswith("<p><code>") and rendered.endswith("</code></p>") and rendered.count("<code>") == 1, (s, out)
    assert html.unescape(rendered[9:-11]).replace(WORD_JOINER, "") == printable(s, MAX_LEN)
    assert ":material/" not in out


def test_controls_and_bidi_characters_are_visible_everywhere():
    s = "a\u202eb\u2066c\u200ed\x1b[2Ke\nf"
    for out in (md(s), md_code(s), plain(s), html_text(s)):
        assert not [c for c in out if c in "\u202e\u2066\u200e\x1b\n"], repr(out)
    assert plain(s) == "a\\u202eb\\u2066c\\u200ed\\x1b[2Ke\\nf"


def test_length_is_bounded():
    long = "![x](http://y)" * 1000
    assert len(plain(long)) == MAX_LEN and plain(long).endswith("…")
    assert _shown(RENDER(md(long))) == printable(long, MAX_LEN) and len(printable(long, MAX_LEN)) == MAX_LEN
    assert len(plain("x" * 50, 10)) == 10 and plain("x" * 10, 10) == "x" * 10
    assert md(None) == "" and md_code(None) == "" and plain(None) == ""


def test_html_text_is_safe_for_plotly_titles():
    assert html_text('<a href="javascript:x">v1</a> & <b>') == "&lt;a href=&quot;javascript:x&quot;&gt;v1&lt;/a&gt; &amp; &lt;b&gt;"


def test_normal_names_read_the_same():
    for s in ("v0001-tiny", "person1_virus_6.jpeg", "IM-0001-0001.jpeg", "Müller Röntgen 2024.png"):
        assert _shown(RENDER(md(s))) == s and plain(s) == s
        assert RENDER(md_code(s)).strip() == f"<p><code>{html.escape(s, quote=False)}</code></p>"
