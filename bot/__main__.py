"""`python -m bot` / `sop-bot run`: wire settings, services, Slack and the scheduler, then serve.

Socket Mode when SLACK_APP_TOKEN is set (no public URL needed), otherwise HTTP on $PORT at
/slack/events with Slack's request signature verified (`bot.serve`: Bolt's ASGI adapter on
uvicorn). SIGTERM stops taking requests and lets drafts finish for SHUTDOWN_GRACE_SECONDS. A
missing token stops start-up with a sentence naming the variable.
"""

from __future__ import annotations

import functools
import gc
import logging
import os
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
    from bot.recovery import schedule as schedule_recovery
    from sop_pipeline import tokens
    from sop_pipeline.charts import record_chart_url
    from sop_pipeline.notifications import FanOutNotifier, LoggingNotifier
    from sop_pipeline.providers import ProviderConfigError
    from sop_pipeline.services import build_services
    from sop_pipeline.training.scheduler import build_scheduler

    notifier = FanOutNotifier(LoggingNotifier())
    services = build_services(settings, notifier=notifier)
    # The tokenizer's tables load once here (about 0.3 s of CPU, nothing written), not in the
    # first burst's drafting threads, where they held back every acknowledgement (load
    # benchmark, 50 /sop: ack p99 2.1 s -> 0.95 s).
    tokens.warm_up()
    # The provider client likewise (its SSL context and transport imports, ~50 ms of CPU):
    # built lazily, the first burst's drafts all waited on its lock while one thread built it.
    try:
        services.openai_client()
    except ProviderConfigError as exc:  # drafts will say so in their threads
        log.warning("%s", exc)
    context = build_context(services)
    admin_notifier = None
    if settings.sop_admin_channel:
        admin_notifier = SlackNotifier(
            context.client, settings.sop_admin_channel, services=services,
            on_chart_posted=functools.partial(record_chart_url, services))
        notifier.notifiers.append(admin_notifier)
    else:
        log.warning("SOP_ADMIN_CHANNEL is not set: training notifications go to the log only")
    try:
        app = build_app(services, context=context)
    except BoltError as exc:
        raise StartupError(f"Slack rejected SLACK_BOT_TOKEN ({exc}). Copy the Bot User OAuth "
                           "Token (xoxb-...) from the app's OAuth & Permissions page.") from None
    stop = threading.Event()
    for signum in (signal.SIGTERM, signal.SIGINT):
        signal.signal(signum, lambda *_: stop.set())
    scheduler = build_scheduler(services) if settings.scheduler_enabled else None
    context.scheduler = scheduler
    try:
        handler, server = _listen(app, settings, socket_mode, services)
    except OSError as exc:
        raise StartupError(f"Cannot listen for requests ({exc}). Is another process using "
                           "the port? Set PORT (or PROBE_PORT in Socket Mode) to a free one.") \
            from None
    _recover_after_start(context, admin_notifier)
    # What start-up built (modules, classes, the app) lives as long as the process: kept out
    # of the collector's full passes, which otherwise stopped every thread for 60-110 ms in
    # the middle of a burst (load benchmark, PostgreSQL, 10,000 examples).
    gc.freeze()
    if scheduler is not None:
        schedule_recovery(context, scheduler)
        scheduler.start()
    # A timed wait: a signal the kernel hands to another thread only sets a flag, which the
    # main thread reads when it runs; blocked in an untimed wait it would never stop (a bot
    # in this stop's CI ignored SIGTERM so, with the main thread here).
    while not stop.wait(1.0):
        pass
    log.info("SOP Bot stopping: no new requests; letting drafts in progress finish")
    if handler is not None:
        handler.close()
    if server is not None:
        server.stop()
    if scheduler is not None:
        scheduler.shutdown(wait=False)
    return _drain(context, settings.shutdown_grace_seconds)


def _listen(app, settings, socket_mode: bool, services):  # noqa: ANN001, ANN202
    """Start serving; logs "SOP Bot listening" once Slack can reach the bot."""
    from bot.serve import Server, SlackAndProbes, database_ready, socket_mode_handler

    def ready() -> str | None:
        if handler is not None and not handler.client.is_connected():
            return "Socket Mode is not connected to Slack"
        return database_ready(services.engine)

    handler = socket_mode_handler(app, settings) if socket_mode else None
    server = None
    grace = int(settings.shutdown_grace_seconds) or 1
    if not socket_mode:
        server = Server(SlackAndProbes(app, ready=ready), host=settings.host, port=settings.port,
                        graceful_seconds=grace).start()
        log.info("SOP Bot listening on port %s at /slack/events (probes: /healthz, /readyz)",
                 server.port)
        return None, server
    if settings.probe_port:
        server = Server(SlackAndProbes(None, ready=ready), host=settings.host,
                        port=settings.probe_port, graceful_seconds=grace).start()
    assert handler is not None  # Socket Mode from here on
    handler.connect()
    probes = f"probes on port {server.port}" if server else "no probes (PROBE_PORT is not set)"
    log.info("SOP Bot listening in Socket Mode (%s)", probes)
    return handler, server


def _recover_after_start(context, admin_notifier) -> None:  # noqa: ANN001 - BotContext, SlackNotifier
    """Drafts a previous process left unfinished are failed with a sentence, and a training
    run's admin message lost to a crash is posted, in the worker pool once serving has begun
    (start-up itself writes nothing but migrations)."""
    from bot.recovery import recover_abandoned_drafts

    context.defer(recover_abandoned_drafts, context)
    if admin_notifier is not None:
        context.defer(admin_notifier.recover)


def _drain(context, grace: float) -> int:  # noqa: ANN001 - BotContext
    """Graceful shutdown: wait up to `grace` seconds for the work in the pool; drafts still
    running then are marked failed with a sentence, and the process ends without them."""
    from bot.recovery import fail_drafts_in_progress

    finished = context.wait_idle(grace)
    if not finished:
        count = fail_drafts_in_progress(context)
        log.warning("SOP Bot stopped with work in progress; %d draft(s) marked failed", count)
    for pool in context.pools:
        pool.shutdown(wait=False, cancel_futures=True)
    context.services.engine.dispose()
    log.info("SOP Bot stopped")
    if not finished:  # worker threads still streaming would hold the interpreter's exit
        logging.shutdown()
        os._exit(0)
    return 0


if __name__ == "__main__":
    sys.exit(main())
