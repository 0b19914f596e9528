"""`sop-bot generate "Write an SOP for ..."`: draft an SOP from the terminal.

The draft streams to stdout as the model writes it; the compliance report and the DRAFT
notice go to stderr so `> file.txt` captures only the SOP. `--out` writes .md, .txt or .docx
(each marked as a DRAFT); `--json` prints one JSON object instead of streaming.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

import typer

from sop_pipeline.cli.common import UserError, err_console, fail, friendly, load_services

OUT_SUFFIXES = (".md", ".txt", ".docx")


def _check_out(out: Path | None) -> None:
    """Refuse an unknown extension before spending a model call."""
    if out is not None and out.suffix.lower() not in OUT_SUFFIXES:
        raise UserError(
            f"Cannot write {out.name}: use a file name ending in .md, .txt or .docx."
        )


def write_output(result, out: Path, template) -> None:  # noqa: ANN001 - GenerationResult
    """Write the draft in the format the extension asks for, always marked as a DRAFT."""
    suffix = out.suffix.lower()
    out.parent.mkdir(parents=True, exist_ok=True)
    if suffix == ".md":
        out.write_text(result.markdown, encoding="utf-8")
    elif suffix == ".txt":
        out.write_text(f"{result.draft_notice}\n\n{result.text}", encoding="utf-8")
    else:
        from sop_pipeline.generation.docx_export import to_docx

        to_docx(result.sop, template, model=result.model, generated_at=result.generated_at,
                path=out)


def result_json(result) -> dict:  # noqa: ANN001 - GenerationResult
    """A stable JSON shape for scripts."""
    return {
        "generation_id": result.generation_id,
        "status": result.status,
        "mode": result.mode,
        "model": result.model,
        "compliant": result.compliant,
        "findings": [
            {"code": f.code, "severity": f.severity, "message": f.message, "section": f.section}
            for f in result.findings
        ],
        "prompt_tokens": result.prompt_tokens,
        "completion_tokens": result.completion_tokens,
        "latency_ms": result.latency_ms,
        "repair_rounds": result.repair_rounds,
        "retrieved_example_ids": result.retrieved_example_ids,
        "draft_notice": result.draft_notice,
        "text": result.text,
        "markdown": result.markdown,
        "error": result.error,
    }


def _stdout_write(text: str) -> None:
    sys.stdout.write(text)
    sys.stdout.flush()


def _on_reset() -> None:
    err_console.print(
        "\n\n[yellow]The draft did not follow the house format; asking the model to fix "
        "it...[/yellow]\n", highlight=False,
    )


def register(app: typer.Typer) -> None:
    """Add `sop-bot generate`."""

    @app.command("generate")
    @friendly
    def generate_command(
        request: str = typer.Argument(..., help='What to write, e.g. "Write an SOP for ..."'),
        out: Path | None = typer.Option(
            None, "--out", "-o", help="Also write the draft to FILE (.md, .txt or .docx)."
        ),
        as_json: bool = typer.Option(False, "--json", help="Print one JSON object, no stream."),
        requester: str = typer.Option("cli", help="Who asked (stored with the generation)."),
    ) -> None:
        """Draft an SOP with the active model (or the base model with retrieval)."""
        from sop_pipeline.generation import RequestRejected, generate

        _check_out(out)
        services = load_services()
        try:
            result = generate(
                services, request, requester,
                on_delta=None if as_json else _stdout_write,
                on_reset=None if as_json else _on_reset,
            )
        except RequestRejected as exc:
            raise UserError(str(exc)) from None
        if as_json:
            typer.echo(json.dumps(result_json(result), ensure_ascii=False, indent=2))
        if not result.ok:
            raise fail(result.error or "The draft could not be generated.", code=1)
        if not as_json:
            _stdout_write("\n")
            err_console.print(f"\n[bold]{result.draft_notice}[/bold]", highlight=False)
            err_console.print(result.summary, highlight=False)
            err_console.print(
                f"Mode: {result.mode}; tokens: {result.prompt_tokens} prompt + "
                f"{result.completion_tokens} completion; {result.latency_ms} ms.",
                highlight=False,
            )
        if out is not None:
            write_output(result, out, services.template)
            err_console.print(f"Wrote {out}.", highlight=False)
