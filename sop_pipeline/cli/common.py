"""What every CLI command shares: building services once, and turning errors into sentences.

Settings, services (SQLAlchemy, Alembic, openai) are imported inside the functions, when a
command runs: `sop-bot --help` and commands that need none of them start fast.
"""

from __future__ import annotations

import functools
import logging
from collections.abc import Callable
from typing import TYPE_CHECKING, ParamSpec, TypeVar

import typer
from rich.console import Console

if TYPE_CHECKING:
    from sop_pipeline.services import Services

console = Console()
err_console = Console(stderr=True)
P = ParamSpec("P")
R = TypeVar("R")


class UserError(Exception):
    """An error the user can fix; its text is a sentence that says what to do next."""


def load_services() -> Services:
    """Settings from env/.env, then the service container (upgrading the database)."""
    from sop_pipeline.services import build_services
    from sop_pipeline.settings import load_settings

    settings = load_settings()
    logging.basicConfig(level=settings.log_level, format="%(levelname)s %(name)s: %(message)s")
    if settings.log_level != "DEBUG":  # schema chatter on every command helps nobody
        logging.getLogger("alembic").setLevel(logging.WARNING)
    return build_services(settings)


def fail(message: str, code: int = 2) -> typer.Exit:
    """Print a sentence to stderr and return the Exit to raise."""
    err_console.print(f"[red]Error:[/red] {message}", highlight=False)
    return typer.Exit(code)


def friendly(func: Callable[P, R]) -> Callable[P, R]:
    """Decorator: known errors become one sentence on stderr and a non-zero exit code."""

    @functools.wraps(func)
    def wrapper(*args: P.args, **kwargs: P.kwargs) -> R:
        from sop_pipeline.settings import SettingsError

        try:
            return func(*args, **kwargs)
        except (SettingsError, UserError) as exc:
            raise fail(str(exc)) from None
        except FileNotFoundError as exc:
            raise fail(f"File not found: {exc.filename}. Check the path and try again.") from None

    return wrapper
