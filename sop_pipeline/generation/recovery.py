"""Drafts whose worker died: mark them failed so nobody waits on a placeholder forever.

A process killed mid-draft (deploy, OOM, kill -9) leaves its Generation rows "pending" or
"streaming". At start-up, and periodically, the bot fails the rows whose worker is provably
gone: a process on this host that no longer exists, or any row older than the longest a live
worker could still be drafting (twice the generation timeout plus a minute). The Slack layer
then edits each draft's thread reply into `ABANDONED_SENTENCE`.
"""

from __future__ import annotations

import os
import socket
from datetime import timedelta

from sqlalchemy import update
from sqlmodel import select

from sop_pipeline.models import Generation
from sop_pipeline.services import Services

ABANDONED_SENTENCE = (
    "SOP Bot stopped while writing this draft, so it was not finished. "
    "Run /sop again to get a complete draft."
)
UNFINISHED = ("pending", "streaming")


def current_worker() -> str:
    """This process as `host:pid`, stored on the drafts it works on."""
    return f"{socket.gethostname()}:{os.getpid()}"


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # exists, owned by someone else
        return True
    return True


def worker_is_gone(worker: str | None) -> bool:
    """True only when we can tell: a process of this host that no longer runs."""
    if not worker or ":" not in worker:
        return False
    host, _, pid = worker.rpartition(":")
    if host != socket.gethostname() or not pid.isdigit() or int(pid) == os.getpid():
        return False
    return not _pid_alive(int(pid))


def fail_abandoned_drafts(services: Services) -> list[Generation]:
    """Mark abandoned drafts failed (each exactly once, whichever instance gets there first)
    and return them, so the caller can tell their threads."""
    timeout = services.settings.sop_generation_timeout_seconds
    stale_before = services.clock() - timedelta(seconds=2 * timeout + 60)
    failed: list[Generation] = []
    with services.session() as session:
        rows = session.exec(
            select(Generation).where(Generation.status.in_(UNFINISHED))  # type: ignore[attr-defined]
        ).all()
        for row in rows:
            if row.created_at >= stale_before and not worker_is_gone(row.worker):
                continue
            result = session.execute(
                update(Generation)
                .where(Generation.id == row.id, Generation.status == row.status)
                .values(status="failed", error=ABANDONED_SENTENCE, completed_at=services.clock())
            )
            if result.rowcount == 1:
                row.status, row.error = "failed", ABANDONED_SENTENCE
                failed.append(row)
        session.commit()
    return failed
