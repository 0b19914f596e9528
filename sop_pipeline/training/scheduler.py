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
instance takes over after SCHEDULER_LEASE_SECONDS and carries on from the stored run state.
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
from sqlmodel import Session

from sop_pipeline.claims import claim
from sop_pipeline.models import SchedulerLease
from sop_pipeline.training import lifecycle
from sop_pipeline.training.backend import TrainingBackend

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

    One atomic statement each way: renew/steal with `UPDATE ... WHERE expires_at < now OR
    holder = me`, else insert the row doing nothing on conflict. PostgreSQL re-checks the
    WHERE clause after a concurrent update, so two instances can never both win.
    """
    from sop_pipeline.examples import dialect_insert

    me = holder_id(services)
    now = services.clock()
    expires = now + timedelta(seconds=services.settings.scheduler_lease_seconds)
    with services.session() as session:
        result = session.execute(
            update(SchedulerLease)
            .where(SchedulerLease.name == name,
                   or_(SchedulerLease.expires_at < now, SchedulerLease.holder == me))
            .values(holder=me, expires_at=expires)
        )
        if result.rowcount == 1:
            session.commit()
            return True
        # RETURNING, not rowcount: psycopg reports -1 for INSERT ... ON CONFLICT DO NOTHING
        inserted = session.execute(
            dialect_insert(session, SchedulerLease.__table__)
            .values(name=name, holder=me, expires_at=expires)
            .on_conflict_do_nothing(index_elements=["name"])
            .returning(SchedulerLease.__table__.c.name)
        ).first()
        won = inserted is not None
        session.commit()
        return won


def release_lease(services, name: str = LEASE_NAME) -> None:  # noqa: ANN001
    """Give the lease up (clean shutdown) so another instance can act at once."""
    with services.session() as session:
        session.execute(
            update(SchedulerLease)
            .where(SchedulerLease.name == name, SchedulerLease.holder == holder_id(services))
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
    if result.run is None:
        log.info("no retraining: %s", result.summary)
        return result
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
    """Send the cutoff/shutdown warning at most once per day across all instances."""
    from sop_pipeline.notifications import Notification

    today = services.clock().date()
    _, _, warning = lifecycle.deprecation_status(services.settings, today)
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
