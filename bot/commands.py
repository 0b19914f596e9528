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
from typing import Any

from slack_bolt import Ack, App, Respond
from slack_sdk.errors import SlackApiError

from bot import blocks
from bot.drafting import channel_problem, draft_in_thread, slack_error
from bot.runtime import BotContext
from sop_pipeline.generation import (
    RequestRejected,
    RequestReplayed,
    fail_before_running,
    start_generation,
    validate_request,
)
from sop_pipeline.services import DatabaseBusy

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


def _ephemeral(respond: Respond, text: str, **extra: Any) -> None:
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
        assert problem is not None  # _sop_request says why whenever it gives no request
        ack(text=problem, response_type="ephemeral")
        return
    ack()
    ctx.defer_draft(handle_sop, command, request, respond, ctx=ctx)


def command_key(command: dict) -> str:
    """Slack's id for this one invocation: `trigger_id` (unique per command), else its
    `response_url`; a signed request replayed within Slack's 5-minute window carries the same."""
    ident = command.get("trigger_id") or command.get("response_url") or ""
    return f"command:{command.get('command') or '/sop'}:{ident}"


def handle_sop(command: dict, request: str, respond: Respond, *, ctx: BotContext) -> None:
    """`/sop <request>`: parent message in the channel, draft in its thread. The request is
    stored before anything is posted, claimed by the command's own id in the same write, so a
    replayed command (same trigger_id, on any instance) posts and drafts nothing."""
    user, channel = command["user_id"], command["channel_id"]
    key = command_key(command) if command.get("trigger_id") or command.get("response_url") \
        else None
    try:
        row = start_generation(ctx.services, request, user, slack_channel=channel,
                               claim_key=key)
    except RequestReplayed:
        log.warning("ignoring a replayed /sop (its trigger_id was handled before)")
        return
    except (RequestRejected, DatabaseBusy) as exc:
        _ephemeral(respond, str(exc))
        return
    except Exception:
        log.exception("could not store the request for a draft")
        _ephemeral(respond, "I couldn't save your request, so no draft was started. Try `/sop` "
                            "again; if it keeps failing, ask an admin to check the bot's log.")
        return
    try:
        parent = ctx.client.chat_postMessage(
            channel=channel, text=f"SOP draft requested by <@{user}>: {blocks.escape(request)}"
        )
    except SlackApiError as exc:
        assert row.id is not None
        fail_before_running(ctx.services, row.id,
                            f"Slack refused the request's message ({slack_error(exc)}).")
        _ephemeral(respond, channel_problem(exc) or
                   f"I couldn't post your request ({slack_error(exc)}). Try again in a minute.")
        return
    try:
        draft_in_thread(ctx, channel=channel, thread_ts=parent["ts"], row=row, requester=user)
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
    """`/sop-retrain`: check and start first, then answer once: started (run id and cost),
    or why not (the run under way, the next automatic check, the examples still needed)."""
    from sop_pipeline.training.lifecycle import start_run

    try:
        result = start_run(ctx.services, trigger="manual", requested_by=command["user_id"],
                           force=True)
    except Exception:
        log.exception("manual retrain failed")
        _ephemeral(respond, "Starting the training run failed unexpectedly; nothing was sent "
                            "to the provider. Check the bot's log and try again.")
        return
    _ephemeral(respond, retrain_answer(result, ctx))


def retrain_answer(result, ctx: BotContext) -> str:  # noqa: ANN001 - StartResult
    """The one answer to `/sop-retrain`, in words (no internal state names)."""
    from sop_pipeline.training.run_messages import state_words

    channel = ctx.settings.sop_admin_channel
    if result.started:
        words = _snapshot_words(result)
        cost = (f" Estimated cost: ${result.estimated_cost_usd:,.2f}."
                if result.estimated_cost_usd is not None and "cost $" not in words else "")
        where = f" I'll keep one message up to date in <#{channel}>." if channel else ""
        return (f":rocket: Training run #{result.run.id} started on "
                f"{blocks.escape(words)}.{cost}{where}")
    details = result.details or {}
    if result.reason == "active_run" and details.get("active_run_id"):
        text = (f"No new run started: training run #{details['active_run_id']} is "
                f"{state_words(details.get('state'))} since {details.get('since', 'earlier')}.")
        if channel:
            text += f" Its progress is in <#{channel}>."
    else:
        text = f"No training run was started. {blocks.escape(result.summary)}"
    upcoming = _next_check(ctx)
    if upcoming:
        text += f" Next automatic check: {upcoming}."
    return f":information_source: {text}"


def _snapshot_words(result) -> str:  # noqa: ANN001 - StartResult
    summary = str(result.summary or "")
    return summary.split(" on ", 1)[1].rstrip(".") if " on " in summary else summary


def _next_check(ctx: BotContext) -> str | None:
    from sop_pipeline.training.scheduler import next_check_time

    try:
        when = next_check_time(ctx.scheduler)
    except Exception:  # noqa: BLE001 - a stopped scheduler: say nothing about it
        return None
    from datetime import UTC

    return when.astimezone(UTC).strftime("%H:%M UTC") if when is not None else None


def handle_status(command: dict, respond: Respond, ctx: BotContext) -> None:
    """`/sop-status`: the same dashboard admins see in App Home."""
    report = status_dict(ctx)
    _ephemeral(respond, "SOP Bot status", blocks=blocks.status_blocks(report))


def status_dict(ctx: BotContext) -> dict:
    from sop_pipeline.status import status_report

    return status_report(ctx.services, scheduler=ctx.scheduler).to_dict()
