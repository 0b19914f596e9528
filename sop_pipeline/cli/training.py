"""`sop-bot retrain`, `sop-bot runs list|show|cancel|poll` and `sop-bot status`."""

from __future__ import annotations

import getpass
import json
import os

import typer
from rich.table import Table

from sop_pipeline.cli.common import UserError, console, friendly, load_services


def register(app: typer.Typer) -> None:
    """Add the training commands to the `sop-bot` app."""
    app.command("retrain")(retrain_command)
    app.command("status")(status_command)
    runs = typer.Typer(help="Fine-tuning runs: list, inspect, cancel, advance.",
                       no_args_is_help=True)
    runs.command("list")(runs_list_command)
    runs.command("show")(runs_show_command)
    runs.command("cancel")(runs_cancel_command)
    runs.command("poll")(runs_poll_command)
    app.add_typer(runs, name="runs")


def actor() -> str:
    """Who runs the command, for the audit log."""
    user = os.environ.get("USER") or os.environ.get("USERNAME") or getpass.getuser()
    return f"cli:{user}"


def _print(text: str) -> None:
    console.print(text, highlight=False, markup=False)


@friendly
def retrain_command(
    force: bool = typer.Option(False, "--force",
                               help="Retrain even if fewer new examples than the threshold."),
    dry_run: bool = typer.Option(False, "--dry-run",
                                 help="Show the snapshot and cost estimate; create no run."),
) -> None:
    """Snapshot the approved examples and start a fine-tuning run."""
    from sop_pipeline.training import lifecycle

    services = load_services()
    try:
        result = lifecycle.start_run(services, trigger="cli", requested_by=actor(),
                                     force=force, dry_run=dry_run)
        if result.reason == "dry_run":
            _print(result.summary)
            return
        if result.run is None:
            raise UserError(result.summary)
        _print(result.summary)
        assert result.run.id is not None  # start_run returns a stored run
        run = lifecycle.advance(services, result.run.id)
        if run is not None:
            _print(_run_line(run))
    finally:
        services.engine.dispose()


def _run_line(run) -> str:  # noqa: ANN001 - TrainingRun
    job = f", job {run.provider_job_id}" if run.provider_job_id else ""
    model = f", model {run.fine_tuned_model}" if run.fine_tuned_model else ""
    error = f" ({run.error_code}: {run.error_message})" if run.error_code else ""
    return f"Run #{run.id}: {run.state}{job}{model}{error}"


@friendly
def runs_list_command(
    limit: int = typer.Option(20, "--limit", min=1, help="How many runs to show."),
    as_json: bool = typer.Option(False, "--json", help="Print JSON."),
) -> None:
    """List training runs, newest first."""
    from sop_pipeline.training import lifecycle

    services = load_services()
    try:
        with services.session() as session:
            rows = [lifecycle.run_summary(session, run)
                    for run in lifecycle.list_runs(session, limit)]
    finally:
        services.engine.dispose()
    if as_json:
        typer.echo(json.dumps(rows, indent=2, default=str))
        return
    if not rows:
        _print("No training runs yet. Start one with `sop-bot retrain`.")
        return
    table = Table("id", "state", "job", "model", "created", "error")
    for row in rows:
        table.add_row(str(row["id"]), row["state"], row["job_id"] or "-", row["model"] or "-",
                      row["created_at"][:19], row["error_code"] or "")
    console.print(table)


@friendly
def runs_show_command(
    run_id: int = typer.Argument(..., help="Run id (see `sop-bot runs list`)."),
    as_json: bool = typer.Option(False, "--json", help="Print JSON."),
) -> None:
    """Show one run with its latest metrics and events."""
    from sop_pipeline.training import lifecycle

    services = load_services()
    try:
        with services.session() as session:
            run = lifecycle.get_run(session, run_id)
            if run is None:
                raise UserError(f"There is no training run #{run_id}; `sop-bot runs list` "
                                "shows the runs.")
            data = lifecycle.run_summary(session, run)
            events = lifecycle.run_events(session, run_id)
    finally:
        services.engine.dispose()
    data["recent_events"] = [
        {"at": e.created_at.isoformat(), "level": e.level, "kind": e.kind, "message": e.message}
        for e in events[-10:]
    ]
    if as_json:
        typer.echo(json.dumps(data, indent=2, default=str))
        return
    for key, value in data.items():
        if key != "recent_events" and value not in (None, {}, ""):
            _print(f"{key}: {value}")
    for event in data["recent_events"]:
        _print(f"  {event['at'][:19]} {event['level']}: {event['message']}")


@friendly
def runs_cancel_command(
    run_id: int = typer.Argument(..., help="Run id to cancel."),
    reason: str = typer.Option(None, "--reason", help="Why (kept in the audit log)."),
) -> None:
    """Cancel a run and its provider job."""
    from sop_pipeline.training import lifecycle
    from sop_pipeline.training.backend import BackendError

    services = load_services()
    try:
        run = lifecycle.cancel_run(services, run_id, actor(), reason=reason)
    except lifecycle.LifecycleError as exc:
        raise UserError(str(exc)) from None
    except BackendError as exc:
        raise UserError(f"The provider refused to cancel the job ({exc.code}): {exc.message} "
                        "Try again, or cancel it in the provider's dashboard.") from None
    finally:
        services.engine.dispose()
    _print(_run_line(run))


@friendly
def runs_poll_command(
    run_id: int = typer.Argument(None, help="Run id; all active runs when omitted."),
) -> None:
    """Advance active runs once (what the scheduler does every TRAINING_POLL_SECONDS)."""
    from sop_pipeline.training import lifecycle

    services = load_services()
    try:
        if run_id is None:
            runs = lifecycle.reconcile(services)
            if not runs:
                _print("No active training run.")
        else:
            run = lifecycle.advance(services, run_id, ignore_backoff=True)
            if run is None:
                raise UserError(f"There is no training run #{run_id}; `sop-bot runs list` "
                                "shows the runs.")
            runs = [run]
    finally:
        services.engine.dispose()
    for run in runs:
        _print(_run_line(run))


@friendly
def status_command(
    as_json: bool = typer.Option(False, "--json", help="Print JSON."),
) -> None:
    """Active model, examples, training runs and the fine-tuning deadlines."""
    from sop_pipeline.status import status_report

    services = load_services()
    try:
        report = status_report(services)
    finally:
        services.engine.dispose()
    if as_json:
        typer.echo(json.dumps(report.to_dict(), indent=2, default=str))
        return
    for line in report.lines():
        _print(line)
