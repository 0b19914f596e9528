"""Training-run records: looking runs up, the one committed state transition, cancelling.

A transition is `UPDATE ... WHERE state = <expected>`, so a run that was cancelled meanwhile is
never dragged back by a poller holding stale data (the state machine is described in
`lifecycle`; the steps are in `steps`).
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from datetime import datetime

from sqlalchemy import func, update
from sqlmodel import Session, col, select

from sop_pipeline import audit
from sop_pipeline.models import DatasetSnapshot, RunState, TrainingEvent, TrainingRun
from sop_pipeline.notifications import Notification
from sop_pipeline.settings import Settings
from sop_pipeline.training.backend import TrainingBackend
from sop_pipeline.training.backends import make_backend
from sop_pipeline.training.crashpoints import crash_point

log = logging.getLogger(__name__)

Sleep = Callable[[float], None]


class LifecycleError(ValueError):
    """A run operation that cannot be done; the text says why and what to do next."""


# --- small helpers -------------------------------------------------------------------------


def _now(services) -> datetime:  # noqa: ANN001 - Services (kept untyped: no import cycle)
    return services.clock()


def get_run(session: Session, run_id: int) -> TrainingRun | None:
    """The run as stored right now (bypassing the identity map's cached copy)."""
    query = select(TrainingRun).where(TrainingRun.id == run_id)
    return session.exec(query.execution_options(populate_existing=True)).first()


def active_run(session: Session) -> TrainingRun | None:
    """The one non-terminal run, if any."""
    query = select(TrainingRun).where(TrainingRun.active_lock == "active")
    return session.exec(query.execution_options(populate_existing=True)).first()


def active_run_ids(session: Session) -> list[int]:
    query = select(col(TrainingRun.id)).where(col(TrainingRun.state).in_(RunState.ACTIVE))
    return [int(i) for i in session.exec(query.order_by(col(TrainingRun.id))) if i is not None]


def list_runs(session: Session, limit: int = 20) -> list[TrainingRun]:
    """Runs, newest first."""
    query = select(TrainingRun).order_by(TrainingRun.id.desc()).limit(limit)  # type: ignore[union-attr]
    return list(session.exec(query))


def run_events(session: Session, run_id: int, *, kind: str | None = None) -> list[TrainingEvent]:
    """Stored provider events of a run, oldest first."""
    query = select(TrainingEvent).where(TrainingEvent.run_id == run_id)
    if kind:
        query = query.where(TrainingEvent.kind == kind)
    return list(session.exec(query.order_by(col(TrainingEvent.id))))


def latest_metrics(session: Session, run_id: int) -> TrainingEvent | None:
    """The newest metrics event (step, train loss, validation loss) of a run."""
    query = (
        select(TrainingEvent)
        .where(TrainingEvent.run_id == run_id, TrainingEvent.kind == "metrics")
        .order_by(TrainingEvent.id.desc())  # type: ignore[union-attr]
    )
    return session.exec(query).first()


def _snapshot(session: Session, run: TrainingRun) -> DatasetSnapshot:
    return session.exec(select(DatasetSnapshot).where(DatasetSnapshot.id == run.snapshot_id)).one()


def _base_model(settings: Settings) -> str:
    if settings.training_backend == "local":
        return settings.local_base_model or ""
    return settings.sop_base_model


def _notify(services, kind: str, text: str, run_id: int | None, **data: object) -> None:  # noqa: ANN001
    """Tell admins; a broken notifier must never break a run."""
    try:
        services.notifier.notify(Notification(kind=kind, text=text, run_id=run_id, data=data))
    except Exception:  # noqa: BLE001
        log.exception("notifier failed for %s", kind)


def _transition(
    services,  # noqa: ANN001
    run_id: int | None,
    *,
    expect: str,
    extra: Callable[[Session], None] | None = None,
    **values: object,
) -> bool:
    """`UPDATE training_run SET values WHERE id AND state = expect`, committed (with `extra`
    work such as an audit record in the same transaction). False when the run moved on."""
    values.setdefault("updated_at", _now(services))
    if values.get("state") in RunState.TERMINAL:
        values.setdefault("active_lock", None)
        values.setdefault("finished_at", _now(services))
    with services.session() as session:
        result = session.execute(
            update(TrainingRun)
            .where(col(TrainingRun.id) == run_id, col(TrainingRun.state) == expect)
            .values(**values)
        )
        if result.rowcount != 1:
            session.rollback()
            return False
        if extra is not None:
            extra(session)
        session.commit()
    if "state" in values and values["state"] != expect:
        crash_point(str(values["state"]))
    if values.get("state") in RunState.TERMINAL and run_id is not None:  # it matched a row
        _publish_report(services, run_id)
    return True


def _publish_report(services, run_id: int) -> None:  # noqa: ANN001
    """Loss chart for the admins once a run has ended; a chart failure never breaks a run."""
    from sop_pipeline.charts import publish_run_report

    run = _load(services, run_id)
    if run is None:
        return
    try:
        publish_run_report(services, run)
    except Exception:  # noqa: BLE001
        log.exception("could not draw the loss chart of run %s", run_id)


def _clear_backoff() -> dict:
    return {"attempts": 0, "next_attempt_at": None, "error_code": None, "error_message": None}


def _load(services, run_id: int) -> TrainingRun | None:  # noqa: ANN001
    with services.session() as session:
        return get_run(session, run_id)


def _fail(services, run: TrainingRun, code: str, message: str) -> None:  # noqa: ANN001
    """End the run, keeping the provider's code and message for admins."""
    if not _transition(services, run.id, expect=run.state, state=RunState.FAILED,
                       error_code=code, error_message=message, attempts=0,
                       next_attempt_at=None):
        return
    _notify(services, "run_failed",
            f"Training run #{run.id} failed ({code}): {message}", run.id,
            error_code=code, error_message=message)


# --- cancelling and reporting ----------------------------------------------------------------


def cancel_run(
    services,  # noqa: ANN001
    run_id: int,
    actor: str,
    *,
    backend: TrainingBackend | None = None,
    sleep: Sleep = time.sleep,
    reason: str | None = None,
) -> TrainingRun:
    """Cancel the run (and its provider job, also one created just before a crash); audited."""
    run = _load(services, run_id)
    if run is None:
        raise LifecycleError(f"There is no training run #{run_id}; `sop-bot runs list` shows "
                             "the runs.")
    if run.state in RunState.TERMINAL:
        raise LifecycleError(f"Training run #{run_id} already ended ({run.state}); nothing to "
                             "cancel.")
    if run.state in (RunState.SUCCEEDED, RunState.EVALUATING):
        raise LifecycleError(f"Training run #{run_id} already finished training and is being "
                             "evaluated; reject its model with `sop-bot models rollback` "
                             "instead.")
    if backend is None:
        backend = make_backend(services, sleep=sleep)
    _cancel_at_provider(services, run, backend, sleep)

    def record(session: Session) -> None:
        audit.record(session, actor=actor, action="cancel", subject=f"run:{run_id}",
                     old_value=run.state, new_value=RunState.CANCELLED, reason=reason)

    if not _transition(services, run_id, expect=run.state, extra=record,
                       state=RunState.CANCELLED, error_code="cancelled",
                       error_message=f"Cancelled by {actor}."):
        return cancel_run(services, run_id, actor, backend=backend, sleep=sleep, reason=reason)
    _notify(services, "run_cancelled", f"Training run #{run_id} was cancelled by {actor}.",
            run_id)
    return _load(services, run_id)  # type: ignore[return-value]


def _cancel_at_provider(
    services, run: TrainingRun, backend: TrainingBackend | None, sleep: Sleep  # noqa: ANN001
) -> None:
    if backend is None:
        return
    job_id = run.provider_job_id
    if job_id is None and run.state == RunState.VALIDATING_FILES:
        with services.session() as session:
            snapshot_hash = _snapshot(session, run).content_hash
        found = backend.find_job(snapshot_hash)
        if found is not None and found.metadata.get("run_id") == str(run.id):
            job_id = found.id
    if job_id is None:
        return
    status = backend.job_status(job_id)
    if status.state in (RunState.SUCCEEDED, RunState.FAILED, RunState.CANCELLED):
        return
    backend.cancel(job_id)


def run_summary(session: Session, run: TrainingRun) -> dict:
    """Plain data about a run for the CLI, status and Slack."""
    metrics = latest_metrics(session, run.id) if run.id else None
    n_events = session.exec(select(func.count()).select_from(TrainingEvent)
                            .where(TrainingEvent.run_id == run.id)).one()
    return {
        "id": run.id, "state": run.state, "backend": run.backend, "trigger": run.trigger,
        "requested_by": run.requested_by, "base_model": run.base_model,
        "job_id": run.provider_job_id, "model": run.fine_tuned_model,
        "train_file_id": run.train_file_id, "validation_file_id": run.validation_file_id,
        "hyperparameters": run.hyperparameters, "estimated_cost_usd": run.estimated_cost_usd,
        "trained_tokens": run.trained_tokens, "error_code": run.error_code,
        "error_message": run.error_message, "attempts": run.attempts,
        "next_attempt_at": run.next_attempt_at.isoformat() if run.next_attempt_at else None,
        "eval_scores": run.eval_scores, "created_at": run.created_at.isoformat(),
        "finished_at": run.finished_at.isoformat() if run.finished_at else None,
        "step": metrics.step if metrics else None,
        "train_loss": metrics.train_loss if metrics else None,
        "valid_loss": metrics.valid_loss if metrics else None,
        "events": int(n_events),
    }
