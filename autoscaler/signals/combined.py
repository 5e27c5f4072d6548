"""Several sources as one demand: summed (separate queues feeding one fleet) or the max (views of one queue).

If any source fails, the combined demand is unknown and the cycle holds: a partial sum would
look like a drop in demand and trigger exactly the scale-down rule 4 forbids.

Every read is bounded (DESIGN rule 14): each source reads on a thread of its own and the cycle
waits at most its `timeout_s` (plus a second's grace for the source's own timeout to speak), so
a source that blocks (a FIFO with no writer, a server that never answers) fails the read, not
the daemon. A demand stamped further in the future than `max_future_skew_s` is refused.
"""

from __future__ import annotations

import queue
import threading
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Literal

from .base import DEFAULT_MAX_FUTURE_SKEW_S, Demand, SignalError, SignalSource, future_stamp_problem

_GRACE_S = 1.0


@dataclass
class _Job:
    read: Callable[[], Demand]
    done: threading.Event = field(default_factory=threading.Event)
    value: Demand | None = None
    error: BaseException | None = None


_CANCEL_POLL_S = 0.2  # how often a read in progress looks for SIGTERM


def _busy_anywhere(maps: Sequence[Mapping[str, bool]]) -> dict[str, bool] | None:
    """Busy where any source says busy (a worker serving two queues is busy with either's job):
    rule 5 must not hinge on which source was read last."""
    if not maps:
        return None
    merged: dict[str, bool] = {}
    for flags in maps:
        for name, busy in flags.items():
            merged[name] = merged.get(name, False) or busy
    return merged


class _BoundedReader:
    """One source's reads on one thread of its own (a client bound to a thread stays on it)."""

    def __init__(self, name: str) -> None:
        self._jobs: queue.SimpleQueue[_Job | None] = queue.SimpleQueue()
        self._current: _Job | None = None
        self._thread = threading.Thread(target=self._loop, name=f"signal-{name}", daemon=True)
        self._thread.start()

    def _loop(self) -> None:
        while (job := self._jobs.get()) is not None:
            try:
                job.value = job.read()
            except BaseException as exc:  # handed to the cycle's thread, which decides
                job.error = exc
            job.done.set()

    def read(self, source: SignalSource, now: float, cancel: threading.Event | None = None) -> Demand:
        timeout = float(getattr(source.options, "timeout_s", 5.0))
        if self._current is not None and not self._current.done.is_set():
            raise SignalError(
                f"{source.name}: the previous read has not ended (timeout_s {timeout:g}); not asked again"
            )
        job = _Job(lambda: source.read(now))
        self._current = job
        self._jobs.put(job)
        deadline = time.monotonic() + timeout + _GRACE_S
        while not job.done.wait(min(_CANCEL_POLL_S, max(0.0, deadline - time.monotonic()))):
            if cancel is not None and cancel.is_set():  # SIGTERM cuts the wait short (rule 14)
                raise SignalError(f"{source.name}: read abandoned: the daemon is stopping")
            if time.monotonic() >= deadline:
                interrupt = getattr(source, "interrupt", None)
                if callable(interrupt):  # a source that can end its stuck read does (postgres)
                    interrupt()
                raise SignalError(f"{source.name}: no answer within timeout_s ({timeout:g}s)")
        if job.error is not None:
            raise job.error
        assert job.value is not None
        return job.value

    def close(self) -> None:
        self._jobs.put(None)


@dataclass(frozen=True)
class SourceReading:
    """The last read of one source, for metrics and logs."""

    name: str
    kind: str
    up: bool
    queued: int | None
    running: int | None
    seconds: float
    error: str | None = None


class CombinedSignal:
    def __init__(
        self,
        sources: Sequence[SignalSource],
        combine: Literal["sum", "max"] = "sum",
        *,
        max_future_skew_s: float = DEFAULT_MAX_FUTURE_SKEW_S,
    ) -> None:
        if not sources:
            raise ValueError("at least one demand source is required")
        self.sources = list(sources)
        self.combine = combine
        self.max_future_skew_s = max_future_skew_s
        for source in self.sources:
            source.max_future_skew_s = max_future_skew_s
        self._readers: dict[int, _BoundedReader] = {}
        self.cancel: threading.Event | None = None  # set on SIGTERM: a read in progress is given up
        self.name = sources[0].name if len(sources) == 1 else f"{combine}({','.join(s.name for s in sources)})"
        self.readings: list[SourceReading] = []

    def read(self, now: float) -> Demand:
        demands: list[Demand] = []
        readings: list[SourceReading] = []
        failures: list[str] = []
        for source in self.sources:
            started = time.perf_counter()
            try:
                demand = self._read(source, now)
            except SignalError as exc:
                failures.append(str(exc))
                readings.append(
                    SourceReading(source.name, source.kind, False, None, None, time.perf_counter() - started, str(exc))
                )
                continue
            except Exception as exc:  # a source plugin's bug is a failed read
                failures.append(f"{source.name}: {type(exc).__name__}: {exc}")
                readings.append(
                    SourceReading(source.name, source.kind, False, None, None, time.perf_counter() - started, str(exc))
                )
                continue
            demands.append(demand)
            readings.append(
                SourceReading(
                    source.name,
                    source.kind,
                    True,
                    demand.queued_jobs,
                    demand.running_jobs,
                    time.perf_counter() - started,
                )
            )
        self.readings = readings
        if failures:
            raise SignalError("; ".join(failures))
        if len(demands) == 1:
            return demands[0]
        pick = sum if self.combine == "sum" else max
        busy = _busy_anywhere([d.busy for d in demands if d.busy is not None])
        gpus_known = all(d.queued_gpus is not None and d.running_gpus is not None for d in demands)
        queued_mix = _summed([d.queued_by_width for d in demands]) if self.combine == "sum" else None
        running_mix = _summed([d.running_by_width for d in demands]) if self.combine == "sum" else None
        return Demand(
            queued_jobs=pick(d.queued_jobs for d in demands),
            running_jobs=pick(d.running_jobs for d in demands),
            observed_at=min(d.observed_at for d in demands),
            queued_gpus=pick(d.queued_gpus or 0 for d in demands) if gpus_known else None,
            running_gpus=pick(d.running_gpus or 0 for d in demands) if gpus_known else None,
            max_job_gpus=max(d.max_job_gpus for d in demands),
            busy=busy,
            source=self.name,
            queued_by_width=queued_mix,
            running_by_width=running_mix,
        )

    def _read(self, source: SignalSource, now: float) -> Demand:
        reader = self._readers.get(id(source))
        if reader is None:
            reader = self._readers[id(source)] = _BoundedReader(source.name)
        demand = reader.read(source, now, self.cancel)
        problem = future_stamp_problem(demand.observed_at, now, self.max_future_skew_s)
        if problem is not None:
            raise SignalError(f"{source.name}: observed_at {problem}")
        return demand

    def close(self) -> None:
        for reader in self._readers.values():
            reader.close()
        self._readers.clear()
        for source in self.sources:
            source.close()


def _summed(mixes: list[Mapping[int, int] | None]) -> dict[int, int] | None:
    """Width histograms of summed sources, added; unknown if any source cannot tell (a max cannot)."""
    if any(mix is None for mix in mixes):
        return None
    total: dict[int, int] = {}
    for mix in mixes:
        for width, count in (mix or {}).items():
            total[width] = total.get(width, 0) + count
    return total
