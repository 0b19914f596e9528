"""`sop-bot dataset export|check`: portable training files and their pre-upload checks."""

from __future__ import annotations

import json
from pathlib import Path
from typing import TYPE_CHECKING

import typer
from rich.table import Table

from sop_pipeline.cli.common import UserError, console, friendly, load_services

if TYPE_CHECKING:  # imported lazily at run time, so `sop-bot --help` stays fast
    from sop_pipeline.dataset import DatasetReport


def register(app: typer.Typer) -> None:
    """Add `sop-bot dataset ...`."""
    group = typer.Typer(help="Training datasets (chat-format JSONL).", no_args_is_help=True)
    group.command("export")(export_command)
    group.command("check")(check_command)
    app.add_typer(group, name="dataset")


@friendly
def export_command(
    out: Path = typer.Option(..., "--out", help="Where to write the training JSONL."),
    validation_out: Path = typer.Option(
        None, "--validation-out", help="Where to write the validation JSONL (if there is one)."
    ),
) -> None:
    """Snapshot the approved examples and write them as fine-tuning JSONL."""
    from sop_pipeline.dataset import DatasetError
    from sop_pipeline.snapshots import export_dataset, snapshot_summary

    for target in (out, validation_out):
        if target is not None and target.is_dir():
            raise UserError(f"{target} is a folder; pass a file name such as train.jsonl.")
    services = load_services()
    try:
        with services.session() as session:
            try:
                snapshot = export_dataset(session, services.settings, out, validation_out)
            except DatasetError as exc:
                raise UserError(str(exc)) from None
            session.commit()
    finally:
        services.engine.dispose()
    console.print(f"Snapshot #{snapshot.id}: {snapshot_summary(snapshot)}.", highlight=False)
    console.print(f"Training file: {out}", highlight=False)
    if validation_out is not None:
        if snapshot.n_validation:
            console.print(f"Validation file: {validation_out}", highlight=False)
        else:
            console.print(
                f"No validation file written to {validation_out}: fewer than 20 examples, "
                "so all of them are used for training.",
                highlight=False,
            )


@friendly
def check_command(
    file: Path = typer.Argument(..., help="A chat-format JSONL file."),
    as_json: bool = typer.Option(False, "--json", help="Print the report as JSON."),
) -> None:
    """Check a JSONL file like OpenAI's data-prep notebook; exit 1 if it has errors."""
    from sop_pipeline.dataset import DatasetError, check_dataset
    from sop_pipeline.settings import load_settings

    settings = load_settings()
    if file.is_dir():
        raise UserError(f"{file} is a folder; pass a .jsonl file.")
    try:
        report = check_dataset(file, settings)
    except DatasetError as exc:
        raise UserError(str(exc)) from None
    if as_json:
        typer.echo(json.dumps(report.to_dict(), indent=2))
    else:
        _print_report(file, report)
    if not report.ok:
        raise typer.Exit(1)


def _print_report(file: Path, report: DatasetReport) -> None:
    console.print(f"{file}: {report.n_lines} line(s), {report.n_examples} example(s).",
                  highlight=False)
    if report.errors:
        table = Table(title="Errors")
        table.add_column("Error key")
        table.add_column("Count", justify="right")
        table.add_column("Lines")
        for key, count in report.errors.items():
            lines = report.error_lines.get(key, [])
            shown = ", ".join(str(n) for n in lines[:20]) + (" ..." if len(lines) > 20 else "")
            table.add_row(key, str(count), shown or "-")
        console.print(table)
        for sentence in report.error_sentences():
            console.print(f"- {sentence}", highlight=False, markup=False)
    else:
        console.print("[green]No errors found.[/green]")
    for key, count in report.warnings.items():
        console.print(f"Warning: {key} ({count})", highlight=False)
    stats = Table(title="Tokens per example")
    for column in ("", "min", "max", "mean", "median", "p90"):
        stats.add_column(column)
    for name, dist in (("total", report.total_tokens), ("assistant", report.assistant_tokens)):
        stats.add_row(name, str(dist.min), str(dist.max), f"{dist.mean:g}",
                      f"{dist.median:g}", f"{dist.p90:g}")
    console.print(stats)
    console.print(
        f"{report.n_over_limit} example(s) over the {report.token_limit:,}-token limit.",
        highlight=False,
    )
    console.print(f"Estimate: {report.summary()}.", highlight=False)
