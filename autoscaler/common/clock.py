"""Injected time, so the same code runs on the wall clock and in a simulator's virtual time."""

from __future__ import annotations

import threading
import time
from typing import Protocol

import structlog


class Clock(Protocol):
    """Seconds since the epoch, and a way to let time pass."""

    def now(self) -> float: ...

    def sleep(self, seconds: float) -> None: ...


_ELAPSED_CLOCK = getattr(time, "CLOCK_BOOTTIME", time.CLOCK_MONOTONIC)  # counts a suspended machine's sleep


class SystemClock:
    """The wall clock without its steps. NTP setting a clock that was minutes off, or `date -s`,
    would age every remembered time at once: a booting instance past provision_timeout_s, idle
    timers, cooldowns. So time here advances with the elapsed-time clock and converges on the
    wall clock at most `SLEW` faster or slower than real time, as NTP's own slewing does; within
    `SNAP_S` of the wall clock it is the wall clock. It never goes backwards. Every instance shares
    one reckoning, so all parts of the process agree on the time."""

    SLEW = 0.05
    SNAP_S = 1.0
    _lock = threading.Lock()
    _reckoned: float | None = None  # the time last returned
    _reckoned_at = 0.0  # the elapsed-time clock then
    _stepped = False  # a step is being slewed out: said once, in the log

    def now(self) -> float:
        elapsed_clock, wall = time.clock_gettime(_ELAPSED_CLOCK), time.time()
        cls = type(self)
        with cls._lock:
            if cls._reckoned is None:
                cls._reckoned, cls._reckoned_at = wall, elapsed_clock
                return wall
            elapsed = max(0.0, elapsed_clock - cls._reckoned_at)
            reckoned = cls._reckoned + elapsed
            error = wall - reckoned
            if abs(error) <= cls.SNAP_S:
                value, cls._stepped = wall, False
            else:
                value = reckoned + max(-cls.SLEW * elapsed, min(cls.SLEW * elapsed, error))
                if not cls._stepped:
                    cls._stepped = True
                    _step_noticed(error)
            value = max(value, cls._reckoned)
            cls._reckoned, cls._reckoned_at = value, elapsed_clock
            return value

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


def _step_noticed(error: float) -> None:
    structlog.get_logger("autoscaler.clock").warning(
        "wall_clock_stepped",
        by_s=round(error, 1),
        converging_in_s=round(abs(error) / SystemClock.SLEW),
        why="times are kept step-free: the daemon's clock converges on the wall clock instead of jumping",
    )


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
