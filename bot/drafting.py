"""Drafting an SOP in a Slack thread: placeholder, streamed preview, final Block Kit draft.

Used by `/sop` and by the Regenerate button. All SOP logic is in `sop_pipeline.generation`;
this module only decides what Slack shows, and keeps Slack's limits (3,000 characters per
section, 50 blocks per message, one edit per SLACK_UPDATE_INTERVAL_SECONDS while streaming).
"""

from __future__ import annotations

import logging
import re
import threading
from collections.abc import Callable
from dataclasses import dataclass

from slack_sdk.errors import SlackApiError

from bot import blocks
from bot.runtime import BotContext
from sop_pipeline import sop_format
from sop_pipeline.generation import (
    GenerationResult,
    RequestRejected,
    run_generation,
    start_generation,
)

log = logging.getLogger(__name__)

PLACEHOLDER = ":hourglass_flowing_sand: Drafting your SOP…"
INVITE_HINT = ("I'm not in this channel yet. Invite me with `/invite @SOP Bot`, then run "
               "your command again.")
NO_CHANNEL_HINT = ("I can't post in this conversation. Run `/sop` in a channel I'm in "
                   "(invite me with `/invite @SOP Bot`).")


def slack_error(exc: SlackApiError) -> str:
    return str(exc.response.get("error") or "unknown_error")


def channel_problem(exc: SlackApiError) -> str | None:
    """A sentence for errors that mean "I can't post there", else None."""
    error = slack_error(exc)
    if error in ("not_in_channel", "is_archived", "restricted_action"):
        return INVITE_HINT
    if error in ("channel_not_found", "method_not_supported_for_channel_type"):
        return NO_CHANNEL_HINT
    return None


class StreamingPreview:
    """Edits the placeholder while text streams in, at most once per `interval` seconds."""

    def __init__(self, ctx: BotContext, channel: str, ts: str) -> None:
        self.ctx = ctx
        self.channel = channel
        self.ts = ts
        self.interval = ctx.settings.slack_update_interval_seconds
        self.text = ""
        self.updates = 0
        self._last: float | None = None
        self._lock = threading.Lock()

    def on_delta(self, chunk: str) -> None:
        self.ctx.acks_first.checkpoint()  # one streamed chunk is a natural place to give way
        with self._lock:
            self.text += chunk
            now = self.ctx.monotonic()
            if self._last is not None and now - self._last < self.interval:
                return
            self._last = now
            text = self.text
        self._edit(blocks.progress_text(text))

    def on_reset(self) -> None:
        with self._lock:
            self.text = ""

    def _edit(self, text: str) -> None:
        try:
            self.ctx.client.chat_update(channel=self.channel, ts=self.ts, text=text)
            self.updates += 1
        except SlackApiError as exc:  # a missed preview is harmless; the final edit matters
            log.warning("preview update failed: %s", slack_error(exc))


@dataclass
class DraftOutcome:
    reply_ts: str | None
    result: GenerationResult | None
    message: str | None = None


def draft_in_thread(
    ctx: BotContext, *, channel: str, thread_ts: str, request: str, requester: str,
    on_request: Callable[[], None] | None = None,
) -> DraftOutcome:
    """Post a placeholder in the thread, generate, stream, and finish with the draft.
    `on_request` is called when the provider request is about to be sent."""
    client = ctx.client
    reply = client.chat_postMessage(channel=channel, thread_ts=thread_ts, text=PLACEHOLDER)
    reply_ts = reply["ts"]
    try:
        row = start_generation(ctx.services, request, requester, slack_channel=channel,
                               slack_thread_ts=thread_ts, slack_ts=reply_ts, claim=True)
    except RequestRejected as exc:
        client.chat_update(channel=channel, ts=reply_ts, text=str(exc))
        return DraftOutcome(reply_ts, None, str(exc))
    except Exception:
        log.exception("could not store the request for a draft")
        text = (":x: I couldn't save this request, so no draft was started. Try `/sop` again; "
                "if it keeps failing, ask an admin to check the bot's log.")
        client.chat_update(channel=channel, ts=reply_ts, text=text)
        return DraftOutcome(reply_ts, None, text)
    assert row.id is not None
    preview = StreamingPreview(ctx, channel, reply_ts)
    try:
        result = run_generation(ctx.services, row.id, on_delta=preview.on_delta,
                                on_reset=preview.on_reset, claimed=row, on_request=on_request)
    except Exception:
        log.exception("generation %s crashed", row.id)
        text = (f":x: Something went wrong while drafting (draft #{row.id}). Try `/sop` "
                "again; if it keeps failing, ask an admin to check the bot's log.")
        client.chat_update(channel=channel, ts=reply_ts, text=text)
        return DraftOutcome(reply_ts, None, text)
    publish_result(ctx, channel=channel, thread_ts=thread_ts, reply_ts=reply_ts, result=result)
    return DraftOutcome(reply_ts, result)


def publish_result(
    ctx: BotContext, *, channel: str, thread_ts: str, reply_ts: str, result: GenerationResult,
) -> None:
    """Replace the placeholder with the finished draft (or a sentence saying what failed)."""
    client = ctx.client
    if result.status == "streaming":
        client.chat_update(channel=channel, ts=reply_ts,
                           text="This draft is already being written by another worker.")
        return
    if not result.ok or result.sop is None:
        reason = result.error or "The model returned nothing usable."
        client.chat_update(channel=channel, ts=reply_ts,
                           text=f":x: I couldn't draft this SOP. {reason}")
        return
    structure = sop_format.render_structure(result.sop, ctx.services.template)
    meta = {
        "findings": list(result.findings), "compliant": result.compliant, "model": result.model,
        "mode": result.mode, "draft_notice": result.draft_notice,
        "generation_id": result.generation_id,
    }
    fallback = blocks.plain(f"SOP draft: {structure.get('title') or 'untitled'} "
                            "(DRAFT, review before use)")
    messages = blocks.draft_messages(structure, **meta)
    if len(messages) <= blocks.MAX_DRAFT_MESSAGES:
        try:
            client.chat_update(channel=channel, ts=reply_ts, text=fallback, blocks=messages[0])
            for extra in messages[1:]:
                client.chat_postMessage(channel=channel, thread_ts=thread_ts, text=fallback,
                                        blocks=extra)
            return
        except SlackApiError as exc:
            if slack_error(exc) not in ("msg_too_long", "invalid_blocks"):
                raise
            log.info("draft %s too long for messages (%s); attaching it as a file",
                     result.generation_id, slack_error(exc))
    client.chat_update(channel=channel, ts=reply_ts, text=fallback,
                       blocks=blocks.draft_file_summary(structure, **meta))
    upload_text_file(ctx, channel=channel, thread_ts=thread_ts,
                     text=result.markdown or result.text,
                     filename=f"{slug(structure.get('title'))}.md",
                     title=structure.get("title") or "SOP draft")


def slug(title: str | None) -> str:
    cleaned = re.sub(r"[^A-Za-z0-9]+", "-", title or "").strip("-").lower()
    return (cleaned[:60].rstrip("-") or "sop") + "-draft"


def upload_text_file(
    ctx: BotContext, *, channel: str, thread_ts: str, text: str, filename: str, title: str,
) -> None:
    ctx.client.files_upload_v2(channel=channel, thread_ts=thread_ts, content=text,
                               filename=filename, title=title)
