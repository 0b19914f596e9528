"""The OpenAI fake's models: registering, retiring, Azure deployments and the /models endpoints."""

from __future__ import annotations

from typing import Any

from tests.fakes.openai_records import (
    RecordedRequest,
    _ApiError,
    _Response,
)


class ModelsMixin:
    """Models of `FakeOpenAI`."""

    # -- models (control) -----------------------------------------------------------------

    def register_model(self, model_id: str, owned_by: str | None = None) -> dict[str, Any]:
        with self._lock:
            model = {
                "id": model_id,
                "object": "model",
                "created": self._now(),
                "owned_by": owned_by or self.organization_id,
            }
            self.models[model_id] = model
            return dict(model)

    def delete_model(self, model_id: str) -> None:
        """Retire a model: gone from /models, chat with it -> 404 model_not_found."""
        with self._lock:
            self.models.pop(model_id, None)
            self.checkpoint_models.discard(model_id)
            if model_id in self.base_models:
                self.base_models.remove(model_id)

    def deploy(self, deployment: str, model: str) -> None:
        """Azure: make `/openai/deployments/{deployment}/...` serve `model`."""
        with self._lock:
            self.azure_deployments[deployment] = model

    def model_exists(self, model_id: str) -> bool:
        with self._lock:
            return (
                model_id in self.base_models
                or model_id in self.models
                or model_id in self.checkpoint_models
            )

    # models

    def _base_model(self, model_id: str) -> dict[str, Any]:
        return {"id": model_id, "object": "model", "created": 1_700_000_000, "owned_by": "system"}

    def _model_not_found(self, model_id: str) -> _ApiError:
        return _ApiError(
            404,
            f"The model `{model_id}` does not exist or you do not have access to it.",
            param="model",
            code="model_not_found",
        )

    def list_models(self, rec: RecordedRequest) -> _Response:
        data = [self._base_model(m) for m in self.base_models]
        data += [dict(m) for m in self.models.values()]
        return _Response(200, {"object": "list", "data": data})

    def retrieve_model(self, rec: RecordedRequest, model_id: str) -> _Response:
        if model_id in self.models:
            return _Response(200, dict(self.models[model_id]))
        if model_id in self.base_models:
            return _Response(200, self._base_model(model_id))
        raise self._model_not_found(model_id)

    def delete_model_endpoint(self, rec: RecordedRequest, model_id: str) -> _Response:
        if model_id in self.base_models:
            raise _ApiError(
                403,
                "You have insufficient permissions for this operation. "
                f"You cannot delete the model {model_id}.",
                code="insufficient_permissions",
            )
        if model_id not in self.models:
            raise self._model_not_found(model_id)
        self.delete_model(model_id)
        return _Response(200, {"id": model_id, "object": "model", "deleted": True})
