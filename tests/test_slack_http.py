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


def test_every_answer_closes_its_connection_so_no_handler_waits_on_an_idle_one(bot) -> None:  # noqa: ANN001
    """The few handler threads must not sit on keep-alive connections (a proxy in front of the
    bot keeps them open), and an answered request no longer holds background work back."""
    import http.client
    from urllib.parse import urlsplit

    url = urlsplit(bot.slack.bot_url)
    body = "command=%2Fsop&text=&user_id=U1&channel_id=C1&team_id=T1"
    connection = http.client.HTTPConnection(url.hostname, url.port, timeout=10)
    try:
        connection.request("POST", url.path, body=body, headers={
            **bot.slack.headers_for(body, "application/x-www-form-urlencoded"),
            "Connection": "keep-alive"})
        answer = connection.getresponse()
        assert answer.status == 200 and "Tell me which SOP" in answer.read().decode()
        assert answer.getheader("Connection") == "close"
        assert bot.ctx.acks_first.answering == 0
    finally:
        connection.close()


def _raw(bot, data: bytes) -> int:  # noqa: ANN001
    """Send raw bytes to the bot's port; the status code of its answer."""
    import socket
    from urllib.parse import urlsplit

    url = urlsplit(bot.slack.bot_url)
    with socket.create_connection((url.hostname, url.port), timeout=10) as sock:
        sock.sendall(data)
        answer = b""
        while b"\r\n" not in answer and (chunk := sock.recv(4096)):
            answer += chunk
    return int(answer.split(b" ", 2)[1])


def _signed_command(bot) -> tuple[str, dict[str, str]]:  # noqa: ANN001
    body = "command=%2Fsop&text=&user_id=U1&channel_id=C1&team_id=T1"
    return body, bot.slack.headers_for(body, "application/x-www-form-urlencoded")


def test_header_names_are_matched_in_any_case(bot) -> None:  # noqa: ANN001
    body, headers = _signed_command(bot)
    lines = [f"{name.upper() if i % 2 else name.lower()}: {value}"
             for i, (name, value) in enumerate(headers.items())]
    request = ("POST /slack/events HTTP/1.1\r\nhost: bot\r\ncontent-length: "
               f"{len(body)}\r\nconnection: close\r\n" + "\r\n".join(lines) + "\r\n\r\n" + body)
    assert _raw(bot, request.encode()) == 200


@pytest.mark.parametrize(("request_head", "status"), [
    ("HELLO\r\n\r\n", 400),
    ("POST /slack/events HTTP/2.0\r\n\r\n", 505),
    ("POST /slack/events HTTP/one\r\n\r\n", 400),
    ("POST /slack/events HTTP/1.1\r\nContent-Length: 5\r\nContent-Length: 6\r\n\r\n", 400),
    ("POST /slack/events HTTP/1.1\r\nX-Thing: a\r\n  folded\r\n\r\n", 400),
    ("POST /slack/events HTTP/1.1\r\nno colon here\r\n\r\n", 400),
    ("POST /slack/events HTTP/1.1\r\n" + "X-Many: 1\r\n" * 101 + "\r\n", 431),
])
def test_malformed_request_heads_get_a_4xx_or_505(bot, request_head: str, status: int) -> None:  # noqa: ANN001
    assert _raw(bot, request_head.encode()) == status
    assert bot.ctx.acks_first.answering == 0


def test_a_header_line_longer_than_64_kib_is_refused_before_it_is_all_read() -> None:
    import io

    from bot.http_server import BadRequest, read_headers

    with pytest.raises(BadRequest) as info:
        read_headers(io.BytesIO(b"X-Long: " + b"a" * 70_000 + b"\r\n\r\n"))
    assert info.value.status == 431
