"""A reply body read streamed, within a size and a deadline: the TensorDock client's and the HTTP
demand sources' one rule (rule 14), so a huge or trickling reply fails the call instead of holding
memory or a thread. Each caller turns the two errors into its own."""

from __future__ import annotations

import time
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    import httpx


class ReplyTooLargeError(ValueError):
    """Over the size; the message says how much: the declared length in bytes, or "more"."""


class ReplyTooSlowError(ValueError):
    """Not complete by the deadline."""


def read_bounded(response: httpx.Response, *, max_bytes: int, deadline: float) -> bytes:
    """The whole body of a streamed response: refused up front by its Content-Length when that is
    already too much, else as soon as the bytes read pass `max_bytes` or the clock passes `deadline`
    (`time.monotonic()`)."""
    declared = response.headers.get("Content-Length", "")
    if declared.isdigit() and int(declared) > max_bytes:
        raise ReplyTooLargeError(f"{int(declared)} bytes")
    chunks: list[bytes] = []
    size = 0
    for chunk in response.iter_bytes():
        size += len(chunk)
        if size > max_bytes:
            raise ReplyTooLargeError("more")
        if time.monotonic() > deadline:
            raise ReplyTooSlowError
        chunks.append(chunk)
    return b"".join(chunks)
