"""Several sources as one demand: summed (separate queues feeding one fleet) or the max (views of one queue).

If any source fails, the combined demand is unknown and the cycle holds: a partial sum would
look like a drop in demand and trigger exactly the scale-down rule 4 forbids.
"""

from __future__ import annotations

import time
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Literal

from .base import Demand, SignalError, SignalSource


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
    def __init__(self, sources: Sequence[SignalSource], combine: Literal["sum", "max"] = "sum") -> None:
        if not sources:
            raise ValueError("at least one demand source is required")
        self.sources = list(sources)
        self.combine = combine
        self.name = sources[0].name if len(sources) == 1 else f"{combine}({','.join(s.name for s in sources)})"
        self.readings: list[SourceReading] = []

    def read(self, now: float) -> Demand:
        demands: list[Demand] = []
        readings: list[SourceReading] = []
        failures: list[str] = []
        for source in self.sources:
            started = time.perf_counter()
            try:
                demand = source.read(now)
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
        busy: dict[str, bool] | None = None
        for demand in demands:
            if demand.busy is not None:
                busy = {**(busy or {}), **demand.busy}
        gpus_known = all(d.queued_gpus is not None and d.running_gpus is not None for d in demands)
        return Demand(
            queued_jobs=pick(d.queued_jobs for d in demands),
            running_jobs=pick(d.running_jobs for d in demands),
            observed_at=min(d.observed_at for d in demands),
            queued_gpus=pick(d.queued_gpus or 0 for d in demands) if gpus_known else None,
            running_gpus=pick(d.running_gpus or 0 for d in demands) if gpus_known else None,
            max_job_gpus=max(d.max_job_gpus for d in demands),
            busy=busy,
            source=self.name,
        )

    def close(self) -> None:
        for source in self.sources:
            source.close()
