"""The load benchmark runs end to end in its quick form: the real bot process, concurrent
signed commands and approvals, nothing lost or duplicated, every figure printed. Timing targets
are reported by the benchmark itself, not asserted here (CI machines vary)."""

from __future__ import annotations

import os

from benchmarks import load


def test_quick_benchmark_loses_and_duplicates_nothing_and_prints_every_figure() -> None:
    options, _ = load.parse_args(["--quick"])
    if os.environ.get("SOP_TEST_DATABASE") == "postgres":
        options.database = "postgres"
    printed: list[str] = []

    figures = load.run(options, out=printed.append)

    assert (figures.lost, figures.duplicated, figures.non_200_acks) == (0, 0, 0), figures.problems
    assert figures.drafts_completed == options.commands == 4
    assert figures.examples_stored == options.reactions == 3
    text = "\n".join(printed)
    for label in ("ack latency: p50", "p95", "p99", "drafts/s", "all finished after",
                  "examples stored: 3", "lost: 0, duplicated: 0", "idle after start-up",
                  "peak"):
        assert label in text, (label, text)
    assert figures.idle_rss_mb > 0 and figures.peak_rss_mb >= figures.idle_rss_mb
