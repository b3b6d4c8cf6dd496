"""Escaping of untrusted text for the markdown the stage writes (gate report, model card, review).

A checkpoint's zoo card, trigger strings, file names and metric names built from them come from
whoever made the checkpoint, i.e. possibly an attacker. The reports they reach are rendered as
markdown with inline HTML (Prefect artifacts, MLflow, the Hub's model card page, GitHub) and their
tables may be exported to spreadsheets. `escape_markdown` makes such a string inert in all of these:

- HTML: `&`, `<`, `>` become entities, so `<script>` or `<img onerror=...>` is shown, not parsed;
- markdown: the punctuation that starts emphasis, links, images, code, headings, tables, math and
  footnotes is backslash-escaped (`**bold**` -> `\\*\\*bold\\*\\*`, `|` cannot end a table cell);
  an underscore between two letters or digits (`asr_clean`) cannot start emphasis and stays as is;
- layout: line breaks and other control characters become spaces (one row stays one row);
- links: the `:` of `http://` and the `.` of `www.` are escaped, so no bare URL becomes a link;
- formulas: `=`, `+`, `@` are escaped and a leading `-` too, so a cell exported to a spreadsheet
  does not start a formula (`=HYPERLINK(...)` -> `\\=HYPERLINK\\(...\\)`).

The rendered text reads as the original string. `code_span` quotes a string as inline code (paths,
repo ids) with the same guarantees.
"""

from __future__ import annotations

import re

_CONTROL = re.compile(r"[\x00-\x1f\x7f\u2028\u2029]+")
_PUNCTUATION = re.compile(r"[\\`*\[\]()!#|~{}=+@$^]")
# bare-URL autolinks (`http://`, `www.`): escaping their `:` / `.` leaves them plain text
_AUTOLINK = re.compile(r"(?i)(:(?=//)|(?<=\bwww)\.)")
# `_` next to a non-alphanumeric character can open or close emphasis; `a_b` cannot
_LONE_UNDERSCORE = re.compile(r"(?<![A-Za-z0-9])_|_(?![A-Za-z0-9])")


def escape_markdown(text: object) -> str:
    """Return `text` as inert markdown: no HTML, no markup, no line break, no formula (see module)."""
    s = _CONTROL.sub(" ", str(text))
    s = s.replace("&", "&amp;").replace("<", "&lt;").replace(">", "&gt;")
    s = _PUNCTUATION.sub(lambda m: "\\" + m.group(0), s)
    s = _LONE_UNDERSCORE.sub(r"\\_", s)
    s = _AUTOLINK.sub(lambda m: "\\" + m.group(0), s)
    return "\\" + s if s.startswith("-") else s


def code_span(text: object) -> str:
    """Return `text` as an inline code span that no backtick, pipe or line break inside can end."""
    s = _CONTROL.sub(" ", str(text)).replace("|", "\\|")
    longest = max((len(run) for run in re.findall(r"`+", s)), default=0)
    fence = "`" * (longest + 1)
    pad = " " if s.startswith("`") or s.endswith("`") else ""
    return f"{fence}{pad}{s}{pad}{fence}"
