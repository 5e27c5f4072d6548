"""The demand a cycle decides on, and the interface every source implements."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Protocol


class SignalError(Exception):
    """A read failed; the cycle holds (DESIGN rule 4). The message names the source and why."""


@dataclass(frozen=True)
class Demand:
    """Queued and running jobs when observed; `busy` maps instance name to whether it runs a job."""

    queued_jobs: int
    running_jobs: int
    observed_at: float
    queued_gpus: int | None = None  # GPUs the queued jobs need, when the source knows
    running_gpus: int | None = None
    max_job_gpus: int = 1  # the widest waiting job: instances must be at least this big
    busy: Mapping[str, bool] | None = field(default=None)
    source: str = "unknown"

    def __post_init__(self) -> None:
        if self.queued_jobs < 0 or self.running_jobs < 0:
            raise ValueError("job counts cannot be negative")
        if self.max_job_gpus < 1:
            raise ValueError("max_job_gpus must be at least 1")

    @property
    def gpus_needed(self) -> int | None:
        """GPUs queued plus running work needs, when the source reports GPUs."""
        if self.queued_gpus is None or self.running_gpus is None:
            return None
        return self.queued_gpus + self.running_gpus


class DemandSignal(Protocol):
    """Reads the queue. Raises SignalError on failure; never returns made-up numbers."""

    name: str

    def read(self, now: float) -> Demand: ...
