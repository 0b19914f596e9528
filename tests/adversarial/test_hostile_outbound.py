"""Adversarial (issue 12.1): the bot token never leaves Slack's own file hosts.

A "foreign host" on loopback (another port than the fake Slack) records every request and
whether an Authorization header came with it. Each case fails on the code before issue 12:
it sent `Authorization: Bearer xoxb-…` to whatever `url_private` said, and again across
redirects.
"""

from __future__ import annotations

import threading
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pytest
from sqlmodel import select

from bot.slack_files import may_carry_token
from sop_pipeline.models import TrainingExample
from tests.fakes.slack_fake import FakeSlack, user_reacts

SOPS = Path(__file__).parent.parent / "data" / "sops"
CHANNEL = "CSOP00001"
APPROVER = "UAPPROVE1"
AUTHOR = "UAUTHOR01"


class ForeignHost:
    """A web server that is not Slack; serves an SOP and remembers what it was sent."""

    def __init__(self, body: bytes) -> None:
        self.seen: list[tuple[str, str | None]] = []
        host = self

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, *args: object) -> None:
                return

            def do_GET(self) -> None:  # noqa: N802
                host.seen.append((self.path, self.headers.get("Authorization")))
                self.send_response(200)
                self.send_header("Content-Type", "text/plain; charset=utf-8")
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.server.daemon_threads = True
        threading.Thread(target=self.server.serve_forever, kwargs={"poll_interval": 0.05},
                         daemon=True).start()

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.server.server_address[1]}/sop.txt"

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()


@pytest.fixture
def foreign() -> Iterator[ForeignHost]:
    host = ForeignHost((SOPS / "09_autoclave_operation.txt").read_bytes())
    yield host
    host.close()


def examples(bot) -> list[TrainingExample]:  # noqa: ANN001
    with bot.ctx.services.session() as session:
        return list(session.exec(select(TrainingExample)))


def approve_file(bot, fake: FakeSlack, shared: dict) -> str:  # noqa: ANN001
    ts = fake.user_posts(CHANNEL, AUTHOR, "Our SOP is attached, please approve", files=[shared])
    user_reacts(fake, CHANNEL, ts, APPROVER)
    assert bot.slack.reaction("reaction_added", user=APPROVER, channel=CHANNEL,
                              ts=ts).status == 200
    bot.wait()
    return ts


def remote_file(fake: FakeSlack, url: str, *, flagged: bool = True) -> dict:
    """A file object whose url_private points off Slack (as Slack describes remote files)."""
    shared = dict(fake.add_file("sop.txt", b"unused"))
    shared.update(url_private=url, url_private_download=url)
    if flagged:
        shared.update(is_external=True, mode="external", external_type="app")
    return shared


@pytest.mark.parametrize("flagged", [True, False], ids=["remote-file", "forged-url-private"])
def test_a_file_off_slack_is_refused_by_default_and_nothing_is_sent_there(
    factory, fake_slack, foreign, flagged  # noqa: ANN001
) -> None:
    bot = factory.start(sop_approvers=[APPROVER])
    approve_file(bot, fake_slack, remote_file(fake_slack, foreign.url, flagged=flagged))
    assert foreign.seen == []
    assert examples(bot) == []
    [note] = fake_slack.ephemerals_for(APPROVER)
    assert "not stored on Slack" in note["text"] or "remote file" in note["text"]


def test_a_remote_file_is_fetched_without_credentials_when_the_setting_allows(
    factory, fake_slack, foreign  # noqa: ANN001
) -> None:
    bot = factory.start(sop_approvers=[APPROVER], sop_remote_files="fetch")
    approve_file(bot, fake_slack, remote_file(fake_slack, foreign.url))
    assert foreign.seen == [("/sop.txt", None)]
    assert len(examples(bot)) == 1


@pytest.mark.parametrize("policy", ["refuse", "fetch"])
def test_a_redirect_from_slack_to_another_host_never_carries_the_token(
    factory, fake_slack, foreign, policy  # noqa: ANN001
) -> None:
    def redirect(handler, path: str, token: str | None) -> None:  # noqa: ANN001
        fake_slack.downloads.append((path, token))
        handler.send_response(302)
        handler.send_header("Location", foreign.url)
        handler.send_header("Content-Length", "0")
        handler.end_headers()

    fake_slack._download = redirect  # the Slack file host answers with a redirect
    bot = factory.start(sop_approvers=[APPROVER], sop_remote_files=policy)
    text = (SOPS / "09_autoclave_operation.txt").read_bytes()
    approve_file(bot, fake_slack, fake_slack.add_file("sop.txt", text))

    assert [token for _, token in fake_slack.downloads] == [fake_slack.bot_token]
    if policy == "fetch":
        assert foreign.seen == [("/sop.txt", None)]
        assert len(examples(bot)) == 1
    else:
        assert foreign.seen == []
        assert examples(bot) == []
        assert "not stored on Slack" in fake_slack.ephemerals_for(APPROVER)[0]["text"]


def test_a_file_larger_than_it_claims_is_refused_by_its_content_length(
    factory, fake_slack  # noqa: ANN001
) -> None:
    bot = factory.start(sop_approvers=[APPROVER], sop_max_file_bytes=1000)
    shared = dict(fake_slack.add_file("sop.txt", b"1.0 Objective\n" * 500))
    shared["size"] = 10  # the message's file object understates it
    approve_file(bot, fake_slack, shared)
    assert examples(bot) == []
    assert "larger than" in fake_slack.ephemerals_for(APPROVER)[0]["text"]


def test_size_and_type_are_checked_before_downloading(factory, fake_slack) -> None:  # noqa: ANN001
    bot = factory.start(sop_approvers=[APPROVER], sop_max_file_bytes=1000)
    approve_file(bot, fake_slack, fake_slack.add_file("big.txt", b"x" * 1001))
    image = {**fake_slack.add_file("photo.txt", b"\x89PNG"), "mimetype": "image/png",
             "filetype": "png"}
    approve_file(bot, fake_slack, image)
    assert fake_slack.downloads == []
    first, second = (e["text"] for e in fake_slack.ephemerals_for(APPROVER))
    assert "larger than" in first and "not a text, Markdown or Word file" in second


def test_a_partial_file_object_is_completed_with_files_info_first(factory, fake_slack) -> None:  # noqa: ANN001
    bot = factory.start(sop_approvers=[APPROVER], sop_max_file_bytes=1000)
    shared = fake_slack.add_file("sop.txt", b"x" * 5000)
    partial = {"id": shared["id"], "name": "sop.txt", "file_access": "check_file_info",
               "url_private": shared["url_private"]}
    approve_file(bot, fake_slack, partial)
    assert [c.params["file"] for c in fake_slack.calls_to("files.info")] == [shared["id"]]
    assert fake_slack.downloads == []


@pytest.mark.parametrize(("url", "api", "allowed"), [
    ("https://files.slack.com/files-pri/T1-F1/sop.txt", "https://slack.com/api/", True),
    ("http://files.slack.com/files-pri/T1-F1/sop.txt", "https://slack.com/api/", False),
    ("https://files.slack.com:8443/files-pri/T1-F1/x", "https://slack.com/api/", False),
    ("https://files.slack.com.evil.test/files-pri/x", "https://slack.com/api/", False),
    ("https://evil.test/files.slack.com/x", "https://slack.com/api/", False),
    ("https://user@files.slack.com/files-pri/x", "https://slack.com/api/", False),
    ("http://127.0.0.1:5000/files-pri/x", "https://slack.com/api/", False),
    ("http://127.0.0.1:5000/files-pri/x", "http://127.0.0.1:5000/api/", True),
    ("http://127.0.0.1:5001/files-pri/x", "http://127.0.0.1:5000/api/", False),
])
def test_only_slacks_file_host_over_https_may_receive_the_token(url, api, allowed) -> None:  # noqa: ANN001
    assert may_carry_token(url, api) is allowed
