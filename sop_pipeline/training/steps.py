"""Advancing a training run: one state-machine step per stored state, with stored backoff.

`advance` only ever looks at the stored row to decide what to do next, and every transition is
committed before the next external call relies on it, so a process killed at any moment is
resumed by `reconcile` at the next start-up or poll tick. Retryable provider errors keep the run
in its state with a backoff stored in the row (`attempts`, `next_attempt_at`); non-retryable
errors end the run with the provider's code and message kept for admins. The provider-job
steps (create, poll, events) are in `jobs`.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from datetime import timedelta

from sqlalchemy import update
from sqlmodel import Session, col, select

from sop_pipeline import audit, model_registry
from sop_pipeline.models import DatasetSnapshot, ModelVersion, RunState, TrainingRun
from sop_pipeline.retry_policy import backoff_delay
from sop_pipeline.training.backend import BackendError, TrainingBackend
from sop_pipeline.training.backends import RETRAINING_DISABLED, make_backend
from sop_pipeline.training.crashpoints import crash_point
from sop_pipeline.training.jobs import _poll, _Step
from sop_pipeline.training.locks import run_lock
from sop_pipeline.training.runs import (
    Sleep,
    _clear_backoff,
    _fail,
    _load,
    _notify,
    _now,
    _snapshot,
    _transition,
    active_run_ids,
)

log = logging.getLogger(__name__)

MAX_STEPS_PER_ADVANCE = 12  # bound on one `advance` call; a run never needs more per tick
MAX_BACKOFF_SECONDS = 3600.0


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


def _reset_backoff(services, run_id: int | None) -> None:  # noqa: ANN001
    with services.session() as session:
        session.execute(
            update(TrainingRun)
            .where(col(TrainingRun.id) == run_id, col(TrainingRun.attempts) > 0,
                   col(TrainingRun.state).in_(RunState.ACTIVE))
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
            update(TrainingRun).where(col(TrainingRun.id) == run.id,
                                      col(TrainingRun.state) == run.state)
            .values(attempts=attempts, next_attempt_at=_now(services) + timedelta(seconds=delay),
                    error_code=exc.code, error_message=exc.message, updated_at=_now(services)))
        session.commit()
    log.warning("run %s: %s (%s); retry %d in %.0fs", run.id, exc.message, exc.code,
                attempts, delay)


# --- state handlers: each returns True when the next step can follow at once --------------


def _prepare(step: _Step, run: TrainingRun) -> bool:
    with step.services.session() as session:  # type: ignore[attr-defined]
        snapshot = _snapshot(session, run)
    from sop_pipeline.dataset import DatasetError
    from sop_pipeline.snapshots import snapshot_bytes

    try:
        snapshot_bytes(snapshot)  # lost only if its files were gone before 0002_llm
    except DatasetError as exc:
        _fail(step.services, run, "dataset_missing", str(exc))
        return False
    return _transition(step.services, run.id, expect=RunState.PREPARING,
                       state=RunState.UPLOADING)


def _upload(step: _Step, run: TrainingRun) -> bool:
    with step.services.session() as session:  # type: ignore[attr-defined]
        snapshot = _snapshot(session, run)
    from sop_pipeline.snapshots import materialise

    # the bytes live in the database; this instance writes its own local copy to upload
    train_path, validation_path = materialise(snapshot, step.settings.snapshots_dir)
    if not run.train_file_id:
        uploaded = step.call(lambda: step.backend.upload(
            train_path, snapshot.content_hash, kind="train"))
        crash_point("train_uploaded")
        _transition(step.services, run.id, expect=RunState.UPLOADING,
                    train_file_id=uploaded.id)
    if validation_path is not None and not run.validation_file_id:
        uploaded = step.call(lambda: step.backend.upload(
            validation_path, snapshot.content_hash, kind="validation"))
        _transition(step.services, run.id, expect=RunState.UPLOADING,
                    validation_file_id=uploaded.id)
    _delete_orphan_uploads(step)
    return _transition(step.services, run.id, expect=RunState.UPLOADING,
                       state=RunState.VALIDATING_FILES)


def _delete_orphan_uploads(step: _Step) -> None:
    """Delete uploads of our snapshots that no run references (a crash between an upload and
    storing its id left them); best effort, never a reason to stop the run."""
    delete = getattr(step.backend, "delete_unreferenced", None)
    if delete is None:
        return
    with step.services.session() as session:  # type: ignore[attr-defined]
        referenced = {i for row in session.exec(select(TrainingRun.train_file_id,
                                                       TrainingRun.validation_file_id))
                      for i in row if i}
        hashes = set(session.exec(select(DatasetSnapshot.content_hash)))
    try:
        deleted = delete(referenced, hashes)
    except BackendError as exc:
        log.warning("could not clean up orphan uploads: %s", exc.message)
        return
    if deleted:
        log.info("deleted %d orphan upload(s): %s", len(deleted), ", ".join(deleted))


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

    outcome = _clear_backoff()
    if not decision.promote:  # why the run ended without a new model, for status and `runs`
        outcome.update(error_code=str((decision.scores or {}).get("decision") or "rejected"),
                       error_message=str((decision.scores or {}).get("reason")
                                         or decision.report or "")[:2000] or None)
    if not _transition(services, run.id, expect=RunState.EVALUATING, extra=record, state=state,
                       eval_scores=dict(decision.scores or {}), **outcome):
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


# --- reconciliation ---------------------------------------------------------------------------


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
