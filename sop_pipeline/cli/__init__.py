"""The pipeline's commands of the `sop-bot` command line, one module per feature area.

The console script itself is `bot.cli`: it adds `sop-bot run` (the Slack bot) and the Slack
announcement of model switches, so nothing here imports bot/ or Slack."""

from __future__ import annotations

from collections.abc import Callable, Sequence

import typer

from sop_pipeline.cli import (
    audit,
    datasets,
    db,
    evaluate,
    examples,
    generate,
    models,
    training,
)


def build_app(
    *,
    admin_notifier: models.AdminNotifier | None = None,
    extra: Sequence[Callable[[typer.Typer], None]] = (),
) -> typer.Typer:
    """Assemble the Typer app; built on call, never at import time of the feature modules.

    `admin_notifier` also tells the admin channel of a model switch made in a terminal;
    `extra` registers commands from a layer above (the bot's `run`)."""
    app = typer.Typer(
        name="sop-bot",
        help="SOP Bot: draft, approve and learn Standard Operating Procedures.",
        no_args_is_help=True,
        add_completion=False,
        pretty_exceptions_enable=False,
        rich_markup_mode=None,  # plain help: rich's help renderer (markdown-it) costs 0.1 s
    )
    for module in (db, examples, datasets, training, evaluate, generate, audit):
        module.register(app)
    models.register(app, admin_notifier=admin_notifier)
    for register in extra:
        register(app)
    return app
