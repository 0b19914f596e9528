"""OpenAI-compatible clients built from settings (OpenAI, Azure OpenAI, vLLM, Ollama...).

Our own retry loops (with Retry-After) sit above these clients, so the SDK's retries are off.
"""

from __future__ import annotations

import email.utils
import time
from collections.abc import Callable
from typing import TYPE_CHECKING

from sop_pipeline.settings import Settings

if TYPE_CHECKING:  # the SDK is heavy to import; CLI commands that don't call it stay quick
    import openai


class ProviderConfigError(RuntimeError):
    """The provider cannot be used with the current settings; the text says which to set."""


def make_openai_client(settings: Settings, *, timeout: float | None = None) -> openai.OpenAI:
    """The client for chat and (OpenAI backend) fine-tuning, honouring OPENAI_BASE_URL."""
    import openai

    if settings.training_backend == "azure" and settings.azure_openai_endpoint:
        return make_azure_client(settings, timeout=timeout)
    key = settings.secret("openai_api_key")
    if not key:
        if settings.openai_base_url:
            key = "not-needed"  # local OpenAI-compatible servers (vLLM, Ollama) ignore the key
        else:
            raise ProviderConfigError(
                "OPENAI_API_KEY is not set. Add your OpenAI API key to .env, or set "
                "OPENAI_BASE_URL to an OpenAI-compatible server."
            )
    return openai.OpenAI(
        api_key=key,
        base_url=settings.openai_base_url or None,
        timeout=timeout or settings.openai_timeout_seconds,
        max_retries=0,
    )


def make_azure_client(settings: Settings, *, timeout: float | None = None) -> openai.OpenAI:
    """The SDK's Azure client from AZURE_OPENAI_* settings."""
    import openai

    key = settings.secret("azure_openai_api_key")
    if not settings.azure_openai_endpoint or not key:
        raise ProviderConfigError(
            "Azure OpenAI needs AZURE_OPENAI_ENDPOINT and AZURE_OPENAI_API_KEY; set both in .env."
        )
    return openai.AzureOpenAI(
        azure_endpoint=settings.azure_openai_endpoint,
        api_key=key,
        api_version=settings.azure_openai_api_version,
        timeout=timeout or settings.openai_timeout_seconds,
        max_retries=0,
    )


def retry_after_seconds(exc: BaseException, now: Callable[[], float] = time.time) -> float | None:
    """The wait a provider error asks for (`retry-after-ms`, `Retry-After` seconds or an HTTP
    date), or None; generation and training back off by it alike."""
    response = getattr(exc, "response", None)
    headers = getattr(response, "headers", None)
    if headers is None:
        return None
    raw_ms = headers.get("retry-after-ms")
    if raw_ms:
        try:
            return max(0.0, float(raw_ms) / 1000)
        except ValueError:
            pass
    raw = headers.get("retry-after")
    if not raw:
        return None
    try:
        return max(0.0, float(raw))
    except ValueError:
        pass
    try:
        parsed = email.utils.parsedate_to_datetime(raw)
    except (TypeError, ValueError):
        return None
    return max(0.0, parsed.timestamp() - now())
