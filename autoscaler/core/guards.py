"""The safety rules of DESIGN.md that no policy can override, applied to every plan.

Each rule drops actions with a reason, so the log says what was asked and why it was refused.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from pydantic import BaseModel, ConfigDict, Field, model_validator

from autoscaler.common.clock import CLOCK_SLACK_S
from autoscaler.core.durations import Seconds
from autoscaler.core.money import RUNNING_LIKE
from autoscaler.core.plan import Action, ActionKind, Plan, whole_rooms
from autoscaler.core.snapshot import FleetInstance, GuardMemory, Snapshot

__all__ = ["Dropped", "GuardConfig", "GuardMemory", "GuardedPlan", "apply_guards"]
from autoscaler.tensordock import InstanceStatus


class GuardConfig(BaseModel):
    """Hard limits and pacing; units are in the names."""

    model_config = ConfigDict(extra="forbid", frozen=True, allow_inf_nan=False)
    min_gpus: int = Field(default=0, ge=0, description="capacity kept even when demand is unknown")
    max_gpus: int = Field(default=16, ge=0, description="GPUs running or on their way, never more")
    max_instances: int = Field(default=16, ge=0, description="instances running or on their way, never more")
    max_hourly_spend: float | None = Field(default=None, ge=0, description="USD/h of the managed fleet, never more")
    scale_up_cooldown_s: Seconds = Field(default=0.0, ge=0, description="after a scale-up, wait before the next")
    scale_down_cooldown_s: Seconds = Field(default=0.0, ge=0, description="after a scale-down, wait before the next")
    scale_down_delay_s: Seconds = Field(
        default=60.0, ge=0, description="demand must stay low this long before capacity is stopped"
    )
    max_actions_per_cycle: int = Field(default=10, ge=0, description="mutating calls per cycle, at most")

    @model_validator(mode="after")
    def _min_within_max(self) -> GuardConfig:
        if self.min_gpus > self.max_gpus:
            raise ValueError(f"min_gpus ({self.min_gpus}) is more than max_gpus ({self.max_gpus})")
        return self


GUARD_RULES = (
    "ownership",
    "doubt",
    "transitional",
    "busy",
    "hold",
    "cooldown",
    "max_gpus",
    "max_instances",
    "max_hourly_spend",
    "stabilization",
    "max_actions_per_cycle",
    "room",
)
"""Every rule name a refusal can carry: exported at 0 from start-up, so a panel never says "No data"."""


@dataclass(frozen=True)
class Dropped:
    action: Action
    rule: str
    why: str


@dataclass(frozen=True)
class GuardedPlan:
    plan: Plan
    actions: tuple[Action, ...]
    dropped: tuple[Dropped, ...] = field(default=())


def removes_capacity(action: Action, instance: FleetInstance | None) -> bool:
    """Stopping or deleting a running instance reduces capacity, and so may deleting one listed in
    error (its worker may still be running jobs); deleting a stopped one does not."""
    if action.kind is ActionKind.STOP:
        return True
    if action.kind is ActionKind.DELETE:
        return instance is not None and instance.status in (*RUNNING_LIKE, InstanceStatus.ERROR)
    return False


def _replaces_broken(action: Action, instance: FleetInstance | None) -> bool:
    """A delete of an instance in error: capacity that does not serve, so no stabilization window
    or cooldown keeps it (rule 4 still holds it while demand is unknown)."""
    return action.kind is ActionKind.DELETE and instance is not None and instance.status is InstanceStatus.ERROR


@dataclass
class _Tally:
    """The fleet as the actions kept so far leave it: what the next action's bounds are checked against."""

    gpus: int
    instances: int
    cost: float
    removable: int  # GPUs demand has not wanted for scale_down_delay_s (rule 6)
    recent_peak: int | None  # the most GPUs demand wanted within it


def _tally(snapshot: Snapshot, plan: Plan, config: GuardConfig, memory: GuardMemory, floor: int) -> _Tally:
    # The history is a step function (changes only): the window holds the value in force when it
    # opened, every change since, and this cycle's.
    now = snapshot.now
    window_start = now - config.scale_down_delay_s
    in_force = [d for t, d in snapshot.desired_history if t <= window_start][-1:]
    desired_window = in_force + [d for t, d in snapshot.desired_history if t > window_start]
    if plan.desired_gpus is not None:
        desired_window.append(plan.desired_gpus)
    history_covers_delay = memory.history_since is not None and memory.history_since <= now - config.scale_down_delay_s
    recent_peak = max(desired_window) if desired_window else None
    removable = 0
    if snapshot.demand is not None and recent_peak is not None and history_covers_delay:
        removable = max(0, snapshot.serving_gpus - max(recent_peak, floor))  # orphans serve nothing
    return _Tally(snapshot.active_gpus, snapshot.active_instances, snapshot.hourly_cost, removable, recent_peak)


def _refusal_of_any(action: Action, instance: FleetInstance | None) -> tuple[str, str] | None:
    # Rule 1: only what this fleet owns.
    if action.kind is not ActionKind.CREATE and instance is None:
        return "ownership", f"{action.instance_id} is not owned by this fleet"
    if instance is None:
        return None
    # Rule 11: an instance whose status or shape the daemon cannot know is never acted on by a guess.
    if instance.doubt or instance.status is InstanceStatus.UNKNOWN:
        return "doubt", f"{instance.name}: {instance.doubt or 'its status is unknown'}; left alone until it resolves"
    # Wait out transitional states instead of acting twice.
    if instance.status.is_transitional:
        return "transitional", f"{instance.name} is {instance.status.value}; waiting"
    # Rule 5: never stop a busy instance.
    if action.kind in (ActionKind.STOP, ActionKind.DELETE) and instance.busy is True:
        return "busy", f"{instance.name} is running a job"
    return None


def _refusal_to_add(
    action: Action, snapshot: Snapshot, config: GuardConfig, tally: _Tally, *, floor: int, blocked: bool
) -> tuple[str, str] | None:
    # Rule 4: with demand unknown, nothing beyond the minimum.
    if snapshot.demand is None and tally.gpus + action.gpus > floor:
        return "hold", f"demand unknown ({snapshot.demand_error or 'stale'}); holding at {floor} GPUs"
    if blocked:
        return "cooldown", f"scale-up cooldown {config.scale_up_cooldown_s:g}s"
    # Rule 2: bounds, counting instances still being created or started.
    if tally.gpus + action.gpus > config.max_gpus:
        return "max_gpus", f"{tally.gpus}+{action.gpus} GPUs would exceed max_gpus {config.max_gpus}"
    if tally.instances + 1 > config.max_instances:
        return "max_instances", f"{tally.instances}+1 would exceed max_instances {config.max_instances}"
    cap = config.max_hourly_spend
    if cap is not None and tally.cost + snapshot.priced(action) > cap + 1e-9:
        return "max_hourly_spend", f"${tally.cost:.2f}+${snapshot.priced(action):.2f}/h would exceed ${cap:g}/h"
    return None


def _refusal_to_remove(
    action: Action, snapshot: Snapshot, config: GuardConfig, tally: _Tally, *, blocked: bool, broken: bool
) -> tuple[str, str] | None:
    if snapshot.demand is None:
        return "hold", f"demand unknown ({snapshot.demand_error or 'stale'}); no scale-down"
    if broken:  # broken capacity waits for neither a cooldown nor the window
        return None
    if blocked:
        return "cooldown", f"scale-down cooldown {config.scale_down_cooldown_s:g}s"
    # Rule 6: scale down only what demand has not wanted for scale_down_delay.
    if action.gpus > tally.removable and not action.spend_limit:
        return (
            "stabilization",
            f"demand wanted {tally.recent_peak} GPUs within {config.scale_down_delay_s:g}s "
            f"(or history too short); {tally.removable} may go",
        )
    return None


def _room_refused(action: Action) -> tuple[str, str]:
    # A room's deletes and its create go together (`whole_rooms`)
    if action.kind is ActionKind.CREATE:
        return "room", "a stopped instance holding its room may not be deleted; not tried on a host still full"
    return "room", "the room it would make is not used this cycle; the stopped instance is kept"


def _cooling(now: float, last: float | None, cooldown_s: float) -> bool:
    """Within a cooldown of the last scaling. A last scaling later than now (by a clock that ran
    ahead, set back since) is not believed: it would hold every scaling until the clock caught up."""
    return cooldown_s > 0 and last is not None and now - last + CLOCK_SLACK_S >= 0 and now - last < cooldown_s


def apply_guards(snapshot: Snapshot, plan: Plan, config: GuardConfig, memory: GuardMemory) -> GuardedPlan:
    """The plan's actions in order, each kept or dropped with the rule that refused it."""
    now = snapshot.now
    floor = max(config.min_gpus, plan.floor_gpus)
    tally = _tally(snapshot, plan, config, memory, floor)
    up_blocked = _cooling(now, memory.last_scale_up_at, config.scale_up_cooldown_s)
    down_blocked = _cooling(now, memory.last_scale_down_at, config.scale_down_cooldown_s)
    kept: list[Action] = []
    dropped: list[Dropped] = []
    for action in plan.actions:
        instance = snapshot.instance(action.instance_id) if action.instance_id else None
        refusal = _refusal_of_any(action, instance)
        if refusal is None and action.kind.adds_capacity:
            refusal = _refusal_to_add(action, snapshot, config, tally, floor=floor, blocked=up_blocked)
        elif refusal is None and removes_capacity(action, instance):
            broken = _replaces_broken(action, instance)
            refusal = _refusal_to_remove(action, snapshot, config, tally, blocked=down_blocked, broken=broken)
            if refusal is None and not broken:
                tally.removable -= action.gpus
        # Rule 7: bounded work per cycle.
        if refusal is None and len(kept) >= config.max_actions_per_cycle:
            refusal = "max_actions_per_cycle", f"{config.max_actions_per_cycle} actions already this cycle"
        if refusal is not None:
            dropped.append(Dropped(action, *refusal))
            continue
        kept.append(action)
        if action.kind.adds_capacity:  # a stop frees nothing this cycle: the instance bills until it is down
            tally.gpus += action.gpus
            tally.instances += 1
            tally.cost += snapshot.priced(action)
    kept, orphaned = whole_rooms(kept, plan.actions)
    dropped += [Dropped(a, *_room_refused(a)) for a in orphaned]
    return GuardedPlan(plan, tuple(kept), tuple(dropped))
