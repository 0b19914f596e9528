"""What every Slack handler shares: services, the Web API client, the worker pools, who may
do what, and "handle this event once".

Slack wants an HTTP answer within 3 seconds, so listeners acknowledge first and work in a
bounded thread pool: drafts in one (each holds its thread while the provider answers), and
everything else (approvals, buttons, admin commands) in a smaller one of its own, so an
approval never queues behind drafts. The pools count their pending work so tests (and a
graceful shutdown) can wait until the bot is idle instead of sleeping.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable, Iterator
from concurrent.futures import Executor, Future, ThreadPoolExecutor
from contextlib import contextmanager
from dataclasses import dataclass, field

from slack_sdk import WebClient
from slack_sdk.errors import SlackApiError
from sqlalchemy.exc import IntegrityError
from sqlmodel import Session

from sop_pipeline.services import Services

log = logging.getLogger(__name__)

DEFAULT_WORKERS = 64  # Settings.bot_worker_threads; work beyond it waits its turn in the queue


class TrackedExecutor(Executor):
    """A bounded ThreadPoolExecutor that knows how much work is pending (for `wait_idle`)."""

    def __init__(self, max_workers: int = DEFAULT_WORKERS, *, name: str = "sop-bot") -> None:
        self._pool = ThreadPoolExecutor(max_workers=max_workers, thread_name_prefix=name)
        self._idle = threading.Condition()
        self._pending = 0
        self.max_workers = max_workers
        self._start_workers()

    def _start_workers(self) -> None:
        """Start every worker now: a pool thread started during a burst makes the request
        that submitted the work wait, inside its acknowledgement, until the new thread runs."""
        everyone = threading.Barrier(self.max_workers + 1)
        for _ in range(self.max_workers):
            self._pool.submit(everyone.wait, 30)  # each waits, so each needs a thread
        everyone.wait(30)

    def submit(self, fn: Callable, /, *args: object, **kwargs: object) -> Future:
        with self._idle:
            self._pending += 1
        try:
            future = self._pool.submit(fn, *args, **kwargs)
        except BaseException:
            self._finished(None)
            raise
        future.add_done_callback(self._finished)
        return future

    def _finished(self, _future: Future | None) -> None:
        with self._idle:
            self._pending -= 1
            if self._pending == 0:
                self._idle.notify_all()

    @property
    def pending(self) -> int:
        with self._idle:
            return self._pending

    def wait_idle(self, timeout: float = 30.0) -> bool:
        """Block until no work is pending (including work submitted meanwhile); False on
        timeout."""
        with self._idle:
            return self._idle.wait_for(lambda: self._pending == 0, timeout=timeout)

    def shutdown(self, wait: bool = True, *, cancel_futures: bool = False) -> None:
        self._pool.shutdown(wait=wait, cancel_futures=cancel_futures)


class EventsInHand:
    """Slack events this process is handling now, by claim key. Slack re-delivers an event
    whose acknowledgement came late, often while the first delivery is still being handled:
    the re-delivery waits for it (up to `wait_seconds`) and then answers as the database
    says, instead of fetching, parsing and trying to claim the same message beside it."""

    def __init__(self, wait_seconds: float = 30.0) -> None:
        self.wait_seconds = wait_seconds
        self._handling: dict[str, threading.Event] = {}
        self._changed = threading.Condition()
        self._waiting = 0

    @contextmanager
    def handle(self, key: str) -> Iterator[None]:
        """Run the block once no other delivery of `key` is in hand here (or after waiting
        `wait_seconds` for one, so a stuck delivery never blocks its re-delivery for good)."""
        with self._changed:
            first = self._handling.get(key)
            if first is None:
                mine = self._handling[key] = threading.Event()
            else:
                self._waiting += 1
                self._changed.notify_all()
        if first is not None:
            try:
                first.wait(self.wait_seconds)
            finally:
                with self._changed:
                    self._waiting -= 1
            yield
            return
        try:
            yield
        finally:
            with self._changed:
                del self._handling[key]
            mine.set()

    def wait_for_waiting(self, count: int, timeout: float = 10.0) -> bool:
        """Until `count` re-deliveries wait for their first (for tests); False on timeout."""
        with self._changed:
            return self._changed.wait_for(lambda: self._waiting >= count, timeout=timeout)


class People:
    """A set of Slack users given as user ids (U…/W…) and/or user-group ids (S…).

    Groups are resolved with usergroups.users.list and cached for `ttl` seconds, so a person
    added to the QA approvers group can approve within minutes without a restart. A group that
    cannot be read counts as empty: approval rights fail closed.
    """

    def __init__(
        self, client: WebClient, ids: list[str], *, ttl: float = 300.0,
        monotonic: Callable[[], float] = time.monotonic,
    ) -> None:
        self.client = client
        self.users = {i for i in ids if not i.startswith("S")}
        self.groups = [i for i in ids if i.startswith("S")]
        self.ttl = ttl
        self.monotonic = monotonic
        self._cache: dict[str, tuple[float, frozenset[str]]] = {}
        self._lock = threading.Lock()

    def __bool__(self) -> bool:
        return bool(self.users or self.groups)

    def contains(self, user_id: str | None) -> bool:
        if not user_id:
            return False
        if user_id in self.users:
            return True
        return any(user_id in self._members(group) for group in self.groups)

    def _members(self, group: str) -> frozenset[str]:
        now = self.monotonic()
        with self._lock:
            cached = self._cache.get(group)
            if cached and now - cached[0] < self.ttl:
                return cached[1]
        try:
            members = frozenset(self.client.usergroups_users_list(usergroup=group)["users"])
        except SlackApiError as exc:
            log.warning("cannot read user group %s: %s", group, exc.response.get("error"))
            members = frozenset()
        with self._lock:
            self._cache[group] = (now, members)
        return members


@dataclass
class BotContext:
    """Everything a handler needs; built once by `bot.app.build_app`."""

    services: Services
    client: WebClient
    drafting: TrackedExecutor  # drafts (BOT_WORKER_THREADS)
    quick: TrackedExecutor  # everything else (BOT_QUICK_THREADS): never behind drafts
    approvers: People
    admins: People
    monotonic: Callable[[], float] = time.monotonic
    scheduler: object | None = None  # APScheduler, for "next scheduled check" in status
    in_hand: EventsInHand = field(default_factory=EventsInHand)  # events being handled now
    extra: dict = field(default_factory=dict)

    @property
    def settings(self):  # noqa: ANN201 - Settings
        return self.services.settings

    @property
    def bot_token(self) -> str | None:
        return self.client.token

    def watched(self, channel: str | None) -> bool:
        """Empty SOP_WATCHED_CHANNELS means every channel the bot is in."""
        watched = self.settings.sop_watched_channels
        return bool(channel) and (not watched or channel in watched)

    def is_admin(self, user_id: str | None) -> bool:
        return self.admins.contains(user_id)

    def is_approver(self, user_id: str | None) -> bool:
        return self.approvers.contains(user_id)

    @property
    def pools(self) -> tuple[TrackedExecutor, TrackedExecutor]:
        return self.quick, self.drafting

    def wait_idle(self, timeout: float = 30.0) -> bool:
        """Both pools idle at once (work in one may have queued more in the other)."""
        deadline = time.monotonic() + timeout
        while True:
            for pool in self.pools:
                if not pool.wait_idle(max(0.0, deadline - time.monotonic())):
                    return False
            if all(pool.pending == 0 for pool in self.pools):
                return True

    def defer(self, work: Callable[..., None], /, *args: object, **kwargs: object) -> None:
        """Run `work` in the quick pool after the listener has acknowledged; a failure is
        logged with its traceback (nobody waits for the result)."""
        self._submit(self.quick, work, args, kwargs)

    def defer_draft(self, work: Callable[..., None], /, *args: object,
                    **kwargs: object) -> None:
        """`defer`, in the drafting pool: for work that drafts (and waits on the provider)."""
        self._submit(self.drafting, work, args, kwargs)

    @staticmethod
    def _submit(pool: TrackedExecutor, work: Callable[..., None], args: tuple,
                kwargs: dict) -> None:
        def run() -> None:
            try:
                work(*args, **kwargs)
            except Exception:
                log.exception("%s failed in the background", getattr(work, "__name__", work))

        pool.submit(run)

    def acknowledge_then(self, work: Callable[..., None], *,
                         drafts: bool = False) -> Callable[..., None]:
        """A Bolt listener for events and buttons, whose answer is always empty: acknowledge
        in the request's own thread, then run `work(body, ctx=self)` in the quick pool (the
        drafting pool when `drafts`)."""
        later = self.defer_draft if drafts else self.defer

        def listener(ack: Callable[..., None], body: dict) -> None:
            ack()
            later(work, body, ctx=self)

        listener.__name__ = getattr(work, "__name__", "listener")
        return listener

    def claim(self, key: str) -> bool:
        """True the first time `key` is claimed by any instance sharing the database.

        Slack retries events it thinks we missed (X-Slack-Retry-Num) and several instances
        may receive the same event; the primary key on ProcessedEvent makes exactly one win.
        """
        with self.services.session() as session:
            try:
                inserted = self.claim_in(session, key)
                session.commit()
            except IntegrityError:  # pragma: no cover - ON CONFLICT covers it
                session.rollback()
                return False
        return inserted

    def claim_in(self, session: Session, key: str) -> bool:
        """Claim `key` inside the caller's transaction, so the claim commits together with the
        work it guards: a crash before the commit leaves neither, and Slack's re-delivery of
        the event is processed instead of being skipped as already handled."""
        from sop_pipeline.claims import claim

        return claim(session, key, self.services.clock())
