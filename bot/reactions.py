"""`reaction_added` / `reaction_removed`: approvers react ✅ to approve an SOP as a training
example, and remove the reaction to retract it.

Slack re-delivers events it thinks we missed (X-Slack-Retry-Num) and several instances may
share one database, so each event is claimed once by its event_id. An approval's claim commits
in the same transaction as the example, so a crash in between loses neither: the re-delivered
event is processed again.
"""

from __future__ import annotations

import logging

from slack_bolt import App

from bot import approvals
from bot.runtime import BotContext

log = logging.getLogger(__name__)


def register(app: App, ctx: BotContext) -> None:
    for name, listener in (("reaction_added", on_reaction_added),
                           ("reaction_removed", on_reaction_removed)):
        app.event(name)(ctx.acknowledge_then(listener))


def _relevant(ctx: BotContext, event: dict) -> bool:
    """An approval emoji on a message in a watched channel; anything else is ignored."""
    name = (event.get("reaction") or "").split("::")[0]  # "white_check_mark::skin-tone-2"
    if name not in ctx.settings.sop_approval_emoji:
        return False
    item = event.get("item") or {}
    if item.get("type") != "message":
        log.info("ignoring :%s: on a %s item: only messages can be approved", name,
                 item.get("type"))
        return False
    return ctx.watched(item.get("channel"))


def _event_key(body: dict, event: dict) -> str:
    event_id = body.get("event_id")
    if event_id:
        return f"event:{event_id}"
    item = event.get("item") or {}
    return (f"event:{event.get('type')}:{item.get('channel')}:{item.get('ts')}:"
            f"{event.get('user')}:{event.get('event_ts')}")


def on_reaction_added(body: dict, *, ctx: BotContext) -> None:
    event = body["event"]
    if not _relevant(ctx, event):
        return
    user, item, key = event.get("user"), event["item"], _event_key(body, event)
    if not ctx.is_approver(user):
        if ctx.claim(key):
            approvals.ephemeral(ctx, item["channel"], user,
                                approvals.NOT_APPROVER.format(emoji=event.get("reaction")))
        return
    approvals.approve_message(ctx, channel=item["channel"], ts=item["ts"], approver=user,
                              claim_key=key)


def on_reaction_removed(body: dict, *, ctx: BotContext) -> None:
    event = body["event"]
    if not _relevant(ctx, event):
        return
    if not ctx.claim(_event_key(body, event)):
        return
    user, item = event.get("user"), event["item"]
    if not ctx.is_approver(user):
        return  # a non-approver's reaction never approved anything
    approvals.retract_message(ctx, channel=item["channel"], ts=item["ts"], actor=user)
