"""What every Slack handler shares: services, the Web API client, the worker pool, who may do
what, and "handle this event once".

Slack wants an HTTP answer within 3 seconds, so listeners acknowledge first and work in a
bounded thread pool. The pool counts its pending work so tests (and a graceful shutdown) can
wait until the bot is idle instead of sleeping.
"""

from __future__ import annotations

import logging
import queue
import threading
import time
from collections.abc import Callable
from concurrent.futures import Executor, Future, ThreadPoolExecutor
from dataclasses import dataclass, field

from slack_sdk import WebClient
from slack_sdk.errors import SlackApiError
from sqlalchemy.exc import IntegrityError
from sqlmodel import Session

from sop_pipeline.services import Services

log = logging.getLogger(__name__)

DEFAULT_WORKERS = 256  # a draft holds its worker while it streams (up to minutes), and a
# command is acknowledged only once a worker picks it up: keep acks from queueing behind drafts


class TrackedExecutor(Executor):
    """A bounded ThreadPoolExecutor that knows how much work is pending (for `wait_idle`)."""

    def __init__(self, max_workers: int = DEFAULT_WORKERS) -> None:
        self._pool = ThreadPoolExecutor(max_workers=max_workers, thread_name_prefix="sop-bot")
        self._idle = threading.Condition()
        self._pending = 0
        self.max_workers = max_workers
        self._handoff: queue.SimpleQueue = queue.SimpleQueue()
        self._dispatcher: threading.Thread | None = None

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

    def submit_soon(self, fn: Callable[[], object]) -> None:
        """Queue `fn` without waiting: a dispatcher thread submits it to the pool. Starting a
        new pool thread blocks the caller until that thread runs, which under load is where
        an acknowledgement would wait."""
        with self._idle:
            self._pending += 1
            if self._dispatcher is None:
                self._dispatcher = threading.Thread(target=self._dispatch, daemon=True,
                                                    name="sop-bot-dispatch")
                self._dispatcher.start()
        self._handoff.put(fn)

    def _dispatch(self) -> None:
        while (fn := self._handoff.get()) is not None:
            try:
                self._pool.submit(fn).add_done_callback(self._finished)
            except BaseException:  # shut down meanwhile: the work is dropped, not waited for
                self._finished(None)

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
        self._handoff.put(None)
        if self._dispatcher is not None and wait:
            self._dispatcher.join(timeout=5)
        self._pool.shutdown(wait=wait, cancel_futures=cancel_futures)


class AcksFirst:
    """Lets acknowledgements overtake background work under a burst of requests.

    Slack's 3-second rule is a deadline and a draft is not, but both need this process's one
    interpreter lock: with 50 drafts starting at once, a request waits behind them for the lock
    and is answered hundreds of milliseconds late. The HTTP server counts the requests it is
    answering; background work calls `checkpoint()` before each Slack call, database session
    and streamed chunk and waits there while a burst lasts: while any request is being
    answered and for `quiet` seconds after the last one (requests arrive in clusters, and
    waking every waiting worker between two of them would put them all back in the way). It
    never waits longer than `max_wait` seconds, so a steady stream of requests cannot starve
    the drafts.
    """

    def __init__(self, *, quiet: float = 0.02, max_wait: float = 0.25,
                 monotonic: Callable[[], float] = time.monotonic) -> None:
        self.quiet = quiet
        self.max_wait = max_wait
        self.monotonic = monotonic
        self._answering = 0
        self._last_answer = float("-inf")
        self._changed = threading.Condition()
        self._local = threading.local()

    @property
    def answering(self) -> int:
        return self._answering

    def request_started(self) -> None:
        """A request was accepted (called by the server thread before it hands it on)."""
        with self._changed:
            self._answering += 1

    def request_finished(self) -> None:
        with self._changed:
            self._answering = max(0, self._answering - 1)
            self._last_answer = self.monotonic()
            if not self._answering:
                self._changed.notify_all()

    def mark_answering_thread(self, answering: bool = True) -> None:
        """The current thread answers a request: its own checkpoints never wait."""
        self._local.answering = answering

    def _busy_for(self, now: float) -> float:
        """How much longer the current burst lasts at least (0: it is over)."""
        if self._answering:
            return float("inf")  # until request_finished() says otherwise
        return max(0.0, self._last_answer + self.quiet - now)

    def checkpoint(self) -> None:
        now = self.monotonic()
        if not self._answering and now - self._last_answer >= self.quiet:
            return  # the common case: no burst, no lock taken
        if getattr(self._local, "answering", False):
            return
        deadline = now + self.max_wait
        with self._changed:
            while (wait := self._busy_for(now)) > 0 and now < deadline:
                self._changed.wait(min(wait, deadline - now))
                now = self.monotonic()


class DraftsFirst:
    """Approvals and retractions step aside while drafts are starting.

    A draft's requester watches "Drafting…" and the provider needs seconds to answer, so every
    millisecond before its request goes out is added to the wait; an approval only has to be
    stored and confirmed, with no deadline. In a burst (50 `/sop` and 20 ✅ at once) the
    approvals' Slack calls and parsing held back every provider request by a few hundred
    milliseconds. A draft counts as starting from its acknowledgement until its provider
    request is about to be sent (or it ended before that); reaction work waits at its start
    while any draft is starting, never longer than `max_wait` seconds, and loses nothing: the
    event was acknowledged and is processed after the wait.
    """

    def __init__(self, *, max_wait: float = 1.0,
                 monotonic: Callable[[], float] = time.monotonic) -> None:
        self.max_wait = max_wait
        self.monotonic = monotonic
        self._starting = 0
        self._changed = threading.Condition()

    @property
    def starting_now(self) -> int:
        return self._starting

    def starting(self) -> Callable[[], None]:
        """Count one draft as starting; returns `started()`, which ends that (calls after the
        first do nothing, so every exit path may call it)."""
        with self._changed:
            self._starting += 1
        done = False

        def started() -> None:
            nonlocal done
            with self._changed:
                if done:
                    return
                done = True
                self._starting -= 1
                if not self._starting:
                    self._changed.notify_all()

        return started

    def wait_turn(self) -> None:
        """Wait while drafts are starting, at most `max_wait` seconds."""
        if not self._starting:
            return
        deadline = self.monotonic() + self.max_wait
        with self._changed:
            while self._starting and (left := deadline - self.monotonic()) > 0:
                self._changed.wait(left)


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
    executor: TrackedExecutor
    approvers: People
    admins: People
    monotonic: Callable[[], float] = time.monotonic
    scheduler: object | None = None  # APScheduler, for "next scheduled check" in status
    acks_first: AcksFirst = field(default_factory=AcksFirst)
    drafts_first: DraftsFirst = field(default_factory=DraftsFirst)
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

    def wait_idle(self, timeout: float = 30.0) -> bool:
        return self.executor.wait_idle(timeout)

    def defer(self, work: Callable[..., None], /, *args: object, **kwargs: object) -> None:
        """Run `work` in the worker pool after the listener has acknowledged; a failure is
        logged with its traceback (nobody waits for the result)."""

        def run() -> None:
            try:
                work(*args, **kwargs)
            except Exception:
                log.exception("%s failed in the background", getattr(work, "__name__", work))

        self.executor.submit_soon(run)

    def acknowledge_then(self, work: Callable[..., None]) -> Callable[..., None]:
        """A Bolt listener for events and buttons, whose answer is always empty: acknowledge
        in the request's own thread, then run `work(body, ctx=self)` in the worker pool."""

        def listener(ack: Callable[..., None], body: dict) -> None:
            ack()
            self.defer(work, body, ctx=self)

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
