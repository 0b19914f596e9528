"""`sop-bot eval [--model ID]`: score a model against the base model, on demand.

The same prompts and metrics as the promotion gate, so an admin can check a model before
activating it by hand, or see how the active one compares with plain retrieval.
"""

from __future__ import annotations

import json

import typer

from sop_pipeline.cli.common import UserError, console, friendly, load_services


def register(app: typer.Typer) -> None:
    """Add `sop-bot eval`."""
    app.command("eval")(eval_command)


@friendly
def eval_command(
    model: str | None = typer.Option(
        None, "--model", help="Model id to evaluate (default: the active model)."),
    as_json: bool = typer.Option(False, "--json", help="Print the scores as JSON."),
) -> None:
    """Evaluate a model (or the active one) against the base model in retrieval mode."""
    from sop_pipeline import evaluation
    from sop_pipeline.training.backend import BackendError

    services = load_services()
    try:
        report, scores = evaluation.evaluate_on_demand(services, model)
    except evaluation.EvaluationError as exc:
        raise UserError(str(exc)) from None
    except BackendError as exc:
        raise UserError(f"{exc.message} Check OPENAI_BASE_URL and try again later.") from None
    finally:
        services.engine.dispose()
    if as_json:
        typer.echo(json.dumps(scores, indent=2))
        return
    console.print(report, highlight=False, markup=False)
