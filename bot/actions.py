"""Buttons under a draft: Approve as example, Regenerate, Download .docx; and the admins'
model buttons under the status (/sop-status, App Home): Roll back, Use base model.

The Approve button runs exactly the ✅ path (approver and channel checks, one example, one
reply). Each click is claimed once (Slack can deliver an interaction twice), and acts only
from the draft's own message: its channel and thread (a payload naming another channel's draft
id is refused). Regenerate and .docx are for anyone in that conversation, Approve for
approvers in a watched channel.
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
from sop_pipeline.generation import RequestRejected, start_generation
from sop_pipeline.models import Generation
from sop_pipeline.services import DatabaseBusy

log = logging.getLogger(__name__)


def register(app: App, ctx: BotContext) -> None:
    for action_id, listener in ((blocks.APPROVE_ACTION, on_approve),
                                (blocks.DOCX_ACTION, on_docx)):
        app.action(action_id)(ctx.acknowledge_then(listener))
    app.action(blocks.REGENERATE_ACTION)(ctx.acknowledge_then(on_regenerate, drafts=True))
    for action_id, work in ((blocks.MODEL_ROLLBACK_ACTION, on_model_rollback),
                            (blocks.MODEL_BASE_ACTION, on_model_activate_base)):
        app.action(action_id)(_admin_listener(ctx, work))


WRONG_PLACE = ("That button belongs to a draft in another conversation, so I did nothing. Use "
               "the buttons under the draft itself.")


def _in_place(body: dict, action: dict, row: Generation) -> bool:
    """The click came from the draft's own message: its channel, its thread and (when Slack
    says) its message ts. A forged or replayed payload naming another channel's draft id
    acts nowhere."""
    _, channel, thread = _click(body, action)
    message_ts = ((body.get("container") or {}).get("message_ts")
                  or (body.get("message") or {}).get("ts"))
    if not row.slack_channel or channel != row.slack_channel:
        return False
    if thread != (row.slack_thread_ts or row.slack_ts):
        return False
    return not message_ts or not row.slack_ts or message_ts == row.slack_ts


def _click(body: dict, action: dict) -> tuple[str, str, str | None]:
    """(user, channel, thread_ts of the clicked message)."""
    container = body.get("container") or {}
    message = body.get("message") or {}
    channel = (body.get("channel") or {}).get("id") or container.get("channel_id") or ""
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
    with ctx.services.read_session() as session:  # a read: no write lock on SQLite
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
    elif not _in_place(body, action, row):
        refusal = WRONG_PLACE
    elif not ctx.watched(row.slack_channel):
        refusal = "Approvals are not collected in this channel."
    elif not ctx.is_approver(user):
        refusal = approvals.NOT_APPROVER.format(emoji="white_check_mark")
    if refusal is not None:
        if _claim(ctx, body, action):
            approvals.ephemeral(ctx, channel, user, refusal, thread)
        return
    assert row is not None and row.slack_channel and row.slack_ts  # else refused above
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
    if row is not None and not _in_place(body, action, row):
        approvals.ephemeral(ctx, channel, user, WRONG_PLACE, thread)
        return None
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
    thread_ts = row.slack_thread_ts or thread
    assert row.slack_channel and thread_ts  # _claimed_click checked the draft is in place
    try:
        again = start_generation(ctx.services, row.request, user, slack_channel=row.slack_channel)
        draft_in_thread(ctx, channel=row.slack_channel, thread_ts=thread_ts, row=again,
                        requester=user)
    except (RequestRejected, DatabaseBusy) as exc:  # limits changed; no draft turn free
        approvals.ephemeral(ctx, channel, user, str(exc), thread)
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
    sop = sop_format.parse(row.draft_text or "", template)  # usable: draft_text is set
    data = to_docx(sop, template, model=row.model,
                   generated_at=row.completed_at or ctx.services.clock())
    title = sop.title or "SOP draft"
    try:
        ctx.client.files_upload_v2(
            channel=row.slack_channel, thread_ts=row.slack_thread_ts or thread,
            file=data, filename=f"{slug(title)}.docx", title=f"{title} (DRAFT)",
            initial_comment=f"<@{user}> here is the draft as .docx. It is a DRAFT until "
                            "approved under your SOP process.",
        )
    except SlackApiError as exc:
        approvals.ephemeral(ctx, channel, user,
                            f"I couldn't upload the .docx ({slack_error(exc)}). Check that I "
                            "have the files:write permission, then try again.", thread)


# --- admin model switches: Roll back / Use base model (status message and App Home) ----------

NOT_ADMIN = ("Only SOP Bot admins can switch models. Ask your QA lead to add you to "
             "SOP_ADMINS if you need it.")


def _admin_listener(ctx: BotContext, work: Callable[..., None]) -> Callable[..., None]:
    """Acknowledge at once, then switch in the worker pool; `respond` answers on the status
    message the button sits under (absent for App Home)."""

    def listener(ack: Callable[..., None], body: dict, respond: Callable[..., None]) -> None:
        ack()
        ctx.defer(work, body, respond, ctx=ctx)

    listener.__name__ = getattr(work, "__name__", "listener")
    return listener


def on_model_rollback(body: dict, respond: Callable[..., None], *, ctx: BotContext) -> None:
    _switch_model(body, respond, ctx=ctx, ref=None)


def on_model_activate_base(body: dict, respond: Callable[..., None], *, ctx: BotContext
                           ) -> None:
    from sop_pipeline.model_registry import BASE_ID

    _switch_model(body, respond, ctx=ctx, ref=BASE_ID)


def _switch_model(body: dict, respond: Callable[..., None], *, ctx: BotContext,
                  ref: str | None) -> None:
    """Check the clicker is an admin and the status they saw is still current, switch
    (audited, announced in the admin channel), then show them the new status."""
    from sop_pipeline import model_registry

    action = body["actions"][0]
    if not _claim(ctx, body, action):
        return
    user = body["user"]["id"]
    if not ctx.is_admin(user):
        _answer_admin(ctx, body, respond, user, f":no_entry: {NOT_ADMIN}", status=False)
        return
    with ctx.services.session() as session:
        current = model_registry.active_version(session)
        now_id = str(current.id) if current is not None else "base"
        now_label = model_registry.label(current, ctx.settings.sop_base_model)
    if str(action.get("value") or "") != now_id:
        _answer_admin(ctx, body, respond, user,
                      f":information_source: The active model changed since this status was "
                      f"shown (it is now {blocks.escape(now_label)}); nothing was switched. "
                      "Check the status below and try again if still needed.")
        return
    try:
        result = model_registry.switch_and_announce(
            ctx.services, ref, actor=user,
            reason="from Slack" if ref is None else "switched to the base model from Slack")
    except model_registry.ModelRegistryError as exc:
        _answer_admin(ctx, body, respond, user, f":information_source: {exc}")
        return
    channel = ctx.settings.sop_admin_channel
    where = f" Announced in <#{channel}>." if channel else ""
    text = (f":rewind: Rolled back: drafts now use {result.new} (was {result.old}).{where}"
            if result.action == "rollback" else
            f":arrows_counterclockwise: Drafts now use the {result.new} (was {result.old})."
            f"{where}" if result.changed else f":information_source: {result.new} is already "
            "active; nothing was switched.")
    _answer_admin(ctx, body, respond, user, text)


def _answer_admin(ctx: BotContext, body: dict, respond: Callable[..., None], user: str,
                  notice: str, *, status: bool = True) -> None:
    """Answer the clicker where the button was: App Home is published again with the notice
    on top; a /sop-status message is replaced by the notice and the fresh status."""
    from bot.commands import status_dict
    from bot.home import publish_home

    if (body.get("container") or {}).get("type") == "view":
        publish_home(ctx, user, notice=notice)
        return
    report_blocks = blocks.status_blocks(status_dict(ctx)) if status else []
    try:
        respond(text=notice, response_type="ephemeral", replace_original=status,
                blocks=[blocks.section(notice), *report_blocks][: blocks.MAX_BLOCKS])
    except Exception:  # noqa: BLE001 - response_url expired: tell them another way
        log.warning("could not answer on the status message", exc_info=True)
        channel = (body.get("channel") or {}).get("id")
        if channel:
            approvals.ephemeral(ctx, channel, user, notice)
