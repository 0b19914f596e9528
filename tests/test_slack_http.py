"""HTTP mode: Slack's request signing is enforced, slash commands are acknowledged at once."""

from __future__ import annotations

import json
import time

import pytest

from sop_pipeline.services import build_services
from tests.conftest import make_settings
from tests.fakes.slack_fake import running_bot, settings_overrides


@pytest.fixture
def bot(database_url, tmp_path, fake_openai, fake_slack, notifier):  # noqa: ANN001, ANN201
    settings = make_settings(database_url, tmp_path / "data",
                             openai_base_url=fake_openai.base_url,
                             **settings_overrides(fake_slack))
    services = build_services(settings, notifier=notifier)
    with running_bot(services, fake_slack) as harness:
        yield harness
    services.engine.dispose()


def test_a_correctly_signed_command_is_acknowledged(bot) -> None:  # noqa: ANN001
    result = bot.slack.command("/sop", "")
    assert result.status == 200
    assert "Tell me which SOP to draft" in result.json()["text"]
    assert result.json()["response_type"] == "ephemeral"


def test_unsigned_request_is_rejected(bot) -> None:  # noqa: ANN001
    assert bot.slack.command("/sop", "", signed=False).status == 401


def test_wrong_secret_is_rejected(bot) -> None:  # noqa: ANN001
    assert bot.slack.command("/sop", "", secret="not-the-secret").status == 401


def test_stale_timestamp_is_rejected(bot) -> None:  # noqa: ANN001
    six_minutes_ago = int(time.time()) - 6 * 60
    assert bot.slack.command("/sop", "", timestamp=six_minutes_ago).status == 401


def test_tampered_body_is_rejected(bot) -> None:  # noqa: ANN001
    body = "command=%2Fsop&text=&user_id=U1&channel_id=C1"
    ts = int(time.time())
    signature = bot.slack.sign(body, ts)
    result = bot.slack.post(body + "x", "application/x-www-form-urlencoded", signed=False,
                            headers={"X-Slack-Request-Timestamp": str(ts),
                                     "X-Slack-Signature": signature})
    assert result.status == 401


def test_url_verification_challenge_is_answered(bot) -> None:  # noqa: ANN001
    body = json.dumps({"type": "url_verification", "challenge": "abc123", "token": "t"})
    result = bot.slack.post(body, "application/json")
    assert result.status == 200
    assert "abc123" in result.body


def test_other_paths_are_not_found(bot) -> None:  # noqa: ANN001
    import urllib.error
    import urllib.request

    url = bot.slack.bot_url.replace("/slack/events", "/elsewhere")
    with pytest.raises(urllib.error.HTTPError) as info:
        urllib.request.urlopen(urllib.request.Request(url, data=b"{}", method="POST"), timeout=5)
    assert info.value.code == 404


def _raw(bot, data: bytes) -> str:  # noqa: ANN001
    """Send raw bytes to the bot's port; the status line of its answer ('' if none)."""
    import socket
    from urllib.parse import urlsplit

    url = urlsplit(bot.slack.bot_url)
    with socket.create_connection((url.hostname, url.port), timeout=5) as conn:
        conn.sendall(data)
        answer = b""
        while b"\r\n" not in answer and (chunk := conn.recv(4096)):
            answer += chunk
    return answer.split(b"\r\n", 1)[0].decode(errors="replace")


def test_probes_answer_on_the_same_port(bot) -> None:  # noqa: ANN001
    import urllib.request

    base = bot.slack.bot_url.replace("/slack/events", "")
    for path, text in (("/healthz", "ok"), ("/readyz", "ready")):
        with urllib.request.urlopen(base + path, timeout=5) as response:
            assert (response.status, response.read().decode()) == (200, text)


@pytest.mark.parametrize("head", [
    "POST /slack/events HTTP/1.1\r\nHost: x\r\nContent-Length: \u00b2\r\n\r\n",
    "POST /slack/events HTTP/1.1\r\nHost: x\r\nContent-Length: 3\r\n"
    "Transfer-Encoding: chunked\r\n\r\n0\r\n\r\n",
    "POST /slack/events HTTP/1.1\r\nHost: x\r\nX-Bad: a\x00b\r\n\r\n",
    "GARBAGE\r\n\r\n",
])
def test_malformed_requests_are_refused_by_the_server(bot, head: str) -> None:  # noqa: ANN001
    assert _raw(bot, head.encode("utf-8")).startswith("HTTP/1.1 4")


def test_fifty_slow_clients_do_not_delay_a_signed_command(bot) -> None:  # noqa: ANN001
    """Connections that trickle their headers (a byte at a time, never finishing) cost the
    server nothing: a signed /sop is still acknowledged within a second, probes still answer."""
    import socket
    import urllib.request
    from urllib.parse import urlsplit

    url = urlsplit(bot.slack.bot_url)
    slow = [socket.create_connection((url.hostname, url.port), timeout=5) for _ in range(50)]
    try:
        for conn in slow:
            conn.sendall(b"POST /slack/events HTTP/1.1\r\nHost: x\r\nX-Slow: ")
        for round_ in range(3):
            for conn in slow:
                conn.sendall(b"a")  # one more header byte on every slow connection
            started = time.monotonic()
            result = bot.slack.command("/sop", "")
            elapsed = time.monotonic() - started
            assert result.status == 200 and "Tell me which SOP" in result.json()["text"]
            assert elapsed < 1.0, f"round {round_}: acknowledged after {elapsed:.2f} s"
        health = bot.slack.bot_url.replace("/slack/events", "/healthz")
        with urllib.request.urlopen(health, timeout=1) as response:
            assert response.status == 200
    finally:
        for conn in slow:
            conn.close()
