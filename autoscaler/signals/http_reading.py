"""One bounded JSON GET for the sources that read over HTTP (the HTTP and Prometheus sources).

A demand endpoint is not TensorDock, but the same rule holds (rule 14), with the client's own
bounded read: a huge or trickling reply fails the read instead of holding memory or the source's
reader.
"""

from __future__ import annotations

import json
import time
from typing import Any

import httpx

from autoscaler.common.bounded_read import ReplyTooLargeError, ReplyTooSlowError, read_bounded

MAX_REPLY_BYTES = 8 * 1024 * 1024  # far over any queue document or instant-query reply


class ReplyError(ValueError):
    """The reply was too large, too slow to finish, or not JSON."""


def get_json(
    client: httpx.Client,
    url: str,
    *,
    timeout_s: float,
    params: dict[str, str] | None = None,
    max_bytes: int = MAX_REPLY_BYTES,
) -> tuple[httpx.Response, Any]:
    """The response and its JSON body; httpx's errors pass through, a bad body is a ReplyError."""
    deadline = time.monotonic() + timeout_s
    with client.stream("GET", url, params=params) as response:
        try:
            body = read_bounded(response, max_bytes=max_bytes, deadline=deadline)
        except ReplyTooLargeError:
            raise ReplyError(f"reply larger than {max_bytes} bytes") from None
        except ReplyTooSlowError:
            raise ReplyError(f"reply not complete within {timeout_s:g}s") from None
    try:
        return response, json.loads(body)
    except RecursionError:
        raise ReplyError("reply nested too deeply to read") from None
    except ValueError:
        raise ReplyError(f"HTTP {response.status_code} reply is not JSON") from None
