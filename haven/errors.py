"""Domain errors: what services raise, whoever calls them (API, CLI, workers, the OpenAI router).

Services never raise HTTP exceptions; ``api/errors.py`` maps these to HTTP in one place, and the
CLI prints their message. ``code`` is a stable, machine-readable reason (``upload.too_large``);
the message is for people and never carries raw exception text from a dependency.
"""

from __future__ import annotations

from typing import Any


class DomainError(Exception):
    """Base of every error a service raises on purpose."""

    code = "error"

    def __init__(self, message: str, *, code: str | None = None, **details: Any) -> None:
        super().__init__(message)
        self.message = message
        if code is not None:
            self.code = code
        self.details = details


class NotFound(DomainError):
    """The object does not exist for this caller (which includes: it is another tenant's)."""

    code = "not_found"

    def __init__(self, what: str, object_id: object = None, *, code: str | None = None) -> None:
        # The id is not echoed back: the caller sent it, and a 404 says nothing more.
        super().__init__(f"{what} not found", code=code)
        self.what = what
        self.object_id = object_id


class Invalid(DomainError):
    """The request is well-formed but cannot be accepted (a bad value, a wrong state to ask in)."""

    code = "invalid"


class BadRequest(DomainError):
    """The request itself is malformed: a required field missing or blank, a file that is not
    what its field says (a ``new_zip`` that is no zip archive)."""

    code = "bad_request"


class UnsupportedMediaType(Invalid):
    """The content is of a type Haven does not take (an upload that is no supported document)."""

    code = "unsupported_type"


class Conflict(DomainError):
    """The request conflicts with the current state (a taken name, a job already finished)."""

    code = "conflict"


class Gone(DomainError):
    """The thing existed but can no longer be used (an expired upload URL)."""

    code = "gone"


class Unauthenticated(DomainError):
    """Who the caller is could not be established (bad credentials, a revoked key)."""

    code = "unauthenticated"


class Forbidden(DomainError):
    """The caller is known but may not do this."""

    code = "forbidden"


class TooLarge(DomainError):
    """A body, file or part is over its configured limit."""

    code = "too_large"

    def __init__(self, message: str, *, limit: int | None = None, code: str | None = None) -> None:
        super().__init__(message, code=code, limit=limit)
        self.limit = limit


class LimitExceeded(DomainError):
    """A quota or rate limit of the caller is reached; it may succeed later."""

    code = "limit_exceeded"

    def __init__(
        self, message: str, *, retry_after: float | None = None, code: str | None = None
    ) -> None:
        super().__init__(message, code=code)
        self.retry_after = retry_after


class Unavailable(DomainError):
    """A dependency or the platform is busy or down; the same request may succeed later."""

    code = "unavailable"

    def __init__(
        self, message: str, *, retry_after: float | None = None, code: str | None = None
    ) -> None:
        super().__init__(message, code=code)
        self.retry_after = retry_after


class UpstreamFailed(DomainError):
    """A dependency answered with something unusable (a model service error)."""

    code = "upstream_failed"
