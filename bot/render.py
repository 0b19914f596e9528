"""The one way untrusted text (requests, model output, file names, provider messages) reaches
Slack: `mrkdwn()` for mrkdwn text (messages, section blocks, streamed markdown), `code()` for
text shown inside a ``` block, and `plain()` for plain_text fields (headers, button labels).

Why one function: the final draft used to be escaped while the live preview was not, so a
model writing `<!channel>` pinged the whole channel from the preview. Everything passes here:

* `&`, `<` and `>` are escaped, so `<!channel>`, `<!here>`, `<@U…>`, `<#C…>` and `<url|label>`
  arrive as text, never as a mention or a disguised link;
* bidirectional controls (U+202A–U+202E, U+2066–U+2069, U+200E/U+200F, U+061C) and zero-width
  characters are removed, so text cannot read differently from what it is (a right-to-left
  override turning "exe.txt" around); other control characters except tab and newline too;
* a ``` in the text becomes look-alike accents, so it can neither close the bot's own code
  block (the live preview) nor open one around what follows.
"""

from __future__ import annotations

import re

# Bidirectional embeddings/overrides/isolates and marks, then zero-width characters (ZWSP,
# ZWNJ, ZWJ, word joiner, invisible operators, BOM, Mongolian vowel separator).
INVISIBLE = re.compile(
    "[\u202a-\u202e\u2066-\u2069\u200e\u200f\u061c"
    "\u200b-\u200d\u2060-\u2064\ufeff\u180e"
    "\x00-\x08\x0b-\x1f\x7f]"
)
FENCE = "```"
SAFE_FENCE = "\u02cb\u02cb\u02cb"  # three modifier-letter grave accents: looks like ```


def clean(text: object) -> str:
    """Untrusted text without invisible or direction-changing characters."""
    return INVISIBLE.sub("", "" if text is None else str(text)).replace("\r\n", "\n")


def has_invisible(text: str) -> bool:
    return INVISIBLE.search(text) is not None


def mrkdwn(text: object) -> str:
    """Untrusted text for a mrkdwn field or a streamed markdown chunk: cleaned, escaped, and
    no ``` that could open or close a code block around the bot's own text."""
    escaped = clean(text).replace("&", "&amp;").replace("<", "&lt;").replace(">", "&gt;")
    return escaped.replace(FENCE, SAFE_FENCE)


def code(text: object) -> str:
    """Untrusted text as a ``` block that the text cannot break out of."""
    body = mrkdwn(text)
    if body.endswith("`"):  # a trailing backtick would merge with the closing fence
        body += " "
    return f"{FENCE}{body}{FENCE}"


def preview(text: object) -> str:
    """A piece of a streamed draft (markdown appended chunk by chunk): escaped like `mrkdwn`,
    and backticks shown as look-alikes, since a fence split across two appends could not be
    neutralised otherwise."""
    return mrkdwn(text).replace("`", "\u02cb")


def plain(text: object) -> str:
    """Untrusted text for a plain_text field: Slack shows it verbatim, so only clean it."""
    return clean(text)
