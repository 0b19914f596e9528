"""`sop-bot import`, `sop-bot validate` and `sop-bot examples list|show|retract`."""

from __future__ import annotations

import dataclasses
import getpass
import json
import os
from pathlib import Path

import typer
from rich.markup import escape
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn
from rich.table import Table

from sop_pipeline.cli.common import UserError, console, friendly, load_services

IMPORT_HELP = """Import SOP files (.txt, .md, .docx, folders) as approved training examples.

Folders are searched recursively.
Each file is checked against the house format; compliant files become examples (source
"import"), files already imported are skipped, non-compliant and unreadable files are listed
with what to fix.

Exit codes: 0 when every file was imported or already present, or when at least one file was
imported (problem files are listed); 1 when no file could be imported and some failed, or no
SOP files were found; 2 for usage or configuration errors.
"""


def default_actor() -> str:
    """Who is running the command, for the audit log."""
    return os.environ.get("USER") or os.environ.get("USERNAME") or getpass.getuser()


def finding_dict(finding: object) -> dict:
    """A finding as plain data (the format checker's Finding is a dataclass)."""
    if dataclasses.is_dataclass(finding):
        return dataclasses.asdict(finding)  # type: ignore[arg-type]
    keys = ("code", "severity", "message", "section")
    return {key: getattr(finding, key, None) for key in keys}


def _finding_line(finding: object) -> str:
    data = finding_dict(finding)
    section = f" [{data['section']}]" if data.get("section") else ""
    return f"{data.get('severity', 'error')} {data.get('code')}{section}: {data.get('message')}"


def _load_template(settings: object):  # noqa: ANN202
    from sop_pipeline.sop_format import load_template
    from sop_pipeline.sop_format.template import TemplateError

    try:
        return load_template(settings.sop_template)  # type: ignore[attr-defined]
    except TemplateError as exc:
        raise UserError(f"{exc} Fix SOP_TEMPLATE or the template file.") from None


def register(app: typer.Typer) -> None:
    """Add `import`, `validate` and the `examples` group."""
    app.command("import", help=IMPORT_HELP)(import_command)
    app.command("validate")(validate_command)
    group = typer.Typer(help="Approved training examples.", no_args_is_help=True)
    group.command("list")(list_command)
    group.command("show")(show_command)
    group.command("retract")(retract_command)
    app.add_typer(group, name="examples")


@friendly
def import_command(
    paths: list[Path] = typer.Argument(..., help="SOP files or folders to import."),
    actor: str = typer.Option(None, help="Who approves the import (default: $USER)."),
) -> None:
    from sop_pipeline.importer import import_paths, iter_sop_files

    files = list(iter_sop_files(paths))
    if not files:
        shown = ", ".join(str(p) for p in paths)
        console.print(f"No .txt, .md or .docx files found in {shown}; nothing to import.")
        raise typer.Exit(1)
    services = load_services()
    try:
        with services.session() as session, Progress(
            TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(),
            console=console, transient=True,
        ) as progress:
            task = progress.add_task("Importing SOPs", total=len(files))
            report = import_paths(
                session, services.template, services.settings, files,
                actor=actor or default_actor(),
                progress=lambda path, _outcome: progress.advance(task),
            )
    finally:
        services.engine.dispose()
    _print_import_report(report)
    if report.failed and not (report.imported or report.duplicates):
        raise typer.Exit(1)


def _print_import_report(report: object) -> None:
    table = Table(title="Import")
    table.add_column("Outcome")
    table.add_column("Files", justify="right")
    table.add_row("imported", str(report.imported))
    table.add_row("already present", str(report.duplicates))
    table.add_row("not compliant", str(len(report.not_compliant)))
    table.add_row("unreadable", str(len(report.unreadable)))
    console.print(table)
    for outcome in report.not_compliant:
        console.print(f"[yellow]Not compliant:[/yellow] {escape(str(outcome.path))}",
                      highlight=False)
        for finding in outcome.findings:
            data = finding_dict(finding)
            if data.get("severity") == "error":
                console.print(f"  - {_finding_line(finding)}", highlight=False, markup=False)
    for outcome in report.unreadable:
        console.print(f"[red]Unreadable:[/red] {escape(outcome.error or '')}", highlight=False)
    console.print(report.summary())


@friendly
def validate_command(
    files: list[Path] = typer.Argument(..., help="SOP files (.txt, .md, .docx) to check."),
    as_json: bool = typer.Option(False, "--json", help="Print the report as JSON."),
) -> None:
    """Check SOP files against the house format; exit 1 if any is not compliant."""
    from sop_pipeline.importer import SopFileError, iter_sop_files, read_sop_file
    from sop_pipeline.settings import load_settings
    from sop_pipeline.sop_format import is_compliant, parse, validate
    from sop_pipeline.tokens import count_tokens

    settings = load_settings()
    template = _load_template(settings)
    results = []
    for path in iter_sop_files(files):
        try:
            text = read_sop_file(path)
        except SopFileError as exc:
            results.append({"file": str(path), "compliant": False, "error": str(exc),
                            "findings": []})
            continue
        findings = validate(
            parse(text, template), template,
            max_tokens=settings.sop_max_example_tokens, count_tokens=count_tokens,
        )
        results.append({
            "file": str(path), "compliant": is_compliant(findings), "error": None,
            "findings": [finding_dict(f) for f in findings],
        })
    if not results:
        raise UserError("No .txt, .md or .docx files were found; pass SOP files to validate.")
    if as_json:
        typer.echo(json.dumps(results, indent=2))
    else:
        _print_validation(results)
    if not all(r["compliant"] for r in results):
        raise typer.Exit(1)


def _print_validation(results: list[dict]) -> None:
    for result in results:
        mark = "[green]compliant[/green]" if result["compliant"] else "[red]NOT compliant[/red]"
        console.print(f"{escape(result['file'])}: {mark}", highlight=False)
        if result["error"]:
            console.print(f"  - {result['error']}", highlight=False, markup=False)
        for finding in result["findings"]:
            section = f" [{finding['section']}]" if finding.get("section") else ""
            console.print(
                f"  - {finding['severity']} {finding['code']}{section}: {finding['message']}",
                highlight=False, markup=False,
            )
    ok = sum(1 for r in results if r["compliant"])
    console.print(f"{ok} of {len(results)} file(s) compliant.")


@friendly
def list_command(
    status: str = typer.Option(None, help="Only 'approved' or 'retracted' examples."),
    limit: int = typer.Option(50, min=1, help="How many to show, newest first."),
) -> None:
    """List training examples, newest first."""
    from sop_pipeline.examples import example_counts, list_examples

    if status not in (None, "approved", "retracted"):
        raise UserError(f"Unknown status {status!r}; use 'approved' or 'retracted'.")
    services = load_services()
    try:
        with services.session() as session:
            rows = list_examples(session, status=status, limit=limit)
            counts = example_counts(session, services.settings)
    finally:
        services.engine.dispose()
    table = Table(title="Training examples")
    for column in ("ID", "Status", "Title", "Source", "Approver", "Approved (UTC)", "Tokens"):
        table.add_column(column, no_wrap=column != "Title")
    for ex in rows:
        table.add_row(
            str(ex.id), ex.status, escape(ex.title or "-"), ex.source, escape(ex.approver or "-"),
            ex.approved_at.strftime("%Y-%m-%d %H:%M"), str(ex.token_count),
        )
    console.print(table)
    console.print(
        f"{counts.approved} approved, {counts.retracted} retracted; {counts.progress}.",
        highlight=False,
    )


@friendly
def show_command(example_id: int = typer.Argument(..., help="Example id.")) -> None:
    """Show one example: its metadata, prompt and SOP text."""
    from sop_pipeline.examples import get_example

    services = load_services()
    try:
        with services.session() as session:
            ex = get_example(session, example_id)
    finally:
        services.engine.dispose()
    if ex is None:
        raise UserError(f"There is no example #{example_id}; see `sop-bot examples list`.")
    console.print(f"Example #{ex.id} ({ex.status})", highlight=False, markup=False)
    details = {
        "Title": ex.title, "Source": ex.source, "Source path": ex.source_path,
        "Slack message": f"{ex.slack_channel} {ex.slack_ts}" if ex.slack_ts else None,
        "Author": ex.author, "Approver": ex.approver,
        "Approved (UTC)": ex.approved_at.isoformat(),
        "Retracted": f"{ex.retracted_at.isoformat()} by {ex.retracted_by}"
        if ex.retracted_at else None,
        "Tokens": ex.token_count, "Hash": ex.content_hash,
    }
    for key, value in details.items():
        if value:
            console.print(f"{key}: {value}", highlight=False, markup=False)
    console.print(f"\nPrompt: {ex.prompt}\n", highlight=False, markup=False)
    console.print(ex.sop_text, highlight=False, markup=False)


@friendly
def retract_command(
    example_id: int = typer.Argument(..., help="Example id."),
    reason: str = typer.Option(..., help="Why it is retracted (kept in the audit log)."),
    actor: str = typer.Option(None, help="Who retracts it (default: $USER)."),
) -> None:
    """Retract an example: it is kept, audited, and left out of every future training set."""
    from sop_pipeline.examples import retract_example
    from sop_pipeline.models import ExampleStatus

    if not reason.strip():
        raise UserError("Give a reason with --reason; it is kept in the audit log.")
    services = load_services()
    try:
        with services.session() as session:
            before = _status_of(session, example_id)
            example = retract_example(
                session, actor=actor or default_actor(), reason=reason.strip(),
                example_id=example_id,
            )
            session.commit()
    finally:
        services.engine.dispose()
    if example is None:
        raise UserError(f"There is no example #{example_id}; see `sop-bot examples list`.")
    if before == ExampleStatus.RETRACTED:
        console.print(f"Example #{example_id} was already retracted; nothing changed.")
    else:
        console.print(f"Example #{example_id} retracted; it will not be used in future training.")


def _status_of(session: object, example_id: int) -> str | None:
    from sop_pipeline.examples import get_example

    example = get_example(session, example_id)  # type: ignore[arg-type]
    return example.status if example else None
