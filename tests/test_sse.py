"""Reading a streamed chat completion as JSON chunks (sop_pipeline.generation.sse): the
event-stream rules the SDK follows, without building a model per chunk."""

from __future__ import annotations

import httpx2
import openai
import pytest

from sop_pipeline.generation.sse import _chunks

REQUEST = httpx2.Request("POST", "http://127.0.0.1/v1/chat/completions")


def chunks(*lines: str) -> list[dict]:
    return list(_chunks(iter(lines), REQUEST))


def test_each_event_is_one_chunk_and_done_ends_the_stream() -> None:
    assert chunks('data: {"n": 1}', "", 'data: {"n": 2}', "", "data: [DONE]", "",
                  'data: {"n": 3}', "") == [{"n": 1}, {"n": 2}]


def test_comments_event_names_and_ids_are_ignored_and_data_lines_are_joined() -> None:
    assert chunks(": keep-alive", "event: message", "id: 7", 'data: {"a":', "data: 1}", "",
                  "") == [{"a": 1}]


def test_the_space_after_data_colon_is_optional() -> None:
    assert chunks('data:{"n": 1}', "") == [{"n": 1}]


def test_an_error_event_is_raised_as_the_sdk_raises_it() -> None:
    with pytest.raises(openai.APIError, match="The server had an error") as caught:
        chunks('data: {"error": {"message": "The server had an error", "type": "server_error"}}',
               "")
    assert caught.value.body == {"message": "The server had an error", "type": "server_error"}


def test_an_error_without_a_message_still_says_what_happened() -> None:
    with pytest.raises(openai.APIError, match="An error occurred during streaming"):
        chunks('data: {"error": "boom"}', "")
