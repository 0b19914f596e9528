"""The retrain scheduler: an APScheduler 3 BackgroundScheduler inside the bot process.

Two jobs, both module-level functions taking the `Services` (so they are addressable and
picklable, and tests call them directly with an injected clock instead of waiting):

* `retrain_check` every RETRAIN_CHECK_MINUTES: start a run when none is active and enough new
  examples were approved (`lifecycle.start_run` decides), and warn once a day about the
  fine-tuning cutoff.
* `poll_active_runs` every TRAINING_POLL_SECONDS: resume and advance active runs
  (`lifecycle.reconcile`); it does nothing while no run is active. It also runs once right at
  start-up, which is what picks up a run left behind by a crash.

Several bot instances may share one PostgreSQL. A lease row (`SchedulerLease`) taken with one
atomic UPDATE (or an insert that does nothing on conflict) decides which instance acts; the
others skip the tick. All state lives in our tables, so when the lease holder dies another
instance carries on from the stored run state: at once when the dead holder ran on the same
host (a restart), else after two missed heartbeats (poll intervals) or SCHEDULER_LEASE_SECONDS,
whichever comes first.
"""

from __future__ import annotations

import logging
import os
import socket
import time
import uuid
from datetime import UTC, datetime, timedelta

from sqlalchemy import or_, update
from sqlalchemy.exc import IntegrityError
from sqlmodel import Session, col

from sop_pipeline import model_registry
from sop_pipeline.claims import claim
from sop_pipeline.models import SchedulerLease
from sop_pipeline.training import lifecycle, sunset
from sop_pipeline.training.backend import TrainingBackend
from sop_pipeline.training.locks import holder_gone

log = logging.getLogger(__name__)

LEASE_NAME = "training"
RETRAIN_JOB_ID = "retrain_check"
POLL_JOB_ID = "poll_active_runs"


# --- the lease -------------------------------------------------------------------------------


def holder_id(services) -> str:  # noqa: ANN001 - Services
    """This instance's identity in the lease table (host, pid and a per-Services token)."""
    holder = getattr(services, "_scheduler_holder", None)
    if holder is None:
        holder = f"{socket.gethostname()}:{os.getpid()}:{uuid.uuid4().hex[:8]}"
        services._scheduler_holder = holder
    return holder


def acquire_lease(services, name: str = LEASE_NAME) -> bool:  # noqa: ANN001
    """Take or renew the named lease for SCHEDULER_LEASE_SECONDS; False if another holds it.

    One atomic statement each way: renew/steal with `UPDATE ... WHERE stale OR holder = me`,
    else insert the row doing nothing on conflict. PostgreSQL re-checks the WHERE clause after
    a concurrent update, so two instances can never both win. A holder is stale when its
    lease expired or its last renewal (heartbeat) is older than two poll intervals; a holder
    whose process is gone (same host, pid not alive) is taken over at once, so a restarted
    bot picks up a crashed one's run in seconds instead of waiting out the lease.
    """
    from sop_pipeline.examples import dialect_insert

    me = holder_id(services)
    now = services.clock()
    settings = services.settings
    expires = now + timedelta(seconds=settings.scheduler_lease_seconds)
    # renewed at now - (lease - 2 * poll) or earlier means two missed heartbeats
    stale_before = now + timedelta(seconds=max(
        0, settings.scheduler_lease_seconds - 2 * settings.training_poll_seconds))
    with services.session() as session:
        result = session.exec(
            update(SchedulerLease)
            .where(col(SchedulerLease.name) == name,
                   or_(col(SchedulerLease.expires_at) < stale_before,
                       col(SchedulerLease.holder) == me))
            .values(holder=me, expires_at=expires)
        )
        if result.rowcount == 1:
            session.commit()
            return True
        if _take_over_from_gone_holder(session, name, me, expires):
            return True
        # RETURNING, not rowcount: psycopg reports -1 for INSERT ... ON CONFLICT DO NOTHING
        inserted = session.execute(
            dialect_insert(session, SchedulerLease)
            .values(name=name, holder=me, expires_at=expires)
            .on_conflict_do_nothing(index_elements=["name"])
            .returning(col(SchedulerLease.name))
        ).first()
        won = inserted is not None
        session.commit()
        return won


def _take_over_from_gone_holder(session: Session, name: str, me: str, expires: datetime) -> bool:
    """Steal the lease from a holder whose process died on this host (conditional on that
    holder, so two instances restarting together cannot both win)."""
    current = session.get(SchedulerLease, name)
    if current is None or not holder_gone(current.holder):
        return False
    dead = current.holder
    result = session.execute(
        update(SchedulerLease)
        .where(col(SchedulerLease.name) == name, col(SchedulerLease.holder) == dead)
        .values(holder=me, expires_at=expires)
    )
    session.commit()
    if getattr(result, "rowcount", 0) == 1:  # a CursorResult for an UPDATE
        log.warning("took over the scheduler lease from %s (its process is gone)", dead)
        return True
    return False


def release_lease(services, name: str = LEASE_NAME) -> None:  # noqa: ANN001
    """Give the lease up (clean shutdown) so another instance can act at once."""
    with services.session() as session:
        session.execute(
            update(SchedulerLease)
            .where(col(SchedulerLease.name) == name,
                   col(SchedulerLease.holder) == holder_id(services))
            .values(expires_at=datetime(1970, 1, 1, tzinfo=UTC))
        )
        session.commit()


# --- the jobs ----------------------------------------------------------------------------------


def retrain_check(
    services,  # noqa: ANN001 - Services
    *,
    backend: TrainingBackend | None = None,
    sleep=time.sleep,  # noqa: ANN001
) -> lifecycle.StartResult | None:
    """Scheduled: start a run when the thresholds are met, then take its first steps.

    Returns None when another instance holds the lease (it acts instead).
    """
    if not acquire_lease(services):
        log.debug("retrain check skipped: another instance holds the scheduler lease")
        return None
    warn_deprecation_once_a_day(services)
    result = lifecycle.start_run(services, trigger="schedule", requested_by="scheduler")
    check_sunset(services, result)
    prune_azure_deployments(services)
    if result.run is None:
        log.info("no retraining: %s", result.summary)
        return result
    assert result.run.id is not None  # start_run returns a stored run
    lifecycle.advance(services, result.run.id, backend=backend, sleep=sleep)
    return result


def poll_active_runs(
    services,  # noqa: ANN001 - Services
    *,
    backend: TrainingBackend | None = None,
    sleep=time.sleep,  # noqa: ANN001
) -> list:
    """Scheduled: advance every active run once (no work, and no lease, when none is active)."""
    with services.session() as session:
        if not lifecycle.active_run_ids(session):
            return []
    if not acquire_lease(services):
        return []
    return lifecycle.reconcile(services, backend=backend, sleep=sleep)


def warn_deprecation_once_a_day(services) -> str | None:  # noqa: ANN001
    """Send the sunset countdown (from training/sunset.toml) at most once a day, across all
    instances."""
    from sop_pipeline.notifications import Notification

    settings = services.settings
    today = services.clock().date()
    backend = settings.training_backend
    warning = sunset.warning(backend, sunset.model_for(settings, backend), today,
                             settings.deprecation_warning_days)
    if warning is None:
        return None
    with services.session() as session:
        inserted = _claim_key(session, f"deprecation_warning:{today.isoformat()}")
    if not inserted:
        return None
    try:
        services.notifier.notify(Notification(kind="deprecation_warning", text=warning))
    except Exception:  # noqa: BLE001
        log.exception("deprecation notification failed")
    return warning


def prune_azure_deployments(services) -> list[str]:  # noqa: ANN001
    """Delete Azure deployments of rolled-back, rejected or superseded models (they bill by
    the hour); a control-plane failure is logged and retried at the next check."""
    if not services.settings.azure_openai_account:
        return []
    from sop_pipeline.training.azure_backend import prune_deployments

    try:
        return prune_deployments(services)
    except Exception:  # noqa: BLE001 - housekeeping must never stop retraining
        log.exception("pruning Azure deployments failed")
        return []


def check_sunset(services, result: lifecycle.StartResult | None = None) -> None:  # noqa: ANN001
    """Say once that retraining stopped for good (cutoff or OpenAI's refusal), and retire the
    active fine-tuned model on the day its provider stops serving it (drafts fall back to
    retrieval)."""
    settings = services.settings
    if result is not None and result.reason in ("cutoff", "org_blocked"):
        sunset.notify_once(services, sunset.stop_key(settings.training_backend, result.reason),
                           "sunset",
                    "Scheduled retraining has stopped and will not try again: " + result.summary)
    today = services.clock().date()
    with services.session() as session:
        active = model_registry.active_model(session)
        if active is None or not sunset.is_retired(active.backend, active.model_id, today):
            return
        found = sunset.window(sunset.PROVIDER_OF[active.backend], active.model_id)
        text = sunset.retired_sentence(active.model_id, active.backend,
                                       found.retired_on if found else None)
        model_registry.deactivate_missing(session, active, reason=text[:500])
        session.commit()
    sunset.notify_once(services, f"sunset:retired:{active.model_id}", "model_retired", text)


def _claim_key(session: Session, key: str) -> bool:
    try:
        won = claim(session, key)
        session.commit()
    except IntegrityError:  # pragma: no cover - on_conflict covers it
        session.rollback()
        return False
    return won


# --- building the scheduler ---------------------------------------------------------------------


def build_scheduler(services):  # noqa: ANN001, ANN201 - Services -> BackgroundScheduler | None
    """The BackgroundScheduler with both jobs added (not started), or None when
    SCHEDULER_ENABLED is false or TRAINING_BACKEND is none."""
    settings = services.settings
    if not settings.scheduler_enabled:
        log.info("scheduler disabled (SCHEDULER_ENABLED=false)")
        return None
    from apscheduler.schedulers.background import BackgroundScheduler

    scheduler = BackgroundScheduler(timezone=UTC)
    common = {"args": [services], "max_instances": 1, "coalesce": True,
              "replace_existing": True, "misfire_grace_time": 60}
    if settings.training_backend != "none":
        scheduler.add_job(retrain_check, "interval", minutes=settings.retrain_check_minutes,
                          id=RETRAIN_JOB_ID, name="retrain check", **common)
    scheduler.add_job(poll_active_runs, "interval", seconds=settings.training_poll_seconds,
                      id=POLL_JOB_ID, name="poll training runs",
                      next_run_time=datetime.now(UTC), **common)
    return scheduler


def next_check_time(scheduler=None) -> datetime | None:  # noqa: ANN001
    """When the next retrain check runs (None without a running scheduler)."""
    if scheduler is None:
        return None
    job = scheduler.get_job(RETRAIN_JOB_ID)
    if job is None:
        return None
    return getattr(job, "next_run_time", None)
