"""One token bucket in front of every TensorDock call.

Written here rather than taken from a library because it must run on the injected clock (the
simulator's virtual time) and take a server-sent Retry-After for every caller at once; the
rate-limit libraries checked (pyrate-limiter, limits) read the wall clock themselves.
"""

from __future__ import annotations

import math
import threading

from autoscaler.common.clock import Clock, sleep_unless


class TokenBucket:
    """Never more than `limit` calls in any `window_s`: burst + refill over a window == limit.

    A token bucket of capacity B refilled at r admits at most B + r*T calls in any span T, so
    refilling at (limit - burst) / window keeps every window at or under the server's limit.
    Callers that must wait reserve their slot first, so waiting threads are served in order.
    """

    def __init__(self, clock: Clock, limit: int = 100, window_s: float = 60.0, burst: int | None = None):
        if limit < 2 or window_s <= 0:
            raise ValueError("rate limit needs limit >= 2 and window_s > 0")
        self._clock = clock
        self.limit = limit
        self.window_s = window_s
        self.burst = burst if burst is not None else max(1, limit // 10)
        if not 1 <= self.burst < limit:
            raise ValueError(f"burst must be from 1 to limit - 1 ({limit - 1}), not {self.burst}")
        self._rate = (limit - self.burst) / window_s
        self._tokens = float(self.burst)
        self._updated = clock.now()
        self._paused_until = 0.0
        self._lock = threading.Lock()

    def acquire(self, max_wait: float = math.inf, cancel: threading.Event | None = None) -> float | None:
        """Take one slot, sleeping until it is ours; returns the seconds waited.

        None, and no slot taken, when the wait would be longer than `max_wait` (the call's
        deadline); None after the slot was taken when `cancel` (SIGTERM) cut the wait short.
        """
        with self._lock:
            now = self._refill()
            tokens = self._tokens - 1.0
            wait = max(-tokens / self._rate if tokens < 0 else 0.0, self._paused_until - now)
            if wait > max_wait:
                return None
            self._tokens = tokens
        if wait > 0 and not sleep_unless(self._clock, wait, cancel):
            return None
        return wait

    def spare(self, at: float | None = None) -> bool:
        """At least half the burst is free now (or at `at`, later, if no call comes before): an
        optional call would not delay a needed one."""
        with self._lock:
            now = self._refill()
            when = now if at is None else max(now, at)
            tokens = min(float(self.burst), self._tokens + (when - now) * self._rate)
            return when >= self._paused_until and tokens >= self.burst / 2

    def _refill(self) -> float:
        """Credit the tokens earned since the last look (the lock is held); returns now."""
        now = self._clock.now()
        self._tokens = min(float(self.burst), self._tokens + (now - self._updated) * self._rate)
        self._updated = now
        return now

    def pause(self, seconds: float) -> None:
        """The server said wait (Retry-After): every caller waits, not just the one refused.

        The caller clamps `seconds`; a wait that is not a finite number is refused here too.
        """
        if not math.isfinite(seconds) or seconds < 0:
            raise ValueError(f"a pause must be finite and not negative, not {seconds!r}")
        with self._lock:
            self._paused_until = max(self._paused_until, self._clock.now() + seconds)
