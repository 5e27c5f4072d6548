"""The demand a cycle decides on, and what every demand source implements."""

from __future__ import annotations

import math
import os
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from decimal import Decimal
from pathlib import Path
from typing import ClassVar, Protocol

from pydantic import BaseModel, ConfigDict, Field, SecretStr, model_validator

from autoscaler.common.secrets import register_secret
from autoscaler.core.durations import Seconds


class SignalError(Exception):
    """A read failed; the cycle holds (DESIGN rule 4). The message names the source and why."""


DEFAULT_MAX_FUTURE_SKEW_S = 30.0


def future_stamp_problem(stamp: float, now: float, max_skew_s: float) -> str | None:
    """Why a time stamp that lies ahead of `now` by more than `max_skew_s` cannot be believed.

    A stamp in the future is never stale, so one written in milliseconds (or by a clock far
    ahead) would count as fresh forever; the reason names the likely unit mistake.
    """
    ahead = stamp - now
    if ahead <= max_skew_s:
        return None
    if now > 0 and 500 <= stamp / now <= 2000:
        hint = "it looks like milliseconds; write seconds since the epoch"
    elif now > 0 and stamp / now >= 500_000:
        hint = "it looks like microseconds or nanoseconds; write seconds since the epoch"
    else:
        hint = "the writer's clock or unit is wrong"
    return f"time stamp {stamp:.17g} is {ahead:.0f}s in the future (more than {max_skew_s:g}s): {hint}"


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
    # waiting jobs by the GPUs each needs ({1: 12, 8: 2}), when the source can tell; it may count
    # only a sample of the head of the queue, so it never sums to more than `queued_jobs`
    queued_by_width: Mapping[int, int] | None = None
    running_by_width: Mapping[int, int] | None = None  # running jobs by GPUs, where known
    oldest_queued_at: float | None = None  # when the longest-waiting job was queued, where known

    def __post_init__(self) -> None:
        if self.queued_jobs < 0 or self.running_jobs < 0:
            raise ValueError("job counts cannot be negative")
        for what, count, ceiling in (
            ("queued_jobs", self.queued_jobs, MAX_JOB_COUNT),
            ("running_jobs", self.running_jobs, MAX_JOB_COUNT),
            ("queued_gpus", self.queued_gpus, MAX_JOB_COUNT * MAX_JOB_GPUS),
            ("running_gpus", self.running_gpus, MAX_JOB_COUNT * MAX_JOB_GPUS),
        ):
            if count is not None and count > ceiling:
                raise ValueError(f"{what} is {_short(count)}, more than any queue holds")
        if self.max_job_gpus < 1:
            raise ValueError("max_job_gpus must be at least 1")
        if self.busy is not None and not (
            isinstance(self.busy, Mapping)
            and all(isinstance(k, str) and isinstance(v, bool) for k, v in self.busy.items())
        ):
            raise ValueError("busy must map instance names to true or false")
        if not math.isfinite(self.observed_at):
            raise ValueError("observed_at must be a finite time")
        for what, mix, total in (
            ("queued_by_width", self.queued_by_width, self.queued_jobs),
            ("running_by_width", self.running_by_width, self.running_jobs),
        ):
            if mix is not None:
                _check_width_mix(what, mix, total)
        if self.oldest_queued_at is not None and not math.isfinite(self.oldest_queued_at):
            raise ValueError("oldest_queued_at must be a finite time")
        if self.queued_by_width:
            widest = max((w for w, n in self.queued_by_width.items() if n), default=1)
            if widest > self.max_job_gpus:
                raise ValueError(f"queued_by_width has {widest}-GPU jobs but max_job_gpus is {self.max_job_gpus}")

    @property
    def widths_known(self) -> bool:
        """Whether the waiting jobs' widths are reported (instances can then be shaped to them)."""
        return self.queued_by_width is not None

    @property
    def gpus_needed(self) -> int | None:
        """GPUs queued plus running work needs, when the source reports GPUs."""
        if self.queued_gpus is None or self.running_gpus is None:
            return None
        return self.queued_gpus + self.running_gpus


MAX_JOB_GPUS = 64  # the widest job a source may report
# More jobs than any GPU queue holds: a count past it is garbage (a unit or overflow bug upstream),
# never a reason to scale a real fleet, and past float range it would crash the cycle's arithmetic.
MAX_JOB_COUNT = 10_000_000


def job_width(value: object, what: str) -> int:
    """A job's GPUs as a source reported them: a whole number from 1 to MAX_JOB_GPUS, nothing guessed."""
    width = whole_count(value, what)
    if not 1 <= width <= MAX_JOB_GPUS:
        raise ValueError(f"{what} is {width}, not a job width (1 to {MAX_JOB_GPUS} GPUs)")
    return width


def _check_width_mix(what: str, mix: object, total: int) -> None:
    if not isinstance(mix, Mapping):
        raise ValueError(f"{what} must map GPUs per job to a job count")
    for width, count in mix.items():
        if isinstance(width, bool) or not isinstance(width, int) or not 1 <= width <= MAX_JOB_GPUS:
            raise ValueError(f"{what}: {width!r} is not a job width (1 to {MAX_JOB_GPUS} GPUs)")
        if isinstance(count, bool) or not isinstance(count, int) or count < 0:
            raise ValueError(f"{what}: the count for {width} GPUs is {count!r}, not a whole number")
    if sum(mix.values()) > total:
        raise ValueError(f"{what} counts {sum(mix.values())} jobs, more than the {total} reported")


def width_mix(value: object, what: str, skipped: list[str] | None = None) -> dict[int, int]:
    """A width histogram as a source gave it: `{"1": 12, "8": 2}` (JSON keys are strings) or a list
    of `[width, count]` pairs; widths and counts must be whole numbers, nothing is guessed. With
    `skipped`, an entry whose width cannot be read is left out (and said there) instead of failing:
    its jobs still count in the queue, as jobs of unknown width."""
    pairs: list[tuple[object, object]]
    if isinstance(value, Mapping):
        pairs = list(value.items())
    elif isinstance(value, list) and all(isinstance(p, list | tuple) and len(p) == 2 for p in value):
        pairs = [(p[0], p[1]) for p in value]
    else:
        raise ValueError(f"{what} is {value!r}, not a map of GPUs per job to job counts")
    mix: dict[int, int] = {}
    for key, count in pairs:
        try:
            width = job_width(_number_in(key), f"{what} width")
        except ValueError as exc:
            if skipped is None:
                raise
            skipped.append(str(exc))
            continue
        mix[width] = mix.get(width, 0) + whole_count(count, f"{what}[{width}]")
    return mix


def _number_in(key: object) -> object:
    """A JSON key is always a string: "-1" or "1.5" is read as the number it spells, so the error
    says what is wrong with that number, not that a key was a string."""
    if not isinstance(key, str):
        return key
    for parse in (int, float):
        try:
            return parse(key.strip())
        except ValueError:
            continue
    return key


def busy_flags(pairs: Iterable[tuple[object, object]]) -> dict[str, bool]:
    """Instance name -> busy, from what a source returned. Only true/false (or 1/0) is a state: a
    null or anything else is unknown, left out, so a worker in doubt never reads as idle (rule 5);
    a string is not guessed ('f' and 'false' are both truthy). A name given twice (two series, two
    rows) is busy if either says so, and unknown if either is unknown and none says busy."""
    busy: set[str] = set()
    idle: set[str] = set()
    doubt: set[str] = set()
    for name, flag in pairs:
        key = str(name)
        if flag is True or (type(flag) is int and flag == 1):
            busy.add(key)
        elif flag is False or (type(flag) is int and flag == 0):
            idle.add(key)
        else:
            doubt.add(key)
    return {name: name in busy for name in busy | (idle - doubt)}


def widest(mix: Mapping[int, int] | None) -> int:
    """The widest job a width histogram counts (1 when it counts none): `Demand.max_job_gpus`."""
    return max((width for width, count in (mix or {}).items() if count), default=1)


def whole_count(value: object, what: str) -> int:
    """A job count as the source gave it: a whole number, never a string, a boolean or a fraction.

    `"3"`, `true` and `3.9` are refused rather than coerced: each is a bug in what feeds the source,
    and guessing would scale a real fleet on it.
    """
    if isinstance(value, bool) or value is None:
        raise ValueError(f"{what} is {value!r}, not a count (a whole number)")
    if isinstance(value, int):
        count = value
    elif isinstance(value, float | Decimal) and math.isfinite(value) and value == int(value):
        count = int(value)
    else:
        kind = "a string, " if isinstance(value, str) else ""
        raise ValueError(f"{what} is {value!r}, {kind}not a count (a whole number)")
    if count < 0:
        raise ValueError(f"{what} is {count}, a negative count")
    if count > MAX_JOB_COUNT:
        raise ValueError(f"{what} is {_short(count)}, more jobs than any queue holds (over {MAX_JOB_COUNT:,})")
    return count


def _short(count: int) -> str:
    digits = len(str(count))
    return str(count) if digits <= 20 else f"a {digits}-digit number"


class DemandSignal(Protocol):
    """Reads the queue. Raises SignalError on failure; never returns made-up numbers."""

    name: str

    def read(self, now: float) -> Demand: ...


class SourceOptions(BaseModel):
    """Base of every source's options: unknown keys are errors; every read has a timeout."""

    model_config = ConfigDict(extra="forbid", frozen=True, allow_inf_nan=False)
    timeout_s: Seconds = Field(default=5.0, gt=0, le=60, description="seconds one read may take")


class Secret(BaseModel):
    """A credential given inline, by environment variable, or by file; never printed.

    A plain string is the inline value (`url = "redis://..."`), one rule for every source.
    """

    model_config = ConfigDict(extra="forbid", frozen=True)
    value: SecretStr | None = None
    env: str | None = None
    file: Path | None = None

    @model_validator(mode="before")
    @classmethod
    def _plain_string_is_the_value(cls, data: object) -> object:
        return {"value": data} if isinstance(data, str) else data

    def peek(self) -> list[str]:
        """What the credential is now, if it can be had without failing: for masking, never for use."""
        if self.value is not None:
            return [self.value.get_secret_value()]
        if self.env and os.environ.get(self.env):
            return [os.environ[self.env]]
        if self.file is not None:
            try:
                return [self.file.read_text().strip()]
            except (OSError, UnicodeDecodeError):
                return []
        return []

    def resolve(self, what: str) -> str | None:
        text: str | None = None
        if self.value is not None:
            text = self.value.get_secret_value()
        elif self.env:
            text = os.environ.get(self.env)
            if text is None:
                raise SignalError(f"{what}: environment variable {self.env} is not set")
        elif self.file is not None:
            try:
                text = self.file.read_text().strip()
            except OSError as exc:
                raise SignalError(f"{what}: cannot read {self.file}: {exc.strerror}") from None
        register_secret(text)
        return text


class SignalSource:
    """Convenience base for sources: `kind`, an `Options` model, and `read`."""

    kind: ClassVar[str] = "unnamed"
    Options: ClassVar[type[SourceOptions]] = SourceOptions
    max_future_skew_s: float = DEFAULT_MAX_FUTURE_SKEW_S  # set from signal.max_future_skew_s

    def __init__(self, options: SourceOptions, name: str | None = None) -> None:
        self.options = options
        self.name = name or self.kind

    def read(self, now: float) -> Demand:
        raise NotImplementedError

    def close(self) -> None:
        """Release connections; sources reconnect on the next read when needed."""
