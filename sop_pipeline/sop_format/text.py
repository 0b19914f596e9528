"""Turning pasted text (Slack mrkdwn, Markdown, Word copy-paste) into clean lines.

People paste SOPs from everywhere; the parser should only ever see plain words, so this
module strips decoration and odd characters while remembering what looked like a heading.
"""

from __future__ import annotations

import re
import unicodedata
from dataclasses import dataclass, replace

_LINE_BREAKS = str.maketrans(
    {"\r": "\n", "\u2028": "\n", "\u2029": "\n", "\x0b": "\n", "\x0c": "\n", "\x85": "\n"}
)
_MD_HEADING = re.compile(r"^#{1,6}(?:\s+|$)")
_QUOTE = re.compile(r"^(?:>\s?)+")
# Spans are bounded so that a line full of unmatched "*" costs linear, not quadratic, time.
_WHOLE_BOLD = re.compile(r"^(\*\*|__|\*|_)(?=\S)(.{1,300}?)(?<=\S)\1\s*[:：]?\s*$")
_FENCE = re.compile(r"^```")
_SLACK_REF = re.compile(r"<([@#!])([^<>|\s]{1,100})(?:\|([^<>]{0,300}))?>")
_SLACK_LINK = re.compile(
    r"<((?:https?|mailto|ftp|tel|slack):[^<>|\s]{0,2000})(?:\|([^<>]{0,300}))?>"
)
_MD_LINK = re.compile(r"\[([^\]\n]{1,300})\]\(([^()\s]{1,2000})\)")
_ENTITIES = {"&lt;": "<", "&gt;": ">", "&quot;": '"', "&#39;": "'", "&apos;": "'", "&nbsp;": " "}
_DECORATIONS = [
    re.compile(r"```([^`]{1,2000}?)```"),
    re.compile(r"`([^`]{1,500})`"),
    re.compile(r"(?<![\w*])\*\*(?=\S)([^*]{1,300}?)(?<=\S)\*\*(?![\w*])"),
    re.compile(r"(?<![\w_])__(?=\S)([^_]{1,300}?)(?<=\S)__(?![\w_])"),
    re.compile(r"(?<![\w~])~~(?=\S)([^~]{1,300}?)(?<=\S)~~(?![\w~])"),
    re.compile(r"(?<![\w*])\*(?=\S)([^*]{1,300}?)(?<=\S)\*(?![\w*])"),
    re.compile(r"(?<![\w_])_(?=\S)([^_]{1,300}?)(?<=\S)_(?![\w_])"),
    re.compile(r"(?<![\w~])~(?=\S)([^~]{1,300}?)(?<=\S)~(?![\w~])"),
]
_SPACES = re.compile(r"\s+")
# Every rule in `_clean_once` needs one of these characters; most lines have none.
_NEEDS_CLEANING = re.compile(r"[<\[&`*_~\xa0]")
# ASCII control characters other than "\n" and "\t" (which `normalize_chars` keeps or widens).
_ASCII_CONTROL = re.compile(r"[\x00-\x08\x0b-\x1f\x7f]")
_MAX_PASSES = 6
# A backslash before ASCII punctuation is a Markdown escape ("5\.1", "\*", "\_", "\#"), as
# Word, Pandoc and Slack copy-paste write it; also in `code spans`, whose marks are dropped.
_WORD = re.compile(r"\S+")
_ESCAPE = re.compile(r"\\([!-/:-@\[-`{-~])")
# A word with a backslash before a letter or digit ("C:\QA\SOP", "\\server\share", "\d")
# or after a drive letter ("D:\_archive") is a path or a formula, not Markdown: kept whole.
_PATH_LIKE = re.compile(r"\\[A-Za-z0-9]|(?<![\w])[A-Za-z]:\\")
# "<br>", "<br/>", "<br />" (and Slack's "&lt;br&gt;"): HTML line breaks in pasted text.
_HTML_BREAK = re.compile(r"(?:<|&lt;)br\s*/?(?:>|&gt;)", re.I)


@dataclass(frozen=True)
class Line:
    """A cleaned line: `indent` counts leading spaces, `marked` means it looked like a heading
    (Markdown `#` or wrapped entirely in bold)."""

    text: str
    indent: int = 0
    marked: bool = False
    hashes: int = 0
    gap: bool = False  # a blank line came before it: a new paragraph, not a wrapped line
    code: bool = False  # the whole line was one `code span`: literal text, never a heading
    table_header: bool = False  # a Markdown table's header row: column names, not a heading
    table_row: bool = False  # "| a | b |": each row is an entry, never a wrapped line


def normalize_chars(text: str) -> str:
    """Unify line breaks and spaces, drop invisible characters; NFC but not NFKC, so that
    "m²" and "µL" survive."""
    text = text.replace("\r\n", "\n").translate(_LINE_BREAKS)
    if text.isascii() and not _ASCII_CONTROL.search(text):
        return text.replace("\t", "    ")  # the common case, without a loop per character
    return _normalize_each_char(text)


def _normalize_each_char(text: str) -> str:
    out: list[str] = []
    for ch in text:
        if ch == "\n":
            out.append(ch)
        elif ch == "\t":
            out.append("    ")
        else:
            category = unicodedata.category(ch)
            if category == "Zs":
                out.append(" ")
            elif category not in ("Cc", "Cf", "Cs"):
                out.append(ch)
    return unicodedata.normalize("NFC", "".join(out))


def clean_inline(text: str) -> str:
    """Remove Slack/Markdown decoration and entities until nothing changes (so cleaning twice
    equals cleaning once), then collapse whitespace."""
    for _ in range(_MAX_PASSES):
        cleaned = _clean_once(text)
        if cleaned == text:
            break
        text = cleaned
    return _SPACES.sub(" ", text).strip()


def _clean_once(text: str) -> str:
    if not _NEEDS_CLEANING.search(text):
        return text  # no rule below can change it (checked per character in the tests)
    return _apply_cleaning_rules(text)


def _apply_cleaning_rules(text: str) -> str:
    text = _SLACK_REF.sub(_slack_ref, text)
    text = _SLACK_LINK.sub(lambda m: m.group(2) or m.group(1), text)
    text = _MD_LINK.sub(r"\1", text)
    for entity, char in _ENTITIES.items():
        text = text.replace(entity, char)
    text = text.replace("&amp;", "&")
    for pattern in _DECORATIONS:
        text = pattern.sub(r"\1", text)
    return normalize_chars(text) if "\xa0" in text else text


def _slack_ref(match: re.Match[str]) -> str:
    sigil, ident, label = match.group(1), match.group(2), match.group(3)
    if label:
        return label if label[:1] in "@#" else ("#" if sigil == "#" else "@") + label
    return ("#" if sigil == "#" else "@") + ident


def split_lines(text: str) -> list[Line]:
    """Clean every line of a pasted SOP; drop blank, fence and punctuation-only lines."""
    lines: list[Line] = []
    gap = False
    raws = [
        piece
        for raw in normalize_chars(text).split("\n")
        for piece in _break_html_lines(unescape_markdown(raw) if "\\" in raw else raw)
    ]
    for index, raw in enumerate(raws):
        line = _clean_line(raw)
        if line is None:
            gap = True
            continue
        if gap:
            line = replace(line, gap=True)
        if index + 1 < len(raws) and raw.lstrip().startswith("|") and _TABLE_RULE.match(
            raws[index + 1]
        ):
            line = replace(line, table_header=True)
        lines.append(line)
        gap = False
    return lines


def unescape_markdown(text: str) -> str:
    """Drop the backslash of every Markdown escape ("5\\.1" -> "5.1", "\\*" -> "*"). It runs
    before any other rule, so an escaped "*" or "#" reads as if typed plain: training text has
    no escapes, and approved again it must read the same. A doubled backslash stays as written
    (undoing it would make "\\\\*" an escape on the next read), and so do paths."""
    return _WORD.sub(_unescape_word, text)


def _unescape_word(match: re.Match[str]) -> str:
    word = match.group()
    if "\\" not in word or _PATH_LIKE.search(word):
        return word
    return _ESCAPE.sub(lambda m: m.group() if m.group(1) == "\\" else m.group(1), word)


def _break_html_lines(raw: str) -> list[str]:
    """An HTML line break starts a new line, as the reader saw it; inside a table row it is a
    space, since a new line there would cut the row in two and lose its cells."""
    if ("<" not in raw and "&" not in raw) or not _HTML_BREAK.search(raw):
        return [raw]
    stripped = raw.strip()
    if stripped.startswith("|") and "|" in stripped[1:]:
        return [_HTML_BREAK.sub(" ", raw)]
    indent = raw[: len(raw) - len(raw.lstrip())]
    pieces = [piece.strip() for piece in _HTML_BREAK.split(raw)]
    while pieces and not pieces[-1]:
        pieces.pop()  # "text<br>" at a line end: the line ends there anyway
    while pieces and not pieces[0]:
        pieces.pop(0)
    return [indent + piece if piece else "" for piece in pieces] or [""]


# The "|---|:---:|" line under a Markdown table's header row.
_TABLE_RULE = re.compile(r"^\s*\|?(?:\s*:?-+:?\s*\|)+\s*(?::?-+:?\s*)?$")
_CODE_LINE = re.compile(r"^`[^`]+`$")


def _whole_bold(text: str) -> bool:
    """ "**References**" alone on a line; "**Owner** | *name*" (two spans) is not one."""
    match = _WHOLE_BOLD.match(text)
    return match is not None and match.group(1) not in match.group(2)


# A Markdown heading's optional closing "#"s come after a space: "## Notes: use C#" keeps "C#".
_CLOSING_HASHES = re.compile(r"(?:^|\s)#+\s*$")
_TABLE_SEPARATOR = re.compile(r"\s*\|\s*")
_EMPTY_CELL = re.compile(r"\|\s+(?=\|)")


def _table_row(text: str) -> str:
    """A Markdown table row "| IPA | Isopropyl Alcohol |" becomes "IPA | Isopropyl Alcohol":
    the outer pipes are markup, the inner ones still separate the cells. An empty cell stays
    in its place ("| A | | C |" is "A | | C", never "A | C", which would move C a column);
    a row that starts with one keeps its outer pipes, so that it still reads as a row."""
    if not text.startswith("|"):
        return text
    body = text[1:-1] if text.endswith("|") and len(text) > 1 else text[1:]
    cells = [cell.strip() for cell in _TABLE_SEPARATOR.split(body)]
    while cells and not cells[-1]:
        cells.pop()  # an empty last cell moves no other cell
    if not cells:
        return ""
    row = " | ".join(cells)
    if not cells[0]:
        row = f"|{row} |"
    return _EMPTY_CELL.sub("| ", row)


def reread(text: str) -> str:
    """`text` as it reads on a line of its own: joining wrapped lines can pair up the "*" of
    "*> a" and "b*", leaving "> a b", whose quote mark goes the next time it is read."""
    line = _clean_line(text)
    return line.text if line is not None else text


def _clean_line(raw: str) -> Line | None:
    indent = len(raw) - len(raw.lstrip())
    unquoted = _QUOTE.sub("", raw.strip()).strip()  # "> | a | b |": a table in a quote
    text = _table_row(unquoted)
    marked = False
    hashes = 0
    code = _CODE_LINE.match(text) is not None
    for _ in range(_MAX_PASSES):  # "*## Heading*" needs two rounds
        before = text
        if _FENCE.match(text):
            text = text.strip("`").strip()
        text = _QUOTE.sub("", text).strip()
        heading = _MD_HEADING.match(text)
        if heading:
            hashes = hashes or len(heading.group().strip())
            text = _CLOSING_HASHES.sub("", text[heading.end() :]).strip()
            marked = True
        if _whole_bold(text):
            marked = True
        text = _table_row(clean_inline(text))  # "` `|1" cleans to "|1", which reads as "1"
        if text == before:
            break
    if not any(ch.isalnum() for ch in text):
        return None  # rules, "---", "..." and stray bullets carry nothing
    if code:
        text = f"`{text}`"  # kept a literal, so that approved again it still is not a heading
    table_row = unquoted.startswith("|") and "|" in unquoted[1:]
    return Line(
        text=text, indent=indent, marked=marked, hashes=hashes, code=code, table_row=table_row
    )
