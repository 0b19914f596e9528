"""CLI command `sop-bot run`: start the Slack bot (the CLI layer sits above bot/)."""

from __future__ import annotations

import typer


def register(app: typer.Typer) -> None:
    """Add this module's commands to the `sop-bot` app."""

    @app.command("run")
    def run() -> None:
        """Start the Slack bot: Socket Mode with SLACK_APP_TOKEN, else HTTP on $PORT."""
        from bot.__main__ import main

        raise typer.Exit(main())
