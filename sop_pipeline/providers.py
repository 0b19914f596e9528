"""OpenAI-compatible clients built from settings (OpenAI, Azure OpenAI, vLLM, Ollama...).

The SDK retries by itself (429/5xx/timeouts, honouring Retry-After) as often as
`sop_pipeline.retry_policy` says; overall deadlines sit above it (see `generation`).
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from sop_pipeline.retry_policy import RetryPolicy
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
        max_retries=RetryPolicy.provider(settings).max_retries,
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
        max_retries=RetryPolicy.provider(settings).max_retries,
    )
