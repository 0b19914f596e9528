"""What a draft takes from each streamed chunk, as the provider sent it (JSON, not SDK models):
the text, the finish reason and the usage; a field of an unexpected shape counts as absent
instead of failing the draft."""

from __future__ import annotations

import pytest

from sop_pipeline.generation.stream import _piece


def test_a_chunk_gives_its_text_finish_reason_and_usage() -> None:
    text = _piece({"choices": [{"index": 0, "delta": {"content": "5.1 Clean "},
                                "finish_reason": None}]})
    end = _piece({"choices": [{"index": 0, "delta": {}, "finish_reason": "stop"}],
                  "usage": None})
    usage = _piece({"choices": [], "usage": {"prompt_tokens": 812, "completion_tokens": 95}})
    assert (text.text, text.finish_reason, text.has_usage) == ("5.1 Clean ", None, False)
    assert (end.text, end.finish_reason, end.has_usage) == ("", "stop", False)
    assert (usage.has_usage, usage.prompt_tokens, usage.completion_tokens) == (True, 812, 95)


@pytest.mark.parametrize("chunk", [
    None, "data", [], {}, {"choices": None}, {"choices": "x"}, {"choices": [None, 3]},
    {"choices": [{"delta": None}]}, {"choices": [{"delta": {"content": None}}]},
    {"choices": [{"delta": {"content": 7}, "finish_reason": 1}]},
    {"choices": [{"delta": "text"}]}, {"usage": "many"},
])
def test_a_chunk_of_an_unexpected_shape_carries_nothing(chunk: object) -> None:
    piece = _piece(chunk)
    assert (piece.text, piece.finish_reason, piece.has_usage) == ("", None, False)


def test_usage_counts_that_are_not_numbers_count_as_zero() -> None:
    piece = _piece({"usage": {"prompt_tokens": None, "completion_tokens": True}})
    assert (piece.has_usage, piece.prompt_tokens, piece.completion_tokens) == (True, 0, 0)


def test_several_choices_are_joined_in_order() -> None:
    piece = _piece({"choices": [{"delta": {"content": "1.0 "}}, {"delta": {"content": "Obj"}}]})
    assert piece.text == "1.0 Obj"
