"""The `sop-bot` console script: the pipeline's commands (`sop_pipeline.cli`) plus what needs
Slack: `sop-bot run` starts the bot, and model switches made in a terminal are announced in
the admin channel. Imports stay lazy so `sop-bot --help` starts fast."""

from __future__ import annotations

from typing import TYPE_CHECKING

import typer

if TYPE_CHECKING:
    from sop_pipeline.notifications import Notifier
    from sop_pipeline.services import Services


def admin_channel_notifier(services: Services) -> Notifier | None:
    """SOP_ADMIN_CHANNEL's notifier when Slack is configured, else None."""
    settings = services.settings
    if not (settings.sop_admin_channel and settings.secret("slack_bot_token")):
        return None
    from bot.app import make_client
    from bot.notifier import SlackNotifier

    return SlackNotifier(make_client(services), settings.sop_admin_channel)


def register_run(app: typer.Typer) -> None:
    """Add `sop-bot run`."""

    @app.command("run")
    def run() -> None:
        """Start the Slack bot: Socket Mode with SLACK_APP_TOKEN, else HTTP on $PORT."""
        from bot.__main__ import main

        raise typer.Exit(main())


def build_app() -> typer.Typer:
    """The whole `sop-bot` app."""
    from sop_pipeline.cli import build_app as pipeline_commands

    return pipeline_commands(admin_notifier=admin_channel_notifier, extra=(register_run,))


def main() -> None:
    """Console-script entry point."""
    build_app()()
