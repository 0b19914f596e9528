"""Slash commands: `/sop <request>` (everyone), `/sop-retrain` and `/sop-status` (admins).

Every command is acknowledged in the request's own thread (Slack's 3-second rule; bad input and
refusals come back as the ephemeral answer itself); the work then runs in the worker pool.
Slash commands cannot be used inside threads, so `/sop` posts a parent message in the channel
and drafts in its thread.
"""

from __future__ import annotations

import functools
import logging
from collections.abc import Callable

from slack_bolt import Ack, App, Respond
from slack_sdk.errors import SlackApiError

from bot import blocks
from bot.drafting import channel_problem, draft_in_thread, slack_error
from bot.runtime import BotContext
from sop_pipeline.generation import RequestRejected, validate_request

log = logging.getLogger(__name__)

USAGE = ("Tell me which SOP to draft, for example: "
         "`/sop Write an SOP for cleaning the tablet press`")
ADMIN_ONLY = ("Only SOP Bot admins can use {command}. Ask your QA lead to add you to "
              "SOP_ADMINS if you need it.")


def register(app: App, ctx: BotContext) -> None:
    app.command("/sop")(functools.partial(on_sop, ctx=ctx))
    app.command("/sop-retrain")(
        functools.partial(on_admin_command, handler=handle_retrain, ctx=ctx))
    app.command("/sop-status")(functools.partial(on_admin_command, handler=handle_status, ctx=ctx))


def _ephemeral(respond: Respond, text: str, **extra: object) -> None:
    """Reply only to the person who typed the command (via response_url)."""
    try:
        respond(text=text, response_type="ephemeral", replace_original=False, **extra)
    except Exception:  # noqa: BLE001 - response_url expired or unreachable: nothing else to do
        log.warning("could not answer via response_url", exc_info=True)


def _sop_request(command: dict, ctx: BotContext) -> tuple[str | None, str | None]:
    """(request, None) when `/sop`'s text can be drafted, else (None, what to tell the user)."""
    request = (command.get("text") or "").strip()
    if not request:
        return None, USAGE
    try:
        return validate_request(request, ctx.settings.sop_max_request_chars), None
    except RequestRejected as exc:
        return None, str(exc)


def on_sop(ack: Ack, command: dict, respond: Respond, *, ctx: BotContext) -> None:
    """Answer `/sop` at once (a usage hint or why a request is refused), then draft."""
    request, problem = _sop_request(command, ctx)
    if request is None:
        ack(text=problem, response_type="ephemeral")
        return
    ack()
    started = ctx.drafts_first.starting()  # approvals step aside until its request is out
    try:
        ctx.defer(handle_sop, command, request, respond, ctx=ctx, started=started)
    except BaseException:
        started()
        raise


def handle_sop(command: dict, request: str, respond: Respond, *, ctx: BotContext,
               started: Callable[[], None] | None = None) -> None:
    """`/sop <request>`: parent message in the channel, draft in its thread. `started()` is
    called once the provider request is about to go out, or when drafting ends before that."""
    try:
        _post_and_draft(command, request, respond, ctx, started)
    finally:
        if started is not None:
            started()


def _post_and_draft(command: dict, request: str, respond: Respond, ctx: BotContext,
                    started: Callable[[], None] | None) -> None:
    user, channel = command["user_id"], command["channel_id"]
    try:
        parent = ctx.client.chat_postMessage(
            channel=channel, text=f"SOP draft requested by <@{user}>: {blocks.escape(request)}"
        )
    except SlackApiError as exc:
        _ephemeral(respond, channel_problem(exc) or
                   f"I couldn't post your request ({slack_error(exc)}). Try again in a minute.")
        return
    try:
        draft_in_thread(ctx, channel=channel, thread_ts=parent["ts"], request=request,
                        requester=user, on_request=started)
    except SlackApiError as exc:
        log.warning("drafting in %s failed: %s", channel, slack_error(exc))
        _ephemeral(respond, channel_problem(exc) or
                   f"Slack refused my reply ({slack_error(exc)}). Try `/sop` again in a minute.")


def on_admin_command(ack: Ack, command: dict, respond: Respond, *,
                     handler: Callable[[dict, Respond, BotContext], None],
                     ctx: BotContext) -> None:
    """Admins get an empty acknowledgement and the command runs; anyone else gets a sentence
    saying who may use it."""
    if not ctx.is_admin(command.get("user_id")):
        ack(text=ADMIN_ONLY.format(command=command.get("command", "this command")),
            response_type="ephemeral")
        return
    ack()
    ctx.defer(handler, command, respond, ctx)


def handle_retrain(command: dict, respond: Respond, ctx: BotContext) -> None:
    """`/sop-retrain`: snapshot now and start a run; progress goes to the admin channel."""
    from sop_pipeline.training.lifecycle import start_run

    _ephemeral(respond, ":hourglass_flowing_sand: Preparing a training snapshot…")
    try:
        result = start_run(ctx.services, trigger="manual", requested_by=command["user_id"],
                           force=True)
    except Exception:
        log.exception("manual retrain failed")
        _ephemeral(respond, "Starting the training run failed unexpectedly; nothing was sent "
                            "to the provider. Check the bot's log and try again.")
        return
    if result.started:
        where = (f" Progress and the outcome will be posted in <#{ctx.settings.sop_admin_channel}>."
                 if ctx.settings.sop_admin_channel else "")
        cost = (f" Estimated cost: ${result.estimated_cost_usd:,.2f}."
                if result.estimated_cost_usd is not None else "")
        _ephemeral(respond, f":rocket: {result.summary}{cost} Run id: #{result.run.id}.{where}")
    else:
        _ephemeral(respond, f":information_source: No training run was started. {result.summary}")


def handle_status(command: dict, respond: Respond, ctx: BotContext) -> None:
    """`/sop-status`: the same dashboard admins see in App Home."""
    report = status_dict(ctx)
    _ephemeral(respond, "SOP Bot status", blocks=blocks.status_blocks(report))


def status_dict(ctx: BotContext) -> dict:
    from sop_pipeline.status import status_report

    return status_report(ctx.services, scheduler=ctx.scheduler).to_dict()
