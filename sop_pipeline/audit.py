"""Append-only audit log: who changed what, when (UTC), from which value to which, and why.

There is deliberately no update or delete function here; QA owners export it as evidence.
"""

from __future__ import annotations

import csv
from collections.abc import Iterable
from pathlib import Path

from sqlmodel import Session, col, select

from sop_pipeline.models import AuditEvent


def record(
    session: Session,
    *,
    actor: str,
    action: str,
    subject: str,
    old_value: object = None,
    new_value: object = None,
    reason: str | None = None,
) -> AuditEvent:
    """Add an audit event to the caller's transaction, so it commits with the change itself."""
    event = AuditEvent(
        actor=actor or "system",
        action=action,
        subject=subject,
        old_value=None if old_value is None else str(old_value),
        new_value=None if new_value is None else str(new_value),
        reason=reason,
    )
    session.add(event)
    return event


def events(session: Session, *, action: str | None = None) -> list[AuditEvent]:
    """Audit events in the order they happened."""
    query = select(AuditEvent).order_by(col(AuditEvent.id))
    if action:
        query = query.where(AuditEvent.action == action)
    return list(session.exec(query))


CSV_FIELDS = ("id", "at", "actor", "action", "subject", "old_value", "new_value", "reason")


def export_csv(rows: Iterable[AuditEvent], out: Path) -> int:
    """Write the audit log as CSV (UTC ISO times) for the QA owner; returns the row count."""
    count = 0
    with out.open("w", newline="", encoding="utf-8") as handle:
        writer = csv.writer(handle)
        writer.writerow(CSV_FIELDS)
        for row in rows:
            writer.writerow([
                row.id, row.at.isoformat(), row.actor, row.action, row.subject,
                row.old_value or "", row.new_value or "", row.reason or "",
            ])
            count += 1
    return count
