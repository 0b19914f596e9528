"""Log hygiene for Slack's libraries: no request bodies, message texts, user ids or tokens.

Bolt logs the whole body of every badly signed request at INFO (user ids, command text), and
slack_sdk logs request bodies and Socket Mode payloads at DEBUG. `RedactingFilter` rewrites
such records before any handler sees them; `bolt_logger()` gives Bolt a base logger carrying
it (Bolt copies its base logger's filters to each of its middleware loggers) and puts it on
slack_sdk's loggers too.
"""

from __future__ import annotations

import logging
import re

BOLT_LOGGER = "bot.bolt"
SLACK_SDK_LOGGERS = (
    "slack_sdk", "slack_sdk.web.base_client", "slack_sdk.web.client",
    "slack_sdk.web.slack_response", "slack_sdk.socket_mode.builtin.client",
    "slack_sdk.socket_mode.builtin.connection", "slack_sdk.socket_mode.client",
    "slack_sdk.http_retry", "slack_bolt",
)

_RULES: tuple[tuple[re.Pattern[str], str], ...] = (
    # "body: ...", "body_params: {...}", "json_body: ...", "payload: ..." up to the end of
    # the record (a body is the last thing Bolt and slack_sdk put in a line, or close to it)
    (re.compile(r"\b(body|body_params|json_body|payload)(['\"]?\s*[:=]\s*)[\s\S]*$",
                re.IGNORECASE), r"\1\2[redacted]"),
    (re.compile(r"(?i)\b(text|markdown_text|blocks)(['\"]?\s*[:=]\s*)('(?:[^'\\]|\\.)*'|"
                r"\"(?:[^\"\\]|\\.)*\")"), r"\1\2[redacted]"),
    (re.compile(r"\bx(?:ox[abpors]|app)-[A-Za-z0-9-]+"), "[token]"),
    (re.compile(r"(?i)(authorization['\"]?\s*[:=]\s*['\"]?)(bearer\s+)?[^\s'\",}]+"),
     r"\1[redacted]"),
    (re.compile(r"(\?|&)(ticket|token|app_id)=[^&\s'\"]+"), r"\1\2=[redacted]"),
    (re.compile(r"\b[UW](?=[A-Z0-9]*\d)[A-Z0-9]{6,}\b"), "[user]"),
)


def redact(text: str) -> str:
    """`text` with bodies, message texts, tokens and user ids taken out."""
    for pattern, replacement in _RULES:
        text = pattern.sub(replacement, text)
    return text


class RedactingFilter(logging.Filter):
    """Rewrites a record's message (formatted once, arguments dropped); never drops one, except
    Bolt's start-up notice that the token is unused (see `bolt_logger`)."""

    def filter(self, record: logging.LogRecord) -> bool:
        try:
            message = record.getMessage()
        except Exception:  # noqa: BLE001 - a broken format string: leave it to logging
            return True
        if UNUSED_TOKEN in message:
            return False
        cleaned = redact(message)
        if cleaned != message:
            record.msg, record.args = cleaned, None
        return True


# Bolt warns "As you gave `client` as well, `token` will be unused." whenever a client is
# passed and SLACK_BOT_TOKEN is in the environment, because `App()` falls back to that
# variable; our client *is* built from that token, so the notice is noise.
UNUSED_TOKEN = "`token` will be unused"
FILTER = RedactingFilter()


def install() -> None:
    """Put the filter on Bolt's base logger and on every slack_sdk / slack_bolt logger that
    exists now (idempotent)."""
    names = {BOLT_LOGGER, *SLACK_SDK_LOGGERS}
    names.update(name for name in logging.root.manager.loggerDict
                 if name.startswith(("slack_sdk", "slack_bolt", BOLT_LOGGER)))
    for name in names:
        logger = logging.getLogger(name)
        if FILTER not in logger.filters:
            logger.addFilter(FILTER)


def bolt_logger() -> logging.Logger:
    """The base logger to give `App(logger=...)`, with the redacting filter in place."""
    install()
    return logging.getLogger(BOLT_LOGGER)
