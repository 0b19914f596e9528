"""React-to-approve: find the SOP behind a Slack message, store it as a training example, and
tell the approver what happened. Shared by the ✅ reaction and the "Approve as example" button.

Business rules (format check, canonical text, duplicates, audit) live in
`sop_pipeline.examples.approve_sop`; this module only reads Slack (the message, its thread,
attached .txt/.md/.docx files, through `bot.slack_files` so the token stays on Slack's file
host) and answers in Slack: quietly by default (a reaction and an ephemeral note), with the
owed answer recorded in the approval's transaction (`sop_pipeline.confirmations`).
"""

from __future__ import annotations

import logging
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from uuid import uuid4

from slack_sdk.errors import SlackApiError

from bot import blocks, slack_files
from bot.drafting import slack_error
from bot.runtime import BotContext
from sop_pipeline import confirmations
from sop_pipeline.examples import (
    ApprovalResult,
    ApprovalStatus,
    approve_sop,
    example_counts,
    get_example,
    prepare_sop,
    retract_example,
)
from sop_pipeline.generation import find_generation_by_message
from sop_pipeline.models import ApprovalConfirmation, Generation

log = logging.getLogger(__name__)

SOP_FILE_SUFFIXES = (".txt", ".md", ".docx")
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
    messages: list[dict] = history.get("messages", [])
    for message in messages:
        if message.get("ts") == ts:
            return message
    try:
        replies = ctx.client.conversations_replies(channel=channel, ts=ts, limit=200)
    except SlackApiError as exc:
        if slack_error(exc) == "thread_not_found":
            return None
        raise
    thread: list[dict] = replies.get("messages", [])
    return next((m for m in thread if m.get("ts") == ts), None)


def candidate_for_generation(row: Generation | None, channel: str, ts: str) -> Candidate | None:
    """The bot's own draft when `ts` is its reply (or the request it answered): `row`, from
    `find_generation_by_message`."""
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
        with ctx.services.read_session() as session:
            parent = find_generation_by_message(session, channel, thread_ts)
        prompt = parent.request if parent is not None else None
    text = sop_text_from_files(ctx, message.get("files") or []) or message.get("text") or ""
    if not text.strip():
        raise NotAnSop("That message has no SOP text or .txt/.md/.docx file to approve.")
    return Candidate(text=text, channel=channel, slack_ts=ts, reply_thread_ts=thread_ts,
                     prompt=prompt, author=message.get("user"))


def sop_text_from_files(ctx: BotContext, files: list[dict]) -> str | None:
    """The text of the first attached .txt/.md/.docx file. The bot token goes only to Slack's
    own file host (`bot.slack_files`); a remote file is refused or fetched without it
    (SOP_REMOTE_FILES); size and type are checked before downloading."""
    settings = ctx.settings
    for item in files:
        name = item.get("name") or item.get("title") or ""
        suffix = Path(name).suffix.lower()
        if suffix not in SOP_FILE_SUFFIXES:
            continue
        item = file_info(ctx, item)
        url = item.get("url_private_download") or item.get("url_private")
        if not url:
            continue
        try:
            slack_files.check_declared(item, settings.sop_max_file_bytes)
            remote = slack_files.is_remote(item, settings.slack_api_url)
            if remote and settings.sop_remote_files == "refuse":
                raise slack_files.FileRefused(
                    f"{name} is a remote file (stored outside Slack), so I did not download "
                    "it. Upload the SOP file to Slack itself, or paste its text.")
            data = download(ctx, url, with_token=not remote)
        except slack_files.FileRefused as exc:
            raise NotAnSop(str(exc)) from None
        return read_sop_bytes(name, data)
    return None


def file_info(ctx: BotContext, item: dict) -> dict:
    """The full file object when the message carries a partial one (no size or type)."""
    if item.get("id") and (item.get("file_access") == "check_file_info" or "size" not in item):
        try:
            return ctx.client.files_info(file=item["id"]).get("file") or item
        except SlackApiError as exc:
            raise NotAnSop(f"I can't read that file's details ({slack_error(exc)}); check "
                           "that I have the files:read permission.") from None
    return item


def download(ctx: BotContext, url: str, *, with_token: bool = True) -> bytes:
    """Fetch a file; Slack answers an HTML sign-in page if the token is wrong."""
    settings = ctx.settings
    data, content_type = slack_files.fetch(
        url, token=ctx.bot_token if with_token else None, slack_api_url=settings.slack_api_url,
        max_bytes=settings.sop_max_file_bytes,
        allow_anonymous=settings.sop_remote_files == "fetch")
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


def find_candidate(ctx: BotContext, channel: str, ts: str,
                   generation: Generation | None) -> Candidate:
    """`generation`: the draft behind the message, looked up by the caller."""
    return (candidate_for_generation(generation, channel, ts)
            or candidate_for_message(ctx, channel, ts))


# --- approving and telling people ------------------------------------------------------------


def approve(ctx: BotContext, candidate: Candidate, approver: str, claim_key: str | None = None,
            *, reacted_ts: str | None = None) -> ApprovalConfirmation | None:
    """Store the approval and the confirmation it owes, in one transaction. Returns that
    confirmation, or — when `claim_key` was handled before (by any instance) — the one still
    owed from then (a crash after the commit), or None when it was posted."""
    services = ctx.services
    # Parsing and the pool counts happen outside the writing transaction: it holds the
    # database's write lock (on SQLite, every other writer waits for it).
    prepared = prepare_sop(candidate.text, services.template, services.settings)
    key = claim_key or f"approval:{candidate.channel}:{candidate.slack_ts}:{approver}:{uuid4()}"
    with services.session() as session:
        if claim_key is not None and not ctx.claim_in(session, claim_key):
            owed_row = confirmations.owed(session, claim_key, ctx.services.clock())
            session.commit()  # the owed row is taken for this process
            return owed_row
        result = approve_sop(
            session, services.template, services.settings, text=candidate.text,
            prompt=candidate.prompt, source="slack", approver=approver,
            author=candidate.author, slack_channel=candidate.channel,
            slack_ts=candidate.slack_ts, generation_id=candidate.generation_id,
            prepared=prepared, with_counts=False,
        )
        row = confirmations.record(
            session, key=key, channel=candidate.channel, thread_ts=candidate.reply_thread_ts,
            reacted_ts=reacted_ts or candidate.slack_ts, approver=approver,
            status=result.status, example_id=result.example.id if result.example else None,
            findings_text=(blocks.findings_text(result.findings)
                           if result.status == ApprovalStatus.NOT_COMPLIANT else None),
        )
        session.commit()  # every column was set here (expire_on_commit=False): no re-read
        session.expunge(row)
    return row


def ephemeral(ctx: BotContext, channel: str, user: str, text: str,
              thread_ts: str | None = None, **extra: Any) -> None:
    try:
        ctx.client.chat_postEphemeral(channel=channel, user=user, text=text,
                                      thread_ts=thread_ts, **extra)
    except SlackApiError as exc:
        log.warning("ephemeral to %s failed: %s", user, slack_error(exc))


def _result(ctx: BotContext, row: ApprovalConfirmation) -> ApprovalResult:
    """The approval's outcome as the approver reads it (counts as of now)."""
    with ctx.services.read_session() as session:
        example = get_example(session, row.example_id) if row.example_id else None
        counts = (example_counts(session, ctx.settings)
                  if row.status in (ApprovalStatus.APPROVED, ApprovalStatus.REAPPROVED)
                  else None)
        if example is not None:
            session.expunge(example)
    return ApprovalResult(row.status, example, counts=counts)


def announce(ctx: BotContext, row: ApprovalConfirmation) -> None:
    """One answer per approval, quiet by default: a confirmation reaction on the approved
    message and a note only the approver sees (SOP_APPROVAL_PUBLIC_REPLY adds a thread reply);
    the format findings the same way. Then the confirmation is recorded as posted."""
    client, public = ctx.client, ctx.settings.sop_approval_public_reply
    if row.status in (ApprovalStatus.APPROVED, ApprovalStatus.REAPPROVED):
        # the reaction first: it needs nothing more from the database, the note needs counts
        try:
            client.reactions_add(channel=row.channel, timestamp=row.reacted_ts,
                                 name=CONFIRM_REACTION)
        except SlackApiError as exc:
            if slack_error(exc) != "already_reacted":
                log.warning("confirmation reaction failed: %s", slack_error(exc))
        text = blocks.escape(_result(ctx, row).message)
        if public:
            client.chat_postMessage(channel=row.channel, thread_ts=row.thread_ts, text=text)
        else:
            ephemeral(ctx, row.channel, row.approver, text, row.thread_ts)
    elif row.status == ApprovalStatus.NOT_COMPLIANT:
        intro = (f"<@{row.approver}> This SOP does not follow the house format, so it was not "
                 "added as a training example. Fix these and approve again:")
        body = row.findings_text or ""
        message: dict[str, Any] = {"text": f"{intro}\n{body}",
                   "blocks": [blocks.section(intro)] + blocks.sections(body)}
        if public:
            client.chat_postMessage(channel=row.channel, thread_ts=row.thread_ts, **message)
        else:
            ephemeral(ctx, row.channel, row.approver, thread_ts=row.thread_ts, **message)
    else:  # duplicate: the first approval was already confirmed
        ephemeral(ctx, row.channel, row.approver, blocks.escape(_result(ctx, row).message),
                  row.thread_ts)
    with ctx.services.session() as session:
        confirmations.mark_posted(session, row.key)
        session.commit()


def approve_message(ctx: BotContext, *, channel: str, ts: str, approver: str,
                    claim_key: str | None = None) -> None:
    """The whole ✅ path for one message (after the approver/channel checks). `claim_key`
    makes a re-delivered event answer once; it commits with the example and the owed
    confirmation, so a redelivery after a crash posts a confirmation that never went out.
    A redelivery arriving while this process still handles the first waits for it."""
    if claim_key is None:
        return _approve_message(ctx, channel=channel, ts=ts, approver=approver)
    with ctx.in_hand.handle(claim_key):
        _approve_message(ctx, channel=channel, ts=ts, approver=approver, claim_key=claim_key)


def _approve_message(ctx: BotContext, *, channel: str, ts: str, approver: str,
                     claim_key: str | None = None) -> None:
    answered: bool | None = None
    with ctx.services.read_session() as session:  # one read for both questions
        if claim_key is not None:
            answered = confirmations.posted(session, claim_key)
        generation = find_generation_by_message(session, channel, ts) \
            if answered is None else None
    if claim_key is not None:
        if answered:  # Slack's redelivery of an approval already confirmed
            return
        if answered is False:  # handled before, answer lost: answer now
            with ctx.services.session() as session:
                owed_row = confirmations.owed(session, claim_key, ctx.services.clock())
                session.commit()  # the owed row is taken for this process
            if owed_row is not None:
                announce(ctx, owed_row)
            return
    try:
        candidate = find_candidate(ctx, channel, ts, generation)
    except NotAnSop as exc:
        if claim_key is None or ctx.claim(claim_key):
            ephemeral(ctx, channel, approver, str(exc))
        return
    row = approve(ctx, candidate, approver, claim_key, reacted_ts=ts)
    if row is None:
        return
    log.info("approval of %s/%s: %s", channel, ts, row.status)
    announce(ctx, row)


def post_owed_confirmations(ctx: BotContext) -> int:
    """At start-up (and with the recovery sweep): confirmations a crash left unposted."""
    with ctx.services.session() as session:
        rows = confirmations.unposted(session, ctx.services.clock())
        session.commit()  # taken for this process: a racing redelivery leaves them alone
    for row in rows:
        try:
            announce(ctx, row)
        except SlackApiError as exc:
            log.warning("could not post an owed confirmation: %s", slack_error(exc))
    return len(rows)


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
    approver's approval reaction is still on the message. Told as quietly as approvals: the
    confirmation reaction goes and the actor gets a note (a thread reply only when
    SOP_APPROVAL_PUBLIC_REPLY asks for it)."""
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
    try:
        ctx.client.reactions_remove(channel=channel, timestamp=ts, name=CONFIRM_REACTION)
    except SlackApiError as exc:
        if slack_error(exc) != "no_reaction":
            log.warning("removing the confirmation reaction failed: %s", slack_error(exc))
    text = (f"Training example #{example.id} was retracted by <@{actor}>. It stays in the "
            "audit log but is left out of every future training snapshot.")
    if ctx.settings.sop_approval_public_reply:
        ctx.client.chat_postMessage(channel=channel, thread_ts=thread, text=text)
    else:
        ephemeral(ctx, channel, actor, text, thread)
