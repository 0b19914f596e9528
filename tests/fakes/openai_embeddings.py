"""The OpenAI fake's /embeddings endpoint and its deterministic bag-of-words vectors."""

from __future__ import annotations

import re
from typing import Any

from tests.fakes.openai_records import (
    EMBEDDING_MODELS,
    RecordedRequest,
    _ApiError,
    _Response,
)


class EmbeddingsMixin:
    """Embeddings of `FakeOpenAI`."""

    def create_embeddings(self, rec: RecordedRequest) -> _Response:
        """POST /embeddings: a deterministic unit vector per input (see `fake_embedding`),
        as floats, or as base64 float32 like the real API (the openai client's default; the
        spec documents floats only, so that answer is recorded as a contract problem)."""
        body = rec.json
        if not isinstance(body, dict):
            raise _ApiError(400, "We could not parse the JSON body of your request.")
        model = body.get("model")
        if model not in EMBEDDING_MODELS:
            raise self._model_not_found(str(model))
        inputs = body.get("input")
        if isinstance(inputs, str):
            inputs = [inputs]
        if not isinstance(inputs, list) or not inputs or not all(
                isinstance(i, str) and i for i in inputs):
            raise _ApiError(400, "'input' must be a non-empty string or array of strings.",
                            param="input")
        dimensions = int(body.get("dimensions") or 256)
        as_base64 = body.get("encoding_format") == "base64"
        data = []
        for index, text in enumerate(inputs):
            vector = fake_embedding(text, dimensions, self.embedding_synonyms)
            encoded: Any = vector
            if as_base64:
                import base64
                import struct

                encoded = base64.b64encode(struct.pack(f"<{len(vector)}f", *vector)).decode()
            data.append({"object": "embedding", "index": index, "embedding": encoded})
        tokens = sum(len(text.split()) for text in inputs)
        return _Response(200, {"object": "list", "data": data, "model": model,
                               "usage": {"prompt_tokens": tokens, "total_tokens": tokens}})


def fake_embedding(text: str, dimensions: int = 256,
                   synonyms: dict[str, str] | None = None) -> list[float]:
    """A unit bag-of-words vector: each word (after `synonyms`) adds 1 to a hashed dimension,
    so texts sharing words (or synonyms) point the same way. Deterministic across runs."""
    import hashlib
    import math

    vector = [0.0] * dimensions
    for word in re.findall(r"[a-z0-9]+", text.lower()):
        word = (synonyms or {}).get(word, word)
        bucket = int(hashlib.sha256(word.encode()).hexdigest()[:8], 16) % dimensions
        vector[bucket] += 1.0
    norm = math.sqrt(sum(v * v for v in vector)) or 1.0
    return [v / norm for v in vector]
