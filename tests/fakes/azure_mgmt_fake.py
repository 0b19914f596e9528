"""A loopback fake of Azure's control plane for Cognitive Services deployments.

It answers `Deployments_Get`, `Deployments_CreateOrUpdate` and `Deployments_Delete` the way
Azure Resource Manager does (a PUT answers 201 with provisioningState "Creating", later GETs
report "Succeeded"; GET of a missing deployment is a 404 ARM error), and checks every request
and response against the official REST description excerpt in `specs/` (path template,
method, api-version, and the JSON bodies against their schemas with jsonschema).

`on_ready(name, model)` and `on_delete(name)` let a test connect it to the OpenAI fake, so a
ready deployment answers chat completions and a deleted one answers 404 DeploymentNotFound.
"""

from __future__ import annotations

import copy
import json
import re
import threading
from collections.abc import Callable
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from urllib.parse import parse_qs, urlsplit

import jsonschema

SPEC_PATH = Path(__file__).parent / "specs" / "cognitiveservices-deployments-2025-09-01.json"
PATH_TEMPLATE = ("/subscriptions/{subscriptionId}/resourceGroups/{resourceGroupName}/providers/"
                 "Microsoft.CognitiveServices/accounts/{accountName}/deployments/{deploymentName}")
PATH_RE = re.compile(
    r"^/subscriptions/(?P<subscriptionId>[^/]+)/resourceGroups/(?P<resourceGroupName>[^/]+)"
    r"/providers/Microsoft\.CognitiveServices/accounts/(?P<accountName>[^/]+)"
    r"/deployments/(?P<deploymentName>[^/]+)$")


class ContractError(AssertionError):
    """Traffic the official description does not allow."""


def _drop_external_refs(node: object) -> object:
    """Schemas with references into common-types (not part of the excerpt) made unconstrained."""
    if isinstance(node, dict):
        if str(node.get("$ref", "")).startswith("../"):
            return {k: _drop_external_refs(v) for k, v in node.items() if k != "$ref"}
        return {k: _drop_external_refs(v) for k, v in node.items()}
    if isinstance(node, list):
        return [_drop_external_refs(v) for v in node]
    return node


class Contract:
    """The excerpt of the official description, and checks against it."""

    def __init__(self, path: Path = SPEC_PATH) -> None:
        self.spec = json.loads(path.read_text(encoding="utf-8"))
        self.api_version = self.spec["info"]["version"]
        self.operations = self.spec["paths"][PATH_TEMPLATE]
        self._definitions = _drop_external_refs(copy.deepcopy(self.spec["definitions"]))

    def _check(self, instance: object, ref: str, what: str) -> None:
        schema = {"$ref": ref, "definitions": self._definitions}
        errors = sorted(jsonschema.Draft4Validator(schema).iter_errors(instance), key=str)
        if errors:
            raise ContractError(f"{what} does not match {ref}: {errors[0].message}")

    def check_request(self, method: str, path: str, query: dict, body: object) -> dict:
        match = PATH_RE.match(path)
        if match is None:
            raise ContractError(f"{method} {path} is not {PATH_TEMPLATE}")
        operation = self.operations.get(method.lower())
        if operation is None:
            raise ContractError(f"{method} is not an operation on {PATH_TEMPLATE}")
        if query.get("api-version") != [self.api_version]:
            raise ContractError(f"api-version {query.get('api-version')} is not "
                                f"{self.api_version}")
        for param in operation["parameters"]:
            if param.get("in") == "body" and param.get("required"):
                if body is None:
                    raise ContractError(f"{operation['operationId']} needs a JSON body")
                self._check(body, param["schema"]["$ref"], f"{operation['operationId']} body")
        return match.groupdict()

    def check_response(self, method: str, status: int, body: object) -> None:
        responses = self.operations[method.lower()]["responses"]
        declared = responses.get(str(status)) or (responses["default"] if status >= 400 else None)
        if declared is None:
            raise ContractError(f"{method} may not answer {status}")
        schema = declared.get("schema")
        if schema and "$ref" in schema and not schema["$ref"].startswith("../"):
            self._check(body, schema["$ref"], f"{method} {status} response")
        elif schema is None and body not in (None, b"", ""):
            raise ContractError(f"{method} {status} has no body in the description")


@dataclass
class Recorded:
    method: str
    path: str
    query: dict
    body: object
    status: int
    authorization: str | None


@dataclass
class _Deployment:
    body: dict
    gets_until_ready: int


@dataclass
class AzureManagementFake:
    """The fake control plane; `base_url` goes into AZURE_MANAGEMENT_URL."""

    ready_after_gets: int = 1  # GETs answering "Creating" before "Succeeded"
    on_ready: Callable[[str, str], None] | None = None
    on_delete: Callable[[str], None] | None = None
    contract: Contract = field(default_factory=Contract)
    requests: list[Recorded] = field(default_factory=list)
    deployments: dict[str, _Deployment] = field(default_factory=dict)
    fail_next: dict[str, tuple[int, str]] = field(default_factory=dict)  # method -> (status, code)
    violations: list[str] = field(default_factory=list)

    def __post_init__(self) -> None:
        self._lock = threading.Lock()
        fake = self

        class Handler(BaseHTTPRequestHandler):
            def do_GET(self) -> None:  # noqa: N802 - http.server naming
                fake._serve(self, "GET")

            def do_PUT(self) -> None:  # noqa: N802
                fake._serve(self, "PUT")

            def do_DELETE(self) -> None:  # noqa: N802
                fake._serve(self, "DELETE")

            def log_message(self, *args: object) -> None:
                pass

        self._server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self._thread = threading.Thread(target=self._server.serve_forever, daemon=True)

    @property
    def base_url(self) -> str:
        return f"http://127.0.0.1:{self._server.server_address[1]}"

    def start(self) -> AzureManagementFake:
        self._thread.start()
        return self

    def stop(self) -> None:
        self._server.shutdown()
        self._server.server_close()

    # -- what tests do to the world --

    def delete_for_idleness(self, name: str) -> None:
        """Azure deletes a fine-tuned deployment after 15 idle days."""
        with self._lock:
            self.deployments.pop(name, None)
        if self.on_delete:
            self.on_delete(name)

    def calls(self, method: str) -> list[Recorded]:
        return [r for r in self.requests if r.method == method]

    # -- HTTP --

    def _serve(self, handler: BaseHTTPRequestHandler, method: str) -> None:
        url = urlsplit(handler.path)
        query = parse_qs(url.query)
        length = int(handler.headers.get("Content-Length") or 0)
        raw = handler.rfile.read(length) if length else b""
        body = json.loads(raw) if raw else None
        try:
            params = self.contract.check_request(method, url.path, query, body)
            status, payload = self._answer(method, params["deploymentName"], body)
            self.contract.check_response(method, status, payload)
        except ContractError as exc:  # answered, and kept for the test to fail on
            self.violations.append(str(exc))
            status, payload = 400, {"error": {"code": "ContractViolation", "message": str(exc)}}
        self.requests.append(Recorded(method, url.path, query, body, status,
                                      handler.headers.get("Authorization")))
        data = json.dumps(payload).encode() if payload is not None else b""
        handler.send_response(status)
        handler.send_header("Content-Type", "application/json")
        handler.send_header("Content-Length", str(len(data)))
        handler.end_headers()
        handler.wfile.write(data)

    def _error(self, status: int, code: str, message: str) -> tuple[int, dict]:
        return status, {"error": {"code": code, "message": message}}

    def _answer(self, method: str, name: str, body: dict | None) -> tuple[int, dict | None]:
        injected = self.fail_next.pop(method, None)
        if injected is not None:
            return self._error(injected[0], injected[1], "Injected failure.")
        with self._lock:
            if method == "PUT":
                stored = copy.deepcopy(body or {})
                stored.setdefault("properties", {})["provisioningState"] = "Creating"
                stored.update(name=name, type="Microsoft.CognitiveServices/accounts/deployments")
                self.deployments[name] = _Deployment(stored, self.ready_after_gets)
                return 201, copy.deepcopy(stored)
            found = self.deployments.get(name)
            if method == "DELETE":
                if found is None:
                    return 204, None
                del self.deployments[name]
            elif found is None:
                return self._error(404, "DeploymentNotFound",
                                   f"Deployment {name} was not found.")
        if method == "DELETE":
            if self.on_delete:
                self.on_delete(name)
            return 200, None
        became_ready = False
        with self._lock:
            if found.gets_until_ready > 0:
                found.gets_until_ready -= 1
            elif found.body["properties"]["provisioningState"] != "Succeeded":
                found.body["properties"]["provisioningState"] = "Succeeded"
                became_ready = True
            answer = copy.deepcopy(found.body)
        if became_ready and self.on_ready:
            self.on_ready(name, answer["properties"]["model"]["name"])
        return 200, answer
