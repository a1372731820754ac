"""What the client raises. Everything derives from KDClientError; no httpx exception escapes."""

from __future__ import annotations

from dataclasses import dataclass
from http import HTTPStatus
from typing import Any

import httpx


class KDClientError(Exception):
    """Base class of every error the client raises."""


@dataclass(frozen=True)
class FieldError:
    """One entry of a problem's `errors`: the request field at fault and why."""

    field: str | None
    reason: str


class ApiError(KDClientError):
    """The service answered with an error: an RFC 9457 problem+json body, parsed.

    `status` (404, 422, ...), `title` ("Not Found"), `detail` (the human explanation, e.g.
    "hyperparameters.alpha: must be between 0 and 1"), `errors` (a list of FieldError), `type`
    (e.g. "urn:kd:problem:invalid-field"), `instance` (the path) and `headers` of the response.
    """

    def __init__(self, status: int, title: str, detail: str, errors: list[FieldError] | None = None, *,
                 type: str = "about:blank", instance: str | None = None,
                 headers: dict[str, str] | None = None):
        self.status, self.title, self.detail = status, title, detail
        self.errors = list(errors or [])
        self.type, self.instance, self.headers = type, instance, dict(headers or {})
        super().__init__(f"{status} {title}: {detail}" if detail else f"{status} {title}")

    @property
    def field(self) -> str | None:
        """The first field named by the problem, if any."""
        return next((e.field for e in self.errors if e.field), None)

    @classmethod
    def from_response(cls, response: httpx.Response) -> "ApiError":
        try:
            phrase = HTTPStatus(response.status_code).phrase
        except ValueError:
            phrase = response.reason_phrase or "Error"
        body: Any = None
        try:
            body = response.json()
        except (ValueError, UnicodeDecodeError, httpx.ResponseNotRead):
            pass
        if isinstance(body, dict) and ("detail" in body or "title" in body):
            detail = body.get("detail")
            if not isinstance(detail, str):  # a framework's default {"detail": [...]} body
                detail = str(detail) if detail is not None else ""
            errors = [FieldError(field=e.get("field"), reason=str(e.get("reason", "")))
                      for e in body.get("errors") or [] if isinstance(e, dict)]
            return cls(response.status_code, str(body.get("title") or phrase), detail, errors,
                       type=str(body.get("type") or "about:blank"), instance=body.get("instance"),
                       headers=dict(response.headers))
        text = ""
        try:
            text = response.text.strip()[:300]
        except (httpx.ResponseNotRead, UnicodeDecodeError):
            pass
        return cls(response.status_code, phrase, text, headers=dict(response.headers))


class ServiceUnreachable(KDClientError):
    """No answer from the service (connection refused, reset, timed out) after every retry."""


class IntegrityError(KDClientError):
    """A download's sha256 does not match the ETag the service sent; the bad file was deleted."""

    def __init__(self, message: str, *, expected: str | None = None, actual: str | None = None):
        super().__init__(message)
        self.expected, self.actual = expected, actual


class WaitTimeout(KDClientError, TimeoutError):
    """`Client.wait` ran past its timeout; `job` is the last state seen (the job keeps running)."""

    def __init__(self, message: str, job):
        super().__init__(message)
        self.job = job
