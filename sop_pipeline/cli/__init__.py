"""The `sop-bot` command line. Each feature area registers its own commands from its module."""

from __future__ import annotations

import typer

from sop_pipeline.cli import (
    audit,
    datasets,
    db,
    evaluate,
    examples,
    generate,
    models,
    run,
    training,
)


def build_app() -> typer.Typer:
    """Assemble the Typer app; built on call, never at import time of the feature modules."""
    app = typer.Typer(
        name="sop-bot",
        help="SOP Bot: draft, approve and learn Standard Operating Procedures.",
        no_args_is_help=True,
        add_completion=False,
        pretty_exceptions_enable=False,
        rich_markup_mode=None,  # plain help: rich's help renderer (markdown-it) costs 0.1 s
    )
    for module in (db, examples, datasets, training, models, evaluate, generate, audit, run):
        module.register(app)
    return app


def main() -> None:
    """Console-script entry point."""
    build_app()()
