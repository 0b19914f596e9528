"""`sop-bot models list|activate ID|rollback`: which model answers `/sop` (audited)."""

from __future__ import annotations

import json

import typer
from rich.table import Table

from sop_pipeline.cli.common import UserError, console, friendly, load_services


def register(app: typer.Typer) -> None:
    """Add `sop-bot models ...`."""
    group = typer.Typer(help="Model versions: list, activate, roll back.", no_args_is_help=True)
    group.command("list")(list_command)
    group.command("activate")(activate_command)
    group.command("rollback")(rollback_command)
    app.add_typer(group, name="models")


def _actor() -> str:
    from sop_pipeline.cli.training import actor

    return actor()


def _row(version) -> dict:  # noqa: ANN001 - ModelVersion
    return {
        "id": version.id, "model_id": version.model_id, "status": version.status,
        "backend": version.backend, "run_id": version.run_id,
        "created_at": version.created_at.isoformat(),
        "activated_at": version.activated_at.isoformat() if version.activated_at else None,
        "eval_scores": version.eval_scores,
    }


@friendly
def list_command(
    limit: int = typer.Option(20, "--limit", min=1),
    as_json: bool = typer.Option(False, "--json", help="Print JSON."),
) -> None:
    """Model versions, newest first; the active one is marked."""
    from sop_pipeline import model_registry

    services = load_services()
    try:
        with services.session() as session:
            rows = [_row(v) for v in model_registry.history(session, limit)]
    finally:
        services.engine.dispose()
    if as_json:
        typer.echo(json.dumps(rows, indent=2))
        return
    if not rows:
        console.print("No model versions yet: /sop uses the base model with retrieval.",
                      highlight=False)
        return
    table = Table("id", "model", "status", "run", "activated")
    for row in rows:
        marker = "* " if row["status"] == "active" else ""
        table.add_row(str(row["id"]), marker + row["model_id"], row["status"],
                      str(row["run_id"] or "-"), (row["activated_at"] or "-")[:19])
    console.print(table)


@friendly
def activate_command(
    version_id: int = typer.Argument(..., help="Model version id (see `sop-bot models list`)."),
    reason: str = typer.Option(None, "--reason", help="Why (kept in the audit log)."),
) -> None:
    """Make a model version the active one."""
    from sop_pipeline import model_registry
    from sop_pipeline.models import ModelVersion

    services = load_services()
    try:
        with services.session() as session:
            version = session.get(ModelVersion, version_id)
            if version is None:
                raise UserError(f"There is no model version #{version_id}; "
                                "`sop-bot models list` shows them.")
            try:
                model_registry.activate(session, version, actor=_actor(), reason=reason)
            except model_registry.ModelRegistryError as exc:
                raise UserError(str(exc)) from None
            session.commit()
            model_id = version.model_id
    finally:
        services.engine.dispose()
    console.print(f"Active model is now {model_id} (version #{version_id}).", highlight=False)


@friendly
def rollback_command(
    reason: str = typer.Option(None, "--reason", help="Why (kept in the audit log)."),
) -> None:
    """Switch back to the previously active model version."""
    from sop_pipeline import model_registry

    services = load_services()
    try:
        with services.session() as session:
            try:
                version = model_registry.rollback(session, actor=_actor(), reason=reason)
            except model_registry.ModelRegistryError as exc:
                raise UserError(str(exc)) from None
            session.commit()
            model_id, version_id = version.model_id, version.id
    finally:
        services.engine.dispose()
    console.print(f"Rolled back: active model is now {model_id} (version #{version_id}).",
                  highlight=False)
