"""`sop-bot models list|activate ID|base|rollback`: which model answers `/sop` (audited, and
announced in the admin channel)."""

from __future__ import annotations

import json
from collections.abc import Callable
from typing import TYPE_CHECKING

import typer
from rich.table import Table

from sop_pipeline.cli.common import UserError, console, friendly, load_services

if TYPE_CHECKING:
    from sop_pipeline.notifications import Notifier
    from sop_pipeline.services import Services

# Given the services, the admin channel's notifier, or None when Slack is not configured.
AdminNotifier = Callable[["Services"], "Notifier | None"]


def register(app: typer.Typer, *, admin_notifier: AdminNotifier | None = None) -> None:
    """Add `sop-bot models ...`; switches are also announced through `admin_notifier`."""
    group = typer.Typer(help="Model versions: list, activate, roll back.", no_args_is_help=True)
    group.command("list")(list_command)

    @group.command("activate")
    @friendly
    def activate_command(
        version: str = typer.Argument(..., help="Model version id (see `sop-bot models "
                                                "list`), or `base` for the base model with "
                                                "retrieval."),
        reason: str = typer.Option(None, "--reason", help="Why (kept in the audit log)."),
    ) -> None:
        """Make a model version the active one (`base`: the base model with retrieval)."""
        result = _switch(version, reason, admin_notifier)
        if not result.changed:
            console.print(f"{result.new} is already active (version #{result.version_id}).",
                          highlight=False)
            return
        console.print(f"Active model is now {result.new} (version #{result.version_id}).",
                      highlight=False)

    @group.command("rollback")
    @friendly
    def rollback_command(
        reason: str = typer.Option(None, "--reason", help="Why (kept in the audit log)."),
    ) -> None:
        """Switch back to the previously active model version (from the first fine-tune: the
        base model with retrieval)."""
        result = _switch(None, reason, admin_notifier)
        console.print(f"Rolled back: active model is now {result.new} (version "
                      f"#{result.version_id}).", highlight=False)

    app.add_typer(group, name="models")


def _actor() -> str:
    from sop_pipeline.cli.training import actor

    return actor()


def _row(version, base_model: str) -> dict:  # noqa: ANN001 - ModelVersion
    from sop_pipeline import model_registry

    return {
        "id": version.id, "model_id": version.model_id, "status": version.status,
        "backend": version.backend, "run_id": version.run_id,
        "label": model_registry.label(version, base_model),
        "created_at": version.created_at.isoformat(),
        "activated_at": version.activated_at.isoformat() if version.activated_at else None,
        "eval_scores": version.eval_scores,
    }


def _with_admin_channel(services: Services, admin_notifier: AdminNotifier | None) -> Services:
    """A switch made in a terminal must reach the admins as one made in Slack does."""
    from sop_pipeline.notifications import FanOutNotifier

    admin = admin_notifier(services) if admin_notifier else None
    if admin is not None:
        services.notifier = FanOutNotifier(services.notifier, admin)
    return services


@friendly
def list_command(
    limit: int = typer.Option(20, "--limit", min=1),
    as_json: bool = typer.Option(False, "--json", help="Print JSON."),
) -> None:
    """Model versions, newest first; the active one is marked (`base` = base model +
    retrieval)."""
    from sop_pipeline import model_registry

    services = load_services()
    base_model = services.settings.sop_base_model
    try:
        with services.session() as session:
            rows = [_row(v, base_model) for v in model_registry.history(session, limit)]
    finally:
        services.engine.dispose()
    if as_json:
        typer.echo(json.dumps(rows, indent=2))
        return
    if not rows:
        console.print(f"No model versions yet: /sop uses the base model {base_model} with "
                      "retrieval.", highlight=False)
        return
    table = Table("id", "model", "status", "run", "activated")
    for row in rows:
        marker = "* " if row["status"] == "active" else ""
        table.add_row(str(row["id"]), marker + row["label"], row["status"],
                      str(row["run_id"] or "-"), (row["activated_at"] or "-")[:19])
    console.print(table)


def _switch(ref: str | None, reason: str | None,
            admin_notifier: AdminNotifier | None):  # noqa: ANN202 - model_registry.Switch
    from sop_pipeline import model_registry

    services = _with_admin_channel(load_services(), admin_notifier)
    try:
        return model_registry.switch_and_announce(services, ref, actor=_actor(), reason=reason)
    except model_registry.ModelRegistryError as exc:
        raise UserError(str(exc)) from None
    finally:
        services.engine.dispose()

