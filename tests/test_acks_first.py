"""Acknowledgements first: background work gives way while the HTTP server answers requests,
reaction work while drafts start, and deferred listener work runs in the pool with its
failures logged."""

from __future__ import annotations

import logging
import threading

from bot.runtime import AcksFirst, DraftsFirst, TrackedExecutor


def _in_thread(target) -> threading.Thread:  # noqa: ANN001
    thread = threading.Thread(target=target, daemon=True)
    thread.start()
    return thread


def test_with_no_request_being_answered_a_checkpoint_does_not_wait() -> None:
    gate = AcksFirst(quiet=60.0, max_wait=60.0)
    gate.checkpoint()  # returns at once; a wait here would hang the test for a minute


def test_background_work_waits_until_the_request_is_answered() -> None:
    gate = AcksFirst(quiet=0.0, max_wait=60.0)
    gate.request_started()
    passed = threading.Event()
    worker = _in_thread(lambda: (gate.checkpoint(), passed.set()))
    assert not passed.wait(0.2)
    gate.request_finished()
    assert passed.wait(10)
    worker.join(10)


def test_the_thread_answering_a_request_never_waits_on_itself() -> None:
    gate = AcksFirst(quiet=60.0, max_wait=60.0)
    gate.request_started()

    def answer() -> None:
        gate.mark_answering_thread()
        gate.checkpoint()

    answering = _in_thread(answer)
    answering.join(10)
    assert not answering.is_alive()


def test_a_steady_stream_of_requests_cannot_hold_background_work_longer_than_max_wait() -> None:
    ticks = iter(float(n) for n in range(1000))
    gate = AcksFirst(quiet=0.001, max_wait=2.0, monotonic=lambda: next(ticks))
    gate.request_started()  # and never finished
    worker = _in_thread(gate.checkpoint)
    worker.join(10)
    assert not worker.is_alive()  # the clock passed max_wait after a couple of short waits


def test_work_submitted_soon_counts_as_pending_until_it_ran() -> None:
    pool = TrackedExecutor(max_workers=2)
    release = threading.Event()
    pool.submit_soon(lambda: release.wait(10))
    assert pool.pending == 1
    assert not pool.wait_idle(timeout=0.1)
    release.set()
    assert pool.wait_idle(timeout=10)
    pool.shutdown()


def test_a_deferred_failure_is_logged_with_its_traceback(services, caplog) -> None:  # noqa: ANN001
    from bot.app import build_context, make_client

    ctx = build_context(services, client=make_client(services))

    def approve_something() -> None:
        raise RuntimeError("database went away")

    with caplog.at_level(logging.ERROR, logger="bot.runtime"):
        ctx.defer(approve_something)
        assert ctx.wait_idle(10)
    record = next(r for r in caplog.records if "approve_something" in r.getMessage())
    assert record.exc_info and "database went away" in str(record.exc_info[1])
    ctx.executor.shutdown()


# --- DraftsFirst: reaction work waits while drafts are starting ------------------------------


def test_with_no_draft_starting_reaction_work_does_not_wait() -> None:
    DraftsFirst(max_wait=60.0).wait_turn()  # a wait here would hang the test for a minute


def test_reaction_work_waits_until_the_starting_draft_has_sent_its_request() -> None:
    drafts = DraftsFirst(max_wait=60.0)
    started = drafts.starting()
    passed = threading.Event()
    worker = _in_thread(lambda: (drafts.wait_turn(), passed.set()))
    assert not passed.wait(0.2)
    started()
    assert passed.wait(10)
    worker.join(10)


def test_a_draft_ends_its_start_once_however_often_it_says_so() -> None:
    drafts = DraftsFirst()
    first, second = drafts.starting(), drafts.starting()
    first()
    first()  # every exit path may call it; the second call changes nothing
    assert drafts.starting_now == 1
    second()
    assert drafts.starting_now == 0


def test_drafts_that_never_finish_starting_hold_reaction_work_at_most_max_wait() -> None:
    ticks = iter(n * 0.001 for n in range(1000))
    drafts = DraftsFirst(max_wait=0.002, monotonic=lambda: next(ticks))
    drafts.starting()  # and never started
    worker = _in_thread(drafts.wait_turn)
    worker.join(10)
    assert not worker.is_alive()
