"""The training-run lifecycle: a state machine stored in `TrainingRun`, advanced step by step.

    preparing -> uploading -> validating_files -> queued -> running
              -> succeeded -> evaluating -> promoted | rejected
              (or failed | cancelled at any point)

Why it is shaped like this:

* Crash safety. Every transition is committed before the next external call relies on it,
  and `advance` only ever looks at the stored row to decide what to do next. A process killed
  at any moment is resumed by `reconcile` at the next start-up or poll tick.
* Never two jobs for one snapshot. Before creating a provider job we ask the provider for a
  job carrying our `snapshot_hash` in its metadata and adopt it; a per-run lock that dies with
  its process (`locks.run_lock`) keeps two pollers from racing past that check.
* Conditional updates. A transition is `UPDATE ... WHERE state = <expected>`, so a run that
  was cancelled meanwhile is never dragged back to "running" by a poller holding stale data.
* Retryable provider errors keep the run in its state with a backoff stored in the row
  (`attempts`, `next_attempt_at`): no spinning, and every instance sees the same schedule.
  Non-retryable errors end the run with the provider's code and message kept for admins.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import UTC, date, datetime, timedelta
from pathlib import Path

from sqlalchemy import func, update
from sqlalchemy.exc import IntegrityError
from sqlmodel import Session, select

from sop_pipeline import audit, model_registry
from sop_pipeline.models import (
    DatasetSnapshot,
    ModelVersion,
    RunState,
    TrainingEvent,
    TrainingRun,
)
from sop_pipeline.notifications import Notification
from sop_pipeline.settings import Settings
from sop_pipeline.training.backend import BackendError, JobSpec, JobStatus, TrainingBackend
from sop_pipeline.training.backends import (
    RETRAINING_DISABLED,
    hyperparameters_from_settings,
    make_backend,
)
from sop_pipeline.training.crashpoints import crash_point
from sop_pipeline.training.locks import run_lock
from sop_pipeline.training.retry import backoff_delay, call_with_retry

log = logging.getLogger(__name__)

Sleep = Callable[[float], None]
MAX_STEPS_PER_ADVANCE = 12  # bound on one `advance` call; a run never needs more per tick
FILE_WAIT_POLLS = 30  # file_status checks per tick before giving the provider more time
FILE_WAIT_SECONDS = 2.0
MAX_BACKOFF_SECONDS = 3600.0
TRAINED_STATES = (RunState.SUCCEEDED, RunState.EVALUATING, RunState.PROMOTED, RunState.REJECTED)
POLLED_STATES = (RunState.VALIDATING_FILES, RunState.QUEUED, RunState.RUNNING)


class LifecycleError(ValueError):
    """A run operation that cannot be done; the text says why and what to do next."""


@dataclass
class StartResult:
    """What `start_run` did. `run` is None when nothing was started; `reason` says why.

    reason: started | dry_run | disabled | cutoff | active_run | too_few_examples |
    below_threshold | dataset | already_trained | cost
    """

    summary: str
    snapshot: DatasetSnapshot | None = None
    run: TrainingRun | None = None
    reason: str = "started"
    estimated_cost_usd: float | None = None
    details: dict = field(default_factory=dict)

    @property
    def started(self) -> bool:
        return self.run is not None


# --- deprecation -------------------------------------------------------------------------


def deprecation_status(settings: Settings, today: date) -> tuple[int, int, str | None]:
    """Days to the fine-tuning cutoff and to the base model's shutdown, and a warning sentence
    when either is within DEPRECATION_WARNING_DAYS (or already past)."""
    to_cutoff = (settings.fine_tune_cutoff_date - today).days
    to_shutdown = (settings.base_model_shutdown_date - today).days
    window = settings.deprecation_warning_days
    parts: list[str] = []
    if settings.training_backend == "openai":
        if to_cutoff < 0:
            parts.append(
                f"OpenAI stopped accepting new fine-tuning jobs on "
                f"{settings.fine_tune_cutoff_date.isoformat()}, so retraining on OpenAI is off."
            )
        elif to_cutoff <= window:
            parts.append(
                f"OpenAI stops accepting new fine-tuning jobs in {to_cutoff} day(s), on "
                f"{settings.fine_tune_cutoff_date.isoformat()}."
            )
    if to_shutdown < 0:
        parts.append(
            f"The base model {settings.sop_base_model} was shut down on "
            f"{settings.base_model_shutdown_date.isoformat()}."
        )
    elif to_shutdown <= window:
        parts.append(
            f"The base model {settings.sop_base_model} shuts down in {to_shutdown} day(s), on "
            f"{settings.base_model_shutdown_date.isoformat()}."
        )
    if not parts:
        return to_cutoff, to_shutdown, None
    advice = ("Switch TRAINING_BACKEND to azure or local (open weights), or to none for "
              "retrieval only, before then.")
    return to_cutoff, to_shutdown, " ".join(parts) + " " + advice


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
    query = select(TrainingRun.id).where(TrainingRun.state.in_(RunState.ACTIVE))
    return [int(i) for i in session.exec(query.order_by(TrainingRun.id))]


def list_runs(session: Session, limit: int = 20) -> list[TrainingRun]:
    """Runs, newest first."""
    query = select(TrainingRun).order_by(TrainingRun.id.desc()).limit(limit)  # type: ignore[union-attr]
    return list(session.exec(query))


def run_events(session: Session, run_id: int, *, kind: str | None = None) -> list[TrainingEvent]:
    """Stored provider events of a run, oldest first."""
    query = select(TrainingEvent).where(TrainingEvent.run_id == run_id)
    if kind:
        query = query.where(TrainingEvent.kind == kind)
    return list(session.exec(query.order_by(TrainingEvent.id)))


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
    run_id: int,
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
            .where(TrainingRun.id == run_id, TrainingRun.state == expect)
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
    if values.get("state") in RunState.TERMINAL:
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


# --- starting --------------------------------------------------------------------------------


def _refusal(summary: str, reason: str, **kwargs: object) -> StartResult:
    return StartResult(summary=summary, reason=reason, **kwargs)  # type: ignore[arg-type]


def _precheck(services, session: Session, force: bool) -> StartResult | None:  # noqa: ANN001
    """The refusals that need no snapshot: disabled, cutoff, active run, too few examples."""
    from sop_pipeline.examples import example_counts

    settings = services.settings
    if settings.training_backend == "none":
        return _refusal(RETRAINING_DISABLED, "disabled")
    today = _now(services).date()
    if settings.training_backend == "openai" and today > settings.fine_tune_cutoff_date:
        return _refusal(
            f"OpenAI no longer accepts new fine-tuning jobs (cutoff "
            f"{settings.fine_tune_cutoff_date.isoformat()}); set TRAINING_BACKEND to azure or "
            "local to keep retraining.", "cutoff")
    current = active_run(session)
    if current is not None:
        return _busy(current)
    counts = example_counts(session, settings)
    details = {"approved": counts.approved, "new": counts.new_since_last_training,
               "trainable": counts.total_trainable}
    if counts.total_trainable < settings.sop_min_examples:
        missing = settings.sop_min_examples - counts.total_trainable
        return _refusal(
            f"Only {counts.total_trainable} approved example(s) can be used for training and "
            f"fine-tuning needs at least {settings.sop_min_examples}; approve {missing} more "
            "SOP(s) first.", "too_few_examples", details=details)
    if not force and counts.new_since_last_training < settings.retrain_min_new_examples:
        return _refusal(
            f"Only {counts.new_since_last_training} new example(s) since the last training; "
            f"retraining starts at {settings.retrain_min_new_examples} "
            "(RETRAIN_MIN_NEW_EXAMPLES). Use --force to retrain anyway.",
            "below_threshold", details=details)
    return None


def _busy(run: TrainingRun) -> StartResult:
    return _refusal(
        f"Training run #{run.id} is already {run.state}; wait for it to finish or cancel it "
        f"with `sop-bot runs cancel {run.id}`.", "active_run", run=None,
        details={"active_run_id": run.id})


def _already_trained(session: Session, snapshot: DatasetSnapshot) -> TrainingRun | None:
    query = select(TrainingRun).where(
        TrainingRun.snapshot_id == snapshot.id, TrainingRun.state.in_(TRAINED_STATES))
    return session.exec(query).first()


def start_run(
    services,  # noqa: ANN001 - Services
    *,
    trigger: str,
    requested_by: str | None = None,
    force: bool = False,
    dry_run: bool = False,
) -> StartResult:
    """Snapshot the approved examples and create a run in "preparing", or say why not.

    The run row (with its unique `active_lock`) is the guard against two instances starting
    runs at once: the insert of the second one fails and it reports the active run instead.
    Nothing is sent to the provider here; `advance` does that.
    """
    from sop_pipeline.dataset import DatasetError, create_snapshot, snapshot_summary

    settings = services.settings
    with services.session() as session:
        refused = _precheck(services, session, force)
        if refused is not None:
            return refused
        try:
            snapshot = create_snapshot(session, settings)
        except DatasetError as exc:
            session.rollback()
            return _refusal(str(exc), "dataset")
        session.commit()  # the snapshot is a record of what could be trained, run or not
        summary = snapshot_summary(snapshot)
        cost = snapshot.estimated_cost_usd
        previous = _already_trained(session, snapshot)
        if previous is not None:
            return _refusal(
                f"Nothing new to train: run #{previous.id} already trained on exactly these "
                "examples. Approve or retract SOPs first.", "already_trained",
                snapshot=snapshot, estimated_cost_usd=cost)
        if cost > settings.max_training_cost_usd:
            return _refusal(
                f"Estimated cost ${cost:,.2f} is above MAX_TRAINING_COST_USD "
                f"(${settings.max_training_cost_usd:,.2f}); raise the limit or set fewer "
                "FINE_TUNE_EPOCHS or retract long examples.", "cost",
                snapshot=snapshot, estimated_cost_usd=cost)
        if dry_run:
            return _refusal(f"Dry run: would train on {summary}. No run was created.",
                            "dry_run", snapshot=snapshot, estimated_cost_usd=cost)
        run = _insert_run(services, session, snapshot, trigger, requested_by, summary)
        if isinstance(run, StartResult):
            return run
    _notify(services, "run_started",
            f"Training run #{run.id} started on {summary}.", run.id, snapshot=summary,
            estimated_cost_usd=cost)
    return StartResult(summary=f"Started training run #{run.id} on {summary}.",
                       snapshot=snapshot, run=run, reason="started", estimated_cost_usd=cost)


def _insert_run(
    services, session: Session, snapshot: DatasetSnapshot, trigger: str,  # noqa: ANN001
    requested_by: str | None, summary: str,
) -> TrainingRun | StartResult:
    settings = services.settings
    now = _now(services)
    run = TrainingRun(
        snapshot_id=snapshot.id, backend=settings.training_backend, state=RunState.PREPARING,
        trigger=trigger, requested_by=requested_by, base_model=_base_model(settings),
        hyperparameters=hyperparameters_from_settings(settings),
        estimated_cost_usd=snapshot.estimated_cost_usd, created_at=now, updated_at=now,
    )
    session.add(run)
    try:
        session.flush()
        audit.record(session, actor=requested_by or f"{trigger}", action="retrain",
                     subject=f"run:{run.id}", new_value=RunState.PREPARING,
                     reason=f"trigger={trigger}; {summary}")
        session.commit()
    except IntegrityError:
        session.rollback()
        current = active_run(session)
        if current is None:  # pragma: no cover - the other run finished in between
            return _refusal("Another training run was starting at the same moment; try again.",
                            "active_run")
        return _busy(current)
    crash_point(RunState.PREPARING)
    return run


# --- advancing ---------------------------------------------------------------------------------


@dataclass
class _Step:
    """What one step needs: the services, the backend and the injected sleep."""

    services: object
    backend: TrainingBackend
    sleep: Sleep

    @property
    def settings(self) -> Settings:
        return self.services.settings  # type: ignore[attr-defined]

    def call(self, fn: Callable[[], object]) -> object:
        """A provider call with in-call retries (short waits only; long ones become backoff)."""
        return call_with_retry(fn, max_attempts=self.settings.provider_max_retries + 1,
                               sleep=self.sleep)


def advance(
    services,  # noqa: ANN001 - Services
    run_id: int,
    *,
    backend: TrainingBackend | None = None,
    sleep: Sleep = time.sleep,
    ignore_backoff: bool = False,
) -> TrainingRun | None:
    """Do the next external call(s) for the run's stored state; safe to call any time.

    Continues while the run can make progress without waiting for the provider, then returns
    the run as stored. Skips a run in backoff (unless `ignore_backoff`) or one that another
    process is advancing right now.
    """
    with run_lock(services.engine, run_id) as held:
        if not held:
            log.info("run %s is being advanced by another process", run_id)
            return _load(services, run_id)
        stored = _load(services, run_id)
        kind = stored.backend if stored is not None else None
        if backend is None or (kind and getattr(backend, "name", kind) != kind):
            backend = make_backend(services, sleep=sleep, kind=kind)
        if backend is None:
            return _disable(services, run_id)
        step = _Step(services, backend, sleep)
        for _ in range(MAX_STEPS_PER_ADVANCE):
            run = _load(services, run_id)
            if run is None or run.state in RunState.TERMINAL:
                return run
            if _in_backoff(services, run) and not ignore_backoff:
                return run
            ignore_backoff = False
            if not _one_step(step, run):
                break
        return _load(services, run_id)


def _load(services, run_id: int) -> TrainingRun | None:  # noqa: ANN001
    with services.session() as session:
        return get_run(session, run_id)


def _in_backoff(services, run: TrainingRun) -> bool:  # noqa: ANN001
    return run.next_attempt_at is not None and _now(services) < run.next_attempt_at


def _disable(services, run_id: int) -> TrainingRun | None:  # noqa: ANN001
    run = _load(services, run_id)
    if run is not None and run.state not in RunState.TERMINAL:
        _transition(services, run_id, expect=run.state, state=RunState.FAILED,
                    error_code="backend_disabled", error_message=RETRAINING_DISABLED)
    return _load(services, run_id)


def _one_step(step: _Step, run: TrainingRun) -> bool:
    """Run the handler for the state; turn provider errors into backoff or failure."""
    handler = _HANDLERS[run.state]
    try:
        progressed = handler(step, run)
    except BackendError as exc:
        if exc.retryable:
            _record_backoff(step.services, run, exc)
        else:
            _fail(step.services, run, exc.code or "provider_error", exc.message)
        return False
    if run.attempts:  # the provider answered again: forget the transient error
        _reset_backoff(step.services, run.id)
    return progressed


def _reset_backoff(services, run_id: int) -> None:  # noqa: ANN001
    with services.session() as session:
        session.execute(
            update(TrainingRun)
            .where(TrainingRun.id == run_id, TrainingRun.attempts > 0,
                   TrainingRun.state.in_(RunState.ACTIVE))
            .values(**_clear_backoff()))
        session.commit()


def _record_backoff(services, run: TrainingRun, exc: BackendError) -> None:  # noqa: ANN001
    """Stay in the state; try again after a growing delay (or the provider's Retry-After)."""
    attempts = (run.attempts or 0) + 1
    delay = min(MAX_BACKOFF_SECONDS, backoff_delay(
        attempts, retry_after=exc.retry_after, base=services.settings.training_poll_seconds,
        cap=MAX_BACKOFF_SECONDS))
    with services.session() as session:
        session.execute(
            update(TrainingRun).where(TrainingRun.id == run.id, TrainingRun.state == run.state)
            .values(attempts=attempts, next_attempt_at=_now(services) + timedelta(seconds=delay),
                    error_code=exc.code, error_message=exc.message, updated_at=_now(services)))
        session.commit()
    log.warning("run %s: %s (%s); retry %d in %.0fs", run.id, exc.message, exc.code,
                attempts, delay)


def _fail(services, run: TrainingRun, code: str, message: str) -> None:  # noqa: ANN001
    """End the run, keeping the provider's code and message for admins."""
    if not _transition(services, run.id, expect=run.state, state=RunState.FAILED,
                       error_code=code, error_message=message, attempts=0,
                       next_attempt_at=None):
        return
    _notify(services, "run_failed",
            f"Training run #{run.id} failed ({code}): {message}", run.id,
            error_code=code, error_message=message)


# --- state handlers: each returns True when the next step can follow at once --------------


def _prepare(step: _Step, run: TrainingRun) -> bool:
    with step.services.session() as session:  # type: ignore[attr-defined]
        snapshot = _snapshot(session, run)
    missing = [p for p in (snapshot.train_path, snapshot.validation_path)
               if p and not Path(p).exists()]
    if missing:
        _fail(step.services, run, "dataset_missing",
              f"The snapshot file {missing[0]} is missing; start a new run with "
              "`sop-bot retrain --force` to write the snapshot again.")
        return False
    return _transition(step.services, run.id, expect=RunState.PREPARING,
                       state=RunState.UPLOADING)


def _upload(step: _Step, run: TrainingRun) -> bool:
    with step.services.session() as session:  # type: ignore[attr-defined]
        snapshot = _snapshot(session, run)
    if not run.train_file_id:
        uploaded = step.call(lambda: step.backend.upload(Path(snapshot.train_path)))
        _transition(step.services, run.id, expect=RunState.UPLOADING,
                    train_file_id=uploaded.id)  # type: ignore[attr-defined]
        crash_point("train_uploaded")
    if snapshot.validation_path and not run.validation_file_id:
        uploaded = step.call(lambda: step.backend.upload(Path(snapshot.validation_path)))
        _transition(step.services, run.id, expect=RunState.UPLOADING,
                    validation_file_id=uploaded.id)  # type: ignore[attr-defined]
    return _transition(step.services, run.id, expect=RunState.UPLOADING,
                       state=RunState.VALIDATING_FILES)


def _files_ready(step: _Step, run: TrainingRun) -> bool | None:
    """True when every file is processed, None if one failed (run failed), False to wait."""
    for file_id in filter(None, (run.train_file_id, run.validation_file_id)):
        for attempt in range(FILE_WAIT_POLLS):
            info = step.call(lambda fid=file_id: step.backend.file_status(fid))
            if info.status == "processed":  # type: ignore[attr-defined]
                break
            if info.status == "error":  # type: ignore[attr-defined]
                _fail(step.services, run, "file_invalid",
                      f"The provider rejected file {file_id}: "
                      f"{info.error or 'no details given'}. Check the dataset with "  # type: ignore[attr-defined]
                      "`sop-bot dataset check` and start a new run.")
                return None
            if attempt + 1 < FILE_WAIT_POLLS:
                step.sleep(FILE_WAIT_SECONDS)
        else:
            return False
    return True


def _adoptable(job: JobStatus | None, run: TrainingRun) -> bool:
    """A job found for our snapshot is ours to follow if it is this run's, or still live."""
    if job is None:
        return False
    if job.metadata.get("run_id") == str(run.id):
        return True
    return job.state not in (RunState.FAILED, RunState.CANCELLED)


def _create_job(step: _Step, run: TrainingRun) -> bool:
    ready = _files_ready(step, run)
    if not ready:
        return False
    with step.services.session() as session:  # type: ignore[attr-defined]
        snapshot_hash = _snapshot(session, run).content_hash
    job = step.call(lambda: step.backend.find_job(snapshot_hash))
    if _adoptable(job, run):  # type: ignore[arg-type]
        log.info("run %s adopts existing job %s", run.id, job.id)  # type: ignore[union-attr]
    else:
        spec = JobSpec(
            base_model=run.base_model, training_file_id=run.train_file_id or "",
            validation_file_id=run.validation_file_id,
            hyperparameters=dict(run.hyperparameters or {}),
            suffix=step.settings.fine_tune_suffix, seed=step.settings.fine_tune_seed,
            metadata={"snapshot_hash": snapshot_hash, "run_id": str(run.id)},
        )
        job = step.call(lambda: step.backend.start_job(spec))
        crash_point("job_created")
    return _store_job(step, run, job)  # type: ignore[arg-type]


def _store_job(step: _Step, run: TrainingRun, job: JobStatus) -> bool:
    stored = _transition(step.services, run.id, expect=RunState.VALIDATING_FILES,
                         provider_job_id=job.id)
    if not stored:  # cancelled while we were creating it: do not leave it running (and billing)
        log.warning("run %s moved on while job %s was created; cancelling the job", run.id,
                    job.id)
        try:
            step.backend.cancel(job.id)
        except BackendError as exc:
            log.error("could not cancel orphan job %s: %s", job.id, exc.message)
        return False
    _notify(step.services, "run_progress",
            f"Training run #{run.id}: provider job {job.id} created.", run.id, job_id=job.id,
            state=job.state)
    return True


def _poll(step: _Step, run: TrainingRun) -> bool:
    if not run.provider_job_id:
        return _create_job(step, run)
    job = step.call(lambda: step.backend.job_status(run.provider_job_id))
    _store_new_events(step, run)
    return _apply_job_status(step, run, job)  # type: ignore[arg-type]


def _apply_job_status(step: _Step, run: TrainingRun, job: JobStatus) -> bool:
    services = step.services
    if job.state == RunState.SUCCEEDED:
        ok = _transition(services, run.id, expect=run.state, state=RunState.SUCCEEDED,
                         fine_tuned_model=job.fine_tuned_model,
                         trained_tokens=job.trained_tokens, **_clear_backoff())
        if ok:
            _notify(services, "run_succeeded",
                    f"Training run #{run.id} finished: {job.fine_tuned_model} "
                    f"({job.trained_tokens or 0:,} trained tokens). Evaluating it now.",
                    run.id, model=job.fine_tuned_model, trained_tokens=job.trained_tokens)
        return ok
    if job.state == RunState.FAILED:
        _fail(services, run, job.error_code or "job_failed",
              job.error_message or "The provider reported the job as failed without details.")
        return False
    if job.state == RunState.CANCELLED:
        _transition(services, run.id, expect=run.state, state=RunState.CANCELLED,
                    error_code="cancelled_at_provider",
                    error_message="The job was cancelled at the provider.")
        return False
    if job.state != run.state and job.state in POLLED_STATES:
        _transition(services, run.id, expect=run.state, state=job.state)
    return False  # still training: wait for the next tick


def _store_new_events(step: _Step, run: TrainingRun) -> list[TrainingEvent]:
    """Fetch events after the newest stored one and store the unseen ones (idempotent)."""
    services = step.services
    with services.session() as session:  # type: ignore[attr-defined]
        last = session.exec(
            select(TrainingEvent.provider_event_id).where(TrainingEvent.run_id == run.id)
            .order_by(TrainingEvent.id.desc()).limit(1)  # type: ignore[union-attr]
        ).first()
    events = step.call(lambda: step.backend.events(run.provider_job_id, after=last))
    if not events:
        return []
    with services.session() as session:  # type: ignore[attr-defined]
        seen = set(session.exec(select(TrainingEvent.provider_event_id)
                                .where(TrainingEvent.run_id == run.id)))
        new = [_event_row(run.id, e) for e in events if e.id not in seen]  # type: ignore[union-attr]
        session.add_all(new)
        try:
            session.commit()
        except IntegrityError:  # another poller stored them first
            session.rollback()
            return []
    metrics = [e for e in new if e.kind == "metrics"]
    if metrics:
        latest = metrics[-1]
        _notify(services, "run_progress", _progress_text(run.id, latest), run.id,
                step=latest.step, train_loss=latest.train_loss, valid_loss=latest.valid_loss)
    return new


def _event_row(run_id: int, event) -> TrainingEvent:  # noqa: ANN001 - JobEvent
    return TrainingEvent(
        run_id=run_id, provider_event_id=event.id,
        created_at=datetime.fromtimestamp(event.created_at, UTC), level=event.level,
        kind=event.kind, message=event.message, step=event.step,
        train_loss=event.train_loss, valid_loss=event.valid_loss,
    )


def _progress_text(run_id: int, event: TrainingEvent) -> str:
    loss = f"train loss {event.train_loss:.4f}" if event.train_loss is not None else "no loss yet"
    if event.valid_loss is not None:
        loss += f", validation loss {event.valid_loss:.4f}"
    return f"Training run #{run_id}: step {event.step}, {loss}."


def _start_evaluation(step: _Step, run: TrainingRun) -> bool:
    return _transition(step.services, run.id, expect=RunState.SUCCEEDED,
                       state=RunState.EVALUATING)


def _evaluate(step: _Step, run: TrainingRun) -> bool:
    """Ask the evaluation gate; promote (new active model) or reject, in one transaction."""
    from sop_pipeline import evaluation

    services = step.services
    model_id = run.fine_tuned_model or ""
    try:
        decision = evaluation.gate(services, run, model_id)
    except BackendError:
        raise
    except Exception as exc:  # noqa: BLE001 - a broken gate must not lose a trained model
        log.exception("evaluation of run %s failed", run.id)
        raise BackendError(f"The evaluation gate failed: {exc}", code="evaluation_error",
                           retryable=True) from exc
    state = RunState.PROMOTED if decision.promote else RunState.REJECTED

    def record(session: Session) -> None:
        version = _model_version(session, run, decision.scores)
        if decision.promote:
            model_registry.activate(session, version, actor="system", action="promote",
                                    reason=f"run #{run.id} passed the evaluation gate")
        else:
            version.status = "rejected"
            session.add(version)
            audit.record(session, actor="system", action="reject",
                         subject=f"model:{version.id}", new_value=version.model_id,
                         reason=decision.report or f"run #{run.id} failed the evaluation gate")

    if not _transition(services, run.id, expect=RunState.EVALUATING, extra=record, state=state,
                       eval_scores=dict(decision.scores or {}), **_clear_backoff()):
        return False
    kind = "run_promoted" if decision.promote else "run_rejected"
    verdict = "is now the active model" if decision.promote else "was rejected by the gate"
    why = str((decision.scores or {}).get("reason") or decision.report or "").strip()
    _notify(services, kind, f"Training run #{run.id}: {model_id} {verdict}. {why}".strip(),
            run.id, model=model_id, scores=decision.scores)
    return False


def _model_version(session: Session, run: TrainingRun, scores: dict) -> ModelVersion:
    """The run's ModelVersion, created once (a crash mid-evaluation must not add a second)."""
    existing = session.exec(select(ModelVersion).where(ModelVersion.run_id == run.id)).first()
    if existing is not None:
        existing.eval_scores = dict(scores or {})
        return existing
    version = ModelVersion(model_id=run.fine_tuned_model or "", backend=run.backend,
                           base_model=run.base_model, run_id=run.id,
                           eval_scores=dict(scores or {}))
    session.add(version)
    session.flush()
    return version


_HANDLERS: dict[str, Callable[[_Step, TrainingRun], bool]] = {
    RunState.PREPARING: _prepare,
    RunState.UPLOADING: _upload,
    RunState.VALIDATING_FILES: _poll,
    RunState.QUEUED: _poll,
    RunState.RUNNING: _poll,
    RunState.SUCCEEDED: _start_evaluation,
    RunState.EVALUATING: _evaluate,
}


# --- reconciliation and cancelling ----------------------------------------------------------


def reconcile(
    services,  # noqa: ANN001
    *,
    backend: TrainingBackend | None = None,
    sleep: Sleep = time.sleep,
) -> list[TrainingRun]:
    """Resume every active run from its stored state (start-up and every poll tick)."""
    with services.session() as session:
        ids = active_run_ids(session)
    if not ids:
        return []
    if backend is None:
        backend = make_backend(services, sleep=sleep)
    results = []
    for run_id in ids:
        try:
            run = advance(services, run_id, backend=backend, sleep=sleep)
        except Exception:  # noqa: BLE001 - one broken run must not stop the others
            log.exception("advancing run %s failed", run_id)
            continue
        if run is not None:
            results.append(run)
    return results


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
        found = call_with_retry(lambda: backend.find_job(snapshot_hash), sleep=sleep,
                                max_attempts=services.settings.provider_max_retries + 1)
        if found is not None and found.metadata.get("run_id") == str(run.id):
            job_id = found.id
    if job_id is None:
        return
    status = call_with_retry(lambda: backend.job_status(job_id), sleep=sleep,
                             max_attempts=services.settings.provider_max_retries + 1)
    if status.state in (RunState.SUCCEEDED, RunState.FAILED, RunState.CANCELLED):
        return
    call_with_retry(lambda: backend.cancel(job_id), sleep=sleep,
                    max_attempts=services.settings.provider_max_retries + 1)


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
