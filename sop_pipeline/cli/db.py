"""`sop-bot db upgrade|current`: schema management through Alembic."""

from __future__ import annotations

import typer

from sop_pipeline.cli.common import console, friendly


def register(app: typer.Typer) -> None:
    """Add `sop-bot db ...`."""
    group = typer.Typer(help="Database schema (Alembic migrations).", no_args_is_help=True)

    @group.command("upgrade")
    @friendly
    def upgrade(revision: str = typer.Argument("head", help="Target revision.")) -> None:
        """Upgrade the database schema; safe to run twice or from two processes at once."""
        from sop_pipeline import db as database
        from sop_pipeline.settings import load_settings

        settings = load_settings()
        engine = database.make_engine(settings.database_url)
        database.upgrade(engine, revision)
        console.print(f"Database is at revision {database.current_revision(engine)}.")

    @group.command("current")
    @friendly
    def current() -> None:
        """Print the schema revision the database is at."""
        from sop_pipeline import db as database
        from sop_pipeline.settings import load_settings

        settings = load_settings()
        engine = database.make_engine(settings.database_url)
        console.print(database.current_revision(engine) or "(empty database)")

    app.add_typer(group, name="db")
