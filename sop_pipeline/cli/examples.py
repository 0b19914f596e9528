"""`sop-bot import`, `sop-bot validate` and `sop-bot examples list|show|retract|renumbered`."""

from __future__ import annotations

import dataclasses
import getpass
import json
import os
import time
from pathlib import Path
from typing import TYPE_CHECKING

import typer
from rich.markup import escape
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn
from rich.table import Table

from sop_pipeline.cli.common import UserError, console, err_console, friendly, load_services

if TYPE_CHECKING:  # imported lazily at run time, so `sop-bot --help` stays fast
    from sqlmodel import Session

    from sop_pipeline.importer import FileOutcome
    from sop_pipeline.settings import Settings

IMPORT_HELP = """Import SOP files (.txt, .md, .docx, folders) as approved training examples.

Folders are searched recursively. Prints one line per file as it goes:
imported / already present / not compliant: <first finding> / unreadable: <why> /
skipped: <why> (README, catalogues and other files that are not SOPs), then a summary.
--dry-run checks everything and stores nothing; --json prints one JSON report instead.
When the output is not a terminal, a plain progress line goes to stderr now and then.

Exit codes: 0 when every file was imported or already present, or when at least one file was
imported (problem files are listed); 1 when no file could be imported and some failed, or no
SOP files were found; 2 for usage or configuration errors.
"""

# A plain progress line at most this often (files, seconds) when stderr is not a terminal.
PROGRESS_EVERY_FILES = 100
PROGRESS_EVERY_SECONDS = 10.0


def default_actor() -> str:
    """Who is running the command, for the audit log."""
    return os.environ.get("USER") or os.environ.get("USERNAME") or getpass.getuser()


def finding_dict(finding: object) -> dict:
    """A finding as plain data (the format checker's Finding is a dataclass)."""
    if dataclasses.is_dataclass(finding):
        # typeshed's is_dataclass also admits dataclass types; findings are instances
        return dataclasses.asdict(finding)  # type: ignore[arg-type]
    keys = ("code", "severity", "message", "section")
    return {key: getattr(finding, key, None) for key in keys}


def _finding_line(finding: object) -> str:
    data = finding_dict(finding)
    section = f" [{data['section']}]" if data.get("section") else ""
    return f"{data.get('severity', 'error')} {data.get('code')}{section}: {data.get('message')}"


def _load_template(settings: Settings):  # noqa: ANN202
    from sop_pipeline.sop_format import load_template
    from sop_pipeline.sop_format.template import TemplateError

    try:
        return load_template(settings.sop_template)
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
    group.command("renumbered")(renumbered_command)
    app.add_typer(group, name="examples")


@friendly
def import_command(
    paths: list[Path] = typer.Argument(..., help="SOP files or folders to import."),
    actor: str = typer.Option(None, help="Who approves the import (default: $USER)."),
    dry_run: bool = typer.Option(False, "--dry-run", help="Check every file; store nothing."),
    as_json: bool = typer.Option(False, "--json", help="Print the report as JSON."),
) -> None:
    from sop_pipeline.importer import import_paths, iter_sop_files

    files = list(iter_sop_files(paths))
    if not files:
        shown = ", ".join(str(p) for p in paths)
        console.print(f"No .txt, .md or .docx files found in {shown}; nothing to import.")
        raise typer.Exit(1)
    services = load_services()
    reporter = _ImportProgress(len(files), dry_run=dry_run, quiet=as_json)
    try:
        with services.session() as session, reporter:
            report = import_paths(
                session, services.template, services.settings, files,
                actor=actor or default_actor(), progress=reporter.file_done, dry_run=dry_run,
            )
    finally:
        services.engine.dispose()
    if as_json:
        typer.echo(json.dumps(report.as_dict(), indent=2))
    else:
        typer.echo(report.summary())
    if report.failed and not (report.imported or report.duplicates):
        raise typer.Exit(1)


class _ImportProgress:
    """Per-file triage lines on stdout as files finish; a progress bar on a terminal, or a
    plain "k of n files" line on stderr now and then when output is piped or logged."""

    def __init__(self, total: int, *, dry_run: bool, quiet: bool) -> None:
        self.total, self.dry_run, self.quiet = total, dry_run, quiet
        self.done = 0
        self.live = err_console.is_terminal
        self.bar: Progress | None = None
        self.last_files = 0
        self.last_time = time.monotonic()

    def __enter__(self) -> _ImportProgress:
        if self.live:
            self.bar = Progress(
                TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(),
                console=err_console, transient=True,
            )
            self.bar.start()
            self.task = self.bar.add_task("Importing SOPs", total=self.total)
        return self

    def __exit__(self, *exc: object) -> None:
        if self.bar is not None:
            self.bar.stop()
        elif self.done != self.last_files:
            self._plain_line()

    def file_done(self, _path: Path, outcome: FileOutcome) -> None:
        self.done += 1
        if not self.quiet:
            line = outcome.line(self.dry_run)
            if self.bar is not None:
                self.bar.console.print(line, markup=False, highlight=False, soft_wrap=True)
            else:
                typer.echo(line)
        if self.bar is not None:
            self.bar.advance(self.task)
        elif (
            self.done - self.last_files >= PROGRESS_EVERY_FILES
            or time.monotonic() - self.last_time >= PROGRESS_EVERY_SECONDS
        ):
            self._plain_line()

    def _plain_line(self) -> None:
        self.last_files, self.last_time = self.done, time.monotonic()
        typer.echo(f"progress: {self.done} of {self.total} files", err=True)


@friendly
def validate_command(
    files: list[Path] = typer.Argument(..., help="SOP files (.txt, .md, .docx) to check."),
    as_json: bool = typer.Option(False, "--json", help="Print the report as JSON."),
) -> None:
    """Check SOP files against the house format; exit 1 if any is not compliant.

    Each file gets the same triage line as `sop-bot import` (would be imported / not
    compliant: <first finding> / unreadable / skipped), then its findings.
    """
    from sop_pipeline.importer import (
        FileOutcome,
        iter_sop_files,
        looks_like_sop,
        not_an_sop,
        read_for_import,
    )
    from sop_pipeline.settings import load_settings
    from sop_pipeline.sop_format import is_compliant, parse, validate
    from sop_pipeline.tokens import count_tokens

    settings = load_settings()
    template = _load_template(settings)
    results = []
    for path in iter_sop_files(files):
        text, outcome, notes = read_for_import(path)
        findings: list = []
        if outcome is None:
            assert text is not None
            findings = validate(
                parse(text, template), template,
                max_tokens=settings.sop_max_example_tokens, count_tokens=count_tokens,
            )
            if is_compliant(findings):
                outcome = FileOutcome(path, "approved", findings=findings, notes=notes)
            elif looks_like_sop(text, template):
                outcome = FileOutcome(path, "not_compliant", findings=findings, notes=notes)
            else:
                outcome = not_an_sop(path)
                findings = []
        results.append({
            "file": str(path), "compliant": outcome.imported, "error": outcome.error,
            "triage": outcome.triage(dry_run=True), "notes": notes,
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
        typer.echo(f"{result['file']}: {result['triage']}")
        for finding in result["findings"]:
            section = f" [{finding['section']}]" if finding.get("section") else ""
            typer.echo(
                f"  - {finding['severity']} {finding['code']}{section}: {finding['message']}"
            )
    ok = sum(1 for r in results if r["compliant"])
    typer.echo(f"{ok} of {len(results)} file(s) compliant.")


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


def _status_of(session: Session, example_id: int) -> str | None:
    from sop_pipeline.examples import get_example

    example = get_example(session, example_id)
    return example.status if example else None


@friendly
def renumbered_command() -> None:
    """List approved examples whose text looks renumbered by a release before issue #13.

    Those releases turned wrapped lines into new steps and renumbered the steps after them
    ("5.2 cleaning operation and ..."); only examples stored then are checked. The author's
    numbering is not in the database, so
    nothing is changed here: re-import the original file or approve the original Slack
    message again, and the example keeps its id and gets the author's text. Exit code 1
    when some example looks renumbered.
    """
    from sop_pipeline.legacy_text import renumbered_examples

    services = load_services()
    try:
        with services.session() as session:
            suspects, checked = renumbered_examples(session)
    finally:
        services.engine.dispose()
    if not suspects:
        console.print(f"None of the {checked} approved examples stored before verbatim "
                      "training text looks renumbered; nothing to do.", highlight=False,
                      soft_wrap=True)
        return
    for suspect in suspects:
        count = len(suspect.lines)
        line = (f"#{suspect.example_id} {suspect.title or '(no title)'}: {count} numbered "
                f"line{'s' if count != 1 else ''} continue the line before, e.g. "
                f"\"{suspect.lines[0]}\"")
        if suspect.same_wording:
            others = ", ".join(f"#{i}" for i in suspect.same_wording)
            line += (f"; {others} has the same words, so the SOP is stored twice: retract "
                     f"#{suspect.example_id} once you have checked it")
        console.print(line, highlight=False, markup=False, soft_wrap=True)
    console.print(
        f"{len(suspects)} of {checked} approved examples stored before verbatim training "
        "text look renumbered (wrapped lines stored as new steps). Their text cannot be "
        "restored without the original: re-import the original file with `sop-bot import "
        "<file>` or approve the original Slack message again; each keeps its id and gets "
        "your numbering.",
        highlight=False, markup=False, soft_wrap=True,
    )
    raise typer.Exit(1)
