"""Drafting an SOP in a Slack thread: placeholder, streamed preview, final Block Kit draft.

Used by `/sop` and by the Regenerate button. All SOP logic is in `sop_pipeline.generation`;
this module only decides what Slack shows, and keeps Slack's limits (3,000 characters per
section, 50 blocks per message, one edit per SLACK_UPDATE_INTERVAL_SECONDS while streaming).
"""

from __future__ import annotations

import logging
import re
import threading
from dataclasses import dataclass
from typing import Any

from slack_sdk.errors import SlackApiError

from bot import blocks, render
from bot.runtime import BotContext
from sop_pipeline import sop_format
from sop_pipeline.generation import (
    GenerationResult,
    ReplyAt,
    fail_before_running,
    run_generation,
)
from sop_pipeline.models import Generation

log = logging.getLogger(__name__)

PLACEHOLDER = ":hourglass_flowing_sand: Drafting your SOP…"
STREAM_PLACEHOLDER = "_Drafting your SOP…_\n\n"
REVISING = "\n\n_Revising the draft to follow the house format…_\n\n"
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
        with self._lock:
            self.text += chunk
            if not self._due():
                return
            text = self.text
        self._send(text)

    def on_reset(self) -> None:
        with self._lock:
            self.text = ""

    def finish(self) -> None:
        """Called once the draft is done, before the final edit (nothing to close here)."""

    def _due(self) -> bool:
        now = self.ctx.monotonic()
        if self._last is not None and now - self._last < self.interval:
            return False
        self._last = now
        return True

    def _send(self, text: str) -> None:
        self._edit(blocks.progress_text(text))

    def _edit(self, text: str) -> None:
        try:
            self.ctx.client.chat_update(channel=self.channel, ts=self.ts, text=text)
            self.updates += 1
        except SlackApiError as exc:  # a missed preview is harmless; the final edit matters
            log.warning("preview update failed: %s", slack_error(exc))


class SlackStreamPreview(StreamingPreview):
    """The draft streamed the way Slack AI apps do (chat.startStream / appendStream /
    stopStream): the model's text is appended as it comes, at most once per interval, every
    piece rendered by `bot.render`. When Slack refuses an append (streaming switched off,
    stream expired), the rest of the preview falls back to `chat.update` on the same message.

    slack_sdk's `chat_stream` helper starts its stream lazily and flushes by buffer size; we
    need the message's ts before drafting starts (it is stored with the draft) and flushes by
    time, so the three methods are called directly."""

    def __init__(self, ctx: BotContext, channel: str, ts: str) -> None:
        super().__init__(ctx, channel, ts)
        self.sent = 0  # characters of `text` already appended
        self.streaming = True

    @classmethod
    def start(cls, ctx: BotContext, *, channel: str, thread_ts: str, requester: str,
              team_id: str | None) -> SlackStreamPreview | None:
        """Open the stream with the placeholder; None when Slack refuses streaming here."""
        if not team_id:
            return None
        try:
            response = ctx.client.chat_startStream(
                channel=channel, thread_ts=thread_ts, markdown_text=STREAM_PLACEHOLDER,
                recipient_user_id=requester, recipient_team_id=team_id)
        except SlackApiError as exc:
            log.info("streaming refused (%s); drafting with chat.update", slack_error(exc))
            return None
        return cls(ctx, channel, str(response["ts"]))

    def on_reset(self) -> None:
        with self._lock:
            self.text = ""
            self.sent = 0
            pending = self.streaming
        if pending:  # a repair round starts over: say so instead of appending twice
            self._append(REVISING)

    def _send(self, text: str) -> None:
        if not self.streaming:
            return super()._send(text)
        with self._lock:
            piece, self.sent = text[self.sent:], len(text)
        if piece:
            self._append(render.preview(piece))

    def _append(self, markdown: str) -> None:
        try:
            self.ctx.client.chat_appendStream(channel=self.channel, ts=self.ts,
                                              markdown_text=markdown)
            self.updates += 1
        except SlackApiError as exc:
            log.info("stream append refused (%s); previewing with chat.update",
                     slack_error(exc))
            self.streaming = False
            self._edit(blocks.progress_text(self.text))

    def finish(self) -> None:
        if not self.streaming:
            return
        self.streaming = False
        try:
            self.ctx.client.chat_stopStream(channel=self.channel, ts=self.ts)
        except SlackApiError as exc:  # the final chat.update replaces the message anyway
            log.info("could not stop the stream: %s", slack_error(exc))


def team_id(ctx: BotContext) -> str | None:
    """The workspace id streaming needs (recipient_team_id), asked once per process."""
    if "team_id" not in ctx.extra:
        try:
            ctx.extra["team_id"] = ctx.client.auth_test().get("team_id")
        except SlackApiError as exc:
            log.info("auth.test failed (%s); drafting without streaming", slack_error(exc))
            return None
    return ctx.extra["team_id"]


@dataclass
class DraftOutcome:
    reply_ts: str | None
    result: GenerationResult | None
    message: str | None = None


def draft_in_thread(
    ctx: BotContext, *, channel: str, thread_ts: str, row: Generation, requester: str,
) -> DraftOutcome:
    """Open a streamed reply in the thread (or post a placeholder where Slack refuses
    streaming), generate the stored request `row`, stream, and finish with the draft."""
    client = ctx.client
    assert row.id is not None
    try:
        preview: StreamingPreview | None = SlackStreamPreview.start(
            ctx, channel=channel, thread_ts=thread_ts, requester=requester,
            team_id=team_id(ctx))
        if preview is None:
            reply = client.chat_postMessage(channel=channel, thread_ts=thread_ts,
                                            text=PLACEHOLDER)
            preview = StreamingPreview(ctx, channel, reply["ts"])
    except SlackApiError as exc:
        fail_before_running(ctx.services, row.id, "Slack refused the reply that would show "
                            f"this draft ({slack_error(exc)}).")
        raise
    reply_ts = preview.ts
    try:
        result = run_generation(ctx.services, row.id, on_delta=preview.on_delta,
                                on_reset=preview.on_reset, reply=ReplyAt(thread_ts, reply_ts))
    except Exception:
        log.exception("generation %s crashed", row.id)
        text = (f":x: Something went wrong while drafting (draft #{row.id}). Try `/sop` "
                "again; if it keeps failing, ask an admin to check the bot's log.")
        preview.finish()
        client.chat_update(channel=channel, ts=reply_ts, text=text)
        return DraftOutcome(reply_ts, None, text)
    preview.finish()
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
                           text=f":x: I couldn't draft this SOP. {render.mrkdwn(reason)}")
        return
    structure = sop_format.render_structure(result.sop, ctx.services.template)
    meta: dict[str, Any] = {
        "findings": list(result.findings), "compliant": result.compliant, "model": result.model,
        "mode": result.mode, "draft_notice": result.draft_notice,
        "generation_id": result.generation_id,
    }
    fallback = blocks.plain(f"SOP draft: {render.mrkdwn(structure.get('title') or 'untitled')}"
                            " (DRAFT, review before use)")
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
                               filename=render.plain(filename), title=render.plain(title))
