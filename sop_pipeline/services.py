"""The service container: everything the CLI and the Slack layer need, built once and passed in.

`build_services` is called by `bot/__main__.py` and by the CLI; tests build their own with
fakes' URLs. Nothing here runs at import time.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from datetime import datetime
from functools import cached_property
from typing import TYPE_CHECKING, Any

from sqlalchemy import Engine
from sqlmodel import Session

from sop_pipeline import db
from sop_pipeline.models import utcnow
from sop_pipeline.notifications import LoggingNotifier, Notifier
from sop_pipeline.providers import make_openai_client
from sop_pipeline.settings import Settings

if TYPE_CHECKING:
    import openai


class DatabaseBusy(RuntimeError):
    """A draft found no free database connection in time; the text is for the requester."""


class _GatedSession(Session):
    """A session holding one of the drafts' turns at the database until it closes."""

    def __init__(self, slots: threading.BoundedSemaphore, *args: Any, **kwargs: Any):
        super().__init__(*args, **kwargs)
        self._slots: threading.BoundedSemaphore | None = slots

    def close(self) -> None:
        try:
            super().close()
        finally:
            slots, self._slots = self._slots, None
            if slots is not None:
                slots.release()


def approval_reserve(pool_size: int) -> int:
    """Connections drafts leave to everything else however small DB_POOL_SIZE is set."""
    return max(2, pool_size // 4)


@dataclass
class Services:
    """Settings, database, template, provider client factory, notifier and clock."""

    settings: Settings
    engine: Engine
    notifier: Notifier = field(default_factory=LoggingNotifier)
    clock: Callable[[], datetime] = utcnow
    write_engine: Engine | None = None  # `db.make_write_engine`; None: `engine` writes too
    _openai_client: openai.OpenAI | None = field(default=None, init=False, repr=False)
    _client_lock: threading.Lock = field(default_factory=threading.Lock, init=False, repr=False)
    _draft_slots: threading.BoundedSemaphore | None = field(default=None, init=False,
                                                           repr=False)
    _turn: threading.local = field(default_factory=threading.local, init=False, repr=False)

    def session(self) -> Session:
        """A new session that may write; callers commit explicitly (or use
        `db.session_scope`). On SQLite it begins IMMEDIATE on the process's one writing
        connection (`db.make_write_engine`)."""
        return Session(self.write_engine or self.engine, expire_on_commit=False,
                       info={"engine": self.engine})

    def read_session(self) -> Session:
        """A session that only reads (`db.make_read_engine`): on SQLite it begins DEFERRED,
        so it never queues for the one write lock that approvals and drafts take (BEGIN
        IMMEDIATE); on PostgreSQL it runs in autocommit. It must not write."""
        return Session(self.read_engine, expire_on_commit=False)

    @cached_property
    def read_engine(self) -> Engine:
        return db.make_read_engine(self.engine)

    @property
    def draft_connections(self) -> int:
        """How many drafts use the database at once: DB_DRAFT_CONNECTIONS, and never so many
        that `approval_reserve` connections of the pool are not left to everything else."""
        size = getattr(self.engine.pool, "size", lambda: 0)() or 5
        return max(1, min(self.settings.db_draft_connections, size - approval_reserve(size)))

    @contextmanager
    def draft_turn(self) -> Iterator[None]:
        """One of the drafts' turns at the database for this thread until the block ends;
        the draft sessions it opens meanwhile run on it (`draft_session`)."""
        if getattr(self._turn, "held", False):
            yield
            return
        slots = self._take_turn()
        self._turn.held = True
        try:
            yield
        finally:
            self._turn.held = False
            slots.release()

    def draft_session(self, *, write: bool = False, one_statement: bool = False) -> Session:
        """A session for a draft's own rows (`write=True`: storing, claiming and finishing
        it) or its library read, on one of the drafts' `draft_connections` turns: the
        thread's own inside `draft_turn`, else one taken until the session closes. Further
        drafts wait for a turn rather than all talking to the database at once: every round
        trip of every draft also waits to take back the interpreter's lock, so fifty drafts
        at once slowed each other, the Slack intake and approvals (which have connections of
        their own). No turn free within DB_POOL_TIMEOUT_SECONDS: `DatabaseBusy`.

        `one_statement=True`: a write that is one statement (a claim, an outcome). On
        PostgreSQL it runs in autocommit like a read: no BEGIN and no COMMIT to wait for."""
        if write and not (one_statement and self.engine.dialect.name == "postgresql"):
            engine, info = self.write_engine or self.engine, {"engine": self.engine}
        else:  # a library read: on SQLite it must not take the write lock (BEGIN IMMEDIATE)
            engine, info = self.read_engine, {}  # that approvals need while it reads
        if getattr(self._turn, "held", False):
            return Session(engine, expire_on_commit=False, info=info)
        return _GatedSession(self._take_turn(), engine, expire_on_commit=False, info=info)

    def _take_turn(self) -> threading.BoundedSemaphore:
        with self._client_lock:
            if self._draft_slots is None:
                self._draft_slots = threading.BoundedSemaphore(self.draft_connections)
            slots = self._draft_slots
        if not slots.acquire(timeout=self.settings.db_pool_timeout_seconds):
            raise DatabaseBusy(
                "The database is busy with other drafts right now, so this draft could not "
                "be stored or read the SOP library. Please ask again in a minute.")
        return slots

    @cached_property
    def template(self):  # noqa: ANN201  (Template; imported lazily to keep start-up light)
        from sop_pipeline.sop_format import load_template

        return load_template(self.settings.sop_template)

    def openai_client(self, *, timeout: float | None = None) -> openai.OpenAI:
        """The OpenAI-compatible client. One shared client (thread-safe, with a connection
        pool) serves every draft: building one per draft costs an SSL context and new TCP
        connections each time. A custom `timeout` gets a client of its own."""
        if timeout is not None:
            return make_openai_client(self.settings, timeout=timeout)
        with self._client_lock:
            if self._openai_client is None:
                self._openai_client = make_openai_client(self.settings)
            return self._openai_client


def build_services(
    settings: Settings,
    *,
    notifier: Notifier | None = None,
    clock: Callable[[], datetime] | None = None,
    upgrade_db: bool = True,
) -> Services:
    """Create the engine, upgrade the schema (the bot always upgrades at start) and wire it up."""
    engine = db.make_engine(settings.database_url, pool_size=settings.database_pool_size,
                            pool_timeout=settings.db_pool_timeout_seconds)
    if upgrade_db:
        db.upgrade(engine)
    if settings.sop_embeddings_model:  # say so at start-up when vectors cannot be used
        from sop_pipeline.library.vectors import startup_problem

        if problem := startup_problem(engine, settings):
            logging.getLogger(__name__).warning(problem)
    return Services(
        settings=settings,
        engine=engine,
        write_engine=db.make_write_engine(engine),
        notifier=notifier or LoggingNotifier(),
        clock=clock or utcnow,
    )
