"""Claiming a key exactly once across every instance that shares the database.

Slack re-delivers events it thinks were missed (X-Slack-Retry-Num), several instances may
receive the same event, and daily notices must go out once: the primary key on ProcessedEvent
lets exactly one INSERT win, with no read-then-write race.
"""

from __future__ import annotations

from datetime import datetime

from sqlmodel import Session

from sop_pipeline.examples import dialect_insert
from sop_pipeline.models import ProcessedEvent, utcnow

MAX_KEY_CHARS = 200


def claim(session: Session, key: str, at: datetime | None = None) -> bool:
    """Insert `key` in the caller's transaction (so the claim commits together with the work
    it guards); True when this call inserted it, False when it was claimed before."""
    # RETURNING, not rowcount: psycopg reports rowcount -1 for ORM-enabled inserts.
    statement = dialect_insert(session, ProcessedEvent).values(
        key=key[:MAX_KEY_CHARS], created_at=at or utcnow()
    ).on_conflict_do_nothing().returning(ProcessedEvent.key)
    return session.execute(statement).first() is not None
