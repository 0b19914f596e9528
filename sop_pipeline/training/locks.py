"""Per-run locks that die with their process, so a run is advanced by one process at a time.

Two pollers (the bot's scheduler and an admin's `sop-bot runs poll`) must not both decide "no
job exists yet" and both create one. PostgreSQL: a session-level advisory lock on its own
connection. SQLite (one machine): an `flock` on a file next to the database. Both are released
by the operating system when the process dies, so `kill -9` never leaves a run locked.

The scheduler's lease is a database row, which nothing releases when its holder dies;
`holder_gone` tells the next instance on the same host that it may take the lease over at once.
"""

from __future__ import annotations

import contextlib
import fcntl
import os
import socket
from collections.abc import Iterator
from pathlib import Path

from sqlalchemy import Engine, text

_PG_LOCK_CLASS = 7310  # first key of the two-key advisory lock: "training run"


@contextlib.contextmanager
def run_lock(engine: Engine, run_id: int) -> Iterator[bool]:
    """Try to lock the run without waiting; yields True when this process holds it."""
    if engine.dialect.name == "postgresql":
        with _pg_lock(engine, run_id) as held:
            yield held
        return
    with _file_lock(engine, run_id) as held:
        yield held


@contextlib.contextmanager
def _pg_lock(engine: Engine, run_id: int) -> Iterator[bool]:
    conn = engine.connect()
    try:
        held = bool(conn.execute(
            text("SELECT pg_try_advisory_lock(:a, :b)"), {"a": _PG_LOCK_CLASS, "b": run_id}
        ).scalar())
        conn.commit()
        try:
            yield held
        finally:
            if held:
                conn.execute(text("SELECT pg_advisory_unlock(:a, :b)"),
                             {"a": _PG_LOCK_CLASS, "b": run_id})
                conn.commit()
    finally:
        conn.close()


def _lock_path(engine: Engine, run_id: int) -> Path | None:
    database = engine.url.database
    if not database or database == ":memory:":
        return None
    return Path(database).with_name(f"{Path(database).name}.run-{run_id}.lock")


@contextlib.contextmanager
def _file_lock(engine: Engine, run_id: int) -> Iterator[bool]:
    path = _lock_path(engine, run_id)
    if path is None:  # in-memory database: one process by definition
        yield True
        return
    fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o600)
    try:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            yield False
            return
        try:
            yield True
        finally:
            fcntl.flock(fd, fcntl.LOCK_UN)
    finally:
        os.close(fd)


# --- is a lease holder still there? ---------------------------------------------------------


def this_host() -> str:
    return socket.gethostname()


def process_alive(pid: int) -> bool:
    """Whether a process with this id runs on this machine (a zombie, killed but not yet
    reaped by its parent, counts as gone)."""
    if pid <= 0:
        return False
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # another user's process: it exists
        return True
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:  # no /proc (macOS): the signal test is all we have
        return True
    state = stat.rsplit(")", 1)[-1].split()[:1]
    return state not in (["Z"], ["X"])


def holder_gone(holder: str) -> bool:
    """True when a lease holder `host:pid:token` ran on this host in a process that is no
    longer alive, so its lease can be taken over at once instead of waiting for it to expire.
    A holder on another host, or in this very process, is never declared gone here."""
    parts = holder.split(":")
    if len(parts) < 3:
        return False
    host, pid_text = ":".join(parts[:-2]), parts[-2]
    if host != this_host() or not pid_text.isdigit():
        return False
    pid = int(pid_text)
    return pid != os.getpid() and not process_alive(pid)
