"""Demand sources are plugins too: entry-point group `tensordock_autoscaler.signals`, keyed by kind."""

from __future__ import annotations

from importlib.metadata import entry_points
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError

from autoscaler.core.durations import Seconds

from .base import DEFAULT_MAX_FUTURE_SKEW_S, SignalError, SignalSource
from .combined import CombinedSignal
from .static import FileSignal, StaticSignal

ENTRY_POINT_GROUP = "tensordock_autoscaler.signals"


class SignalSpec(BaseModel):
    """One entry of `[[signal.sources]]`: the kind, an optional name (for metrics), its options."""

    model_config = ConfigDict(extra="forbid", frozen=True)
    kind: str
    name: str | None = None
    options: dict[str, Any] = Field(default_factory=dict)


class SignalSettings(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)
    combine: Literal["sum", "max"] = Field(default="sum", description="how several sources add up: sum or max")
    sources: list[SignalSpec] = Field(
        default_factory=lambda: [SignalSpec(kind="static")], description="demand sources: kind, name, options"
    )
    max_future_skew_s: Seconds = Field(
        default=DEFAULT_MAX_FUTURE_SKEW_S,
        gt=0,
        le=3600,
        description="an observed_at or heartbeat further ahead than this is refused (a unit mistake), seconds",
    )


class SignalConfigError(ValueError):
    pass


def available_sources() -> dict[str, type[SignalSource]]:
    return {entry.name: entry.load() for entry in entry_points(group=ENTRY_POINT_GROUP)}


def validate_signal_settings(settings: SignalSettings) -> list[tuple[type[SignalSource], Any, str | None]]:
    """Check every source's options without connecting anywhere; errors name the field."""
    known = available_sources()
    checked, problems = [], []
    for index, spec in enumerate(settings.sources):
        cls = known.get(spec.kind)
        if cls is None:
            problems.append(f"signal.sources[{index}].kind: unknown source {spec.kind!r}; installed: {sorted(known)}")
            continue
        try:
            checked.append((cls, cls.Options.model_validate(spec.options), spec.name))
        except ValidationError as exc:
            for error in exc.errors():
                where = ".".join(str(p) for p in error["loc"])
                problems.append(f"signal.sources[{index}] ({spec.kind}).options.{where}: {error['msg']}")
    seen: dict[str, int] = {}
    for index, spec in enumerate(settings.sources):  # a source's name labels its metrics and logs
        name = spec.name or spec.kind
        if name in seen:
            problems.append(
                f"signal.sources[{index}].name: {name!r} is also signal.sources[{seen[name]}]'s name;"
                " give each source a name of its own (their metrics would be one series)"
            )
        seen.setdefault(name, index)
    if problems:
        raise SignalConfigError("\n".join(problems))
    return checked


def build_signal(settings: SignalSettings) -> CombinedSignal:
    """Every source, built but not yet read. A client library's refusal of an option (a Redis URL
    with an http:// scheme, a port that is not a number) is a configuration error naming the
    source, so a reload refuses it and `check-config` reports it, instead of a traceback."""
    sources: list[SignalSource] = []
    for index, (cls, options, name) in enumerate(validate_signal_settings(settings)):
        try:
            if cls is StaticSignal:
                sources.append(StaticSignal.from_options(options, name))
            elif cls is FileSignal:
                sources.append(FileSignal(options, name))
            else:
                sources.append(cls(options, name))
        except Exception as exc:  # whatever a client library raises for an option it cannot use
            for built in sources:  # what was built before it holds clients and threads
                built.close()
            if isinstance(exc, SignalConfigError | SignalError):
                raise
            kind = settings.sources[index].kind
            raise SignalConfigError(
                f"signal.sources[{index}] ({kind}): {str(exc).strip() or type(exc).__name__}"
            ) from None
    return CombinedSignal(sources, settings.combine, max_future_skew_s=settings.max_future_skew_s)
