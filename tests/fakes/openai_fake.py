"""A stateful fake of the OpenAI HTTP API on 127.0.0.1, for driving the real `openai` client.

The `openai` package sends through `httpx2`, so transport mocks do not see it; this fake is a
real loopback server (stdlib `ThreadingHTTPServer` in a daemon thread).

Usage::

    with FakeOpenAI() as fake:                     # validates traffic against the spec
        client = fake.client()                     # openai.OpenAI(base_url=fake.base_url, ...)
        f = client.files.create(file=("t.jsonl", b"..."), purpose="fine-tune")
        job = client.fine_tuning.jobs.create(model="gpt-4o-mini-2024-07-18", training_file=f.id)
        fake.advance_job(job.id, to="running")
        fake.add_metrics(job.id, step=1, train_loss=1.2, valid_loss=1.4)
        fake.succeed_job(job.id)
        fake.chat_responses.append("Title: ...")  # scripted chat replies (str or callable)
        fake.inject("POST", "/chat/completions", kind="rate_limit")
    fake.assert_contract_ok()

or the `openai_fake` pytest fixture below (register with
`pytest_plugins = ("tests.fakes.openai_fake",)` in the root conftest, or wrap `FakeOpenAI`
in a local fixture). Jobs never advance on their own: tests call the control methods.

Azure: `AzureOpenAI(azure_endpoint=fake.azure_endpoint, api_version=..., api_key=...)`
works against the same server (`/openai/...` and `/openai/deployments/{name}/...` paths,
`api-version` query and `api-key` header are accepted and recorded).
"""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from tests.fakes.openai_chat import ChatMixin
from tests.fakes.openai_embeddings import EmbeddingsMixin, fake_embedding
from tests.fakes.openai_faults import FaultsMixin
from tests.fakes.openai_files import FilesMixin
from tests.fakes.openai_http import _Handler, _LoopbackServer
from tests.fakes.openai_jobs import JobsMixin
from tests.fakes.openai_models import ModelsMixin
from tests.fakes.openai_records import (
    _BEHAVIOURS,
    _PRESETS,
    _ROUTES,
    _STATUS_PRESET,
    BASE_MODELS,
    DEFAULT_SPEC,
    EMBEDDING_MODELS,
    FILE_PURPOSES,
    FINE_TUNABLE_MODELS,
    JOB_STATUSES,
    RESOLVED_HYPERPARAMETERS,
    TERMINAL_STATUSES,
    Injection,
    RecordedRequest,
    _ApiError,
    _is_stream,
    _normalize_pattern,
    _public_job,
    _Response,
    openai_error,
)
from tests.fakes.openai_server import FakeOpenAIServer
from tests.fakes.openai_text import (
    _rid,
    count_tokens,
    default_chat_response,
    house_sop,
    last_user_text,
    message_text,
    sop_topic,
    truncate_tokens,
)

__all__ = [
    "BASE_MODELS", "DEFAULT_SPEC", "EMBEDDING_MODELS", "FILE_PURPOSES", "FINE_TUNABLE_MODELS",
    "JOB_STATUSES", "RESOLVED_HYPERPARAMETERS", "TERMINAL_STATUSES", "_BEHAVIOURS", "_ROUTES",
    "_PRESETS", "_STATUS_PRESET", "FakeOpenAI", "Injection", "RecordedRequest", "_ApiError",
    "_Handler",
    "_LoopbackServer", "_Response", "_is_stream", "_normalize_pattern", "_public_job", "_rid",
    "count_tokens", "default_chat_response", "fake_embedding", "house_sop", "last_user_text",
    "message_text", "openai_error", "openai_fake", "sop_topic", "truncate_tokens",
]


class FakeOpenAI(ChatMixin, EmbeddingsMixin, FilesMixin, JobsMixin, ModelsMixin, FaultsMixin,
                 FakeOpenAIServer):
    """Stateful fake OpenAI API. See the module docstring.

    Arguments:
      contract: True (default) validates every request/response against DEFAULT_SPEC (when
        the file exists); a path or an `OpenAPIContract` to use another; False/None to skip.
      file_uploaded_retrieves: files stay `uploaded` for this many GET /files/{id} calls
        before turning `processed` (0 = processed at upload).
      api_keys: if given, only these keys are accepted (others -> 401 invalid_api_key).
      strict_contract: answer requests that violate the spec with 400 (besides recording).
      exact_tokens: count usage with the real o200k_base tokenizer instead of the estimate.
    """

    # the endpoints and control methods come from one mixin per API area; state and the HTTP
    # plumbing from FakeOpenAIServer


@pytest.fixture
def openai_fake() -> Iterator[FakeOpenAI]:
    """A running FakeOpenAI; at teardown the contract must be clean
    (set `fake.check_contract_on_exit = False` in tests that send bad requests on purpose)."""
    fake = FakeOpenAI().start()
    try:
        yield fake
    finally:
        fake.stop()
    if fake.check_contract_on_exit:
        fake.assert_contract_ok()
