"""Once a day, whichever instance gets there first: forget what only guarded against Slack
delivering something twice. Slack re-delivers an event within the hour and a replayed request
is refused after 5 minutes, so a week-old claim or posted confirmation guards nothing, while
kept forever they grow with every command, click and reaction."""

from __future__ import annotations

import logging
from dataclasses import dataclass
from datetime import datetime, timedelta

from sqlalchemy import delete, or_
from sqlmodel import Session, col

from sop_pipeline.claims import claim
from sop_pipeline.models import ApprovalConfirmation, ProcessedEvent

log = logging.getLogger(__name__)
RETENTION = timedelta(days=7)
# Delivery claims and dated once-a-day markers. Other keys are lasting facts (OpenAI refused
# this organisation, an Azure deployment was deleted, a stop was announced) and stay.
PRUNABLE_PREFIXES = ("event:", "command:", "action:", "housekeeping:", "deprecation_warning:")


@dataclass(frozen=True)
class Pruned:
    claims: int
    confirmations: int


def prune(session: Session, now: datetime) -> Pruned:
    """Delete delivery claims and posted approval confirmations older than RETENTION, in the
    caller's transaction. Owed (unposted) confirmations are kept however old."""
    before = now - RETENTION
    claims = session.execute(delete(ProcessedEvent).where(
        col(ProcessedEvent.created_at) < before,
        or_(*(col(ProcessedEvent.key).startswith(p) for p in PRUNABLE_PREFIXES)),
    ))
    confirmations = session.execute(delete(ApprovalConfirmation).where(
        col(ApprovalConfirmation.posted_at) < before))
    return Pruned(claims.rowcount or 0, confirmations.rowcount or 0)  # type: ignore[attr-defined]


def prune_once_a_day(services) -> Pruned | None:  # noqa: ANN001 - Services
    """`prune` at most once a day across every instance sharing the database; None when
    another call already did today's."""
    now = services.clock()
    with services.session() as session:
        if not claim(session, f"housekeeping:{now.date().isoformat()}", now):
            return None
        pruned = prune(session, now)
        session.commit()
    if pruned.claims or pruned.confirmations:
        log.info("housekeeping: forgot %d delivery claim(s) and %d posted confirmation(s) "
                 "older than %d days", pruned.claims, pruned.confirmations, RETENTION.days)
    return pruned
