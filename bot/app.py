"""Build the Bolt app: one Web API client, two bounded worker pools, one module per Slack
surface.

Every listener is split in two, as Bolt's lazy listeners are: a quick `ack` function that
answers Slack in the request's own thread, and the slow part that runs in a bounded pool:
drafts in the drafting pool (`BOT_WORKER_THREADS`: each holds its thread while the provider
answers), everything else (approving, buttons, admin commands) in the quick pool
(`BOT_QUICK_THREADS`, also Bolt's `listener_executor`), so an approval never waits for a
thread behind drafts. The pools are `TrackedExecutor`s, so `wait_idle()` tells tests and a
graceful shutdown when work is done.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable

from slack_bolt import App
from slack_sdk import WebClient
from slack_sdk.http_retry import ConnectionErrorRetryHandler, RateLimitErrorRetryHandler
from slack_sdk.http_retry.handler import RetryHandler
from slack_sdk.http_retry.response import HttpResponse
from slack_sdk.http_retry.state import RetryState

from bot.runtime import BotContext, People, TrackedExecutor
from sop_pipeline.retry_policy import RetryPolicy, retry_after_from_headers
from sop_pipeline.services import Services

log = logging.getLogger(__name__)


class PolicyRateLimitHandler(RateLimitErrorRetryHandler):
    """slack_sdk's 429 handler with the wait taken from the one retry policy
    (`sop_pipeline.retry_policy`): exactly the Retry-After Slack sent, no wait past the
    policy's limits (the call then fails and the caller says so), and an injectable sleep
    so tests never wait. slack_sdk's own loop decides when to call it."""

    def __init__(self, policy: RetryPolicy, *, sleep: Callable[[float], None] = time.sleep):
        super().__init__(max_retry_count=policy.max_retries)
        self.policy = policy
        self.sleep = sleep

    def _wait(self, state: RetryState, response: HttpResponse | None) -> float | None:
        retry_after = retry_after_from_headers(response.headers) if response else None
        waited = (state.custom_values or {}).get("waited", 0.0)
        return self.policy.next_wait(state.current_attempt, retry_after, waited)

    def _can_retry(self, *, state, request, response=None, error=None) -> bool:  # noqa: ANN001
        return super()._can_retry(state=state, request=request, response=response,
                                  error=error) and self._wait(state, response) is not None

    def prepare_for_next_attempt(self, *, state, request, response=None, error=None) -> None:  # noqa: ANN001
        delay = self._wait(state, response) or 0.0
        state.custom_values = {**(state.custom_values or {}),
                               "waited": (state.custom_values or {}).get("waited", 0.0) + delay}
        state.next_attempt_requested = True
        self.sleep(delay)
        state.increment_current_attempt()


def make_client(
    services: Services, *, sleep: Callable[[float], None] = time.sleep,
) -> WebClient:
    """The Web API client: bot token, SLACK_API_URL, retries per the one retry policy
    (dropped connections; 429 after Retry-After)."""
    settings = services.settings
    policy = RetryPolicy.slack(settings)
    handlers: list[RetryHandler] = [
        ConnectionErrorRetryHandler(max_retry_count=policy.max_retries),
        PolicyRateLimitHandler(policy, sleep=sleep),
    ]
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
    monotonic: Callable[[], float] = time.monotonic,
    scheduler: object | None = None,
) -> BotContext:
    client = client or make_client(services)
    settings = services.settings
    return BotContext(
        services=services,
        client=client,
        drafting=TrackedExecutor(settings.bot_worker_threads, name="sop-bot-draft"),
        quick=TrackedExecutor(settings.bot_quick_threads, name="sop-bot"),
        approvers=People(client, settings.sop_approvers, monotonic=monotonic),
        admins=People(client, settings.sop_admins, monotonic=monotonic),
        monotonic=monotonic,
        scheduler=scheduler,
    )


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
    from bot import logs as bot_logs

    ctx = context or build_context(services, client=client)
    app = App(
        client=ctx.client,  # the token comes with the client (Bolt reads client.token)
        signing_secret=services.settings.secret("slack_signing_secret") or "",
        process_before_response=True,  # ack functions answer in the request's thread
        token_verification_enabled=token_verification,
        listener_executor=ctx.quick,
        logger=bot_logs.bolt_logger(),  # no bodies, texts, user ids or tokens in the log
    )
    for module in (commands, reactions, actions, home):
        module.register(app, ctx)

    @app.error
    def _on_error(error: Exception, body: dict) -> None:
        log.error("unhandled error in a Slack listener (%s)", body.get("type"), exc_info=error)

    # Bolt's App has no slot for our context: set once here, read back by bot_context
    app.sop_context = ctx  # type: ignore[attr-defined]
    return app


def bot_context(app: App) -> BotContext:
    """The BotContext an app was built with (worker pool, client, people)."""
    return app.sop_context  # type: ignore[attr-defined]  # set by build_app above
