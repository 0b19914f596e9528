"""Load benchmark: the real bot process in HTTP mode under concurrent /sop commands and ✅ events.

The bot runs as its own process (`sop-bot run`, bound to 127.0.0.1) against the fake Slack and
fake OpenAI servers that live in this process; the fake provider holds every chat completion
for --provider-latency seconds before streaming its answer. Clients on 127.0.0.1 fire signed
slash commands and reaction events (each reaction is also re-delivered once with
X-Slack-Retry-Num, as Slack does) and this prints:

* ack latency p50/p95/p99 (client-side, connect → whole HTTP answer received; the client is
  benchmarks/load_client.py, its own process, with requests signed before the clock starts),
* drafts completed per second and time until every draft was finished in Slack,
* examples stored, lost and duplicated items (must be 0: every command got one parent
  message and one finished draft reply; every approval exactly one example and one reply),
* idle RSS of the bot after start-up and its peak RSS (VmRSS / VmHWM from /proc).

    python benchmarks/load.py --commands 50 --reactions 20 --concurrency 50 \
        --provider-latency 2.0 --database sqlite
    python benchmarks/load.py --quick            # a few requests, 0.2 s latency (tests)

Targets: ack p99 < 50 ms with 50 concurrent commands; 50 drafts with 2 s provider latency all
finished within 3 s; zero lost or duplicated; idle RSS < 150 MB. Exit status 1 when anything
was lost or duplicated (timings are reported, not enforced).
"""

from __future__ import annotations

import argparse
import json
import random
import sys
import tempfile
import threading
import time
from collections.abc import Callable
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
CONFIRMATION = "Added as training example"
TARGETS = {"ack_p99_ms": 50.0, "all_drafts_s": 3.0, "idle_rss_mb": 150.0}


@dataclass
class Options:
    commands: int = 50
    reactions: int = 20
    concurrency: int = 50
    provider_latency: float = 2.0
    database: str = "sqlite"
    database_url: str | None = None
    timeout: float = 120.0
    seed: int = 1


@dataclass
class Figures:
    """What one benchmark run measured (also printed as JSON with --json)."""

    commands: int
    reactions: int
    concurrency: int
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
    examples_stored: int
    lost: int
    duplicated: int
    idle_rss_mb: float
    peak_rss_mb: float
    problems: list[str] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        return self.lost == 0 and self.duplicated == 0


def percentile(values: list[float], share: float) -> float:
    """Nearest-rank percentile (`share` in 0..1) of a non-empty list."""
    ordered = sorted(values)
    rank = max(1, int(-(-share * len(ordered) // 1)))  # ceil
    return ordered[min(rank, len(ordered)) - 1]


class Completions:
    """Watches the fake Slack's calls for finished drafts and approval confirmations."""

    def __init__(self, now: Callable[[], float] = time.monotonic) -> None:
        self.now = now
        self.finished: dict[str, float] = {}  # reply ts -> when the final edit arrived
        self.failed: set[str] = set()
        self.confirmations = 0
        self._changed = threading.Condition()

    def __call__(self, method: str, params: dict) -> None:
        with self._changed:
            text = str(params.get("text") or "")
            if method == "chat.update" and (params.get("blocks") or text.startswith(":x:")):
                self.finished.setdefault(str(params.get("ts")), self.now())
                if text.startswith(":x:"):
                    self.failed.add(str(params.get("ts")))
            elif method == "chat.postMessage" and text.startswith(CONFIRMATION):
                self.confirmations += 1
            self._changed.notify_all()

    def wait(self, drafts: int, confirmations: int, timeout: float) -> bool:
        with self._changed:
            return self._changed.wait_for(
                lambda: len(self.finished) >= drafts and self.confirmations >= confirmations,
                timeout=timeout)


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
        if stored == 0:
            lost += 1
            problems.append(f"approval of {ts} stored no example")
        elif stored > 1 or len(confirmations) > 1:
            duplicated += 1
            problems.append(f"approval of {ts}: {stored} examples, {len(confirmations)} replies")
    return lost, duplicated


def run(options: Options, *, out: Callable[[str], None] = print) -> Figures:
    """Run the benchmark once; prints the figures and returns them."""
    from tests.fakes.openai_fake import FakeOpenAI
    from tests.fakes.slack_fake import FakeSlack, user_reacts
    from tests.support.bot_process import BotProcess, bot_env, free_port

    with tempfile.TemporaryDirectory(prefix="sop-load-") as tmp, \
            FakeSlack(lifetime_seconds=options.timeout + 120) as fake_slack, \
            FakeOpenAI(contract=False) as fake_openai:
        workdir = Path(tmp)
        database_url, drop = _database(options, workdir)
        if options.provider_latency > 0:
            fake_openai.inject("POST", "/chat/completions", kind="timeout",
                               hold=options.provider_latency, times=None)
        targets = [fake_slack.user_posts(CHANNEL, AUTHOR, text)
                   for text in _sop_texts(options.reactions)]
        for ts in targets:
            user_reacts(fake_slack, CHANNEL, ts, APPROVER)
        env = bot_env(database_url=database_url, data_dir=workdir / "data",
                      slack_url=fake_slack.base_url, bot_token=fake_slack.bot_token,
                      openai_url=fake_openai.base_url, port=free_port(),
                      sop_approvers=APPROVER, sop_watched_channels=CHANNEL,
                      log_level="WARNING")
        bot = BotProcess(env, workdir / "bot", name="bot")
        try:
            bot.start(timeout=60)
            idle = bot.rss_kib()["VmRSS"] / 1024
            figures = _fire(options, bot, fake_slack, targets, database_url, idle)
        finally:
            bot.stop()
            drop()
    _print(figures, out)
    return figures


def _build_requests(options: Options, bot, targets: list[str],  # noqa: ANN001
                    response_url: str) -> tuple[list[str], list[dict]]:
    """The /sop commands and reaction events, signed as Slack would send them, shuffled; each
    reaction is re-delivered once at the end (X-Slack-Retry-Num), as Slack does."""
    from tests.fakes.slack_fake import SlackTestClient

    built: list[dict] = []

    class Recorder(SlackTestClient):
        def post(self, body: str, content_type: str, **kwargs):  # noqa: ANN003, ANN201
            built.append({"body": body, "headers": self.headers_for(body, content_type,
                                                                      **kwargs)})

    client = Recorder(bot.url, response_url=response_url)
    requests = [REQUEST.format(n=n + 1) for n in range(options.commands)]
    jobs: list[tuple[str, object]] = [("command", r) for r in requests]
    jobs += [("reaction", (ts, None)) for ts in targets]
    random.Random(options.seed).shuffle(jobs)
    jobs += [("reaction", (ts, 1)) for ts in targets]
    for kind, payload in jobs:
        if kind == "command":
            client.command("/sop", str(payload), user=REQUESTER, channel=CHANNEL)
        else:
            ts, retry = payload  # type: ignore[misc]
            client.reaction("reaction_added", user=APPROVER, channel=CHANNEL, ts=ts,
                            event_id=f"Ev{ts.replace('.', '')}", retry_num=retry)
    return requests, built


def _send_all(bot, built: list[dict], concurrency: int, workdir: Path) -> dict:  # noqa: ANN001
    """Run the load generator (benchmarks/load_client.py) in its own process; its "started"
    is on the time.monotonic clock, like Completions'."""
    import subprocess

    source, target = workdir / "requests.json", workdir / "results.json"
    source.write_text(json.dumps({"host": "127.0.0.1", "port": bot.port,
                                  "path": "/slack/events", "concurrency": concurrency,
                                  "requests": built}), encoding="utf-8")
    subprocess.run([sys.executable, str(Path(__file__).with_name("load_client.py")),
                    str(source), str(target)], check=True)
    return json.loads(target.read_text(encoding="utf-8"))


def _fire(options: Options, bot, fake_slack, targets: list[str],  # noqa: ANN001
          database_url: str, idle_mb: float) -> Figures:
    requests, built = _build_requests(options, bot, targets, fake_slack.response_url("r"))
    completions = Completions()
    fake_slack.before_call = completions
    sent = _send_all(bot, built, options.concurrency, Path(bot.workdir))
    started, results = sent["started"], sent["results"]
    acks = [r["ms"] for r in results]
    statuses = [r["status"] for r in results]
    errors = [f"request not answered: {r['error']}" for r in results if r["error"]]
    completions.wait(len(requests), len(targets), timeout=options.timeout)
    finished_at = max(completions.finished.values(), default=started)
    fake_slack.before_call = None
    peak = bot.rss_kib()["VmHWM"] / 1024
    problems: list[str] = sorted(set(errors))
    lost_d, dup_d = _check_drafts(fake_slack, requests, problems)
    examples = _count_examples(database_url)
    lost_a, dup_a = _check_approvals(fake_slack, targets, examples, problems)
    elapsed = max(finished_at - started, 1e-9)
    done = len(completions.finished)
    return Figures(
        commands=len(requests), reactions=len(targets), concurrency=options.concurrency,
        provider_latency_s=options.provider_latency,
        database="postgres" if "postgresql" in database_url else "sqlite",
        ack_p50_ms=round(percentile(acks, 0.50), 1), ack_p95_ms=round(percentile(acks, 0.95), 1),
        ack_p99_ms=round(percentile(acks, 0.99), 1), ack_max_ms=round(max(acks), 1),
        non_200_acks=sum(1 for s in statuses if s != 200),
        drafts_completed=done - len(completions.failed), drafts_failed=len(completions.failed),
        drafts_per_second=round(done / elapsed, 2) if requests else 0.0,
        all_drafts_s=round(elapsed, 2) if requests else 0.0,
        examples_stored=sum(examples.values()), lost=lost_d + lost_a,
        duplicated=dup_d + dup_a, idle_rss_mb=round(idle_mb, 1), peak_rss_mb=round(peak, 1),
        problems=problems[:20],
    )


def _print(f: Figures, out: Callable[[str], None]) -> None:
    def mark(ok: bool) -> str:
        return "ok" if ok else "MISSED"

    out(f"SOP Bot load benchmark: {f.commands} /sop commands + {f.reactions} approvals "
        f"(each re-delivered once), {f.concurrency} concurrent clients, provider latency "
        f"{f.provider_latency_s:g} s, {f.database}")
    out(f"ack latency: p50 {f.ack_p50_ms} ms, p95 {f.ack_p95_ms} ms, p99 {f.ack_p99_ms} ms "
        f"(max {f.ack_max_ms} ms; target p99 < {TARGETS['ack_p99_ms']:g} ms: "
        f"{mark(f.ack_p99_ms < TARGETS['ack_p99_ms'])}); non-200 answers: {f.non_200_acks}")
    out(f"drafts: {f.drafts_completed} completed, {f.drafts_failed} failed, "
        f"{f.drafts_per_second} drafts/s, all finished after {f.all_drafts_s} s "
        f"(target < {TARGETS['all_drafts_s']:g} s: "
        f"{mark(f.all_drafts_s < TARGETS['all_drafts_s'])})")
    out(f"examples stored: {f.examples_stored}")
    out(f"lost: {f.lost}, duplicated: {f.duplicated} ({mark(f.ok)})")
    out(f"bot RSS: idle after start-up {f.idle_rss_mb} MB (target < "
        f"{TARGETS['idle_rss_mb']:g} MB: {mark(f.idle_rss_mb < TARGETS['idle_rss_mb'])}), "
        f"peak {f.peak_rss_mb} MB")
    for problem in f.problems:
        out(f"  problem: {problem}")


def parse_args(argv: list[str] | None = None) -> tuple[Options, bool]:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--commands", type=int, default=50, help="number of /sop commands")
    parser.add_argument("--reactions", type=int, default=20, help="number of ✅ approvals")
    parser.add_argument("--concurrency", type=int, default=50, help="concurrent clients")
    parser.add_argument("--provider-latency", type=float, default=2.0,
                        help="seconds the fake provider holds each chat completion")
    parser.add_argument("--database", choices=("sqlite", "postgres"), default="sqlite",
                        help="postgres creates a fresh database at SOP_TEST_PG_URL's server")
    parser.add_argument("--database-url", help="use this database instead (must be empty)")
    parser.add_argument("--timeout", type=float, default=120.0,
                        help="seconds to wait for every draft and approval to finish")
    parser.add_argument("--quick", action="store_true",
                        help="a small run for tests: 4 commands, 3 reactions, 0.2 s latency")
    parser.add_argument("--json", action="store_true", help="also print the figures as JSON")
    args = parser.parse_args(argv)
    options = Options(args.commands, args.reactions, args.concurrency, args.provider_latency,
                      args.database, args.database_url, args.timeout)
    if args.quick:
        options.commands, options.reactions, options.concurrency = 4, 3, 8
        options.provider_latency, options.timeout = 0.2, 60.0
    return options, args.json


def main(argv: list[str] | None = None) -> int:
    options, as_json = parse_args(argv)
    figures = run(options)
    if as_json:
        print(json.dumps(asdict(figures)))
    return 0 if figures.ok else 1


if __name__ == "__main__":
    sys.exit(main())
