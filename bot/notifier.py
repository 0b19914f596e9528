"""`SlackNotifier`: training progress and outcomes, posted to SOP_ADMIN_CHANNEL.

The core emits `Notification`s without knowing about Slack. A failing post is logged and
swallowed: a Slack outage must never fail a training run.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from pathlib import Path

from slack_sdk import WebClient
from slack_sdk.errors import SlackApiError

from bot import blocks
from sop_pipeline.notifications import Notification

log = logging.getLogger(__name__)

ICONS = {
    "run_started": ":rocket:", "run_progress": ":hourglass_flowing_sand:",
    "run_succeeded": ":white_check_mark:", "run_failed": ":x:", "run_promoted": ":tada:",
    "run_rejected": ":no_entry:", "deprecation_warning": ":warning:",
    "eval_report": ":bar_chart:", "chart": ":chart_with_downwards_trend:",
}


class SlackNotifier:
    """Implements `sop_pipeline.notifications.Notifier` by posting to the admin channel."""

    def __init__(
        self, client: WebClient, channel: str, *,
        on_chart_posted: Callable[[int, str], None] | None = None,
    ) -> None:
        self.client = client
        self.channel = channel
        self.on_chart_posted = on_chart_posted  # (run id, permalink): /sop-status links it

    def notify(self, notification: Notification) -> None:
        icon = ICONS.get(notification.kind, ":information_source:")
        text = blocks.plain(f"{icon} {notification.text}")
        try:
            path = notification.data.get("path") or notification.data.get("chart_path")
            if notification.kind == "chart" and path and Path(path).is_file():
                response = self.client.files_upload_v2(
                    channel=self.channel, file=str(path), filename=Path(path).name,
                    title=notification.text, initial_comment=text)
                self._remember_chart(notification, response)
                return
            self.client.chat_postMessage(channel=self.channel, text=text)
        except SlackApiError as exc:
            log.warning("could not post %s to %s: %s", notification.kind, self.channel,
                        exc.response.get("error"))
        except Exception:  # noqa: BLE001 - never let Slack break training
            log.exception("could not post %s to %s", notification.kind, self.channel)

    def _remember_chart(self, notification: Notification, response) -> None:  # noqa: ANN001
        files = response.get("files") or [response.get("file") or {}]
        file_id = (files[0] or {}).get("id") if files else None
        if not (self.on_chart_posted and notification.run_id and file_id):
            return
        permalink = self.client.files_info(file=file_id)["file"].get("permalink")
        if permalink:
            self.on_chart_posted(notification.run_id, permalink)
