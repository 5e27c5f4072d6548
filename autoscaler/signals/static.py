"""Fixed or file-driven demand, for the demo, tests and dry runs."""

from __future__ import annotations

import json
from pathlib import Path

from .base import Demand, SignalError


class StaticSignal:
    """Returns what it was told; `set()` changes it, as a test or the demo's burst pattern does."""

    name = "static"

    def __init__(self, queued_jobs: int = 0, running_jobs: int = 0, *, max_job_gpus: int = 1) -> None:
        self.queued_jobs = queued_jobs
        self.running_jobs = running_jobs
        self.max_job_gpus = max_job_gpus
        self.busy: dict[str, bool] | None = None
        self.failing: str | None = None

    def set(self, queued_jobs: int, running_jobs: int = 0, busy: dict[str, bool] | None = None) -> None:
        self.queued_jobs, self.running_jobs, self.busy = queued_jobs, running_jobs, busy

    def read(self, now: float) -> Demand:
        if self.failing:
            raise SignalError(f"static: {self.failing}")
        return Demand(
            queued_jobs=self.queued_jobs,
            running_jobs=self.running_jobs,
            observed_at=now,
            max_job_gpus=self.max_job_gpus,
            busy=dict(self.busy) if self.busy is not None else None,
            source=self.name,
        )


class FileSignal:
    """Reads `{"queued": N, "running": M}` from a JSON file that something else keeps current."""

    name = "file"

    def __init__(self, path: str | Path) -> None:
        self.path = Path(path)

    def read(self, now: float) -> Demand:
        try:
            data = json.loads(self.path.read_text())
            return Demand(
                queued_jobs=int(data["queued"]),
                running_jobs=int(data.get("running", 0)),
                observed_at=float(data.get("observed_at", self.path.stat().st_mtime)),
                busy=data.get("busy"),
                source=self.name,
            )
        except (OSError, ValueError, KeyError, TypeError) as exc:
            raise SignalError(f"file {self.path}: {exc}") from exc
