"""The service container: everything the CLI and the Slack layer need, built once and passed in.

`build_services` is called by `bot/__main__.py` and by the CLI; tests build their own with
fakes' URLs. Nothing here runs at import time.
"""

from __future__ import annotations

import threading
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import datetime
from functools import cached_property
from typing import TYPE_CHECKING

from sqlalchemy import Engine
from sqlmodel import Session

from sop_pipeline import db
from sop_pipeline.models import utcnow
from sop_pipeline.notifications import LoggingNotifier, Notifier
from sop_pipeline.providers import make_openai_client
from sop_pipeline.settings import Settings

if TYPE_CHECKING:
    import openai


@dataclass
class Services:
    """Settings, database, template, provider client factory, notifier and clock."""

    settings: Settings
    engine: Engine
    notifier: Notifier = field(default_factory=LoggingNotifier)
    clock: Callable[[], datetime] = utcnow
    _openai_client: openai.OpenAI | None = field(default=None, init=False, repr=False)
    _client_lock: threading.Lock = field(default_factory=threading.Lock, init=False, repr=False)

    def session(self) -> Session:
        """A new session; callers commit explicitly (or use `db.session_scope`)."""
        return Session(self.engine, expire_on_commit=False)

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
    engine = db.make_engine(settings.database_url)
    if upgrade_db:
        db.upgrade(engine)
    return Services(
        settings=settings,
        engine=engine,
        notifier=notifier or LoggingNotifier(),
        clock=clock or utcnow,
    )
