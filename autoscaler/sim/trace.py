"""Job traces: `submit_time,duration,gpus` rows (see ../shared/traces/README.md)."""

from __future__ import annotations

import csv
import math
from dataclasses import dataclass
from pathlib import Path

from autoscaler.core.durations import DECADE_S

REQUIRED = ("submit_time", "duration", "gpus")


class TraceError(ValueError):
    """A trace file that cannot be replayed; the message names the file, the line and the field."""


@dataclass(frozen=True)
class Job:
    """`duration` is seconds of work on the reference GPU (throughput 1.0); `gpus` must share one instance."""

    index: int
    submit: float
    duration: float
    gpus: int


# seconds: no submission later, no job longer (the Philly windows' longest job is weeks)
MAX_SECONDS = DECADE_S


def load_trace(path: str | Path) -> list[Job]:
    path = Path(path)
    try:
        handle = path.open(newline="")
    except OSError as exc:
        raise TraceError(f"trace {path}: cannot read: {exc.strerror}") from None
    with handle:
        reader = csv.DictReader(handle)
        missing = [name for name in REQUIRED if name not in (reader.fieldnames or [])]
        if missing:
            raise TraceError(f"trace {path}: header needs {', '.join(REQUIRED)}; missing {', '.join(missing)}")
        jobs: list[Job] = []
        for line, row in enumerate(reader, start=2):
            jobs.append(_job(path, line, len(jobs), row))
    if not jobs:
        raise TraceError(f"trace {path}: no jobs")
    return sorted(jobs, key=lambda job: (job.submit, job.index))


def _job(path: Path, line: int, index: int, row: dict[str, str]) -> Job:
    def number(field: str) -> float:
        text = (row.get(field) or "").strip()
        try:
            value = float(text)
        except ValueError:
            raise TraceError(f"trace {path}:{line}: {field} {text!r} is not a number") from None
        if not math.isfinite(value) or abs(value) > MAX_SECONDS:
            raise TraceError(f"trace {path}:{line}: {field} {text!r} must be a finite number up to {MAX_SECONDS:g}")
        return value

    submit, duration, gpus = number("submit_time"), number("duration"), number("gpus")
    if submit < 0:
        raise TraceError(f"trace {path}:{line}: submit_time must be seconds since the trace began (>= 0)")
    if duration <= 0:
        raise TraceError(f"trace {path}:{line}: duration must be positive seconds of work")
    if gpus != int(gpus) or not 1 <= gpus <= 8:
        raise TraceError(f"trace {path}:{line}: gpus must be a whole number from 1 to 8 (one instance)")
    return Job(index, submit, duration, int(gpus))


def reference_gpu_seconds(jobs: list[Job]) -> float:
    return sum(job.duration * job.gpus for job in jobs)


def peak_gpus(jobs: list[Job]) -> int:
    """GPUs busy at the busiest moment if every job started on submission on reference GPUs."""
    events = sorted([(j.submit, j.gpus) for j in jobs] + [(j.submit + j.duration, -j.gpus) for j in jobs])
    busy = peak = 0
    for _, change in events:
        busy += change
        peak = max(peak, busy)
    return peak


def mean_gpus(jobs: list[Job]) -> float:
    """Average GPUs busy over the submission window (as the traces' README counts it), reference GPUs."""
    span = max(j.submit for j in jobs)
    return reference_gpu_seconds(jobs) / span if span > 0 else float(max(j.gpus for j in jobs))
