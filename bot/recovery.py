"""After a crash: drafts a dead worker left unfinished get a sentence in their thread.

Runs at start-up and then on the scheduler; the pipeline decides which drafts are abandoned
(`sop_pipeline.generation.recovery`), this module only edits their Slack replies.
"""

from __future__ import annotations

import logging

from slack_sdk.errors import SlackApiError

from bot.runtime import BotContext
from sop_pipeline.generation.recovery import fail_abandoned_drafts, fail_own_drafts
from sop_pipeline.housekeeping import prune_once_a_day

log = logging.getLogger(__name__)
RECOVERY_INTERVAL_MINUTES = 5


def recover_abandoned_drafts(ctx: BotContext) -> int:
    """Fail abandoned drafts and replace their placeholders, post approval confirmations a
    crash left owed, and once a day forget old delivery claims; returns how many drafts were
    found. At start-up this catches every
    draft of a previous start of this process at once (its start id differs), with or
    without the scheduler."""
    from bot.approvals import post_owed_confirmations

    count = _tell_threads(ctx, fail_abandoned_drafts(ctx.services))
    try:
        posted = post_owed_confirmations(ctx)
    except Exception:  # noqa: BLE001 - drafts were recovered; confirmations retry next sweep
        log.exception("posting owed approval confirmations failed")
        posted = 0
    if posted:
        log.info("posted %d approval confirmation(s) a crash left owed", posted)
    try:
        prune_once_a_day(ctx.services)
    except Exception:  # noqa: BLE001 - housekeeping must never stop recovery; tomorrow again
        log.exception("housekeeping failed")
    return count


def fail_drafts_in_progress(ctx: BotContext) -> int:
    """Shutting down: this process's unfinished drafts are failed, their threads told."""
    return _tell_threads(ctx, fail_own_drafts(ctx.services))


def _tell_threads(ctx: BotContext, drafts: list) -> int:
    for draft in drafts:
        if not (draft.slack_channel and draft.slack_ts):
            continue
        try:
            ctx.client.chat_update(channel=draft.slack_channel, ts=draft.slack_ts,
                                   text=f":x: {draft.error}", blocks=[])
        except SlackApiError as exc:
            log.warning("could not mark abandoned draft %s in Slack: %s", draft.id,
                        exc.response.get("error"))
    if drafts:
        log.info("marked %d abandoned draft(s) failed", len(drafts))
    return len(drafts)


def schedule(ctx: BotContext, scheduler) -> None:  # noqa: ANN001 - APScheduler scheduler
    """Check for abandoned drafts every few minutes (drafts of instances on other hosts)."""
    scheduler.add_job(recover_abandoned_drafts, "interval", minutes=RECOVERY_INTERVAL_MINUTES,
                      kwargs={"ctx": ctx}, id="recover_abandoned_drafts",
                      max_instances=1, coalesce=True, replace_existing=True)
