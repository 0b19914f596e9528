"""The load benchmark runs end to end in its quick form: the real bot process in Socket Mode
and in HTTP mode, and the textbook Bolt app beside it, under concurrent commands and approvals;
nothing lost or duplicated, every figure printed. Timing goals are reported by the benchmark
itself, not asserted here (CI machines vary)."""

from __future__ import annotations

import os

import pytest

from benchmarks import load


def test_quick_benchmark_loses_and_duplicates_nothing_and_prints_every_figure() -> None:
    options, _ = load.parse_args(["--quick"])
    if os.environ.get("SOP_TEST_DATABASE") == "postgres":
        options.database = "postgres"
    printed: list[str] = []

    results = load.run(options, out=printed.append)

    assert [f.app for f in results] == ["bot-socket", "bot-http", "textbook-http"]
    for figures in results:
        assert (figures.lost, figures.duplicated, figures.non_200_acks) == (0, 0, 0), (
            figures.app, figures.problems)
        assert figures.drafts_completed == figures.commands == 4
        assert figures.examples_stored == figures.reactions == 3
        assert figures.idle_rss_mb > 0 and figures.peak_rss_mb >= figures.idle_rss_mb
        # every draft showed text and finished, every approval was confirmed, after its request
        assert 0 < figures.first_text_p50_s <= figures.first_text_p99_s, figures
        assert figures.first_text_p99_s <= figures.draft_done_p99_s, figures
        assert 0 < figures.approval_p50_ms <= figures.approval_p99_ms, figures
    text = "\n".join(printed)
    for label in ("ack latency: p50", "p95", "p99", "drafts/s", "all finished after",
                  "first draft text", "draft done", "approval confirmed",
                  "examples stored", "lost / duplicated", "idle after start-up", "peak"):
        assert label in text, (label, text)


def test_two_bot_processes_share_the_burst_and_lose_nothing() -> None:
    options, _ = load.parse_args(["--quick", "--instances", "2",
                                  "--apps", "bot-socket,bot-http"])
    if os.environ.get("SOP_TEST_DATABASE") == "postgres":
        options.database = "postgres"
    printed: list[str] = []

    results = load.run(options, out=printed.append)

    for figures in results:
        assert figures.instances == 2
        assert (figures.lost, figures.duplicated, figures.non_200_acks) == (0, 0, 0), (
            figures.app, figures.problems)
        assert figures.drafts_completed == figures.commands == 4
        assert figures.examples_stored == figures.reactions == 3
        assert figures.total_peak_rss_mb > figures.peak_rss_mb > 0
    assert "2 bot processes" in "\n".join(printed)


def test_fewer_than_one_bot_process_is_refused_with_a_sentence(capsys) -> None:  # noqa: ANN001
    with pytest.raises(SystemExit):
        load.parse_args(["--instances", "0"])
    assert "--instances must be 1 or more (got 0)" in capsys.readouterr().err
