"""An approval's confirmation is its own recorded step.

The approval, its claim and an `ApprovalConfirmation` row ("this answer is owed") commit in one
transaction; the row is marked posted once Slack has the answer. A process killed in between
(kill -9 after the commit) leaves an owed row, which Slack's redelivery of the same event, or
the next start-up, posts. While the process that recorded it may still be posting (it is this
start, or another live one and the row is younger than `POSTING_GRACE_SECONDS`), a redelivery
leaves it alone, so concurrent deliveries answer once. Past that, posting is at-least-once:
losing the answer is the worse failure for an approver.
"""

from __future__ import annotations

from datetime import datetime, timedelta

from sqlalchemy import update
from sqlmodel import Session, col, select

from sop_pipeline.generation.recovery import current_worker, worker_is_gone
from sop_pipeline.models import ApprovalConfirmation, utcnow

POSTING_GRACE_SECONDS = 60.0  # a live handler posts within this long after its commit


def record(session: Session, *, key: str, channel: str, thread_ts: str, reacted_ts: str,
           approver: str, status: str, example_id: int | None,
           findings_text: str | None = None) -> ApprovalConfirmation:
    """Add the owed confirmation to the caller's (approval's) transaction."""
    row = ApprovalConfirmation(key=key[:200], channel=channel, thread_ts=thread_ts,
                               reacted_ts=reacted_ts, approver=approver, status=status,
                               example_id=example_id, findings_text=findings_text,
                               worker=current_worker(), created_at=utcnow())
    session.add(row)
    session.flush()
    return row


def posted(session: Session, key: str) -> bool | None:
    """Whether the confirmation for `key` went out: None when none was recorded (read-only,
    so a redelivery of a confirmed approval needs no write lock to be told apart)."""
    row = session.get(ApprovalConfirmation, key[:200])
    return None if row is None else row.posted_at is not None


def owed(session: Session, key: str, now: datetime | None = None) -> ApprovalConfirmation | None:
    """The confirmation for `key` when it was recorded, never posted, and nobody alive is
    still about to post it (its process start is gone, or the grace time has passed); taken
    for this process (see `_take`), so the caller must commit and then post it."""
    row = session.get(ApprovalConfirmation, key[:200])
    if row is None or row.posted_at is not None:
        return None
    return row if _abandoned(row, now) and _take(session, row, now) else None


def _take(session: Session, row: ApprovalConfirmation, now: datetime | None) -> bool:
    """Compare-and-swap the row's worker to this process: of a redelivery and the start-up
    sweep racing for the same owed confirmation, exactly one posts it."""
    result = session.exec(
        update(ApprovalConfirmation)
        .where(col(ApprovalConfirmation.key) == row.key,
               col(ApprovalConfirmation.worker) == row.worker,
               col(ApprovalConfirmation.posted_at).is_(None))
        .values(worker=current_worker(), created_at=now or utcnow())
    )
    return result.rowcount == 1


def _abandoned(row: ApprovalConfirmation, now: datetime | None) -> bool:
    old = row.created_at < (now or utcnow()) - timedelta(seconds=POSTING_GRACE_SECONDS)
    return worker_is_gone(row.worker) or old


def mark_posted(session: Session, key: str, at: datetime | None = None) -> bool:
    """Record that Slack has the confirmation; True the first time."""
    result = session.exec(
        update(ApprovalConfirmation)
        .where(col(ApprovalConfirmation.key) == key[:200],
               col(ApprovalConfirmation.posted_at).is_(None))
        .values(posted_at=at or utcnow())
    )
    return result.rowcount == 1


def unposted(session: Session, now: datetime | None = None) -> list[ApprovalConfirmation]:
    """Every owed confirmation nobody alive is about to post (see `owed`), taken for this
    process; the caller commits, then posts them."""
    query = select(ApprovalConfirmation).where(
        col(ApprovalConfirmation.posted_at).is_(None),
    ).order_by(col(ApprovalConfirmation.created_at))
    rows = [row for row in session.exec(query) if _abandoned(row, now)]
    return [row for row in rows if _take(session, row, now)]
