"""Buttons under a draft: Approve as example, Regenerate, Download .docx.

The Approve button runs exactly the ✅ path (approver and channel checks, one example, one
reply). Each click is claimed once (Slack can deliver an interaction twice).
"""

from __future__ import annotations

import logging
from collections.abc import Callable

from slack_bolt import App
from slack_sdk.errors import SlackApiError

from bot import approvals, blocks
from bot.drafting import draft_in_thread, slack_error, slug
from bot.runtime import BotContext
from sop_pipeline import sop_format
from sop_pipeline.models import Generation

log = logging.getLogger(__name__)


def register(app: App, ctx: BotContext) -> None:
    for action_id, listener in ((blocks.APPROVE_ACTION, on_approve),
                                (blocks.REGENERATE_ACTION, on_regenerate),
                                (blocks.DOCX_ACTION, on_docx)):
        app.action(action_id)(ctx.acknowledge_then(listener))


def _click(body: dict, action: dict) -> tuple[str, str, str | None]:
    """(user, channel, thread_ts of the clicked message)."""
    container = body.get("container") or {}
    message = body.get("message") or {}
    channel = (body.get("channel") or {}).get("id") or container.get("channel_id")
    thread = message.get("thread_ts") or container.get("thread_ts") or message.get("ts")
    return body["user"]["id"], channel, thread


def _key(body: dict, action: dict) -> str:
    return (f"action:{action.get('action_id')}:{action.get('value')}:"
            f"{body['user']['id']}:{action.get('action_ts')}")


def _claim(ctx: BotContext, body: dict, action: dict) -> bool:
    return ctx.claim(_key(body, action))


def _generation(ctx: BotContext, action: dict) -> Generation | None:
    try:
        generation_id = int(action.get("value") or "")
    except ValueError:
        return None
    with ctx.services.session() as session:
        return session.get(Generation, generation_id)


def on_approve(body: dict, *, ctx: BotContext) -> None:
    """Same checks and outcome as the ✅ reaction. The click's claim commits with the example
    (as for reactions), so a crash in between loses no approval on Slack's re-delivery."""
    action = body["actions"][0]
    user, channel, thread = _click(body, action)
    row = _generation(ctx, action)
    refusal = None
    if row is None or not row.slack_channel or not row.slack_ts:
        refusal = "I can't find that draft any more."
    elif not ctx.watched(row.slack_channel):
        refusal = "Approvals are not collected in this channel."
    elif not ctx.is_approver(user):
        refusal = approvals.NOT_APPROVER.format(emoji="white_check_mark")
    if refusal is not None:
        if _claim(ctx, body, action):
            approvals.ephemeral(ctx, channel, user, refusal, thread)
        return
    approvals.approve_message(ctx, channel=row.slack_channel, ts=row.slack_ts, approver=user,
                              claim_key=_key(body, action))


def _claimed_click(
    ctx: BotContext, body: dict, action: dict, usable: Callable[[Generation], bool],
    refusal: str,
) -> tuple[str, str, str | None, Generation] | None:
    """Claim the click once; (user, channel, thread, draft) when the draft is usable, else
    None after telling the clicker `refusal`."""
    if not _claim(ctx, body, action):
        return None
    user, channel, thread = _click(body, action)
    row = _generation(ctx, action)
    if row is None or not usable(row):
        approvals.ephemeral(ctx, channel, user, refusal, thread)
        return None
    return user, channel, thread, row


def on_regenerate(body: dict, *, ctx: BotContext) -> None:
    action = body["actions"][0]
    click = _claimed_click(ctx, body, action, lambda row: True,
                           "I can't find that draft any more.")
    if click is None:
        return
    user, channel, thread, row = click
    try:
        draft_in_thread(ctx, channel=row.slack_channel or channel,
                        thread_ts=row.slack_thread_ts or thread, request=row.request,
                        requester=user)
    except SlackApiError as exc:
        approvals.ephemeral(ctx, channel, user,
                            f"I couldn't post a new draft ({slack_error(exc)}). Try again.")


def on_docx(body: dict, *, ctx: BotContext) -> None:
    action = body["actions"][0]
    click = _claimed_click(
        ctx, body, action, lambda row: row.status == "completed" and bool(row.draft_text),
        "That draft did not finish, so there is no .docx to download.")
    if click is None:
        return
    user, channel, thread, row = click
    from sop_pipeline.generation import to_docx

    template = ctx.services.template
    sop = sop_format.parse(row.draft_text, template)
    data = to_docx(sop, template, model=row.model,
                   generated_at=row.completed_at or ctx.services.clock())
    title = sop.title or "SOP draft"
    try:
        ctx.client.files_upload_v2(
            channel=row.slack_channel or channel, thread_ts=row.slack_thread_ts or thread,
            file=data, filename=f"{slug(title)}.docx", title=f"{title} (DRAFT)",
            initial_comment=f"<@{user}> here is the draft as .docx. It is a DRAFT until "
                            "approved under your SOP process.",
        )
    except SlackApiError as exc:
        approvals.ephemeral(ctx, channel, user,
                            f"I couldn't upload the .docx ({slack_error(exc)}). Check that I "
                            "have the files:write permission, then try again.", thread)
