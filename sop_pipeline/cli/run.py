"""CLI command `sop-bot run`: start the Slack bot (the only place sop_pipeline reaches bot/)."""

from __future__ import annotations

import importlib

import typer


def register(app: typer.Typer) -> None:
    """Add this module's commands to the `sop-bot` app."""

    @app.command("run")
    def run() -> None:
        """Start the Slack bot: Socket Mode with SLACK_APP_TOKEN, else HTTP on $PORT."""
        raise typer.Exit(importlib.import_module("bot.__main__").main())
