"""Contract checks for the Slack Web API calls the bot makes, against Slack's published spec.

`/work/shared/specs/slack-web-openapi-v2.json` (Swagger 2.0, frozen in 2021) describes most
methods: we check that the method exists, that its required parameters are present and that
every parameter name is one Slack knows. Methods and parameters newer than that file (the
external-upload pair used by `files_upload_v2`, `metadata`, ...) are listed by hand below,
copied from Slack's method documentation.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path

SPEC_PATH = Path("/work/shared/specs/slack-web-openapi-v2.json")

# Methods missing from the 2021 spec: required and optional parameters from docs.slack.dev.
DOCUMENTED_METHODS: dict[str, dict[str, set[str]]] = {
    "files.getUploadURLExternal": {
        "required": {"filename", "length"},
        "optional": {"alt_txt", "snippet_type"},
        "scopes": {"files:write"},
    },
    "files.completeUploadExternal": {
        "required": {"files"},
        "optional": {"channel_id", "channels", "initial_comment", "thread_ts", "blocks"},
        "scopes": {"files:write"},
    },
    # Streaming messages (AI apps), from docs.slack.dev/reference/methods/chat.startStream,
    # chat.appendStream and chat.stopStream (2025): markdown_text is limited to 12,000
    # characters; recipient_user_id and recipient_team_id are required outside a DM.
    "chat.startStream": {
        "required": {"channel"},
        "optional": {"thread_ts", "markdown_text", "chunks", "recipient_user_id",
                     "recipient_team_id", "task_display_mode", "icon_emoji", "icon_url",
                     "username"},
        "scopes": {"chat:write"},
    },
    "chat.appendStream": {
        "required": {"channel", "ts"},
        "optional": {"markdown_text", "chunks"},
        "scopes": {"chat:write"},
    },
    "chat.stopStream": {
        "required": {"channel", "ts"},
        "optional": {"markdown_text", "chunks", "blocks", "metadata", "session_status"},
        "scopes": {"chat:write"},
    },
    # Socket Mode: called with the app-level token (xapp-, scope connections:write).
    "apps.connections.open": {"required": set(), "optional": set(), "scopes": set()},
}

# Parameters Slack added to old methods after the spec was frozen (docs.slack.dev).
NEWER_PARAMS: dict[str, set[str]] = {
    "chat.postMessage": {"metadata", "unfurl_links", "unfurl_media", "reply_broadcast"},
    "chat.update": {"metadata", "file_ids", "reply_broadcast"},
    "chat.postEphemeral": set(),
    "conversations.replies": {"include_all_metadata"},
    "conversations.history": {"include_all_metadata"},
    "views.publish": set(),
}

# The spec names user-token scopes for some methods; a bot token uses the bot scope.
STREAM_TEXT_LIMIT = 12_000  # markdown_text of the streaming methods (docs.slack.dev)

BOT_SCOPE = {"chat:write:bot": "chat:write", "chat:write:user": "chat:write",
             "files:write:user": "files:write"}


@dataclass(frozen=True)
class Violation:
    method: str
    problem: str

    def __str__(self) -> str:
        return f"{self.method}: {self.problem}"


@lru_cache(maxsize=1)
def _spec() -> dict:
    return json.loads(SPEC_PATH.read_text(encoding="utf-8"))


def _operation(method: str) -> dict | None:
    path = _spec()["paths"].get("/" + method)
    if not path:
        return None
    return next(iter(path.values()))


def known_method(method: str) -> bool:
    return method in DOCUMENTED_METHODS or _operation(method) is not None


def scopes_for(method: str) -> set[str]:
    """Bot scopes that allow `method` (any one of them suffices); empty = no scope needed."""
    if method in DOCUMENTED_METHODS:
        return set(DOCUMENTED_METHODS[method]["scopes"])
    op = _operation(method)
    if op is None:
        raise KeyError(method)
    scopes: set[str] = set()
    for requirement in op.get("security", []):
        for names in requirement.values():
            scopes.update(BOT_SCOPE.get(name, name) for name in names if name != "none")
    return scopes


def check_call(method: str, params: dict, *, has_token: bool) -> list[Violation]:
    """Problems with one call; an empty list means the call matches Slack's contract."""
    problems: list[Violation] = []
    if not has_token and "token" not in params:
        problems.append(Violation(method, "no token (Authorization header or token param)"))
    given = {name for name, value in params.items() if value is not None}
    given.discard("token")
    if method in DOCUMENTED_METHODS:
        required = DOCUMENTED_METHODS[method]["required"]
        known = required | DOCUMENTED_METHODS[method]["optional"]
    else:
        op = _operation(method)
        if op is None:
            return [Violation(method, "is not a Slack Web API method")]
        declared = [p for p in op.get("parameters", []) if p.get("in") != "body"]
        required = {p["name"] for p in declared if p.get("required")} - {"token"}
        known = {p["name"] for p in declared} | NEWER_PARAMS.get(method, set())
    for name in sorted(required - given):
        problems.append(Violation(method, f"required parameter {name!r} is missing"))
    for name in sorted(given - known):
        problems.append(Violation(method, f"unknown parameter {name!r}"))
    return problems
