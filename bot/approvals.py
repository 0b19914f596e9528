"""React-to-approve: find the SOP behind a Slack message, store it as a training example, and
tell the approver what happened. Shared by the ✅ reaction and the "Approve as example" button.

Business rules (format check, canonical text, duplicates, audit) live in
`sop_pipeline.examples.approve_sop`; this module only reads Slack (the message, its thread,
attached .txt/.md/.docx files) and answers in Slack.
"""

from __future__ import annotations

import logging
import tempfile
import urllib.request
from dataclasses import dataclass
from pathlib import Path

from slack_sdk.errors import SlackApiError

from bot import blocks
from bot.drafting import slack_error
from bot.runtime import BotContext
from sop_pipeline.examples import (
    ApprovalResult,
    ApprovalStatus,
    approve_sop,
    example_counts,
    prepare_sop,
    retract_example,
)
from sop_pipeline.generation import find_generation_by_message

log = logging.getLogger(__name__)

SOP_FILE_SUFFIXES = (".txt", ".md", ".docx")
MAX_FILE_BYTES = 5_000_000
CONFIRM_REACTION = "inbox_tray"
NOT_APPROVER = ("Only SOP approvers can add training examples, so your :{emoji}: was not "
                "recorded. Ask a QA admin to add you to SOP_APPROVERS if you should approve SOPs.")


class NotAnSop(Exception):
    """The message holds nothing we could approve; the text says why (for the approver)."""


@dataclass
class Candidate:
    """What an approval would store, and where to answer."""

    text: str
    channel: str
    slack_ts: str  # the message the example is keyed on
    reply_thread_ts: str  # where confirmations go
    prompt: str | None = None
    author: str | None = None
    generation_id: int | None = None


# --- finding the SOP -------------------------------------------------------------------------


def fetch_message(ctx: BotContext, channel: str, ts: str) -> dict | None:
    """A message by channel and ts: top-level via history, thread replies via replies."""
    history = ctx.client.conversations_history(channel=channel, latest=ts, oldest=ts,
                                               inclusive=True, limit=1)
    for message in history.get("messages", []):
        if message.get("ts") == ts:
            return message
    try:
        replies = ctx.client.conversations_replies(channel=channel, ts=ts, limit=200)
    except SlackApiError as exc:
        if slack_error(exc) == "thread_not_found":
            return None
        raise
    return next((m for m in replies.get("messages", []) if m.get("ts") == ts), None)


def candidate_for_generation(ctx: BotContext, channel: str, ts: str) -> Candidate | None:
    """The bot's own draft when `ts` is its reply (or the request it answered)."""
    with ctx.services.session() as session:
        row = find_generation_by_message(session, channel, ts)
    if row is None:
        return None
    if row.status != "completed" or not row.draft_text:
        raise NotAnSop("This draft did not finish, so there is nothing to approve. "
                       "Use Regenerate or `/sop` to draft it again.")
    return Candidate(
        text=row.draft_text, channel=channel, slack_ts=row.slack_ts or ts,
        reply_thread_ts=row.slack_thread_ts or row.slack_ts or ts, prompt=row.request,
        author=row.requester, generation_id=row.id,
    )


def candidate_for_message(ctx: BotContext, channel: str, ts: str) -> Candidate:
    """Any other message: its text or an attached SOP file; a correction posted in a draft's
    thread keeps the draft's original request as the prompt."""
    message = fetch_message(ctx, channel, ts)
    if message is None:
        raise NotAnSop("I can't find that message any more, so nothing was added.")
    if message.get("bot_id"):
        raise NotAnSop("That message is not an SOP draft, so nothing was added.")
    thread_ts = message.get("thread_ts") or ts
    prompt = None
    if thread_ts != ts:
        with ctx.services.session() as session:
            parent = find_generation_by_message(session, channel, thread_ts)
        prompt = parent.request if parent is not None else None
    text = sop_text_from_files(ctx, message.get("files") or []) or message.get("text") or ""
    if not text.strip():
        raise NotAnSop("That message has no SOP text or .txt/.md/.docx file to approve.")
    return Candidate(text=text, channel=channel, slack_ts=ts, reply_thread_ts=thread_ts,
                     prompt=prompt, author=message.get("user"))


def sop_text_from_files(ctx: BotContext, files: list[dict]) -> str | None:
    """The text of the first attached .txt/.md/.docx file, downloaded with the bot token."""
    for item in files:
        name = item.get("name") or item.get("title") or ""
        suffix = Path(name).suffix.lower()
        if suffix not in SOP_FILE_SUFFIXES:
            continue
        url = item.get("url_private_download") or item.get("url_private")
        if not url:
            continue
        data = download(ctx, url)
        return read_sop_bytes(name, data)
    return None


def download(ctx: BotContext, url: str) -> bytes:
    """Fetch a `url_private` file; Slack answers an HTML sign-in page if the token is wrong."""
    request = urllib.request.Request(url, headers={"Authorization": f"Bearer {ctx.bot_token}"})
    with urllib.request.urlopen(request, timeout=30) as response:  # noqa: S310 - Slack URL
        content_type = response.headers.get("Content-Type", "")
        data = response.read(MAX_FILE_BYTES + 1)
    if len(data) > MAX_FILE_BYTES:
        raise NotAnSop("That file is larger than 5 MB; attach the SOP as a smaller file.")
    if content_type.startswith("text/html"):
        raise NotAnSop("Slack did not let me download that file; check that I have the "
                       "files:read permission and am in the channel.")
    return data


def read_sop_bytes(name: str, data: bytes) -> str:
    """Slack file bytes → SOP text, with the same reader as the folder importer."""
    from sop_pipeline.importer import SopFileError, read_sop_file

    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / Path(name).name
        path.write_bytes(data)
        try:
            return read_sop_file(path)
        except SopFileError as exc:
            raise NotAnSop(str(exc)) from None


def find_candidate(ctx: BotContext, channel: str, ts: str) -> Candidate:
    return candidate_for_generation(ctx, channel, ts) or candidate_for_message(ctx, channel, ts)


# --- approving and telling people ------------------------------------------------------------


def approve(ctx: BotContext, candidate: Candidate, approver: str,
            claim_key: str | None = None) -> ApprovalResult | None:
    """Store the approval; None when `claim_key` was already handled (by any instance)."""
    services = ctx.services
    # Parsing and the pool counts happen outside the writing transaction: it holds the
    # database's write lock (on SQLite, every other writer waits for it).
    prepared = prepare_sop(candidate.text, services.template, services.settings)
    with services.session() as session:
        if claim_key is not None and not ctx.claim_in(session, claim_key):
            return None
        result = approve_sop(
            session, services.template, services.settings, text=candidate.text,
            prompt=candidate.prompt, source="slack", approver=approver,
            author=candidate.author, slack_channel=candidate.channel,
            slack_ts=candidate.slack_ts, generation_id=candidate.generation_id,
            prepared=prepared, with_counts=False,
        )
        session.commit()
    if result.status in (ApprovalStatus.APPROVED, ApprovalStatus.REAPPROVED):
        with services.session() as session:
            result.counts = example_counts(session, services.settings)
    return result


def ephemeral(ctx: BotContext, channel: str, user: str, text: str,
              thread_ts: str | None = None) -> None:
    try:
        ctx.client.chat_postEphemeral(channel=channel, user=user, text=text,
                                      thread_ts=thread_ts)
    except SlackApiError as exc:
        log.warning("ephemeral to %s failed: %s", user, slack_error(exc))


def announce(ctx: BotContext, candidate: Candidate, approver: str,
             result: ApprovalResult, *, reacted_ts: str) -> None:
    """One answer per approval: confirmation reaction + thread reply, or the findings."""
    client = ctx.client
    thread = candidate.reply_thread_ts
    if result.status in (ApprovalStatus.APPROVED, ApprovalStatus.REAPPROVED):
        try:
            client.reactions_add(channel=candidate.channel, timestamp=reacted_ts,
                                 name=CONFIRM_REACTION)
        except SlackApiError as exc:
            if slack_error(exc) != "already_reacted":
                log.warning("confirmation reaction failed: %s", slack_error(exc))
        client.chat_postMessage(channel=candidate.channel, thread_ts=thread,
                                text=blocks.escape(result.message))
    elif result.status == ApprovalStatus.NOT_COMPLIANT:
        intro = (f"<@{approver}> This SOP does not follow the house format, so it was not "
                 "added as a training example. Fix these and approve again:")
        body = blocks.findings_text(result.findings)
        client.chat_postMessage(channel=candidate.channel, thread_ts=thread,
                                text=f"{intro}\n{body}",
                                blocks=[blocks.section(intro)] + blocks.sections(body))
    else:  # duplicate: the thread already has its confirmation
        ephemeral(ctx, candidate.channel, approver, blocks.escape(result.message), thread)


def approve_message(ctx: BotContext, *, channel: str, ts: str, approver: str,
                    claim_key: str | None = None) -> None:
    """The whole ✅ path for one message (after the approver/channel checks). `claim_key`
    makes a re-delivered event answer once; it commits with the example itself."""
    try:
        candidate = find_candidate(ctx, channel, ts)
    except NotAnSop as exc:
        if claim_key is None or ctx.claim(claim_key):
            ephemeral(ctx, channel, approver, str(exc))
        return
    result = approve(ctx, candidate, approver, claim_key)
    if result is None:
        return
    log.info("approval by %s of %s/%s: %s", approver, channel, ts, result.status)
    announce(ctx, candidate, approver, result, reacted_ts=ts)


def other_approvals(ctx: BotContext, message: dict | None, actor: str) -> list[str]:
    """Approvers other than `actor` whose approval reaction is still on the message."""
    emoji = set(ctx.settings.sop_approval_emoji)
    users = {
        user for reaction in (message or {}).get("reactions", [])
        if reaction.get("name", "").split("::")[0] in emoji
        for user in reaction.get("users", []) if user != actor
    }
    return sorted(user for user in users if ctx.is_approver(user))


def retract_message(ctx: BotContext, *, channel: str, ts: str, actor: str) -> None:
    """Approval reaction removed: retract the example (kept, marked, audited), unless another
    approver's approval reaction is still on the message."""
    try:
        message = fetch_message(ctx, channel, ts)
    except SlackApiError as exc:
        log.warning("cannot read %s/%s before retracting: %s", channel, ts, slack_error(exc))
        message = None
    still = other_approvals(ctx, message, actor)
    if still:
        names = ", ".join(f"<@{u}>" for u in still)
        ephemeral(ctx, channel, actor, f"The SOP stays a training example: {names} still "
                                       "approve it. Nothing was retracted.")
        return
    with ctx.services.session() as session:
        row = find_generation_by_message(session, channel, ts)
        key_ts = row.slack_ts if row is not None and row.slack_ts else ts
        thread = row.slack_thread_ts if row is not None else None
        example = retract_example(session, actor=actor, slack_channel=channel, slack_ts=key_ts,
                                  reason="approval reaction removed in Slack")
        session.commit()
    if example is None:
        return
    thread = thread or (message or {}).get("thread_ts") or ts
    ctx.client.chat_postMessage(
        channel=channel, thread_ts=thread,
        text=(f"Training example #{example.id} was retracted by <@{actor}>. It stays in the "
              "audit log but is left out of every future training snapshot."),
    )
