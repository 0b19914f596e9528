"""`SlackNotifier`: training progress and outcomes in SOP_ADMIN_CHANNEL.

One message per training run, edited in place (`chat.update`) as the run moves: data and
cost, where the job is, a one-line loss progress, then the verdict with the evaluation
comparison table; the loss chart goes in that message's thread. The message is rendered from
the database (`sop_pipeline.training.run_messages.run_message`) and its ts is stored with the
run, so a restarted bot edits the same message and `recover()` posts one never posted.

Other notifications (deprecation, a retired model) are single messages. A failing post is
logged and swallowed: a Slack outage must never fail a training run.
"""

from __future__ import annotations

import logging
import re
import threading
from collections.abc import Callable
from pathlib import Path

from slack_sdk import WebClient
from slack_sdk.errors import SlackApiError

from bot import blocks, render
from sop_pipeline.notifications import Notification
from sop_pipeline.training.run_messages import (
    RunMessage,
    record_run_message,
    run_message,
    runs_to_announce,
)

log = logging.getLogger(__name__)
SLACK_USER_ID = re.compile(r"[UW][A-Z0-9]{2,}")

ICONS = {
    "run_started": ":rocket:", "run_progress": ":hourglass_flowing_sand:",
    "run_succeeded": ":white_check_mark:", "run_failed": ":x:", "run_promoted": ":tada:",
    "run_rejected": ":no_entry:", "deprecation_warning": ":warning:",
    "eval_report": ":bar_chart:", "chart": ":chart_with_downwards_trend:",
    "model_rollback": ":rewind:", "model_activate": ":arrows_counterclockwise:",
}
STATE_ICONS = {"promoted": ":tada:", "rejected": ":no_entry:", "failed": ":x:",
               "cancelled": ":no_entry_sign:"}
RUN_KINDS = {"run_started", "run_progress", "run_succeeded", "run_failed", "run_promoted",
             "run_rejected", "run_cancelled", "eval_report", "chart"}
USER_ID = re.compile(r"^[UW][A-Z0-9]{2,}$")
MAX_TABLE_CHARS = 2900  # a section's text is limited to 3,000 characters


class SlackNotifier:
    """Implements `sop_pipeline.notifications.Notifier` for the admin channel."""

    def __init__(
        self, client: WebClient, channel: str, *, services: object | None = None,
        on_chart_posted: Callable[[int, str], None] | None = None,
    ) -> None:
        self.client = client
        self.channel = channel
        self.services = services  # with it, one message per run; without, one per event
        self.on_chart_posted = on_chart_posted  # (run id, permalink): /sop-status links it
        self._locks: dict[int, threading.Lock] = {}
        self._guard = threading.Lock()
        self._tables: dict[int, str] = {}  # the gate's table, until the verdict is stored
        self._shown: dict[int, str] = {}  # what each run's message shows (skip no-op edits)
        self._charted: set[int] = set()  # runs whose chart this process attached

    def notify(self, notification: Notification) -> None:
        try:
            if self.services is not None and notification.run_id and \
                    notification.kind in RUN_KINDS:
                if notification.kind == "eval_report" and notification.data.get("table"):
                    self._tables[notification.run_id] = str(notification.data["table"])
                self.show_run(notification.run_id)
                return
            self._post_single(notification)
        except SlackApiError as exc:
            log.warning("could not post %s to the admin channel: %s", notification.kind,
                        exc.response.get("error"))
        except Exception:  # noqa: BLE001 - never let Slack break training
            log.exception("could not post %s to the admin channel", notification.kind)

    def recover(self) -> None:
        """At start-up: post the message of a run that has none, and bring stale ones up to
        date (a crash between a run's commit and its post)."""
        if self.services is None:
            return
        for run_id in runs_to_announce(self.services):
            try:
                self.show_run(run_id)
            except Exception:  # noqa: BLE001
                log.exception("could not post the admin message of run %s", run_id)

    # --- one message per run -----------------------------------------------------------------
    def show_run(self, run_id: int) -> None:
        """Post or edit run `run_id`'s message to match the database; attach the chart."""
        with self._lock_for(run_id):
            message = run_message(self.services, run_id)
            if message is None:
                return
            if message.table is None and run_id in self._tables and message.finished:
                message.table = self._tables[run_id]
            text, body = run_blocks(message)
            shown = repr((text, body))
            if message.ts is None:
                response = self.client.chat_postMessage(channel=self.channel, text=text,
                                                        blocks=body)
                message.ts = str(response["ts"])
            elif self._shown.get(run_id) != shown or message.shown_state != message.state:
                self.client.chat_update(channel=self.channel, ts=message.ts, text=text,
                                        blocks=body)
            self._shown[run_id] = shown
            if message.shown_state != message.state or message.ts != message.stored_ts:
                record_run_message(self.services, run_id, message.ts, message.state)
            if message.finished and message.chart_path and not message.chart_posted \
                    and run_id not in self._charted:
                self._post_chart(message)
                self._charted.add(run_id)

    def _lock_for(self, run_id: int) -> threading.Lock:
        with self._guard:
            return self._locks.setdefault(run_id, threading.Lock())

    def _post_chart(self, message: RunMessage) -> None:
        path = Path(message.chart_path or "")
        if not path.is_file():
            return
        response = self.client.files_upload_v2(
            channel=self.channel, thread_ts=message.ts, file=str(path), filename=path.name,
            title=f"Loss chart of training run #{message.run_id}")
        self._remember_chart(message.run_id, response)

    # --- anything else -----------------------------------------------------------------------
    def _post_single(self, notification: Notification) -> None:
        icon = ICONS.get(notification.kind, ":information_source:")
        text = blocks.plain(f"{icon} {_with_mention(notification)}")
        path = notification.data.get("path") or notification.data.get("chart_path")
        if notification.kind == "chart" and path and Path(path).is_file():
            response = self.client.files_upload_v2(
                channel=self.channel, file=str(path), filename=Path(path).name,
                title=render.plain(notification.text), initial_comment=text)
            if notification.run_id:
                self._remember_chart(notification.run_id, response)
            return
        self.client.chat_postMessage(channel=self.channel, text=text)

    def _remember_chart(self, run_id: int, response) -> None:  # noqa: ANN001
        files = response.get("files") or [response.get("file") or {}]
        file_id = (files[0] or {}).get("id") if files else None
        if not (self.on_chart_posted and file_id):
            return
        permalink = self.client.files_info(file=file_id)["file"].get("permalink")
        if permalink:
            self.on_chart_posted(run_id, permalink)


def run_blocks(message: RunMessage) -> tuple[str, list[dict]]:
    """(fallback text, blocks) of a run's message; the table is a monospace section."""
    icon = STATE_ICONS.get(message.state, ":hourglass_flowing_sand:")
    headline = f"{icon} Training run #{message.run_id}: {message.status}"
    body = [blocks.section(f"*{render.mrkdwn(headline)}*")]
    who = (f"<@{message.started_by}>" if message.started_by and USER_ID.match(
        message.started_by) else render.mrkdwn(message.trigger))  # an id Slack gave us
    started = (f"Started {render.mrkdwn(message.started_at)} by {who} on "
               f"{render.mrkdwn(message.data)}.")
    details = "\n".join([started, *(render.mrkdwn(line) for line in message.lines)])
    body.append(blocks.section(details))
    fallback = headline
    if message.verdict:
        body.append(blocks.section(render.mrkdwn(message.verdict)))
        fallback += f". {message.verdict}"
    if message.table:
        table = message.table[:MAX_TABLE_CHARS]
        body.append(blocks.section(f"*Evaluation*\n{render.code(table)}"))
        fallback += "\n" + message.table
    if message.finished and message.chart_path:
        body.append(blocks.context("Loss chart in the thread."))
    return blocks.plain(render.mrkdwn(fallback)), body


def _with_mention(notification: Notification) -> str:
    """The notification's text escaped, with its actor (a Slack user id from a signed
    request, never free text) shown as a mention."""
    text = render.mrkdwn(notification.text)
    actor = notification.data.get("actor")
    if isinstance(actor, str) and SLACK_USER_ID.fullmatch(actor):
        text = text.replace(actor, f"<@{actor}>")
    return text
