"""The Slack app manifest creates a working app in one paste, with exactly the scopes used."""

from __future__ import annotations

import inspect
import re
from functools import cache
from pathlib import Path

import yaml
from slack_sdk import WebClient

from tests.fakes import slack_contract

ROOT = Path(__file__).resolve().parents[1]
MANIFEST = yaml.safe_load((ROOT / "manifest.yaml").read_text(encoding="utf-8"))
BOT_SOURCES = sorted((ROOT / "bot").glob("*.py"))

# Scopes needed for things other than Web API calls.
EVENT_SCOPES = {"reaction_added": "reactions:read", "reaction_removed": "reactions:read",
                "app_home_opened": None}


def _source() -> str:
    return "\n".join(path.read_text(encoding="utf-8") for path in BOT_SOURCES)


@cache
def _api_methods_of(client_method: str) -> frozenset[str]:
    """Slack API methods a WebClient method calls (following helpers like files_upload_v2)."""
    source = inspect.getsource(getattr(WebClient, client_method))
    found = set(re.findall(r'api_call\(\s*"([\w.]+)"', source))
    for helper in set(re.findall(r"self\.(\w+)\(", source)):
        if helper != client_method and "_" in helper and hasattr(WebClient, helper) \
                and not helper.startswith("_"):
            found |= _api_methods_of(helper)
    return frozenset(found)


def used_api_methods() -> set[str]:
    names = set(re.findall(r"\.([a-z]+_[A-Za-z0-9_]+)\(", _source()))
    methods: set[str] = set()
    for name in names:
        if hasattr(WebClient, name) and not hasattr(object, name):
            methods |= _api_methods_of(name)
    return methods


def manifest_scopes() -> set[str]:
    return set(MANIFEST["oauth_config"]["scopes"]["bot"])


def test_the_bot_calls_the_web_api_methods_we_expect() -> None:
    assert used_api_methods() == {
        "chat.postMessage", "chat.update", "chat.postEphemeral", "conversations.history",
        "conversations.replies", "reactions.add", "reactions.remove", "views.publish",
        "usergroups.users.list",
        "files.getUploadURLExternal", "files.completeUploadExternal", "files.info",
        # drafts stream as Slack AI apps do (auth.test: the team id streaming needs)
        "chat.startStream", "chat.appendStream", "chat.stopStream", "auth.test",
    }


def test_every_method_the_bot_calls_is_covered_by_a_manifest_scope() -> None:
    scopes = manifest_scopes()
    for method in used_api_methods():
        assert slack_contract.known_method(method), method
        needed = slack_contract.scopes_for(method)
        assert not needed or needed & scopes, f"{method} needs one of {sorted(needed)}"


def test_the_manifest_asks_for_no_scope_the_code_does_not_use() -> None:
    justified: set[str] = set()
    for method in used_api_methods():
        justified |= slack_contract.scopes_for(method) & manifest_scopes()
    events = MANIFEST["settings"]["event_subscriptions"]["bot_events"]
    justified |= {EVENT_SCOPES[e] for e in events if EVENT_SCOPES[e]}
    if MANIFEST["features"].get("slash_commands"):
        justified.add("commands")
    if "url_private" in _source():
        justified.add("files:read")  # downloading attached SOP files
    assert manifest_scopes() == justified


def test_manifest_declares_commands_events_interactivity_home_and_socket_mode() -> None:
    commands = {c["command"] for c in MANIFEST["features"]["slash_commands"]}
    assert commands == {"/sop", "/sop-retrain", "/sop-status"}
    assert set(MANIFEST["settings"]["event_subscriptions"]["bot_events"]) == set(EVENT_SCOPES)
    assert MANIFEST["settings"]["interactivity"]["is_enabled"] is True
    assert MANIFEST["features"]["app_home"]["home_tab_enabled"] is True
    assert MANIFEST["settings"]["socket_mode_enabled"] is True


def test_every_command_the_manifest_declares_has_a_handler() -> None:
    source = _source()
    for command in MANIFEST["features"]["slash_commands"]:
        assert f'app.command("{command["command"]}")' in source


def test_procfile_migrates_in_the_release_phase_and_runs_the_bot() -> None:
    assert (ROOT / "Procfile").read_text().splitlines() == [
        "release: sop-bot db upgrade",  # before the new release's processes start
        "web: sop-bot run",
    ]
