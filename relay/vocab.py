"""One error family for the whole gateway (aiosmtplib's model: the SMTP code rides on the exception).

Every refusal carries an SMTP code, an enhanced status code, a public message (safe to show a
client) and an internal reason (for logs only). ``temporary`` is derived from the code: 4xx.
Only the front doors turn these into wire text (SMTP) or an HTTP status.
"""

from __future__ import annotations


class RelayError(Exception):
    """A refusal with everything a front door needs to answer it."""

    def __init__(
        self,
        code: int,
        enhanced: str,
        public: str,
        reason: str = "",
        *,
        http_status: int | None = None,
        field: str | None = None,
    ) -> None:
        super().__init__(reason or public)
        self.code = code
        self.enhanced = enhanced
        self.public = public
        self.reason = reason or public
        self.http_status = http_status
        self.field = field

    @property
    def temporary(self) -> bool:
        return 400 <= self.code < 500

    @property
    def smtp_reply(self) -> str:
        return f"{self.code} {self.enhanced} {self.public}"

    def __repr__(self) -> str:
        return f"{type(self).__name__}({self.code}, {self.enhanced!r}, {self.public!r}, reason={self.reason!r})"


class ConfigError(Exception):
    """Bad configuration: the message names the key and the value."""


class StoreError(RelayError):
    """The store failed; the client must retry later, never get a 250."""

    def __init__(self, reason: str) -> None:
        super().__init__(451, "4.3.0", "Temporary local problem, try again later", reason, http_status=503)


class NotFound(LookupError):
    """An admin lookup found nothing (CLI exit 1, HTTP 404)."""


class Conflict(ValueError):
    """An admin change collides with existing state (CLI exit 1, HTTP 409)."""


class Forbidden(PermissionError):
    """An admin change the rules refuse whatever the input (HTTP 403), e.g. removing the last verified alias."""


class Invalid(ValueError):
    """An admin request is malformed (CLI exit 2, HTTP 400); ``field`` names the culprit."""

    def __init__(self, message: str, field: str | None = None) -> None:
        super().__init__(message)
        self.field = field
