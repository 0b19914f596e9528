"""The admin status report: one snapshot of the model, the examples, training and deadlines.

The Slack layer (App Home, admin command) renders it and the CLI prints it; both take the
same `StatusReport`, so what admins see in Slack and in a terminal never disagrees.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from datetime import date, datetime

from sop_pipeline import model_registry
from sop_pipeline.training import lifecycle, sunset
from sop_pipeline.training.scheduler import next_check_time


def _iso(value: datetime | None) -> str | None:
    return value.isoformat() if value else None


@dataclass
class StatusReport:
    """Everything an admin asks about, as plain data (`to_dict()` is JSON-ready)."""

    backend: str
    active_model: str | None = None
    active_model_since: str | None = None
    base_model: str = ""
    approved: int = 0
    new_since_last_training: int = 0
    retracted: int = 0
    threshold: int = 0
    trainable: int = 0
    active_run: dict | None = None
    recent_runs: list[dict] = field(default_factory=list)
    next_check: str | None = None
    days_to_cutoff: int = 0
    days_to_shutdown: int = 0
    deprecation_warning: str | None = None
    retraining_enabled: bool = True
    rollback_to: str | None = None  # what `models rollback` would switch to (admin buttons)
    active_version_id: int | None = None  # the active version row ("base" rows included)
    # --- sunset: per configured backend, can it train and until when (training/sunset.toml)
    training_backends: list[dict] = field(default_factory=list)

    def to_dict(self) -> dict:
        return asdict(self)

    def lines(self) -> list[str]:
        """Plain sentences for the CLI (Slack renders blocks from `to_dict()` instead)."""
        model = (f"{self.active_model} (active since {self.active_model_since})"
                 if self.active_model else f"none: base model {self.base_model} + retrieval")
        out = [
            f"Model: {model}",
            f"Backend: {self.backend}" + ("" if self.retraining_enabled
                                          else " (retraining disabled)"),
            f"Examples: {self.approved} approved, {self.retracted} retracted, "
            f"{self.new_since_last_training} new since the last training "
            f"({self.threshold} needed for a retrain)",
        ]
        if self.active_run:
            run = self.active_run
            loss = ""
            if run.get("train_loss") is not None:
                loss = f", step {run.get('step')}, train loss {run['train_loss']:.4f}"
            if run.get("valid_loss") is not None:
                loss += f", validation loss {run['valid_loss']:.4f}"
            out.append(f"Active run: #{run['id']} {run['state']}{loss}")
            if run.get("error_message"):
                out.append(f"  retrying after: {run['error_message']}")
        else:
            out.append("Active run: none")
        for run in self.recent_runs:
            extra = f" error {run['error_code']}: {run['error_message']}" if run.get(
                "error_code") else ""
            out.append(f"  run #{run['id']} {run['state']} model={run.get('model') or '-'} "
                       f"created {run['created_at']}{extra}")
        if self.next_check:
            out.append(f"Next retrain check: {self.next_check}")
        out.append(f"Fine-tuning cutoff in {self.days_to_cutoff} day(s); base model shutdown "
                   f"in {self.days_to_shutdown} day(s)")
        if self.deprecation_warning:
            out.append(f"Warning: {self.deprecation_warning}")
        out.extend(sunset_lines(self.training_backends))
        return out


# --- sunset ---------------------------------------------------------------------------------


def sunset_lines(backends: list[dict]) -> list[str]:
    """One line per configured backend: whether it can train, until when, or why not."""
    out = []
    for item in backends:
        if item["can_train"]:
            until = f"until {item['until']}" if item.get("until") else "no announced end"
            out.append(f"Training on {item['backend']}: can train ({until})")
        else:
            out.append(f"Training on {item['backend']}: cannot train. {item.get('reason') or ''}"
                       .rstrip())
    return out


def _countdown(settings, today: date) -> tuple[int, int, str | None]:  # noqa: ANN001
    """Days to the active backend's last training day and retirement, and the warning."""
    backend = settings.training_backend
    model = sunset.model_for(settings, backend)
    found = sunset.window(sunset.PROVIDER_OF.get(backend, ""), model)
    to_cutoff = (found.last_training_day - today).days if found and found.last_training_day else 0
    to_shutdown = (found.retired_on - today).days if found and found.retired_on else 0
    return to_cutoff, to_shutdown, sunset.warning(backend, model, today,
                                                  settings.deprecation_warning_days)


def _run_row(run) -> dict:  # noqa: ANN001 - TrainingRun
    return {
        "id": run.id, "state": run.state, "model": run.fine_tuned_model,
        "created_at": _iso(run.created_at), "error_code": run.error_code,
        "error_message": run.error_message, "chart_url": run.chart_url,
    }


def status_report(services, *, scheduler=None) -> StatusReport:  # noqa: ANN001
    """Build the report from the database (and the scheduler's next run time, if given)."""
    from sop_pipeline.examples import example_counts

    settings = services.settings
    days_cutoff, days_shutdown, warning = _countdown(settings, services.clock().date())
    report = StatusReport(
        backend=settings.training_backend, base_model=settings.sop_base_model,
        threshold=settings.retrain_min_new_examples, days_to_cutoff=days_cutoff,
        days_to_shutdown=days_shutdown, deprecation_warning=warning,
        retraining_enabled=settings.training_backend != "none",
        next_check=_iso(next_check_time(scheduler)),
    )
    report.training_backends = sunset.report(services)
    with services.session() as session:
        active = model_registry.active_model(session)
        if active is not None:
            report.active_model = active.model_id
            report.active_model_since = _iso(active.activated_at)
        current = model_registry.active_version(session)
        report.active_version_id = current.id if current is not None else None
        target = model_registry.rollback_target(session, create=False)
        if target is not None:
            report.rollback_to = model_registry.label(target, settings.sop_base_model)
        counts = example_counts(session, settings)
        report.approved = counts.approved
        report.retracted = counts.retracted
        report.new_since_last_training = counts.new_since_last_training
        report.trainable = counts.total_trainable
        run = lifecycle.active_run(session)
        if run is not None:
            report.active_run = lifecycle.run_summary(session, run)
        report.recent_runs = [_run_row(r) for r in lifecycle.list_runs(session, limit=5)]
    return report
