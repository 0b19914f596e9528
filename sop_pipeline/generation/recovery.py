"""Drafts whose worker died: mark them failed so nobody waits on a placeholder forever.

A process killed mid-draft (deploy, OOM, kill -9) leaves its Generation rows "pending" or
"streaming". At start-up, and periodically, the bot fails the rows whose worker is provably
gone: a previous start on this host (another start id, and its pid is ours — a restarted
container — or no longer runs), or any row older than the longest a live
worker could still be drafting (twice the generation timeout plus a minute). The Slack layer
then edits each draft's thread reply into `ABANDONED_SENTENCE`.
"""

from __future__ import annotations

import os
import socket
import uuid
from datetime import timedelta

from sqlalchemy import update
from sqlmodel import Session, col, select

from sop_pipeline.models import Generation
from sop_pipeline.services import Services

ABANDONED_SENTENCE = (
    "SOP Bot stopped while writing this draft, so it was not finished. "
    "Run /sop again to get a complete draft."
)
UNFINISHED = ("pending", "streaming")


# A random id per process start: in a container every start is PID 1 on the same hostname,
# so host:pid alone cannot tell this start from the one that died.
START_ID = uuid.uuid4().hex[:12]


def current_worker() -> str:
    """This process start as `host:pid:start-id`, stored on the drafts it works on."""
    return f"{socket.gethostname()}:{os.getpid()}:{START_ID}"


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # exists, owned by someone else
        return True
    return True


def worker_is_gone(worker: str | None) -> bool:
    """True only when we can tell that `worker` is a previous start on this host: its start id
    is not ours and its pid is ours (a restarted container: PID 1 again) or no longer runs.

    Another live process on this host keeps its drafts (its pid runs). Instances on other
    hosts are never judged here (their drafts go by age), so instances sharing one database
    need distinct hostnames, as containers and pods have by default.
    """
    if not worker or ":" not in worker:
        return False
    parts = worker.split(":")
    if len(parts) >= 3:  # host:pid:start
        host, pid, start = ":".join(parts[:-2]), parts[-2], parts[-1]
    else:  # host:pid, written before start ids existed: never this start
        host, pid, start = parts[0], parts[1], ""
    if host != socket.gethostname() or not pid.isdigit() or start == START_ID:
        return False
    return int(pid) == os.getpid() or not _pid_alive(int(pid))


def fail_abandoned_drafts(services: Services) -> list[Generation]:
    """Mark abandoned drafts failed (each exactly once, whichever instance gets there first)
    and return them, so the caller can tell their threads."""
    timeout = services.settings.sop_generation_timeout_seconds
    stale_before = services.clock() - timedelta(seconds=2 * timeout + 60)
    with services.session() as session:
        rows = session.exec(
            select(Generation).where(col(Generation.status).in_(UNFINISHED))
        ).all()
        abandoned = [row for row in rows
                     if row.created_at < stale_before or worker_is_gone(row.worker)]
        failed = _mark_failed(session, services, abandoned)
        session.commit()
    return failed


def fail_own_drafts(services: Services) -> list[Generation]:
    """At shutdown, after the grace period: this process's drafts that are still being
    written are marked failed now, rather than when another instance notices later."""
    with services.session() as session:
        rows = session.exec(
            select(Generation).where(col(Generation.status).in_(UNFINISHED),
                                     Generation.worker == current_worker())
        ).all()
        failed = _mark_failed(session, services, list(rows))
        session.commit()
    return failed


def _mark_failed(session: Session, services: Services,
                 rows: list[Generation]) -> list[Generation]:
    """Fail each row that is still unfinished (a conditional UPDATE: a draft that finished
    meanwhile keeps its result); returns the rows this call failed."""
    failed: list[Generation] = []
    for row in rows:
        result = session.exec(
            update(Generation)
            .where(col(Generation.id) == row.id, col(Generation.status) == row.status)
            .values(status="failed", error=ABANDONED_SENTENCE, completed_at=services.clock())
        )
        if result.rowcount == 1:
            row.status, row.error = "failed", ABANDONED_SENTENCE
            failed.append(row)
    return failed
