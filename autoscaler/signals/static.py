"""Fixed or file-driven demand, for the demo, tests and dry runs."""

from __future__ import annotations

import contextlib
import json
import os
import select
import stat
import time
from pathlib import Path
from typing import Any

from pydantic import Field, StrictInt

from .base import Demand, SignalError, SignalSource, SourceOptions, busy_flags, whole_count, widest, width_mix


class StaticOptions(SourceOptions):
    queued: StrictInt = Field(default=0, ge=0)
    running: StrictInt = Field(default=0, ge=0)
    max_job_gpus: StrictInt = Field(default=1, ge=1)


class StaticSignal(SignalSource):
    """Returns what it was told; `set()` changes it, as a test or the demo's burst pattern does."""

    kind = "static"
    Options = StaticOptions

    def __init__(
        self, queued_jobs: int = 0, running_jobs: int = 0, *, max_job_gpus: int = 1, name: str | None = None
    ) -> None:
        super().__init__(StaticOptions(queued=queued_jobs, running=running_jobs, max_job_gpus=max_job_gpus), name)
        self.queued_jobs = queued_jobs
        self.running_jobs = running_jobs
        self.max_job_gpus = max_job_gpus
        self.busy: dict[str, bool] | None = None
        self.failing: str | None = None

    @classmethod
    def from_options(cls, options: StaticOptions, name: str | None = None) -> StaticSignal:
        return cls(options.queued, options.running, max_job_gpus=options.max_job_gpus, name=name)

    def set(self, queued_jobs: int, running_jobs: int = 0, busy: dict[str, bool] | None = None) -> None:
        self.queued_jobs, self.running_jobs, self.busy = queued_jobs, running_jobs, busy

    def read(self, now: float) -> Demand:
        if self.failing:
            raise SignalError(f"{self.name}: {self.failing}")
        return Demand(
            queued_jobs=self.queued_jobs,
            running_jobs=self.running_jobs,
            observed_at=now,
            max_job_gpus=self.max_job_gpus,
            busy=dict(self.busy) if self.busy is not None else None,
            source=self.name,
        )


class FileOptions(SourceOptions):
    path: Path


class FileSignal(SignalSource):
    """Reads `{"queued": N, "running": M, "busy": {...}, "observed_at": T}` that something keeps current;
    optionally `"queued_by_width": {"1": 12, "8": 2}` and `"running_by_width"`: jobs by the GPUs each needs."""

    kind = "file"
    Options = FileOptions

    def __init__(self, path: str | Path | FileOptions, name: str | None = None) -> None:
        options = path if isinstance(path, FileOptions) else FileOptions(path=Path(path))
        super().__init__(options, name)
        self.path = options.path

    def _read_bytes(self) -> bytes:
        """The file's bytes, never blocking past `timeout_s`: a FIFO is opened without waiting for a
        writer and read only while data comes, so one with no writer fails the read instead of the cycle."""
        fd = os.open(self.path, os.O_RDONLY | os.O_NONBLOCK)
        try:
            if stat.S_ISREG(os.fstat(fd).st_mode):
                os.set_blocking(fd, True)
                with os.fdopen(os.dup(fd), "rb") as handle:
                    return handle.read()
            deadline = time.monotonic() + self.options.timeout_s
            chunks: list[bytes] = []
            while True:
                try:
                    chunk = os.read(fd, 65536)
                except BlockingIOError:
                    left = deadline - time.monotonic()
                    if left <= 0:
                        raise TimeoutError(
                            f"no complete document within timeout_s ({self.options.timeout_s:g}s)"
                        ) from None
                    select.select([fd], [], [], left)
                    continue
                if not chunk:
                    return b"".join(chunks)
                chunks.append(chunk)
        finally:
            os.close(fd)

    @staticmethod
    def _busy(raw: object) -> dict[str, bool] | None:
        """`{"name": true|false|1|0|null}`; a null (or any other value) leaves that worker unknown."""
        if raw is None:
            return None
        if not isinstance(raw, dict):
            raise ValueError("busy must map instance names to true or false")
        return busy_flags(raw.items())

    def read(self, now: float) -> Demand:
        try:
            data: Any = json.loads(self._read_bytes())
            if not isinstance(data, dict):
                raise ValueError(f'is {type(data).__name__}; write an object: {{"queued": N, "observed_at": T}}')
            queued = width_mix(data["queued_by_width"], "queued_by_width") if "queued_by_width" in data else None
            running = width_mix(data["running_by_width"], "running_by_width") if "running_by_width" in data else None
            return Demand(
                queued_jobs=whole_count(data["queued"], "queued"),
                running_jobs=whole_count(data.get("running", 0), "running"),
                observed_at=_seconds(data.get("observed_at", self.path.stat().st_mtime)),
                busy=self._busy(data.get("busy")),
                source=self.name,
                max_job_gpus=widest(queued),
                queued_by_width=queued,
                running_by_width=running,
            )
        except (OSError, ValueError, KeyError, TypeError, OverflowError) as exc:  # Infinity is valid JSON here
            raise SignalError(f"{self.name} {self.path}: {exc}") from exc


def _seconds(value: object) -> float:
    """`observed_at` as Unix seconds; a null, a date string or a boolean says what to write instead."""
    if isinstance(value, int | float) and not isinstance(value, bool):
        return float(value)
    if isinstance(value, str):
        with contextlib.suppress(ValueError):
            return float(value)  # "1767225600.5": the number it spells, as before
    raise ValueError(f"observed_at is {value!r}; write Unix seconds (a number such as 1767225600.0), or leave it out")
