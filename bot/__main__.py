"""`python -m bot` / `sop-bot run`: wire settings, services, Slack and the scheduler, then serve.

Socket Mode when SLACK_APP_TOKEN is set (no public URL needed), otherwise HTTP on $PORT at
/slack/events with Slack's request signature verified. A missing token stops start-up with a
sentence naming the variable.
"""

from __future__ import annotations

import functools
import logging
import signal
import sys
import threading

log = logging.getLogger("bot")


class StartupError(Exception):
    """Configuration that keeps the bot from starting; the text names what to set."""


def _require(settings, *names: str) -> None:  # noqa: ANN001 - Settings
    for name in names:
        if not settings.secret(name):
            raise StartupError(
                f"{name.upper()} is not set. Add it to the environment or to .env "
                "(see manifest.yaml and README for where Slack shows it)."
            )


def main(argv: list[str] | None = None) -> int:
    """Start the bot; returns the process exit code (non-zero on configuration errors)."""
    from sop_pipeline.settings import SettingsError, load_settings

    try:
        settings = load_settings()
        socket_mode = bool(settings.secret("slack_app_token"))
        _require(settings, "slack_bot_token")
        if not socket_mode:
            _require(settings, "slack_signing_secret")
    except (SettingsError, StartupError) as exc:
        print(f"Error: {exc}", file=sys.stderr)
        return 2
    logging.basicConfig(level=settings.log_level,
                        format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    try:
        return _serve(settings, socket_mode)
    except StartupError as exc:
        print(f"Error: {exc}", file=sys.stderr)
        return 2


def _serve(settings, socket_mode: bool) -> int:  # noqa: ANN001 - Settings
    from slack_bolt.error import BoltError

    from bot.app import build_app, build_context
    from bot.notifier import SlackNotifier
    from bot.recovery import recover_abandoned_drafts
    from bot.recovery import schedule as schedule_recovery
    from sop_pipeline.charts import record_chart_url
    from sop_pipeline.notifications import FanOutNotifier, LoggingNotifier
    from sop_pipeline.services import build_services
    from sop_pipeline.training.scheduler import build_scheduler
    from sop_pipeline.warm_up import warm_up

    notifier = FanOutNotifier(LoggingNotifier())
    services = build_services(settings, notifier=notifier)
    warm_up(services)  # before the first request, not in 50 racing threads
    context = build_context(services)
    if settings.sop_admin_channel:
        notifier.notifiers.append(SlackNotifier(
            context.client, settings.sop_admin_channel,
            on_chart_posted=functools.partial(record_chart_url, services)))
    else:
        log.warning("SOP_ADMIN_CHANNEL is not set: training notifications go to the log only")
    try:
        app = build_app(services, context=context)
    except BoltError as exc:
        raise StartupError(f"Slack rejected SLACK_BOT_TOKEN ({exc}). Copy the Bot User OAuth "
                           "Token (xoxb-...) from the app's OAuth & Permissions page.") from None
    recover_abandoned_drafts(context)
    scheduler = build_scheduler(services) if settings.scheduler_enabled else None
    context.scheduler = scheduler
    if scheduler is not None:
        schedule_recovery(context, scheduler)
        scheduler.start()
    try:
        if socket_mode:
            from slack_bolt.adapter.socket_mode import SocketModeHandler

            log.info("SOP Bot starting in Socket Mode")
            SocketModeHandler(app, settings.secret("slack_app_token")).start()
        else:
            from bot.http_server import BotHTTPServer

            server = BotHTTPServer(app, host=settings.host, port=settings.port)
            stop = threading.Event()
            signal.signal(signal.SIGTERM, lambda *_: stop.set())
            server.start()
            log.info("SOP Bot listening on port %s at /slack/events", server.port)
            try:
                stop.wait()
            finally:
                server.stop()
    except KeyboardInterrupt:
        pass
    finally:
        if scheduler is not None:
            scheduler.shutdown(wait=False)
        context.executor.shutdown(wait=False)
        services.engine.dispose()
    return 0


if __name__ == "__main__":
    sys.exit(main())
