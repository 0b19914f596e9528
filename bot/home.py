"""App Home: the status dashboard for admins, a how-to for everyone else."""

from __future__ import annotations

import logging

from slack_bolt import App
from slack_sdk.errors import SlackApiError

from bot import blocks
from bot.drafting import slack_error
from bot.runtime import BotContext

log = logging.getLogger(__name__)


def register(app: App, ctx: BotContext) -> None:
    app.event("app_home_opened")(ctx.acknowledge_then(on_home_opened))


def on_home_opened(body: dict, *, ctx: BotContext) -> None:
    event = body.get("event") or {}
    if event.get("tab", "home") != "home":
        return
    user = event.get("user")
    if not user:
        return
    publish_home(ctx, user)


def publish_home(ctx: BotContext, user: str, *, notice: str | None = None) -> None:
    """Publish App Home for `user`; `notice` (the outcome of a button they clicked) on top."""
    is_admin = ctx.is_admin(user)
    report = None
    if is_admin:
        from bot.commands import status_dict

        report = status_dict(ctx)
    try:
        ctx.client.views_publish(user_id=user, view=blocks.home_view(report, is_admin=is_admin,
                                                                    notice=notice))
    except SlackApiError as exc:
        log.warning("App Home for %s not published: %s", user, slack_error(exc))
