"""Load benchmark: SOP Bot as deployed, side by side with a textbook Bolt app, under a burst of
/sop commands and ✅ approvals.

Each scenario starts a real process against the fake Slack, fake Socket Mode and fake OpenAI
servers living in this process; the fake provider holds every chat completion for
--provider-latency seconds before streaming its answer. Apps (--apps):

* bot-socket:    `sop-bot run` in Socket Mode (the default deployment), envelopes over the fake
                 Socket Mode server; ack = envelope sent -> its acknowledgement received.
* bot-http:      `sop-bot run` in HTTP mode (Bolt's ASGI adapter on uvicorn); ack = connect ->
                 whole HTTP answer, measured by benchmarks/load_client.py in its own process.
* textbook-http: benchmarks/textbook_app.py, a minimal Bolt app with lazy listeners doing the
                 same Slack and provider calls, on the same server (uvicorn).
* textbook-socket: the same app over Socket Mode.

Each measured burst follows an unmeasured one of the same size (--warm-up to change it), so
the figures are those of a bot that has been running and has met such a burst before: it
keeps the database connections that burst opened. --cold measures the first burst after a
start, which also pays one-time costs (SQLAlchemy compiling each query shape, regular
expressions, one connection opened per concurrent draft). The fake provider runs in a process
of its own (benchmarks/fake_provider.py), as a real provider is another machine.

For each burst size (--sizes: that many concurrent /sop, plus --reactions approvals, each
re-delivered once as Slack does) it prints ack p50/p95/p99; per draft, the time from sending
its /sop to the first draft text a user sees (the first streamed append, or the finished
draft where nothing streams) and to the finished draft; drafts done and when the last
finished (against provider latency); per approval, the time from sending its ✅ to the
confirmation (the bot's confirmation reaction, or the textbook app's thread reply); examples
stored, lost and duplicated (must be 0), idle RSS after start-up and peak RSS (VmRSS / VmHWM
from /proc).

    python benchmarks/load.py                                  # 50 and 200, every app, sqlite
    python benchmarks/load.py --sizes 50 --apps bot-http --database postgres
    python benchmarks/load.py --library 500                    # the bot with 500 SOPs stored
    python benchmarks/load.py --quick                          # a few requests (tests)
    python benchmarks/load.py --database postgres --instances 2  # two bot processes

--instances N runs N bot processes on the one database, as several instances are deployed:
Slack (the fake Socket Mode server) delivers each envelope to one of their connections, and
HTTP requests go to each process's port in turn, as a load balancer's round robin would.

Goals (issue 14): ack p99 < 1 s at 200; every draft done within provider latency + 1 s at 50;
nothing lost or duplicated; idle RSS < 150 MB. With --library 10000 (issue 15): drafts done
within provider latency + 1.5 s at 50, approval confirmation p99 < 500 ms, peak RSS < 250 MB.
Exit status 1 when anything was lost or duplicated (timings are reported, not enforced).
"""

from __future__ import annotations

import argparse
import contextlib
import gc
import json
import random
import sys
import tempfile
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import asdict, dataclass, field
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

CHANNEL = "CLOAD0001"
REQUESTER = "UREQ00001"
APPROVER = "UAPPROVE1"
AUTHOR = "UAUTHOR01"
REQUEST = "Write an SOP for cleaning of the tablet compression machine, line {n}"
WARM_REQUEST = "Write an SOP for cleaning of the coating pan, warm-up request {n}"
CONFIRMATION = "Added as training example"  # the textbook app's thread reply
CONFIRM_REACTION = "inbox_tray"  # the bot's quiet confirmation (bot.approvals)
APPS = ("bot-socket", "bot-http", "textbook-http", "textbook-socket")
GOALS = {"ack_p99_ms": 1000.0, "drafts_over_latency_s": 1.0, "idle_rss_mb": 150.0}


@dataclass
class Options:
    sizes: list[int] = field(default_factory=lambda: [50, 200])
    reactions: int = 20
    provider_latency: float = 2.0
    database: str = "sqlite"
    database_url: str | None = None
    timeout: float = 180.0
    seed: int = 1
    apps: list[str] = field(default_factory=lambda: ["bot-socket", "bot-http", "textbook-http"])
    library: int = 0
    cold: bool = False  # measure the first burst after start (no warm-up burst)
    warm_up: int | None = None  # /sop in the unmeasured burst; None: as many as measured
    instances: int = 1  # bot processes sharing the database and the burst


@dataclass
class Figures:
    """What one scenario (one app, one burst size) measured (also printed as JSON)."""

    app: str
    commands: int
    reactions: int
    provider_latency_s: float
    database: str
    ack_p50_ms: float
    ack_p95_ms: float
    ack_p99_ms: float
    ack_max_ms: float
    non_200_acks: int
    drafts_completed: int
    drafts_failed: int
    drafts_per_second: float
    all_drafts_s: float
    first_text_p50_s: float
    first_text_p99_s: float
    draft_done_p99_s: float
    approval_p50_ms: float
    approval_p99_ms: float
    examples_stored: int
    lost: int
    duplicated: int
    idle_rss_mb: float
    peak_rss_mb: float
    library: int = 0
    cold: bool = False
    warm_up: int = 0
    instances: int = 1
    total_peak_rss_mb: float = 0.0  # all instances together
    problems: list[str] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        return self.lost == 0 and self.duplicated == 0 and self.non_200_acks == 0


def percentile(values: list[float], share: float) -> float:
    """Nearest-rank percentile (`share` in 0..1) of a non-empty list."""
    ordered = sorted(values)
    rank = max(1, int(-(-share * len(ordered) // 1)))  # ceil
    return ordered[min(rank, len(ordered)) - 1]


class Completions:
    """Watches the fake Slack's calls: when each draft first showed text and when it was
    finished, and when each approval was confirmed (all on the time.monotonic clock)."""

    def __init__(self, now: Callable[[], float] = time.monotonic) -> None:
        self.now = now
        self.first_text: dict[str, float] = {}  # reply ts -> first draft text a user sees
        self.finished: dict[str, float] = {}  # reply ts -> when the final edit arrived
        self.failed: set[str] = set()
        self.confirmed: dict[str, float] = {}  # approved message ts -> its confirmation
        self._changed = threading.Condition()

    def __call__(self, method: str, params: dict) -> None:
        with self._changed:
            now, ts = self.now(), str(params.get("ts"))
            text = str(params.get("text") or "")
            if method == "chat.appendStream" or (method == "chat.update" and text):
                self.first_text.setdefault(ts, now)
            if method == "chat.update" and (params.get("blocks") or text.startswith(":x:")):
                self.finished.setdefault(ts, now)
                if text.startswith(":x:"):
                    self.failed.add(ts)
            elif method == "reactions.add" and params.get("name") == CONFIRM_REACTION:
                self.confirmed.setdefault(str(params.get("timestamp")), now)
            elif method == "chat.postMessage" and text.startswith(CONFIRMATION):
                self.confirmed.setdefault(str(params.get("thread_ts")), now)
            self._changed.notify_all()

    def wait(self, drafts: int, confirmations: int, timeout: float) -> bool:
        with self._changed:
            return self._changed.wait_for(
                lambda: len(self.finished) >= drafts and len(self.confirmed) >= confirmations,
                timeout=timeout)


class Fleet:
    """One or more bot processes on one database, seen by the benchmark as one bot: Socket
    Mode shares envelopes among their connections, HTTP requests go to each port in turn (as a
    load balancer would); RSS figures are the largest process's."""

    def __init__(self, bots: list) -> None:  # noqa: ANN001 - tests.support.bot_process.BotProcess
        self.bots = bots
        first = bots[0]
        self.url, self.port, self.workdir = first.url, first.port, first.workdir
        self.env = first.env
        self.ports = [b.port for b in bots]

    @property
    def command(self) -> list[str]:
        return self.bots[0].command

    @command.setter
    def command(self, value: list[str]) -> None:
        for b in self.bots:
            b.command = value

    def start(self, timeout: float) -> None:
        for b in self.bots:
            b.start(timeout=timeout)

    def stop(self) -> None:
        for b in self.bots:
            b.stop()

    def rss_kib(self) -> dict[str, int]:
        figures = [b.rss_kib() for b in self.bots]
        return {key: max(f[key] for f in figures) for key in ("VmRSS", "VmHWM")}

    def total_kib(self, key: str) -> int:
        return sum(b.rss_kib()[key] for b in self.bots)


def _database(options: Options, workdir: Path) -> tuple[str, Callable[[], None]]:
    """The bot's database URL and how to drop it afterwards."""
    if options.database_url:
        return options.database_url, lambda: None
    if options.database == "postgres":
        from tests.conftest import _fresh_pg_database

        return _fresh_pg_database()
    return f"sqlite:///{workdir / 'load.db'}", lambda: None


def _sop_texts(n: int) -> list[str]:
    from tests.test_training_helpers import sop_texts

    return sop_texts(n)


def _count_examples(database_url: str) -> dict[str, int]:
    """Stored examples per Slack message ts."""
    from sqlmodel import Session, select

    from sop_pipeline.db import make_engine
    from sop_pipeline.models import TrainingExample

    engine = make_engine(database_url)
    try:
        with Session(engine) as session:
            counts: dict[str, int] = {}
            for example in session.exec(select(TrainingExample)):
                counts[example.slack_ts or ""] = counts.get(example.slack_ts or "", 0) + 1
            return counts
    finally:
        engine.dispose()


def _draft_replies(fake, requests: list[str]) -> dict[str, str]:  # noqa: ANN001
    """Request text -> the ts of its draft reply (the first reply in its parent's thread)."""
    found: dict[str, str] = {}
    for message in fake.top_level(CHANNEL):
        request = message.get("text", "").split(": ", 1)[-1]
        replies = fake.replies(CHANNEL, message["ts"])
        if request in requests and replies:
            found.setdefault(request, replies[0]["ts"])
    return found


def _check_drafts(fake, requests: list[str], problems: list[str]) -> tuple[int, int]:  # noqa: ANN001
    """(lost, duplicated) commands: each needs one parent and one finished draft reply."""
    lost = duplicated = 0
    parents: dict[str, list[dict]] = {}
    for message in fake.top_level(CHANNEL):
        parents.setdefault(message.get("text", ""), []).append(message)
    for request in requests:
        found = parents.get(f"SOP draft requested by <@{REQUESTER}>: {request}", [])
        if not found:
            lost += 1
            problems.append(f"no parent message for {request!r}")
            continue
        if len(found) > 1:
            duplicated += 1
            problems.append(f"{len(found)} parent messages for {request!r}")
        replies = [m for m in fake.replies(CHANNEL, found[0]["ts"])
                   if m.get("blocks") or m.get("text", "").startswith(":x:")]
        if not replies:
            lost += 1
            problems.append(f"no finished draft for {request!r}")
        elif len(replies) > 1:
            duplicated += 1
            problems.append(f"{len(replies)} draft replies for {request!r}")
    return lost, duplicated


def _check_approvals(fake, targets: list[str], examples: dict[str, int],  # noqa: ANN001
                     problems: list[str]) -> tuple[int, int]:
    lost = duplicated = 0
    for ts in targets:
        stored = examples.get(ts, 0)
        confirmations = [m for m in fake.replies(CHANNEL, ts)
                         if m.get("text", "").startswith(CONFIRMATION)]
        confirmations += [c for c in fake.calls_to("reactions.add")
                          if c.params.get("timestamp") == ts
                          and c.params.get("name") == CONFIRM_REACTION]
        if stored == 0:
            lost += 1
            problems.append(f"approval of {ts} stored no example")
        elif stored > 1 or len(confirmations) > 1:
            duplicated += 1
            problems.append(f"approval of {ts}: {stored} examples, {len(confirmations)} replies")
    return lost, duplicated


def run(options: Options, *, out: Callable[[str], None] = print) -> list[Figures]:
    """Every app at every burst size; prints one side-by-side table per size."""
    results: list[Figures] = []
    for size in options.sizes:
        row = [run_one(options, app, size) for app in options.apps]
        _print(row, options, out)
        results += row
    return results


def run_one(options: Options, app: str, size: int) -> Figures:
    """One app under one burst: `size` concurrent /sop plus the approvals."""
    from tests.fakes.slack_fake import FakeSlack, user_reacts
    from tests.fakes.socket_mode import FakeSocketMode
    from tests.support.bot_process import BotProcess, bot_env, free_port

    socket_mode = app.endswith("-socket")
    textbook = app.startswith("textbook")
    with tempfile.TemporaryDirectory(prefix="sop-load-") as tmp, \
            FakeSlack(lifetime_seconds=options.timeout + 120) as fake_slack, \
            _fake_provider(options.provider_latency) as openai_url, \
            FakeSocketMode(spread=True) as fake_socket:
        workdir = Path(tmp)
        database_url, drop = _database(options, workdir)
        targets = [fake_slack.user_posts(CHANNEL, AUTHOR, text)
                   for text in _sop_texts(options.reactions)]
        for ts in targets:
            user_reacts(fake_slack, CHANNEL, ts, APPROVER)
        ports = [free_port() for _ in range(1 if textbook else options.instances)]
        extra: dict[str, str] = {"textbook_db": str(workdir / "textbook.db")}
        if socket_mode:
            fake_slack.socket_mode_url = fake_socket.url
            extra.update(slack_app_token="xapp-1-load")
        bots = []
        for n, port in enumerate(ports):
            env = bot_env(database_url=database_url, data_dir=workdir / f"data{n}",
                          slack_url=fake_slack.base_url, bot_token=fake_slack.bot_token,
                          openai_url=openai_url, port=port,
                          sop_approvers=APPROVER, sop_watched_channels=CHANNEL,
                          log_level="WARNING", **extra,
                          **({"probe_port": str(port)} if socket_mode else {}))
            bots.append(BotProcess(env, workdir / "bot", name=f"{app}-{n}"))
        bot = Fleet(bots)
        if textbook:
            bot.command = [sys.executable, str(Path(__file__).with_name("textbook_app.py"))]
        if not textbook:  # as deployed: the Procfile's release phase migrates first
            from sop_pipeline import db

            engine = db.make_engine(database_url)
            db.upgrade(engine)
            engine.dispose()
        try:
            bot.start(timeout=90)
            if socket_mode and not fake_socket.wait_connections(len(ports), 30):
                raise RuntimeError(f"{app} never opened a Socket Mode connection")
            library = 0
            if options.library and not textbook:
                from benchmarks.library import preload  # engineer "retrieval"'s module

                preload(database_url, options.library)
                library = options.library
            idle = bot.rss_kib()["VmRSS"] / 1024
            warm = 0 if options.cold else (size if options.warm_up is None else options.warm_up)
            if warm:
                _warm_up(options, warm, bot, fake_slack, fake_socket if socket_mode else None)
            # This process plays Slack: its own collector must not pause the fake mid-burst.
            gc.collect()
            gc.freeze()
            figures = _fire(options, app, size, bot, fake_slack, fake_socket if socket_mode
                            else None, targets, database_url, idle)
            figures.library, figures.warm_up = library, warm
        finally:
            gc.unfreeze()
            bot.stop()
            drop()
    return figures


@contextlib.contextmanager
def _fake_provider(latency: float) -> Iterator[str]:
    """The fake OpenAI in its own process (benchmarks/fake_provider.py); yields its URL."""
    import subprocess

    script = Path(__file__).with_name("fake_provider.py")
    with subprocess.Popen([sys.executable, str(script), str(latency)], stdin=subprocess.PIPE,
                          stdout=subprocess.PIPE, text=True) as process:
        assert process.stdout is not None and process.stdin is not None
        try:
            yield process.stdout.readline().strip()
        finally:
            process.stdin.close()
            process.wait(timeout=30)


def _build_requests(options: Options, commands: int, bot, targets: list[str],  # noqa: ANN001
                    response_url: str, request: str = REQUEST,
                    ) -> tuple[list[str], list[dict], list[str]]:
    """The /sop commands and reaction events, signed as Slack would send them, shuffled; each
    reaction is re-delivered once at the end (X-Slack-Retry-Num), as Slack does. Also each
    request's key: its /sop text, or the reacted message's ts."""
    from tests.fakes.slack_fake import SlackTestClient

    built: list[dict] = []

    class Recorder(SlackTestClient):
        def post(self, body: str, content_type: str, **kwargs):  # noqa: ANN003, ANN201
            built.append({"body": body, "headers": self.headers_for(body, content_type,
                                                                      **kwargs)})

    client = Recorder(bot.url, response_url=response_url)
    requests = [request.format(n=n + 1) for n in range(commands)]
    jobs: list[tuple[str, object]] = [("command", r) for r in requests]
    jobs += [("reaction", (ts, None)) for ts in targets]
    random.Random(options.seed).shuffle(jobs)
    jobs += [("reaction", (ts, 1)) for ts in targets]
    keys: list[str] = []
    for kind, payload in jobs:
        if kind == "command":
            client.command("/sop", str(payload), user=REQUESTER, channel=CHANNEL)
            keys.append(str(payload))
        else:
            ts, retry = payload  # type: ignore[misc]
            client.reaction("reaction_added", user=APPROVER, channel=CHANNEL, ts=ts,
                            event_id=f"Ev{ts.replace('.', '')}", retry_num=retry)
            keys.append(ts)
    return requests, built, keys


def _send_all(bot, built: list[dict], concurrency: int, workdir: Path) -> dict:  # noqa: ANN001
    """Run the load generator (benchmarks/load_client.py) in its own process; its "started"
    is on the time.monotonic clock, like Completions'."""
    import subprocess

    source, target = workdir / "requests.json", workdir / "results.json"
    source.write_text(json.dumps({"host": "127.0.0.1", "ports": bot.ports,
                                  "path": "/slack/events", "concurrency": concurrency,
                                  "requests": built}), encoding="utf-8")
    subprocess.run([sys.executable, str(Path(__file__).with_name("load_client.py")),
                    str(source), str(target)], check=True)
    return json.loads(target.read_text(encoding="utf-8"))


def _send_socket_mode(fake_socket, built: list[dict], timeout: float) -> dict:  # noqa: ANN001
    """Send every request as a Socket Mode envelope at once; ack latency = envelope sent ->
    the bot's acknowledgement (same envelope_id) received by the fake server."""
    from urllib.parse import parse_qsl

    envelopes: list[dict] = []
    for n, request in enumerate(built):
        body, headers = request["body"], request["headers"]
        envelope_id = f"load-{n}"
        if body.lstrip().startswith("{"):
            retry = int(headers.get("X-Slack-Retry-Num", 0) or 0)
            envelopes.append({"envelope_id": envelope_id, "type": "events_api",
                              "accepts_response_payload": False, "retry_attempt": retry,
                              "retry_reason": "timeout" if retry else "",
                              "payload": json.loads(body)})
        else:
            envelopes.append({"envelope_id": envelope_id, "type": "slash_commands",
                              "accepts_response_payload": True,
                              "payload": dict(parse_qsl(body, keep_blank_values=True))})
    sent: dict[str, float] = {}
    acked: dict[str, float] = {}

    def collect() -> None:
        import queue

        deadline = time.monotonic() + timeout
        while len(acked) < len(envelopes) and time.monotonic() < deadline:
            try:
                message = fake_socket.received.get(timeout=0.5)
            except queue.Empty:
                continue
            if message.get("envelope_id") in sent:
                acked.setdefault(message["envelope_id"], time.monotonic())

    collector = threading.Thread(target=collect, daemon=True)
    collector.start()
    started = time.monotonic()
    for envelope in envelopes:
        sent[envelope["envelope_id"]] = time.monotonic()
        fake_socket.send(envelope)
    collector.join(timeout + 5)
    results = []
    for envelope in envelopes:
        key = envelope["envelope_id"]
        if key in acked:
            results.append({"status": 200, "ms": (acked[key] - sent[key]) * 1000, "error": None,
                            "at": sent[key]})
        else:
            results.append({"status": 0, "ms": timeout * 1000, "error": "no acknowledgement",
                            "at": sent[key]})
    return {"started": started, "results": results}


def _textbook_examples(path: Path) -> dict[str, int]:
    import sqlite3

    if not path.exists():
        return {}
    with sqlite3.connect(path) as database:
        return {ts: 1 for (ts,) in database.execute("SELECT ts FROM example")}


def _send(options: Options, bot, fake_slack, fake_socket, built: list[dict],  # noqa: ANN001
          concurrency: int) -> dict:
    if fake_socket is not None:
        return _send_socket_mode(fake_socket, built, timeout=30.0)
    return _send_all(bot, built, concurrency, Path(bot.workdir))


def _warm_up(options: Options, commands: int, bot, fake_slack, fake_socket) -> None:  # noqa: ANN001
    """An unmeasured burst first (`commands` /sop, as many approvals up to --reactions), so the
    figures are those of a running bot: a process's first burst also pays one-time costs
    (SQLAlchemy compiling each query shape, regular expressions, a database connection opened
    per concurrent draft, which the pool then keeps), and a bot that serves a team has long
    paid them. `--cold` measures the first burst after a start instead."""
    from tests.fakes.slack_fake import user_reacts

    approvals = min(commands, options.reactions)
    targets = [fake_slack.user_posts(CHANNEL, AUTHOR, text)
               for text in _sop_texts(approvals + options.reactions)[-approvals:]] \
        if approvals else []
    for ts in targets:
        user_reacts(fake_slack, CHANNEL, ts, APPROVER)
    requests, built, _ = _build_requests(options, commands, bot, targets,
                                         fake_slack.response_url("w"), WARM_REQUEST)
    completions = Completions()
    fake_slack.before_call = completions
    _send(options, bot, fake_slack, fake_socket, built, commands)
    done = completions.wait(len(requests), len(targets), timeout=options.timeout)
    fake_slack.before_call = None
    if not done:
        raise RuntimeError("the warm-up burst did not finish; see the bot's log")


def _fire(options: Options, app: str, size: int, bot, fake_slack, fake_socket,  # noqa: ANN001
          targets: list[str], database_url: str, idle_mb: float) -> Figures:
    requests, built, keys = _build_requests(options, size, bot, targets,
                                            fake_slack.response_url("r"))
    completions = Completions()
    fake_slack.before_call = completions
    sent = _send(options, bot, fake_slack, fake_socket, built, size)
    started, results = sent["started"], sent["results"]
    acks = [r["ms"] for r in results]
    sent_at: dict[str, float] = {}  # first delivery of each /sop text or reacted ts
    for key, result in zip(keys, results, strict=True):
        sent_at.setdefault(key, result["at"])
    statuses = [r["status"] for r in results]
    errors = [f"request not answered: {r['error']}" for r in results if r["error"]]
    completions.wait(len(requests), len(targets), timeout=options.timeout)
    finished_at = max(completions.finished.values(), default=started)
    fake_slack.before_call = None
    peak = bot.rss_kib()["VmHWM"] / 1024
    total_peak = bot.total_kib("VmHWM") / 1024
    problems: list[str] = sorted(set(errors))
    lost_d, dup_d = _check_drafts(fake_slack, requests, problems)
    if app.startswith("textbook"):
        examples = _textbook_examples(Path(bot.env["TEXTBOOK_DB"]))
    else:
        examples = _count_examples(database_url)
    lost_a, dup_a = _check_approvals(fake_slack, targets, examples, problems)
    elapsed = max(finished_at - started, 1e-9)
    done = len(completions.finished)
    replies = _draft_replies(fake_slack, requests)
    first_text = [completions.first_text[ts] - sent_at[r] for r, ts in replies.items()
                  if ts in completions.first_text]
    draft_done = [completions.finished[ts] - sent_at[r] for r, ts in replies.items()
                  if ts in completions.finished]
    approvals = [(completions.confirmed[ts] - sent_at[ts]) * 1000 for ts in targets
                 if ts in completions.confirmed]

    def p(values: list[float], share: float, digits: int) -> float:
        return round(percentile(values, share), digits) if values else 0.0

    return Figures(
        app=app, commands=len(requests), reactions=len(targets),
        provider_latency_s=options.provider_latency,
        database="postgres" if "postgresql" in database_url else "sqlite",
        ack_p50_ms=round(percentile(acks, 0.50), 1), ack_p95_ms=round(percentile(acks, 0.95), 1),
        ack_p99_ms=round(percentile(acks, 0.99), 1), ack_max_ms=round(max(acks), 1),
        non_200_acks=sum(1 for s in statuses if s != 200),
        drafts_completed=done - len(completions.failed), drafts_failed=len(completions.failed),
        drafts_per_second=round(done / elapsed, 2) if requests else 0.0,
        all_drafts_s=round(elapsed, 2) if requests else 0.0,
        first_text_p50_s=p(first_text, 0.50, 2), first_text_p99_s=p(first_text, 0.99, 2),
        draft_done_p99_s=p(draft_done, 0.99, 2),
        approval_p50_ms=p(approvals, 0.50, 1), approval_p99_ms=p(approvals, 0.99, 1),
        examples_stored=sum(examples.get(ts, 0) for ts in targets), lost=lost_d + lost_a,
        duplicated=dup_d + dup_a, idle_rss_mb=round(idle_mb, 1), peak_rss_mb=round(peak, 1),
        cold=options.cold, problems=problems[:20], instances=len(bot.ports),
        total_peak_rss_mb=round(total_peak, 1),
    )


def _print(row: list[Figures], options: Options, out: Callable[[str], None]) -> None:
    """One table: a column per app, a line per figure."""
    first = row[0]
    library = f", {options.library} SOPs in the bot's library" if options.library else ""
    if options.instances > 1:
        library += f", {options.instances} bot processes (RSS: the largest)"
    warm = first.warm_up
    burst = (f"after a warm-up burst of {warm} /sop + {min(warm, options.reactions)} approvals"
             if warm else "the first burst after start")
    out(f"\n{first.commands} concurrent /sop + {first.reactions} approvals (each re-delivered "
        f"once), provider latency {first.provider_latency_s:g} s, {first.database}{library}, "
        f"{burst}")
    width = max(16, *(len(f.app) + 2 for f in row))

    def line(label: str, values: list[str]) -> None:
        out(f"{label:<34}" + "".join(f"{v:>{width}}" for v in values))

    line("", [f.app for f in row])
    line("ack latency: p50 ms", [f"{f.ack_p50_ms:g}" for f in row])
    line("ack latency: p95 ms", [f"{f.ack_p95_ms:g}" for f in row])
    line("ack latency: p99 ms (goal < 1000)", [f"{f.ack_p99_ms:g}" for f in row])
    line("ack latency: max ms", [f"{f.ack_max_ms:g}" for f in row])
    line("not acknowledged", [str(f.non_200_acks) for f in row])
    line("drafts completed / failed", [f"{f.drafts_completed} / {f.drafts_failed}" for f in row])
    line("drafts/s", [f"{f.drafts_per_second:g}" for f in row])
    line(f"all finished after s (latency {first.provider_latency_s:g})",
         [f"{f.all_drafts_s:g}" for f in row])
    line("first draft text: p50 s", [f"{f.first_text_p50_s:g}" for f in row])
    line("first draft text: p99 s", [f"{f.first_text_p99_s:g}" for f in row])
    line("draft done: p99 s", [f"{f.draft_done_p99_s:g}" for f in row])
    line("approval confirmed: p50 ms", [f"{f.approval_p50_ms:g}" for f in row])
    line("approval confirmed: p99 ms", [f"{f.approval_p99_ms:g}" for f in row])
    line("examples stored", [str(f.examples_stored) for f in row])
    line("lost / duplicated", [f"{f.lost} / {f.duplicated}" for f in row])
    line("RSS MB: idle after start-up", [f"{f.idle_rss_mb:g}" for f in row])
    line("RSS MB: peak", [f"{f.peak_rss_mb:g}" for f in row])
    if any(f.instances > 1 for f in row):
        line("RSS MB: peak, all processes", [f"{f.total_peak_rss_mb:g}" for f in row])
    for f in row:
        for problem in f.problems:
            out(f"  {f.app} problem: {problem}")


def parse_args(argv: list[str] | None = None) -> tuple[Options, bool]:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--sizes", default="50,200",
                        help="burst sizes: concurrent /sop commands, comma-separated")
    parser.add_argument("--reactions", type=int, default=20, help="number of ✅ approvals")
    parser.add_argument("--apps", default="bot-socket,bot-http,textbook-http",
                        help=f"comma-separated, from {', '.join(APPS)}")
    parser.add_argument("--provider-latency", type=float, default=2.0,
                        help="seconds the fake provider holds each chat completion")
    parser.add_argument("--database", choices=("sqlite", "postgres"), default="sqlite",
                        help="postgres creates a fresh database at SOP_TEST_PG_URL's server")
    parser.add_argument("--database-url", help="use this database instead (must be empty)")
    parser.add_argument("--library", type=int, default=0, metavar="N",
                        help="before the burst, store N SOPs in the bot's library "
                             "(benchmarks.library.preload)")
    parser.add_argument("--timeout", type=float, default=180.0,
                        help="seconds to wait for every draft and approval to finish")
    parser.add_argument("--cold", action="store_true",
                        help="measure the first burst after start (default: an unmeasured "
                             "burst of the same size first, as a bot that has been running)")
    parser.add_argument("--warm-up", type=int, default=None, metavar="N",
                        help="N /sop (and as many approvals, up to --reactions) in the "
                             "unmeasured burst (default: the measured burst's size)")
    parser.add_argument("--instances", type=int, default=1, metavar="N",
                        help="run N bot processes on the one database (the textbook app: 1)")
    parser.add_argument("--quick", action="store_true",
                        help="a small run for tests: 4 commands, 3 reactions, 0.2 s latency")
    parser.add_argument("--json", action="store_true", help="also print the figures as JSON")
    args = parser.parse_args(argv)
    if args.instances < 1:
        parser.error(f"--instances must be 1 or more (got {args.instances})")
    apps = [a.strip() for a in args.apps.split(",") if a.strip()]
    unknown = [a for a in apps if a not in APPS]
    if unknown:
        parser.error(f"unknown app(s) {', '.join(unknown)}; choose from {', '.join(APPS)}")
    options = Options(sizes=[int(n) for n in args.sizes.split(",")], reactions=args.reactions,
                      provider_latency=args.provider_latency, database=args.database,
                      database_url=args.database_url, timeout=args.timeout, apps=apps,
                      library=args.library, cold=args.cold, warm_up=args.warm_up,
                      instances=args.instances)
    if args.quick:
        options.sizes, options.reactions = [4], 3
        options.provider_latency, options.timeout = 0.2, 60.0
    return options, args.json


def main(argv: list[str] | None = None) -> int:
    options, as_json = parse_args(argv)
    figures = run(options)
    if as_json:
        print(json.dumps([asdict(f) for f in figures]))
    return 0 if all(f.ok for f in figures) else 1


if __name__ == "__main__":
    sys.exit(main())
