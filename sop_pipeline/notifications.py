"""Events the core emits for people to see (run started, progress, outcome, deprecation).

The Slack layer implements `Notifier` and posts to the admin channel; the core never imports
Slack. `RecordingNotifier` keeps events in memory for the CLI and for tests.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field
from typing import Protocol

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class Notification:
    """One thing worth telling admins. `kind` is a stable machine name, `text` a sentence."""

    kind: str  # run_started | run_progress | run_succeeded | run_failed | run_promoted |
    # run_rejected | deprecation_warning | eval_report | chart
    text: str
    run_id: int | None = None
    data: dict = field(default_factory=dict)


class Notifier(Protocol):
    def notify(self, notification: Notification) -> None: ...


class LoggingNotifier:
    """Default notifier: writes notifications to the log."""

    def notify(self, notification: Notification) -> None:
        log.info("%s: %s", notification.kind, notification.text)


class RecordingNotifier:
    """Keeps notifications in a list (CLI summaries and tests)."""

    def __init__(self) -> None:
        self.sent: list[Notification] = []

    def notify(self, notification: Notification) -> None:
        self.sent.append(notification)

    def kinds(self) -> list[str]:
        return [n.kind for n in self.sent]


class FanOutNotifier:
    """Sends each notification to several notifiers; one failing does not stop the others."""

    def __init__(self, *notifiers: Notifier) -> None:
        self.notifiers = list(notifiers)

    def notify(self, notification: Notification) -> None:
        for notifier in self.notifiers:
            try:
                notifier.notify(notification)
            except Exception:  # a broken channel must not break training
                log.exception("notifier %r failed", notifier)
