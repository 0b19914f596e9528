"""A re-delivered Slack event waits for the delivery this process is still handling, but
never for good: a stuck first delivery lets it through after `wait_seconds`."""

from __future__ import annotations

from bot.runtime import EventsInHand


def test_a_stuck_first_delivery_lets_its_redelivery_through_after_the_wait() -> None:
    in_hand = EventsInHand(wait_seconds=0)
    ran: list[str] = []
    with in_hand.handle("event:Ev1"):
        with in_hand.handle("event:Ev1"):  # the first is still in hand: waited 0 s, then runs
            ran.append("redelivery")
        ran.append("first")
    assert ran == ["redelivery", "first"]


def test_other_events_do_not_wait_and_a_finished_event_is_forgotten() -> None:
    in_hand = EventsInHand(wait_seconds=30)
    with in_hand.handle("event:Ev1"), in_hand.handle("event:Ev2"):
        pass  # a different key never waits (30 s would fail the suite's time)
    with in_hand.handle("event:Ev1"):
        pass  # the first delivery finished: nothing to wait for
    assert not in_hand.wait_for_waiting(1, timeout=0)
