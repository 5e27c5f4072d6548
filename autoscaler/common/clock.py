"""Injected time, so the same code runs on the wall clock and in a simulator's virtual time."""

from __future__ import annotations

import threading
import time
from typing import Protocol

CLOCK_SLACK_S = 5.0  # replicas' clocks this far apart are not a clock that ran ahead


class Clock(Protocol):
    """Seconds since the epoch, and a way to let time pass."""

    def now(self) -> float: ...

    def sleep(self, seconds: float) -> None: ...


class SystemClock:
    """The real clock."""

    def now(self) -> float:
        return time.time()

    def sleep(self, seconds: float) -> None:
        if seconds > 0:
            time.sleep(seconds)


class ScaledClock:
    """Wall time sped up `speed` times, for demos: the daemon runs for real, the hours pass in minutes."""

    def __init__(self, speed: float, start: float | None = None) -> None:
        if speed <= 0:
            raise ValueError("speed must be positive")
        self.speed = speed
        self._wall0 = time.time()
        self._start = start if start is not None else self._wall0

    def now(self) -> float:
        return self._start + (time.time() - self._wall0) * self.speed

    def sleep(self, seconds: float) -> None:
        if seconds > 0:
            time.sleep(seconds / self.speed)


class ManualClock:
    """Virtual time: sleeping advances the clock instantly, so a month replays in seconds."""

    def __init__(self, start: float = 1_767_225_600.0) -> None:  # 2026-01-01T00:00:00Z
        self._now = start
        self._lock = threading.Lock()

    def now(self) -> float:
        with self._lock:
            return self._now

    def sleep(self, seconds: float) -> None:
        self.advance(seconds)

    def advance(self, seconds: float) -> None:
        if seconds < 0:
            raise ValueError("time cannot go backwards")
        with self._lock:
            self._now += seconds


def real_seconds(clock: Clock, seconds: float) -> float:
    """How long `seconds` on `clock` take on the wall: all of them, fewer when sped up, none in virtual time."""
    if isinstance(clock, SystemClock):
        return seconds
    if isinstance(clock, ScaledClock):
        return seconds / clock.speed
    return 0.0


def sleep_unless(clock: Clock, seconds: float, cancel: threading.Event | None) -> bool:
    """Let `seconds` pass on `clock` unless `cancel` is set first (SIGTERM); False when cut short.

    A real wait is an `Event.wait`, so setting the event ends it at once; virtual time just passes.
    """
    if cancel is None:
        clock.sleep(seconds)
        return True
    if cancel.is_set():
        return False
    if seconds <= 0:
        return True
    if isinstance(clock, SystemClock | ScaledClock):
        return not cancel.wait(real_seconds(clock, seconds))
    clock.sleep(seconds)
    return not cancel.is_set()
