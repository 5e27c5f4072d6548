"""Typed failures of TensorDock calls, so callers decide by kind, never by parsing text.

No error ever carries the request headers, so the token cannot leak through one.
"""

from __future__ import annotations

import re

_CAPACITY_PATTERN = re.compile(
    r"no available nodes|hostnode unavailable|no longer available|not enough (gpus?|capacity)"
    r"|insufficient (gpus?|capacity)|disassociated|out of stock"
    r"|no available public ip|nodes? unavailable|gpus? not available|sold out",
    re.IGNORECASE,
)


class TensorDockError(Exception):
    """Any failed call. `operation` names the client method; `status` is the HTTP or body status."""

    retry_safe = False  # set by the client: may this call be repeated after this failure?

    def __init__(self, operation: str, message: str, status: int | None = None) -> None:
        self.operation = operation
        self.message = message
        self.status = status
        super().__init__(f"{operation}: {message}" + (f" (status {status})" if status else ""))


class AuthenticationError(TensorDockError):
    """The token was refused; check `tensordock.token` (or `token_file`)."""


class NotFoundError(TensorDockError):
    """The instance or hostnode does not exist (any more)."""


class BadRequestError(TensorDockError):
    """TensorDock refused the request; `detail` is its reason, word for word."""

    @property
    def detail(self) -> str:
        return self.message


class CapacityUnavailableError(BadRequestError):
    """The offer was listed but cannot be had now; try another offer, back this one off."""


class RateLimitedError(TensorDockError):
    """429: the organisation's request budget is spent. `retry_after` is in seconds, when sent."""

    def __init__(self, operation: str, message: str, retry_after: float | None) -> None:
        super().__init__(operation, message, 429)
        self.retry_after = retry_after


class ServerError(TensorDockError):
    """5xx: TensorDock failed; the request may or may not have taken effect."""


class MalformedResponseError(TensorDockError):
    """A 2xx reply we cannot read; nothing may be decided from it."""


class TransportError(TensorDockError):
    """The HTTP exchange itself failed."""


class ConnectionFailedError(TransportError):
    """No connection was made, so the request was never sent and is safe to repeat."""


class RequestTimeoutError(TransportError):
    """The request was sent but no reply came (timeout or dropped connection): its outcome is unknown."""


def is_capacity_message(message: str) -> bool:
    """True when TensorDock's wording means 'that capacity is gone', not 'your request is wrong'."""
    return bool(_CAPACITY_PATTERN.search(message))
