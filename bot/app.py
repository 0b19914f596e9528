"""Build the Bolt app: one Web API client, one bounded worker pool, one module per Slack surface.

Every listener is split in two, as Bolt's lazy listeners are: a quick `ack` function that
answers Slack in the request's own thread (no hand-off, no polling for the answer), and the slow
part (drafting, approving, training) that Bolt then starts in `listener_executor`. The pool is
a `TrackedExecutor`, so `wait_idle()` tells tests and shutdown when work is done.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable

from slack_bolt import App
from slack_sdk import WebClient
from slack_sdk.http_retry import ConnectionErrorRetryHandler, RateLimitErrorRetryHandler
from slack_sdk.http_retry.handler import RetryHandler

from bot.runtime import AcksFirst, BotContext, People, TrackedExecutor
from sop_pipeline.services import Services

log = logging.getLogger(__name__)

MAX_RETRY_AFTER_SECONDS = 60.0


class RetryAfterHandler(RateLimitErrorRetryHandler):
    """Retry HTTP 429 after exactly the Retry-After Slack sent (capped), with an injectable
    sleep so tests never wait; slack_sdk's own handler adds up to a second of jitter."""

    def __init__(self, max_retry_count: int = 3, *, sleep: Callable[[float], None] = time.sleep):
        super().__init__(max_retry_count=max_retry_count)
        self.sleep = sleep

    def prepare_for_next_attempt(self, *, state, request, response=None, error=None):  # noqa: ANN001, ANN201
        if response is None:
            raise error  # type: ignore[misc]
        state.next_attempt_requested = True
        value = next((v for k, v in response.headers.items() if k.lower() == "retry-after"), None)
        if isinstance(value, list):
            value = value[0] if value else None
        try:
            delay = float(value) if value is not None else 1.0
        except ValueError:
            delay = 1.0
        self.sleep(min(max(delay, 0.0), MAX_RETRY_AFTER_SECONDS))
        state.increment_current_attempt()


class CheckpointedWebClient(WebClient):
    """A WebClient that calls `checkpoint()` before every Web API call (`AcksFirst`)."""

    def __init__(self, *args: object, checkpoint: Callable[[], None], **kwargs: object) -> None:
        super().__init__(*args, **kwargs)
        self.checkpoint = checkpoint

    def api_call(self, *args: object, **kwargs: object):  # noqa: ANN201
        self.checkpoint()
        return super().api_call(*args, **kwargs)


def make_client(
    services: Services, *, sleep: Callable[[float], None] = time.sleep,
    checkpoint: Callable[[], None] | None = None,
) -> WebClient:
    """The Web API client: bot token, SLACK_API_URL, Retry-After honoured on 429; with
    `checkpoint`, every call first gives way to requests being acknowledged."""
    settings = services.settings
    handlers: list[RetryHandler] = [ConnectionErrorRetryHandler(), RetryAfterHandler(sleep=sleep)]
    if checkpoint is not None:
        return CheckpointedWebClient(
            token=settings.secret("slack_bot_token"), base_url=settings.slack_api_url,
            timeout=30, retry_handlers=handlers, checkpoint=checkpoint)
    return WebClient(
        token=settings.secret("slack_bot_token"),
        base_url=settings.slack_api_url,
        timeout=30,
        retry_handlers=handlers,
    )


def build_context(
    services: Services,
    *,
    client: WebClient | None = None,
    executor: TrackedExecutor | None = None,
    monotonic: Callable[[], float] = time.monotonic,
    scheduler: object | None = None,
) -> BotContext:
    acks_first = AcksFirst()
    client = client or make_client(services, checkpoint=acks_first.checkpoint)
    settings = services.settings
    give_way_before_database_work(services, acks_first)
    return BotContext(
        services=services,
        client=client,
        executor=executor or TrackedExecutor(),
        approvers=People(client, settings.sop_approvers, monotonic=monotonic),
        admins=People(client, settings.sop_admins, monotonic=monotonic),
        monotonic=monotonic,
        scheduler=scheduler,
        acks_first=acks_first,
    )


def give_way_before_database_work(services: Services, acks_first: AcksFirst) -> None:
    """Background work checks in with `acks_first` when it takes a database connection, i.e.
    before a session's first statement, while it holds no lock."""
    from sqlalchemy import event

    event.listen(services.engine, "checkout", lambda *_: acks_first.checkpoint())


def build_app(
    services: Services,
    *,
    client: WebClient | None = None,
    context: BotContext | None = None,
    token_verification: bool = True,
) -> App:
    """The Bolt app with every listener registered. `context` (tests) overrides the clock,
    the pool or the client; `bot_context(app)` gives it back."""
    from bot import actions, commands, home, reactions

    ctx = context or build_context(services, client=client)
    app = App(
        client=ctx.client,
        signing_secret=services.settings.secret("slack_signing_secret") or "",
        process_before_response=True,  # ack functions answer in the request's thread
        token_verification_enabled=token_verification,
        listener_executor=ctx.executor,
        logger=logging.getLogger("bot.bolt"),
    )
    for module in (commands, reactions, actions, home):
        module.register(app, ctx)

    @app.error
    def _on_error(error: Exception, body: dict) -> None:
        log.error("unhandled error in a Slack listener (%s)", body.get("type"), exc_info=error)

    app.sop_context = ctx  # type: ignore[attr-defined]
    return app


def bot_context(app: App) -> BotContext:
    """The BotContext an app was built with (worker pool, client, people)."""
    return app.sop_context  # type: ignore[attr-defined]
