"""The OpenAI fake's /chat/completions endpoint (plain and streamed)."""

from __future__ import annotations

import json
import re
from typing import Any

from tests.fakes.openai_records import (
    RecordedRequest,
    _ApiError,
    _Response,
)
from tests.fakes.openai_text import (
    _rid,
    count_tokens,
    default_chat_response,
    message_text,
    truncate_tokens,
)


class ChatMixin:
    """Chat completions of `FakeOpenAI`."""

    def chat_completions(self, rec: RecordedRequest) -> _Response:
        body = rec.json
        if not isinstance(body, dict):
            raise _ApiError(400, "We could not parse the JSON body of your request.")
        model = body.get("model")
        if rec.azure_deployment is not None:
            model = self.azure_deployments.get(rec.azure_deployment, rec.azure_deployment)
            if not self.model_exists(model):
                raise _ApiError(
                    404,
                    "The API deployment for this resource does not exist. If "
                    "you created the deployment within the last 5 minutes, please "
                    "wait a moment and try again.",
                    code="DeploymentNotFound",
                )
        if not model:
            raise _ApiError(400, "you must provide a model parameter", param="model")
        if not self.model_exists(model):
            raise self._model_not_found(model)
        messages = body.get("messages")
        if not isinstance(messages, list) or not messages:
            raise _ApiError(
                400, "[] is too short - 'messages'", param="messages", code="empty_array"
            )
        script = self.chat_responses.popleft() if self.chat_responses else None
        if script is None:
            text = default_chat_response(body)
        elif callable(script):
            text = script(body)
        else:
            text = script
        text = str(text)
        finish = "stop"
        limit = body.get("max_completion_tokens") or body.get("max_tokens")
        exact = self.exact_tokens
        if isinstance(limit, int) and limit > 0 and count_tokens(text, exact) > limit:
            text, finish = truncate_tokens(text, limit, exact), "length"
        prompt_tokens = (
            sum(count_tokens(message_text(m), exact) + 3 for m in messages if isinstance(m, dict))
            + 3
        )
        completion_tokens = count_tokens(text, exact)
        n = body.get("n") if isinstance(body.get("n"), int) and body.get("n") > 0 else 1
        usage = {
            "prompt_tokens": prompt_tokens,
            "completion_tokens": completion_tokens * n,
            "total_tokens": prompt_tokens + completion_tokens * n,
            "prompt_tokens_details": {"cached_tokens": 0, "audio_tokens": 0},
            "completion_tokens_details": {
                "reasoning_tokens": 0,
                "audio_tokens": 0,
                "accepted_prediction_tokens": 0,
                "rejected_prediction_tokens": 0,
            },
        }
        base = {
            "id": _rid("chatcmpl-", 12),
            "created": self._now(),
            "model": body.get("model") or model,
            "service_tier": "default",
            "system_fingerprint": "fp_fake0001",
        }
        if not body.get("stream"):
            return _Response(
                200,
                {
                    **base,
                    "object": "chat.completion",
                    "choices": [
                        {
                            "index": i,
                            "message": {
                                "role": "assistant",
                                "content": text,
                                "refusal": None,
                                "annotations": [],
                            },
                            "logprobs": None,
                            "finish_reason": finish,
                        }
                        for i in range(n)
                    ],
                    "usage": usage,
                },
            )
        include_usage = bool((body.get("stream_options") or {}).get("include_usage"))
        chunk_base = {**base, "object": "chat.completion.chunk"}

        def chunk(choices: list[dict[str, Any]], **extra: Any) -> str:
            payload = {**chunk_base, "choices": choices, **extra}
            if include_usage and "usage" not in payload:
                payload["usage"] = None
            return json.dumps(payload)

        events = []
        for i in range(n):
            events.append(
                chunk(
                    [
                        {
                            "index": i,
                            "delta": {"role": "assistant", "content": "", "refusal": None},
                            "logprobs": None,
                            "finish_reason": None,
                        }
                    ]
                )
            )
        for piece in re.findall(r"\s*\S+\s*|\s+", text):
            for i in range(n):
                events.append(
                    chunk(
                        [
                            {
                                "index": i,
                                "delta": {"content": piece},
                                "logprobs": None,
                                "finish_reason": None,
                            }
                        ]
                    )
                )
        for i in range(n):
            events.append(
                chunk([{"index": i, "delta": {}, "logprobs": None, "finish_reason": finish}])
            )
        if include_usage:
            events.append(chunk([], usage=usage))
        events.append("[DONE]")
        return _Response(200, sse=events, content_type="text/event-stream")
