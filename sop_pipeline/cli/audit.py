"""`sop-bot audit export`: the append-only audit log as CSV evidence for QA."""

from __future__ import annotations

from pathlib import Path

import typer

from sop_pipeline.cli.common import UserError, console, friendly, load_services


def register(app: typer.Typer) -> None:
    """Add `sop-bot audit ...`."""
    group = typer.Typer(help="Audit log (who changed what, when, why).", no_args_is_help=True)
    group.command("export")(export_command)
    app.add_typer(group, name="audit")


@friendly
def export_command(
    out: Path = typer.Option(..., "--out", help="CSV file to write (times are UTC)."),
    action: str = typer.Option(None, help="Only this action, e.g. approve or retract."),
) -> None:
    """Export the audit log as CSV."""
    from sop_pipeline import audit as audit_log

    if out.is_dir():
        raise UserError(f"{out} is a folder; pass a file name such as audit.csv.")
    out.parent.mkdir(parents=True, exist_ok=True)
    services = load_services()
    try:
        with services.session() as session:
            count = audit_log.export_csv(audit_log.events(session, action=action), out)
    finally:
        services.engine.dispose()
    console.print(f"Wrote {count} audit event(s) to {out}.", highlight=False)
