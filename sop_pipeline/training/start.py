"""Starting a training run: the refusals, the dataset snapshot and the run row.

The run row (with its unique `active_lock`) is the guard against two instances starting runs
at once; nothing is sent to the provider here (`steps.advance` does that).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import cast

from sqlalchemy.exc import IntegrityError
from sqlmodel import Session, col, select

from sop_pipeline import audit
from sop_pipeline.models import DatasetSnapshot, RunState, TrainingRun
from sop_pipeline.training import sunset
from sop_pipeline.training.backends import RETRAINING_DISABLED, hyperparameters_from_settings
from sop_pipeline.training.crashpoints import crash_point
from sop_pipeline.training.runs import _base_model, _notify, _now, active_run

TRAINED_STATES = (RunState.SUCCEEDED, RunState.EVALUATING, RunState.PROMOTED, RunState.REJECTED)


@dataclass
class StartResult:
    """What `start_run` did. `run` is None when nothing was started; `reason` says why.

    reason: started | dry_run | disabled | cutoff | org_blocked | active_run | too_few_examples |
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


# --- sunset (dates in training/sunset.toml) -------------------------------------------------


def sunset_refusal(services, session: Session) -> StartResult | None:  # noqa: ANN001
    """Refuse when the provider's table says training ended, or OpenAI refused this org."""
    settings = services.settings
    backend = settings.training_backend
    found = sunset.availability(backend, _base_model(settings), _now(services).date(),
                                org_blocked=sunset.org_blocked(session))
    if found.can_train:
        return None
    reason = "org_blocked" if found.reason == sunset.ORG_BLOCKED else "cutoff"
    return _refusal(found.reason or "", reason,
                    details={"backend": backend, "until": found.to_dict()["until"]})


# --- starting --------------------------------------------------------------------------------


def _refusal(summary: str, reason: str, **kwargs: object) -> StartResult:
    return StartResult(summary=summary, reason=reason, **kwargs)  # type: ignore[arg-type]


def _precheck(services, session: Session, force: bool,  # noqa: ANN001
              ask_again_as: str | None = None) -> StartResult | None:
    """The refusals that need no snapshot: disabled, cutoff, active run, too few examples.
    `ask_again_as`: the admin whose forced retrain asks OpenAI again after it refused us."""
    from sop_pipeline.examples import example_counts

    settings = services.settings
    if settings.training_backend == "none":
        return _refusal(RETRAINING_DISABLED, "disabled")
    if ask_again_as and settings.training_backend == "openai":
        # an admin asked in person: OpenAI may have enabled fine-tuning again, so ask once more
        # (a refusal before the snapshot commits rolls this back with the session)
        sunset.clear_org_blocked(session, actor=ask_again_as)
    refused = sunset_refusal(services, session)
    if refused is not None:
        return refused
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
    from sop_pipeline.training.run_messages import state_words

    since = run.created_at.strftime("%H:%M UTC") if run.created_at else "earlier"
    return _refusal(
        f"Training run #{run.id} is already under way since {since} "
        f"({state_words(run.state)}); wait for it to finish or cancel it "
        f"with `sop-bot runs cancel {run.id}`.", "active_run", run=None,
        details={"active_run_id": run.id, "state": run.state, "since": since})


def _already_trained(session: Session, snapshot: DatasetSnapshot) -> TrainingRun | None:
    query = select(TrainingRun).where(
        TrainingRun.snapshot_id == snapshot.id, col(TrainingRun.state).in_(TRAINED_STATES))
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
    from sop_pipeline.dataset import DatasetError
    from sop_pipeline.snapshots import create_snapshot, snapshot_summary

    settings = services.settings
    with services.session() as session:
        ask_again_as = (requested_by or "admin") if force and not dry_run else None
        refused = _precheck(services, session, force, ask_again_as)
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
        snapshot_id=cast(int, snapshot.id),  # committed above, so it has its id
        backend=settings.training_backend, state=RunState.PREPARING,
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
