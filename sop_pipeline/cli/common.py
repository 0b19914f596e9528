"""What every CLI command shares: building services once, and turning errors into sentences."""

from __future__ import annotations

import functools
import logging
from collections.abc import Callable
from typing import TypeVar

import typer
from rich.console import Console

from sop_pipeline.services import Services, build_services
from sop_pipeline.settings import SettingsError, load_settings

console = Console()
err_console = Console(stderr=True)
F = TypeVar("F", bound=Callable)


class UserError(Exception):
    """An error the user can fix; its text is a sentence that says what to do next."""


def load_services() -> Services:
    """Settings from env/.env, then the service container (upgrading the database)."""
    settings = load_settings()
    logging.basicConfig(level=settings.log_level, format="%(levelname)s %(name)s: %(message)s")
    if settings.log_level != "DEBUG":  # schema chatter on every command helps nobody
        logging.getLogger("alembic").setLevel(logging.WARNING)
    return build_services(settings)


def fail(message: str, code: int = 2) -> typer.Exit:
    """Print a sentence to stderr and return the Exit to raise."""
    err_console.print(f"[red]Error:[/red] {message}", highlight=False)
    return typer.Exit(code)


def friendly(func: F) -> F:
    """Decorator: known errors become one sentence on stderr and a non-zero exit code."""

    @functools.wraps(func)
    def wrapper(*args, **kwargs):  # noqa: ANN002, ANN003, ANN202
        try:
            return func(*args, **kwargs)
        except (SettingsError, UserError) as exc:
            raise fail(str(exc)) from None
        except FileNotFoundError as exc:
            raise fail(f"File not found: {exc.filename}. Check the path and try again.") from None

    return wrapper  # type: ignore[return-value]
