"""Downloading a file attached to a Slack message, without letting the bot token leave Slack.

Slack documents that a remote file's `url_private` is its external URL, which can point to any
host, and that Slack tokens must not be sent there. So the token goes only to Slack's own file
host over HTTPS (and, for tests, to the fake Slack when SLACK_API_URL points at loopback), no
redirect is followed with it to another host, a remote file is refused or fetched without
credentials (SOP_REMOTE_FILES), and size and type are checked before any byte is read.
"""

from __future__ import annotations

import ipaddress
import urllib.error
import urllib.request
from urllib.parse import urljoin, urlsplit

SLACK_FILE_HOSTS = frozenset({"files.slack.com"})  # where url_private points for Slack files
DOCX_MIME = "application/vnd.openxmlformats-officedocument.wordprocessingml.document"
ALLOWED_FILETYPES = frozenset({"text", "txt", "markdown", "md", "docx"})
ALLOWED_MIMETYPES = frozenset({"text/plain", "text/markdown", "text/x-markdown", DOCX_MIME})
MAX_REDIRECTS = 3


class FileRefused(Exception):
    """The file is not downloaded; the text says why and what to do (for the approver)."""


def _is_loopback(host: str | None) -> bool:
    if not host:
        return False
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def may_carry_token(url: str, slack_api_url: str) -> bool:
    """True only for Slack's own file host over HTTPS, or the test fake's own origin when
    SLACK_API_URL points at loopback."""
    parts = urlsplit(url)
    if parts.username or parts.password:
        return False
    if parts.scheme == "https" and (parts.hostname or "").lower() in SLACK_FILE_HOSTS \
            and parts.port in (None, 443):
        return True
    api = urlsplit(slack_api_url)
    return (_is_loopback(api.hostname) and parts.scheme == api.scheme
            and parts.hostname == api.hostname and parts.port == api.port)


def is_remote(item: dict, slack_api_url: str) -> bool:
    """A remote file (stored off Slack): Slack marks it external; its URL is not Slack's."""
    url = item.get("url_private_download") or item.get("url_private") or ""
    return bool(item.get("is_external")) or item.get("mode") == "external" or \
        not may_carry_token(url, slack_api_url)


def check_declared(item: dict, max_bytes: int) -> None:
    """Refuse by what Slack says about the file (size, filetype, mimetype) before fetching."""
    name = item.get("name") or item.get("title") or "that file"
    size = item.get("size")
    if isinstance(size, int) and size > max_bytes:
        raise FileRefused(f"{name} is larger than {max_bytes // 1_000_000 or 1} MB, so I did "
                          "not download it; attach the SOP as a smaller file.")
    filetype = (item.get("filetype") or "").lower()
    mimetype = (item.get("mimetype") or "").split(";")[0].strip().lower()
    if (filetype and filetype not in ALLOWED_FILETYPES) and \
            (mimetype and mimetype not in ALLOWED_MIMETYPES):
        raise FileRefused(f"{name} is not a text, Markdown or Word file (Slack says "
                          f"{mimetype or filetype}), so I did not download it. Attach the SOP "
                          "as .txt, .md or .docx.")


class _NoRedirects(urllib.request.HTTPRedirectHandler):
    """Redirects come back as responses; `fetch` decides where (and with what) to go next."""

    def redirect_request(self, req, fp, code, msg, headers, newurl):  # noqa: ANN001, ANN201
        return None


_OPENER = urllib.request.build_opener(_NoRedirects())


def fetch(url: str, *, token: str | None, slack_api_url: str, max_bytes: int,
          allow_anonymous: bool) -> tuple[bytes, str]:
    """GET `url` (bytes, content type). The token is attached only where `may_carry_token`
    allows; a redirect to any other host is followed without it when `allow_anonymous`, else
    refused. Content-Length and the bytes read are both held to `max_bytes`."""
    for _ in range(MAX_REDIRECTS + 1):
        with_token = token is not None and may_carry_token(url, slack_api_url)
        if not with_token and not allow_anonymous:
            raise FileRefused("That file is not stored on Slack, so I did not download it. "
                              "Upload the SOP file to Slack itself, or paste its text.")
        if urlsplit(url).scheme not in ("https", "http"):
            raise FileRefused("That file's address is not a web address, so I did not "
                              "download it. Upload the SOP file to Slack itself.")
        headers = {"Authorization": f"Bearer {token}"} if with_token else {}
        request = urllib.request.Request(url, headers=headers)
        try:
            response = _OPENER.open(request, timeout=30)
        except urllib.error.HTTPError as exc:
            if exc.code in (301, 302, 303, 307, 308) and exc.headers.get("Location"):
                url = urljoin(url, exc.headers["Location"])
                exc.close()
                continue
            raise FileRefused(f"The file could not be downloaded (HTTP {exc.code}). Try "
                              "attaching it again.") from None
        with response:
            length = response.headers.get("Content-Length")
            if length and length.isdigit() and int(length) > max_bytes:
                raise FileRefused(f"That file is larger than {max_bytes // 1_000_000 or 1} MB; "
                                  "attach the SOP as a smaller file.")
            data = response.read(max_bytes + 1)
            content_type = response.headers.get("Content-Type", "")
        if len(data) > max_bytes:
            raise FileRefused(f"That file is larger than {max_bytes // 1_000_000 or 1} MB; "
                              "attach the SOP as a smaller file.")
        return data, content_type
    raise FileRefused("That file's address redirected too many times, so I did not download "
                      "it. Upload the SOP file to Slack itself.")
