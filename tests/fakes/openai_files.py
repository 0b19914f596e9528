"""The OpenAI fake's Files API: control methods for tests and the /files endpoints."""

from __future__ import annotations

from typing import Any

from tests.fakes.openai_records import (
    FILE_PURPOSES,
    RecordedRequest,
    _ApiError,
    _Response,
)
from tests.fakes.openai_text import (
    _rid,
)


class FilesMixin:
    """Files of `FakeOpenAI`."""

    # -- files (control) ------------------------------------------------------------------

    def add_file(
        self,
        content: bytes,
        *,
        filename: str = "data.jsonl",
        purpose: str = "fine-tune",
        status: str = "processed",
    ) -> dict[str, Any]:
        """Create a file directly (no HTTP)."""
        with self._lock:
            record = {
                "id": _rid("file-", 11),
                "object": "file",
                "bytes": len(content),
                "created_at": self._now(),
                "filename": filename,
                "purpose": purpose,
                "status": status,
            }
            self.files[record["id"]] = record
            self.file_contents[record["id"]] = content
            return dict(record)

    def set_file_status(self, file_id: str, status: str, details: str | None = None) -> None:
        with self._lock:
            record = self.files[file_id]
            record["status"] = status
            self._file_pending.pop(file_id, None)
            if details is not None:
                record["status_details"] = details

    def process_file(self, file_id: str) -> None:
        self.set_file_status(file_id, "processed")

    # files

    def _file_public(self, record: dict[str, Any]) -> dict[str, Any]:
        return dict(record)

    def _get_file(self, file_id: str) -> dict[str, Any]:
        record = self.files.get(file_id)
        if record is None:
            raise _ApiError(404, f"No such File object: {file_id}", param="id")
        return record

    def create_file(self, rec: RecordedRequest) -> _Response:
        if not rec.headers.get("content-type", "").startswith("multipart/form-data"):
            raise _ApiError(400, "Expected a multipart/form-data request body.")
        upload = rec.files.get("file")
        purpose = rec.form.get("purpose")
        if upload is None:
            raise _ApiError(
                400,
                "Missing required parameter: 'file'.",
                param="file",
                code="missing_required_parameter",
            )
        if not isinstance(purpose, str) or not purpose:
            raise _ApiError(
                400,
                "Missing required parameter: 'purpose'.",
                param="purpose",
                code="missing_required_parameter",
            )
        if purpose not in FILE_PURPOSES:
            raise _ApiError(
                400,
                f"'{purpose}' is not one of {list(FILE_PURPOSES)} - 'purpose'",
                param="purpose",
                code="invalid_value",
            )
        pending = self.file_uploaded_retrieves
        record = self.add_file(
            upload.data,
            filename=upload.filename or "upload",
            purpose=purpose,
            status="uploaded" if pending else "processed",
        )
        expires = rec.form.get("expires_after")
        if isinstance(expires, dict) and str(expires.get("seconds", "")).isdigit():
            self.files[record["id"]]["expires_at"] = record["created_at"] + int(expires["seconds"])
        if pending:
            self._file_pending[record["id"]] = pending
        return _Response(200, self._file_public(self.files[record["id"]]))

    def list_files(self, rec: RecordedRequest) -> _Response:
        items = sorted(
            self.files.values(), key=lambda f: f["created_at"], reverse=rec.q("order") != "asc"
        )
        if rec.q("purpose"):
            items = [f for f in items if f["purpose"] == rec.q("purpose")]
        page, has_more = self._page(items, rec, default_limit=10_000)
        return _Response(
            200,
            {
                "object": "list",
                "data": page,
                # the spec requires strings here (not null), even for an empty page
                "first_id": page[0]["id"] if page else "",
                "last_id": page[-1]["id"] if page else "",
                "has_more": has_more,
            },
        )

    def retrieve_file(self, rec: RecordedRequest, file_id: str) -> _Response:
        record = self._get_file(file_id)
        pending = self._file_pending.get(file_id)
        if pending is not None:
            if pending <= 0:
                self._file_pending.pop(file_id)
                if record["status"] == "uploaded":
                    record["status"] = "processed"
            else:
                self._file_pending[file_id] = pending - 1
        return _Response(200, self._file_public(record))

    def delete_file(self, rec: RecordedRequest, file_id: str) -> _Response:
        self._get_file(file_id)
        del self.files[file_id]
        self.file_contents.pop(file_id, None)
        self._file_pending.pop(file_id, None)
        return _Response(200, {"id": file_id, "object": "file", "deleted": True})

    def file_content_endpoint(self, rec: RecordedRequest, file_id: str) -> _Response:
        self._get_file(file_id)
        return _Response(
            200, raw=self.file_contents[file_id], content_type="application/octet-stream"
        )
