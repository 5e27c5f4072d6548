"""Warm capacity by the clock: cron-style windows that keep at least N GPUs (e.g. office hours)."""

from __future__ import annotations

from dataclasses import replace
from datetime import UTC, datetime
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

from apscheduler.triggers.cron import CronTrigger
from pydantic import BaseModel, ConfigDict, Field, field_validator

from autoscaler.core.plan import Plan
from autoscaler.core.policy import BasePolicy, PolicyOptions
from autoscaler.core.snapshot import Snapshot


class Window(BaseModel):
    """`cron` selects minutes (standard five fields, e.g. `* 9-17 * * mon-fri`); inside them keep `min_gpus`."""

    model_config = ConfigDict(extra="forbid", frozen=True)
    cron: str
    min_gpus: int = Field(ge=0)
    timezone: str = "UTC"

    @field_validator("timezone")
    @classmethod
    def _known_zone(cls, value: str) -> str:
        try:
            ZoneInfo(value)
        except (ZoneInfoNotFoundError, ValueError) as exc:
            raise ValueError(f"unknown timezone {value!r}; use an IANA name such as Europe/Berlin") from exc
        return value

    @field_validator("cron")
    @classmethod
    def _valid_cron(cls, value: str) -> str:
        try:
            CronTrigger.from_crontab(value)
        except ValueError as exc:
            raise ValueError(f"invalid cron expression {value!r}: {exc}") from exc
        return value

    def contains(self, now: float) -> bool:
        """True when the minute holding `now` is one the cron expression selects."""
        zone = ZoneInfo(self.timezone)
        minute = datetime.fromtimestamp(now, tz=UTC).astimezone(zone).replace(second=0, microsecond=0)
        trigger = CronTrigger.from_crontab(self.cron, timezone=zone)
        return bool(trigger.get_next_fire_time(None, minute) == minute)


class ScheduleOptions(PolicyOptions):
    windows: list[Window] = []


class Schedule(BasePolicy[ScheduleOptions]):
    name = "schedule"
    Options = ScheduleOptions

    def decide(self, snapshot: Snapshot, plan: Plan) -> Plan:
        active = [w for w in self.options.windows if w.contains(snapshot.now)]
        if not active:
            return plan
        floor = max(w.min_gpus for w in active)
        desired = plan.desired_gpus
        return replace(
            plan,
            floor_gpus=max(plan.floor_gpus, floor),
            desired_gpus=max(desired, floor) if desired is not None else None,
        ).note(f"schedule: window {active[0].cron!r} keeps at least {floor} GPUs warm")
